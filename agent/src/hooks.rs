//! Pre/post snapshot hooks: shell commands run around a group snapshot (e.g. `fsfreeze -f` and
//! `fsfreeze -u`, or a guest agent's freeze/thaw), with a timeout and the snapshot described in
//! the environment: `FERRY_SNAPSHOT`, `FERRY_VOLUMES` (space-separated names) and
//! `FERRY_VOLUME_PATHS` (newline-separated image paths). A hook that fails says why: its
//! error carries the last lines of what it printed (stdout and stderr, interleaved).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Result, StoreError};

/// Commands to run around a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout: Duration,
}

/// The environment a hook sees for snapshot `snapshot` of `volumes` (name, image path).
pub fn env(
    snapshot: &str,
    volumes: &[(String, std::path::PathBuf)],
) -> [(&'static str, String); 3] {
    [
        ("FERRY_SNAPSHOT", snapshot.to_string()),
        (
            "FERRY_VOLUMES",
            volumes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "FERRY_VOLUME_PATHS",
            volumes
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ]
}

/// Keep at most this much of a hook's output for error messages: its last lines, enough to
/// say why, short enough for a run report.
const KEEP: usize = 1024;
const KEEP_LINES: usize = 12;

/// A pipe both of a hook's output streams write to, in the order it writes them.
fn output_pipe() -> std::io::Result<(std::fs::File, Stdio, Stdio)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills both descriptors (close-on-exec in this process), owned from here.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let w2 = w.try_clone()?;
    Ok((r, Stdio::from(w), Stdio::from(w2)))
}

/// The last lines of `out`, at most [`KEEP`] bytes.
fn tail(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(&out[out.len().saturating_sub(KEEP)..]).into_owned();
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(KEEP_LINES)..].join("\n")
}

/// How long output is still read after the shell ended: what a child it left behind still
/// holds open is not waited for.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// Runs one hook to completion in a process group of its own. At the timeout the whole group
/// is killed (the shell and everything it started); once the shell has exited, output is read
/// for [`OUTPUT_GRACE`] more at most, so a child it left running does not hold the caller.
/// Returns the end of what it printed.
pub fn run(
    which: &'static str,
    cmd: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<String> {
    use std::os::unix::process::CommandExt as _;
    let cannot = |e: std::io::Error| StoreError::Hook {
        which,
        detail: format!("cannot start /bin/sh: {e}"),
    };
    let (mut output, stdout, stderr) = output_pipe().map_err(cannot)?;
    let spawned = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn();
    // The command holds the writing ends now (ours went with the Command): the pipe ends
    // when the hook and whatever it started close their output.
    let mut child = spawned.map_err(cannot)?;
    let group = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let keep = |chunk: Vec<u8>, out: &mut Vec<u8>| {
        out.extend_from_slice(&chunk);
        if out.len() > 2 * KEEP {
            out.drain(..out.len() - KEEP);
        }
    };
    let started = Instant::now();
    let status = loop {
        while let Ok(chunk) = rx.try_recv() {
            keep(chunk, &mut out);
        }
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if started.elapsed() >= timeout => {
                // SAFETY: signalling the process group this hook leads (its pid is the
                // group's id since process_group(0)).
                unsafe { libc::kill(-group, libc::SIGKILL) };
                let _ = child.wait();
                break Err(format!(
                    "timed out after {} s and was killed, with everything it started",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    let until = Instant::now() + OUTPUT_GRACE;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(chunk) => keep(chunk, &mut out),
            Err(_) => break, // all read, or a child still holds the pipe: not waited for
        }
    }
    let printed = tail(&out);
    let said = match &printed {
        t if t.is_empty() => " (it printed nothing)".to_string(),
        t => format!("; its output ended with:\n{t}"),
    };
    match status {
        Ok(s) if s.success() => Ok(printed),
        Ok(s) => Err(StoreError::Hook {
            which,
            detail: format!("{cmd:?} exited with {s}{said}"),
        }),
        Err(why) => Err(StoreError::Hook {
            which,
            detail: format!("{cmd:?} {why}{said}"),
        }),
    }
}
