//! How the controller's binaries end: an exit status, and an error printed in one shape
//! everywhere. With `--json` it is `{"error": {"code": ..., "message": ..., "status": ...}}`
//! on stdout, the same `code` as the HTTP API's errors (`status` only for errors the API
//! answered); without it, one line on stderr. A closed stdout (`ferry ... | head`) ends a
//! command quietly, as other Unix tools do.

use std::process::ExitCode;

/// An error with a stable code: the API's (`not_found`, `conflict`, ...) or the command
/// line's own (`usage`, `unreachable`, `tls`, `invalid_file`, ...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: String,
    /// The HTTP status, when the API answered.
    pub status: Option<u16>,
    pub message: String,
    /// Already printed under `--json`, inside the one object the command printed (a failed
    /// run's detail carries it as `error`): not printed again.
    pub printed: bool,
}

impl Coded {
    pub fn new(code: &str, message: impl Into<String>) -> Coded {
        Coded {
            code: code.into(),
            status: None,
            message: message.into(),
            printed: false,
        }
    }
}

/// Restores the default action of SIGPIPE, so a command whose reader went away (`ferry
/// plans list | head -1`) ends quietly instead of failing on a broken pipe. Only for
/// commands that print and exit: a daemon keeps ignoring it (its sockets report EPIPE).
pub fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The exit status for `result`, after printing its error.
pub fn finish(json: bool, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let coded = e.chain().find_map(|c| c.downcast_ref::<Coded>()).cloned();
            let code = coded.as_ref().map_or("failed", |c| c.code.as_str());
            if json && coded.as_ref().is_some_and(|c| c.printed) {
                // said already
            } else if json {
                let mut err = serde_json::json!({ "code": code, "message": format!("{e:#}") });
                if let Some(s) = coded.as_ref().and_then(|c| c.status) {
                    err["status"] = s.into();
                }
                println!("{}", serde_json::json!({ "error": err }));
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
