//! The write-ahead log's writer: appends are framed into a shared buffer (microseconds,
//! under a mutex); one thread writes and `fdatasync`s whatever has gathered — a group
//! commit — and publishes the highest durable LSN, waking exactly the callers it made
//! durable (waiters are kept by LSN; waking every waiter on every commit made each call
//! be polled again for every small commit while it waited).
//!
//! A failed write or sync does not lose the records: the segment is cut back to its last
//! durable length, the bytes are kept, and the writer retries them every
//! [`RETRY_EVERY`] until the disk takes them. Meanwhile the store reports itself
//! unwritable, and the engine refuses new changes with UNAVAILABLE.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::frame;

/// How often a failed write is retried.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What a waiter is told: its record is durable, or why it cannot be said to be.
pub type Outcome = Result<(), Arc<str>>;

/// Appended, not yet written.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// LSN the next append gets.
    next_lsn: u64,
    /// A snapshot asked for a new segment starting at this LSN, whose first frame is at
    /// this offset of `buf`.
    rotate: Option<(u64, usize)>,
    /// The writer's answer to `rotate`.
    rotated: Option<Result<u64, String>>,
    stop: bool,
}

/// The open segment.
struct Segment {
    file: File,
    path: PathBuf,
    base: u64,
    /// Bytes known durable.
    len: u64,
}

/// The log writer. See the module doc.
pub struct Wal {
    dir: PathBuf,
    pending: Mutex<Pending>,
    wake: Condvar,
    rotated: Condvar,
    appended: AtomicU64,
    durable_lsn: AtomicU64,
    /// Callers waiting for an LSN to be durable, by LSN. Lock order: `waiters`, then
    /// `failed`.
    waiters: Mutex<BTreeMap<u64, Vec<oneshot::Sender<Outcome>>>>,
    failed: Mutex<Option<Arc<str>>>,
    /// Bytes written to segments since the last rotation (drives snapshots).
    since_rotation: AtomicU64,
}

/// Segment file name for a base LSN.
pub fn segment_name(base: u64) -> String {
    format!("wal-{base:020}.log")
}

/// Makes a new segment with its header, durable (file and directory entry).
fn create_segment(dir: &Path, base: u64) -> std::io::Result<Segment> {
    let path = dir.join(segment_name(base));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    file.write_all(&frame::header(frame::WAL_MAGIC, base))?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(Segment {
        file,
        path,
        base,
        len: frame::HEADER_LEN as u64,
    })
}

/// Makes a directory's entries durable (a new or renamed file).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Starts a log in `dir` whose next record is `next_lsn`, continuing `tail` (an
    /// existing segment and its verified length) or in a new segment. Spawns the writer.
    pub fn start(
        dir: &Path,
        next_lsn: u64,
        tail: Option<(PathBuf, u64, u64)>,
    ) -> std::io::Result<Arc<Wal>> {
        let segment = match tail {
            Some((path, base, len)) => {
                let file = OpenOptions::new().write(true).open(&path)?;
                // Drop a torn tail (already reported by recovery) before appending.
                file.set_len(len)?;
                file.sync_all()?;
                let mut file = file;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len))?;
                Segment {
                    file,
                    path,
                    base,
                    len,
                }
            }
            None => create_segment(dir, next_lsn)?,
        };
        let wal = Arc::new(Wal {
            dir: dir.to_path_buf(),
            pending: Mutex::new(Pending {
                next_lsn,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            rotated: Condvar::new(),
            appended: AtomicU64::new(next_lsn - 1),
            durable_lsn: AtomicU64::new(next_lsn - 1),
            waiters: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(None),
            since_rotation: AtomicU64::new(0),
        });
        let w = wal.clone();
        std::thread::Builder::new()
            .name("berth-wal".into())
            .spawn(move || {
                w.clone().run(segment);
                // Nothing will be written any more: nobody may wait for it.
                w.wake_all(&Arc::from("the log writer stopped"));
            })?;
        Ok(wal)
    }

    /// Frames `payload` into the log; returns its LSN. Never blocks on the disk.
    pub fn append(&self, payload: &[u8]) -> u64 {
        let mut p = self.pending.lock();
        let lsn = p.next_lsn;
        p.next_lsn += 1;
        frame::push_frame(&mut p.buf, payload);
        self.appended.store(lsn, Ordering::Release);
        drop(p);
        self.wake.notify_one();
        lsn
    }

    /// The last LSN handed out.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// The last LSN on disk.
    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn.load(Ordering::Acquire)
    }

    /// Why writes fail, while they do.
    pub fn failure(&self) -> Option<Arc<str>> {
        self.failed.lock().clone()
    }

    /// Bytes logged since the last rotation.
    pub fn since_rotation(&self) -> u64 {
        self.since_rotation.load(Ordering::Relaxed)
    }

    /// Waits until `lsn` is durable: `Ok(None)` if it already is, a receiver of the outcome
    /// otherwise; `Err` while writes fail (the caller's change may not be on disk).
    pub fn wait(&self, lsn: u64) -> Result<Option<oneshot::Receiver<Outcome>>, Arc<str>> {
        let mut waiters = self.waiters.lock();
        // Checked under `waiters`: `publish` stores the LSN before it takes the lock, so a
        // waiter it has not woken sees the new LSN here.
        if self.durable_lsn() >= lsn {
            return Ok(None);
        }
        if let Some(why) = self.failed.lock().clone() {
            return Err(why);
        }
        let (tx, rx) = oneshot::channel();
        waiters.entry(lsn).or_default().push(tx);
        Ok(Some(rx))
    }

    /// Tells every waiter `why` its record cannot be said to be durable.
    fn wake_all(&self, why: &Arc<str>) {
        let all = std::mem::take(&mut *self.waiters.lock());
        for tx in all.into_values().flatten() {
            let _ = tx.send(Err(why.clone()));
        }
    }

    /// Closes the current segment after the last record appended so far and opens a new
    /// one; returns the new segment's base LSN (every record before it is in older
    /// segments, and was applied to memory before this call).
    pub fn rotate(&self) -> Result<u64, String> {
        let mut p = self.pending.lock();
        if p.stop {
            return Err("the log is stopped".into());
        }
        let at = (p.next_lsn, p.buf.len());
        p.rotate = Some(at);
        p.rotated = None;
        self.wake.notify_one();
        loop {
            if let Some(r) = p.rotated.take() {
                return r;
            }
            self.rotated.wait(&mut p);
        }
    }

    /// Writes what is pending and stops the writer.
    pub fn stop(&self) {
        self.pending.lock().stop = true;
        self.wake.notify_one();
    }

    fn set_failed(&self, why: Option<String>) {
        let why: Option<Arc<str>> = why.map(Arc::from);
        *self.failed.lock() = why.clone();
        if let Some(why) = why {
            self.wake_all(&why);
        }
    }

    /// Every record up to `lsn` is on disk: wakes exactly their waiters.
    fn publish(&self, lsn: u64) {
        self.durable_lsn.store(lsn, Ordering::Release);
        let ready = {
            let mut waiters = self.waiters.lock();
            let later = waiters.split_off(&lsn.saturating_add(1));
            std::mem::replace(&mut *waiters, later)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(Ok(()));
        }
    }

    fn write_durably(&self, seg: &mut Segment, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let r = seg
            .file
            .write_all(bytes)
            .and_then(|()| seg.file.sync_data());
        match r {
            Ok(()) => {
                seg.len += bytes.len() as u64;
                self.since_rotation
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // Cut back to what is known durable, so a retry appends at a frame
                // boundary; the caller keeps `bytes`.
                let _ = seg.file.set_len(seg.len);
                let _ = std::io::Seek::seek(&mut seg.file, std::io::SeekFrom::Start(seg.len));
                Err(e)
            }
        }
    }

    fn run(self: Arc<Self>, mut seg: Segment) {
        // Bytes a failed write left over, written before anything newer.
        let mut carry: Vec<u8> = Vec::new();
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let (mut buf, last, rotate, stop) = {
                let mut p = self.pending.lock();
                while p.buf.is_empty() && p.rotate.is_none() && !p.stop && carry.is_empty() {
                    self.wake.wait(&mut p);
                }
                let buf = std::mem::replace(&mut p.buf, std::mem::take(&mut spare));
                (buf, p.next_lsn - 1, p.rotate.take(), p.stop)
            };
            // Anything left from a failed write goes first.
            let carried = carry.len();
            if carried > 0 {
                carry.extend_from_slice(&buf);
                std::mem::swap(&mut carry, &mut buf);
                carry.clear();
            }
            // On failure, `buf[done..]` is what still has to be written.
            let mut done = 0;
            let result = match rotate {
                None => self.write_durably(&mut seg, &buf),
                Some((base, off)) => {
                    let off = off + carried;
                    let r = self
                        .write_durably(&mut seg, &buf[..off])
                        .and_then(|()| create_segment(&self.dir, base))
                        .map(|new| {
                            tracing::debug!(old = %seg.path.display(), base = seg.base, new_base = base, "log segment rotated");
                            seg = new;
                            self.since_rotation.store(0, Ordering::Relaxed);
                        });
                    let answer = r.as_ref().map(|()| base).map_err(|e| e.to_string());
                    self.pending.lock().rotated = Some(answer);
                    self.rotated.notify_all();
                    match r {
                        Ok(()) => {
                            done = off;
                            self.write_durably(&mut seg, &buf[off..])
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(()) => {
                    if self.failed.lock().is_some() {
                        tracing::warn!(dir = %self.dir.display(), "the data directory takes writes again; changes are accepted");
                        self.set_failed(None);
                    }
                    self.publish(last);
                    buf.clear();
                    spare = buf;
                }
                Err(e) => {
                    let why = format!(
                        "cannot write the log in {}: {e}; changes are refused until it can",
                        self.dir.display()
                    );
                    if self.failed.lock().is_none() {
                        tracing::error!("{why}");
                    }
                    self.set_failed(Some(why));
                    carry = buf.split_off(done);
                    if stop {
                        tracing::error!(
                            bytes = carry.len(),
                            "stopping with records that could not be written"
                        );
                        return;
                    }
                    std::thread::sleep(RETRY_EVERY);
                    continue;
                }
            }
            if stop {
                let p = self.pending.lock();
                if p.buf.is_empty() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// Waits for `lsn` through [`Wal::wait`].
    fn durable(wal: &Wal, lsn: u64) -> Outcome {
        match wal.wait(lsn)? {
            None => Ok(()),
            Some(rx) => block_on(rx).unwrap_or_else(|_| Err(Arc::from("dropped"))),
        }
    }

    #[test]
    fn a_commit_wakes_only_the_waiters_it_made_durable() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let wal = Wal::start(dir.path(), 1, None).expect("a log");
        let first = wal.append(b"one");
        // Not appended yet: nothing can make it durable but a later append.
        let mut later = wal
            .wait(first + 1)
            .expect("writable")
            .expect("not durable yet");
        assert_eq!(durable(&wal, first), Ok(()));
        assert!(wal.durable_lsn() >= first);
        assert!(
            matches!(later.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
            "woken by a commit that did not include its record"
        );
        let second = wal.append(b"two");
        assert_eq!(second, first + 1);
        assert_eq!(block_on(later).expect("an answer"), Ok(()));
        assert!(
            wal.wait(second).expect("writable").is_none(),
            "already durable"
        );
        // Records the log will never write fail their waiters instead of hanging them.
        let never = wal.wait(second + 5).expect("writable").expect("pending");
        wal.stop();
        let why = block_on(never)
            .expect("an answer")
            .expect_err("never written");
        assert!(why.contains("stopped"), "{why}");
    }
}
