//! How the controller's binaries end: an exit status, and an error printed as JSON (with
//! `--json`) or as one line on stderr.

use std::process::ExitCode;

/// The exit status for `result`, after printing its error.
pub fn finish(json: bool, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": { "message": format!("{e:#}") } })
                );
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
