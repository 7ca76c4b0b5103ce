//! `ferry-no-uring CMD ARGS...`: runs a command with io_uring_setup(2) forbidden by a seccomp
//! filter (it fails with ENOSYS), as in a container whose seccomp profile blocks io_uring.
//! Used by the tests to check the agent's pread fallback.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

const SYS_IO_URING_SETUP: u32 = 425;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: ferry-no-uring CMD [ARGS...]");
        return ExitCode::from(2);
    };
    // Load the syscall number; if it is io_uring_setup return ENOSYS, else allow.
    let filter = [
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        }, // BPF_LD|BPF_W|BPF_ABS, seccomp_data.nr
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: SYS_IO_URING_SETUP,
        }, // BPF_JMP|BPF_JEQ|BPF_K
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x0005_0000 | libc::ENOSYS as u32,
        }, // RET ERRNO
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0x7fff_0000,
        }, // RET ALLOW
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with valid arguments; the filter outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, 2, &prog as *const libc::sock_fprog) != 0
        {
            eprintln!(
                "ferry-no-uring: cannot install seccomp filter: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(1);
        }
    }
    let err = Command::new(cmd).args(rest).exec();
    eprintln!("ferry-no-uring: cannot run {cmd}: {err}");
    ExitCode::from(127)
}
