//! The read pipeline: a reader on the calling thread (io_uring, or pread where io_uring cannot
//! be set up) fills a fixed pool of aligned buffers; hashing threads turn each filled buffer
//! into a result; the caller's `sink` consumes results in completion order on the calling
//! thread. Memory is the buffer pool (`queue_depth + 2 * threads` buffers of `read_size`), whatever
//! the file size: a buffer is reused only after its worker hands it back.
//!
//! io_uring reads are batched: every free buffer gets a read queued, one `submit_and_wait`
//! submits the batch and waits for the first completion. Short reads are resubmitted for the
//! rest. On any error the reader waits for all reads in flight before buffers are freed, since
//! the kernel writes into them.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Once;

use crossbeam_channel as chan;
use io_uring::{opcode, types, IoUring};

use crate::config::{Cache, EngineChoice, IoConfig};
use crate::error::{io_err, Result, StoreError};
use crate::fsx;

/// Alignment of read buffers (O_DIRECT needs the logical block size; 4 KiB covers all devices).
pub const ALIGN: usize = 4096;

/// A heap buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: the buffer owns its allocation exclusively; moving it between threads is fine.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `cap` bytes (rounded up to [`ALIGN`]).
    pub fn new(cap: usize) -> Self {
        let cap = cap.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = Layout::from_size_align(cap, ALIGN).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap }
    }
    /// The first `len` bytes.
    pub fn slice(&self, len: usize) -> &[u8] {
        assert!(len <= self.cap);
        // SAFETY: ptr is valid for cap bytes, initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), len) }
    }
    fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.cap);
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), len) }
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, ALIGN).expect("valid layout");
        // SAFETY: allocated with the same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// One read: `len` bytes at `offset`, with a caller-defined tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadJob {
    pub offset: u64,
    pub len: usize,
    pub tag: u8,
}

/// Which engine did the reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    IoUring,
    Pread,
}

/// What a run did.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReadStats {
    pub engine: EngineKind,
    pub direct: bool,
    pub bytes: u64,
    pub reads: u64,
}

static FALLBACK_LOGGED: Once = Once::new();

/// Whether io_uring can be set up here (for reports).
pub fn io_uring_available() -> bool {
    IoUring::new(2).is_ok()
}

/// Reads every job of `jobs` from `path`, runs `work` on each filled buffer on the hashing
/// threads, and hands the results to `sink` on this thread.
pub fn run<R, J, W, S>(
    path: &Path,
    io: &IoConfig,
    cache: Cache,
    max_job: usize,
    jobs: J,
    work: W,
    mut sink: S,
) -> Result<ReadStats>
where
    R: Send,
    J: IntoIterator<Item = ReadJob>,
    W: Fn(&ReadJob, &[u8]) -> R + Sync,
    S: FnMut(ReadJob, R) -> Result<()>,
{
    let want_direct = io.direct.wanted(cache);
    let (file, direct) =
        fsx::open_for_read(path, want_direct).map_err(|e| io_err(e, "open", path.into()))?;
    let threads = io.threads();
    let buf_size = (io.read_size as usize).max(max_job);
    let mut reader: Box<dyn Reader> = match io.engine {
        EngineChoice::Pread => Box::new(PreadReader::new(&file, direct)),
        EngineChoice::IoUring => Box::new(
            UringReader::new(&file, direct, io.queue_depth)
                .map_err(|e| io_err(e, "set up io_uring for", path.into()))?,
        ),
        EngineChoice::Auto => match UringReader::new(&file, direct, io.queue_depth) {
            Ok(r) => Box::new(r),
            Err(e) => {
                FALLBACK_LOGGED.call_once(|| {
                    tracing::warn!(error = %e, "io_uring is unavailable here; reading with pread instead");
                });
                Box::new(PreadReader::new(&file, direct))
            }
        },
    };
    let nbufs = reader.depth() + 2 * threads;
    // Buffers are allocated on first need, so short runs (a few scattered leaves) stay cheap.
    let mut free: Vec<AlignedBuf> = Vec::with_capacity(nbufs);
    let mut allocated = 0usize;
    let (work_tx, work_rx) = chan::bounded::<(ReadJob, AlignedBuf)>(nbufs);
    let (done_tx, done_rx) = chan::bounded::<(ReadJob, AlignedBuf, R)>(nbufs);
    let mut stats = ReadStats {
        engine: reader.kind(),
        direct,
        bytes: 0,
        reads: 0,
    };

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let work = &work;
            scope.spawn(move || {
                for (job, buf) in rx {
                    let r = work(&job, buf.slice(job.len));
                    if tx.send((job, buf, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);

        let mut jobs = jobs.into_iter().peekable();
        let mut outstanding = 0usize;
        let mut completed = Vec::new();
        let result: Result<()> = (|| loop {
            while let Ok((job, buf, r)) = done_rx.try_recv() {
                free.push(buf);
                outstanding -= 1;
                sink(job, r)?;
            }
            while reader.can_submit() && jobs.peek().is_some() {
                let buf = match free.pop() {
                    Some(b) => b,
                    None if allocated < nbufs => {
                        allocated += 1;
                        AlignedBuf::new(buf_size)
                    }
                    None => break,
                };
                let Some(job) = jobs.next() else { break };
                if job.len > buf.capacity() {
                    return Err(StoreError::Invalid(format!(
                        "read of {} bytes exceeds the buffer",
                        job.len
                    )));
                }
                reader
                    .submit(job, buf)
                    .map_err(|e| io_err(e, "read", path.into()))?;
                outstanding += 1;
                stats.reads += 1;
                stats.bytes += job.len as u64;
            }
            if outstanding == 0 && jobs.peek().is_none() {
                return Ok(());
            }
            if reader.in_flight() > 0 {
                reader
                    .wait(&mut completed)
                    .map_err(|e| io_err(e, "read", path.into()))?;
                for item in completed.drain(..) {
                    work_tx
                        .send(item)
                        .map_err(|_| StoreError::Invalid("hashing threads stopped".into()))?;
                }
            } else {
                let (job, buf, r) = done_rx
                    .recv()
                    .map_err(|_| StoreError::Invalid("hashing threads stopped".into()))?;
                free.push(buf);
                outstanding -= 1;
                sink(job, r)?;
            }
        })();
        // Buffers may still be the kernel's: wait for every read in flight before dropping them.
        reader.drain();
        drop(work_tx);
        result
    })?;
    Ok(stats)
}

/// A source of reads driven by [`run`].
trait Reader {
    fn kind(&self) -> EngineKind;
    fn depth(&self) -> usize;
    fn can_submit(&self) -> bool;
    fn in_flight(&self) -> usize;
    fn submit(&mut self, job: ReadJob, buf: AlignedBuf) -> io::Result<()>;
    fn wait(&mut self, out: &mut Vec<(ReadJob, AlignedBuf)>) -> io::Result<()>;
    fn drain(&mut self);
}

fn request_len(len: usize, direct: bool) -> usize {
    if direct {
        len.div_ceil(ALIGN) * ALIGN
    } else {
        len
    }
}

struct PreadReader<'f> {
    file: &'f File,
    direct: bool,
    ready: VecDeque<(ReadJob, AlignedBuf)>,
}

impl<'f> PreadReader<'f> {
    fn new(file: &'f File, direct: bool) -> Self {
        PreadReader {
            file,
            direct,
            ready: VecDeque::new(),
        }
    }
}

impl Reader for PreadReader<'_> {
    fn kind(&self) -> EngineKind {
        EngineKind::Pread
    }
    fn depth(&self) -> usize {
        1
    }
    fn can_submit(&self) -> bool {
        self.ready.is_empty()
    }
    fn in_flight(&self) -> usize {
        self.ready.len()
    }
    fn submit(&mut self, job: ReadJob, mut buf: AlignedBuf) -> io::Result<()> {
        let want = request_len(job.len, self.direct);
        let dst = buf.slice_mut(want);
        let mut done = 0;
        while done < job.len {
            match self
                .file
                .read_at(&mut dst[done..], job.offset + done as u64)
            {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended early",
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.ready.push_back((job, buf));
        Ok(())
    }
    fn wait(&mut self, out: &mut Vec<(ReadJob, AlignedBuf)>) -> io::Result<()> {
        out.extend(self.ready.drain(..));
        Ok(())
    }
    fn drain(&mut self) {
        self.ready.clear();
    }
}

struct Slot {
    job: ReadJob,
    buf: AlignedBuf,
    done: usize,
}

struct UringReader {
    ring: IoUring,
    fd: i32,
    direct: bool,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    in_flight: usize,
}

impl UringReader {
    fn new(file: &File, direct: bool, depth: u32) -> io::Result<Self> {
        let ring = IoUring::new(depth.next_power_of_two())?;
        let depth = depth as usize;
        Ok(UringReader {
            ring,
            fd: file.as_raw_fd(),
            direct,
            slots: (0..depth).map(|_| None).collect(),
            free_slots: (0..depth).rev().collect(),
            in_flight: 0,
        })
    }

    fn push(&mut self, slot: usize) -> io::Result<()> {
        let s = self.slots[slot].as_mut().expect("slot in use");
        let want = request_len(s.job.len, self.direct);
        let rest = &mut s.buf.slice_mut(want)[s.done..];
        let sqe = opcode::Read::new(types::Fd(self.fd), rest.as_mut_ptr(), rest.len() as u32)
            .offset(s.job.offset + s.done as u64)
            .build()
            .user_data(slot as u64);
        // SAFETY: the buffer lives in `self.slots` until its completion is reaped (drain() waits
        // for all of them before anything is dropped).
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.ring.submit()?;
        }
        Ok(())
    }
}

impl Reader for UringReader {
    fn kind(&self) -> EngineKind {
        EngineKind::IoUring
    }
    fn depth(&self) -> usize {
        self.slots.len()
    }
    fn can_submit(&self) -> bool {
        !self.free_slots.is_empty()
    }
    fn in_flight(&self) -> usize {
        self.in_flight
    }
    fn submit(&mut self, job: ReadJob, buf: AlignedBuf) -> io::Result<()> {
        let slot = self.free_slots.pop().expect("can_submit checked");
        self.slots[slot] = Some(Slot { job, buf, done: 0 });
        self.in_flight += 1;
        self.push(slot)
    }
    fn wait(&mut self, out: &mut Vec<(ReadJob, AlignedBuf)>) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut first_err = None;
        for (slot, res) in cqes {
            let slot = slot as usize;
            if res == -libc::EAGAIN || res == -libc::EINTR {
                self.push(slot)?;
                continue;
            }
            let s = self.slots[slot]
                .as_mut()
                .expect("completion for a slot in use");
            if res < 0 || (res == 0 && s.done < s.job.len) {
                let e = if res < 0 {
                    io::Error::from_raw_os_error(-res)
                } else {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early")
                };
                first_err.get_or_insert(e);
                let s = self.slots[slot].take().expect("slot");
                drop(s);
                self.free_slots.push(slot);
                self.in_flight -= 1;
                continue;
            }
            s.done += res as usize;
            if s.done < s.job.len {
                self.push(slot)?;
                continue;
            }
            let s = self.slots[slot].take().expect("slot");
            self.free_slots.push(slot);
            self.in_flight -= 1;
            out.push((s.job, s.buf));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn drain(&mut self) {
        while self.in_flight > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                // Cannot reap: leak the buffers rather than free memory the kernel may write.
                for s in self.slots.iter_mut() {
                    if let Some(s) = s.take() {
                        std::mem::forget(s.buf);
                    }
                }
                return;
            }
            let done: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for slot in done {
                if self.slots[slot as usize].take().is_some() {
                    self.in_flight -= 1;
                    self.free_slots.push(slot as usize);
                }
            }
        }
    }
}
