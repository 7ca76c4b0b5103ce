//! The agent library's error type. Callers branch on the variant (the CLI prints `kind()` in
//! its JSON errors; the controller will map them to task results).

use std::io;
use std::path::PathBuf;

use ferry_wire::name::NameError;
use ferry_wire::repl::ErrorClass;

/// Errors of the volume store and the manifest code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: NameError,
    },
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: &'static str, name: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error(
        "no space left on the device holding {path}: {op} needs more room; nothing was changed"
    )]
    NoSpace { op: String, path: PathBuf },
    #[error("the data directory {path} is on {fs}, which cannot clone files (FICLONE); the reflink backend needs XFS formatted with reflink=1 or btrfs. Use backend = \"copy\" or \"auto\"")]
    ReflinkUnsupported { path: PathBuf, fs: String },
    #[error("{0}")]
    Busy(String),
    /// A refusal by policy (a volume that is not a mirror, or mirrors another site): trying
    /// again cannot help.
    #[error("{0}")]
    Refused(String),
    /// Something of that name exists with other contents (a mirror snapshot of another root).
    #[error("{0}")]
    Conflict(String),
    #[error("hook {which} failed: {detail}")]
    Hook { which: &'static str, detail: String },
    /// A snapshot under a hold (across nodes) that has ended or never began.
    #[error("{0}")]
    HoldEnded(String),
    #[error("corrupt {what} at {path}: {detail}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{message}")]
    Net { retryable: bool, message: String },
    /// The replication peer failed the session, for its reason `class`.
    #[error("the receiver: {message}")]
    Peer {
        class: ferry_wire::repl::ErrorClass,
        message: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        source: io::Error,
    },
}

impl StoreError {
    /// A short machine-readable class, stable for scripts and the controller.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::InvalidName { .. } => "invalid_name",
            StoreError::NotFound { .. } => "not_found",
            StoreError::AlreadyExists { .. } => "already_exists",
            StoreError::Invalid(_) => "invalid_argument",
            StoreError::NoSpace { .. } => "no_space",
            StoreError::ReflinkUnsupported { .. } => "reflink_unsupported",
            StoreError::Busy(_) => "busy",
            StoreError::Refused(_) => "refused",
            StoreError::Conflict(_) => "conflict",
            StoreError::Hook { .. } => "hook_failed",
            StoreError::HoldEnded(_) => "hold_ended",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Net {
                retryable: true, ..
            } => "network",
            StoreError::Net {
                retryable: false, ..
            } => "peer_refused",
            StoreError::Peer { class, .. } => class.kind(),
            StoreError::Io { .. } => "io",
        }
    }

    /// The class a replication peer is told this error is of.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::InvalidName { .. }
            | StoreError::Invalid(_)
            | StoreError::ReflinkUnsupported { .. } => ErrorClass::Invalid,
            StoreError::NotFound { .. } => ErrorClass::NotFound,
            StoreError::AlreadyExists { .. } | StoreError::Conflict(_) => ErrorClass::Conflict,
            StoreError::NoSpace { .. } => ErrorClass::NoSpace,
            StoreError::Busy(_) | StoreError::HoldEnded(_) => ErrorClass::Busy,
            StoreError::Refused(_) | StoreError::Hook { .. } => ErrorClass::Refused,
            StoreError::Corrupt { .. } => ErrorClass::Corrupt,
            StoreError::Net {
                retryable: true, ..
            } => ErrorClass::Network,
            StoreError::Net {
                retryable: false, ..
            } => ErrorClass::Protocol,
            StoreError::Peer { class, .. } => *class,
            StoreError::Io { .. } => ErrorClass::Io,
        }
    }

    /// Whether trying again soon can help: the network, a busy or briefly failing peer.
    pub fn retryable(&self) -> bool {
        match self {
            StoreError::Net { retryable, .. } => *retryable,
            StoreError::Peer { class, .. } => class.retryable(),
            _ => false,
        }
    }
}

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches an operation and a path to an `io::Error`, turning ENOSPC into [`StoreError::NoSpace`].
pub trait IoContext<T> {
    fn ctx(self, op: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| io_err(e, op, path.into()))
    }
}

/// See [`IoContext`].
pub fn io_err(e: io::Error, op: &str, path: PathBuf) -> StoreError {
    if crate::fsx::is_no_space(&e) {
        StoreError::NoSpace {
            op: op.to_owned(),
            path,
        }
    } else {
        StoreError::Io {
            op: op.to_owned(),
            path,
            source: e,
        }
    }
}

impl From<ferry_net::pki::PkiError> for StoreError {
    fn from(e: ferry_net::pki::PkiError) -> Self {
        use ferry_net::pki::PkiError as P;
        match e {
            P::InvalidName { what, name, reason } => StoreError::InvalidName { what, name, reason },
            P::Invalid(m) => StoreError::Invalid(m),
            P::AlreadyExists { what, name } => StoreError::AlreadyExists { what, name },
            P::Io { op, path, source } => io_err(source, &op, path),
        }
    }
}

/// Validates a name for the given role (`volume`, `snapshot`).
pub fn check_name(what: &'static str, name: &str) -> Result<ferry_wire::Name> {
    ferry_wire::Name::new(name).map_err(|reason| StoreError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a receiver's failure is called at the sender: its kind, and whether the sender
    /// retries it.
    #[test]
    fn errors_keep_their_class_across_the_wire() {
        let io = || io::Error::from_raw_os_error(libc::EIO);
        let cases: Vec<(StoreError, &str, bool)> = vec![
            (
                io_err(
                    io::Error::from_raw_os_error(libc::ENOSPC),
                    "write block 3",
                    "/m".into(),
                ),
                "no_space",
                false,
            ),
            (io_err(io(), "write block 3", "/m".into()), "io", true),
            (
                StoreError::Refused("volume v exists here and is not a mirror".into()),
                "refused",
                false,
            ),
            (
                StoreError::Refused("volume v mirrors site a, not c".into()),
                "refused",
                false,
            ),
            (
                StoreError::Busy("mirror v is already receiving".into()),
                "busy",
                true,
            ),
            (
                StoreError::Conflict("the mirror holds v@s with another root".into()),
                "conflict",
                false,
            ),
            (
                StoreError::AlreadyExists {
                    what: "mirror snapshot",
                    name: "v@s".into(),
                },
                "conflict",
                false,
            ),
            (
                StoreError::NotFound {
                    what: "snapshot",
                    name: "v@b".into(),
                },
                "not_found",
                false,
            ),
            (
                StoreError::Invalid("block size".into()),
                "invalid_argument",
                false,
            ),
            (
                StoreError::Corrupt {
                    what: "mirror",
                    path: "/m".into(),
                    detail: "root".into(),
                },
                "corrupt",
                false,
            ),
            (
                StoreError::Net {
                    retryable: true,
                    message: "lost".into(),
                },
                "network",
                true,
            ),
        ];
        for (e, kind, retried) in cases {
            // The receiver tells the class; the sender makes its error of it.
            let at_sender = StoreError::Peer {
                class: e.class(),
                message: e.to_string(),
            };
            assert_eq!(at_sender.kind(), kind, "{e}");
            assert_eq!(at_sender.retryable(), retried, "{e}");
        }
    }
}
