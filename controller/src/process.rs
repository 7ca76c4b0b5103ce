//! Stopping a child process the way an init system does: a signal, then a bounded wait.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Sends `sig` to `child` and waits up to `grace` for it to exit; its status, or `None` if
/// it is still running (the caller may then SIGKILL it).
pub fn signal_and_wait(child: &mut Child, sig: libc::c_int, grace: Duration) -> Option<ExitStatus> {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, sig) };
    }
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Err(_) => return None,
            Ok(None) if t0.elapsed() >= grace => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// [`signal_and_wait`], then SIGKILL and reap `child` if it is still running after `grace`.
pub fn stop(child: &mut Child, sig: libc::c_int, grace: Duration) {
    if signal_and_wait(child, sig, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
