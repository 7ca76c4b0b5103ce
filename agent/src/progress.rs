//! How far the task running on this thread is: bytes done of the bytes it expects. The
//! controller link runs each task on a thread of its own inside [`track`] and sends what
//! [`Progress`] says about once a second; the manifest reader counts into it ([`expect`] when
//! it knows what it will read, [`advance`] as blocks are hashed). Outside [`track`] (the
//! command line) counting does nothing.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes done and expected, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    /// Says where a task is outright (one that counts by itself, a transfer).
    pub fn set(&self, done: u64, total: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// (bytes done, bytes expected).
    pub fn get(&self) -> (u64, u64) {
        let done = self.done.load(Ordering::Relaxed);
        (done, self.total.load(Ordering::Relaxed).max(done))
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Progress>>> = const { RefCell::new(None) };
}

/// Runs `f` with its work counted into `p`.
pub fn track<T>(p: &Arc<Progress>, f: impl FnOnce() -> T) -> T {
    CURRENT.with(|c| *c.borrow_mut() = Some(p.clone()));
    let out = f();
    CURRENT.with(|c| *c.borrow_mut() = None);
    out
}

fn with(f: impl FnOnce(&Progress)) {
    CURRENT.with(|c| {
        if let Some(p) = c.borrow().as_ref() {
            f(p)
        }
    });
}

/// This thread's task will read `bytes` more.
pub fn expect(bytes: u64) {
    with(|p| {
        p.total.fetch_add(bytes, Ordering::Relaxed);
    });
}

/// This thread's task has done `bytes` more.
pub fn advance(bytes: u64) {
    with(|p| {
        p.done.fetch_add(bytes, Ordering::Relaxed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_inside_track() {
        advance(5);
        let p = Arc::new(Progress::default());
        track(&p, || {
            expect(100);
            advance(40);
        });
        advance(7);
        assert_eq!(p.get(), (40, 100));
    }
}
