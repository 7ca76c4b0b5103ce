//! Pre/post snapshot hooks: shell commands run around a group snapshot (e.g. `fsfreeze -f` and
//! `fsfreeze -u`, or a guest agent's freeze/thaw), with a timeout and the snapshot described in
//! the environment: `FERRY_SNAPSHOT`, `FERRY_VOLUMES` (space-separated names) and
//! `FERRY_VOLUME_PATHS` (newline-separated image paths).

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

/// Keep at most this much of a hook's output for error messages.
const KEEP: usize = 4096;

/// Runs one hook to completion, killing it at the timeout.
pub fn run(
    which: &'static str,
    cmd: &str,
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<()> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StoreError::Hook {
            which,
            detail: format!("cannot start /bin/sh: {e}"),
        })?;
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                if out.len() > 2 * KEEP {
                    out.drain(..out.len() - KEEP);
                }
            }
        }
        out
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "timed out after {} s and was killed",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    let out = reader.join().unwrap_or_default();
    let tail = String::from_utf8_lossy(&out[out.len().saturating_sub(KEEP)..])
        .trim()
        .to_string();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(StoreError::Hook {
            which,
            detail: format!(
                "{cmd:?} exited with {s}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            ),
        }),
        Err(why) => Err(StoreError::Hook {
            which,
            detail: format!("{cmd:?} {why}"),
        }),
    }
}
