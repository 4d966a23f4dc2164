//! Durability: a checksummed write-ahead log with group commit, and snapshots that bound
//! it. The engine stays an in-memory engine; the store only remembers its changes.
//!
//! - Every change to the engine's state is logged as a [`record::Record`] holding the new
//!   state of one object, appended while the lock that made the change visible is still
//!   held — so the log's order is the order in which each object changed.
//! - `wal`: appends go to a buffer; a writer thread writes and `fdatasync`s whatever has
//!   gathered (one sync for many concurrent changes) and publishes the durable LSN. An RPC
//!   answers only once everything it changed is durable (`api::layer`).
//! - Snapshots: when the log since the last snapshot passes
//!   [`StoreConfig::snapshot_after_bytes`], the log moves to a new segment at LSN `L`, every
//!   object is dumped into `snap-L.snap`, and older segments and snapshots are deleted. The
//!   dump runs while changes continue (a *fuzzy* snapshot): replaying the log from `L` over
//!   it — records are whole states, so replay is idempotent — yields the exact state.
//! - Start-up ([`Store::open`]) loads the newest snapshot and replays the segments after
//!   it into a [`State`] of plain maps, which the engine and the conductor then restore
//!   themselves from. A torn record at the very end of the log (a write the crash cut,
//!   never acknowledged) is dropped with a warning; any other damage stops the start with a
//!   report, unless the operator passes `--recover`, which loads every record that
//!   verifies, moves the damaged files aside and writes a fresh snapshot.
//!
//! Files in the data directory: `LOCK` (one engine per directory), `wal-<LSN>.log`,
//! `snap-<LSN>.snap`, and `damaged-<time>/` after a `--recover`.

pub mod frame;
pub mod record;
pub mod wal;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;
use serde::Deserialize;
use uuid::Uuid;

use record::{Change, Record};
use wal::Wal;

/// `[store]` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the log and snapshots live.
    pub data_dir: PathBuf,
    /// Keep nothing on disk: a pure in-memory engine (tests, benchmarks).
    pub ephemeral: bool,
    /// Snapshot once the log since the last snapshot is this large (MiB). Bounds restart
    /// time and disk use; a snapshot costs one pass over the state.
    pub snapshot_after_mb: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./berth-data"),
            ephemeral: false,
            snapshot_after_mb: 256,
        }
    }
}

/// Everything the disk held, as plain maps (the last state of each object).
#[derive(Debug, Default)]
pub struct State {
    /// Providers by uuid.
    pub providers: FastMap<Uuid, record::ProviderRec>,
    /// Highest generation seen per provider (claims bump it without a provider record).
    pub provider_generations: FastMap<Uuid, u64>,
    /// Consumers by uuid.
    pub consumers: FastMap<Uuid, record::ConsumerRec>,
    /// Groups by uuid.
    pub groups: HashMap<Uuid, record::GroupRec>,
    /// Flavors by id.
    pub flavors: BTreeMap<String, record::FlavorRec>,
    /// Images by uuid.
    pub images: HashMap<Uuid, record::ImageRec>,
    /// Custom resource classes.
    pub classes: BTreeSet<String>,
    /// Aggregate metadata.
    pub aggregate_metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// Servers by uuid.
    pub servers: FastMap<Uuid, record::ServerRec>,
    /// Deleted servers the conductor still remembers, by uuid, each with its position in
    /// the order they were first recorded (the conductor keeps the most recent).
    pub deleted_servers: FastMap<Uuid, (u64, record::DeletedServerRec)>,
    /// The next position in `deleted_servers`.
    deleted_order: u64,
    /// Projects' own quota limits, by project.
    pub quotas: BTreeMap<String, record::QuotaRec>,
}

/// A map keyed by random uuids, filled a million times at start-up: foldhash instead of
/// SipHash (no hash-flooding concern: the keys come from our own log).
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn uuid_of(bytes: &[u8], what: &str) -> Result<Uuid, String> {
    Uuid::from_slice(bytes).map_err(|_| format!("{what} uuid is {} bytes, not 16", bytes.len()))
}

impl State {
    fn gens(&mut self, gens: &[record::ProviderGeneration]) -> Result<(), String> {
        for g in gens {
            let u = uuid_of(&g.provider, "provider")?;
            let e = self.provider_generations.entry(u).or_default();
            *e = (*e).max(g.generation);
        }
        Ok(())
    }

    /// Applies one record. An error means the record is not one this engine wrote.
    pub fn apply(&mut self, rec: Record) -> Result<(), String> {
        match rec.change.ok_or("record without a change")? {
            Change::Provider(p) => {
                let u = uuid_of(&p.uuid, "provider")?;
                let e = self.provider_generations.entry(u).or_default();
                *e = (*e).max(p.generation);
                self.providers.insert(u, p);
            }
            Change::ProviderDeleted(u) => {
                let u = uuid_of(&u, "provider")?;
                self.providers.remove(&u);
                self.provider_generations.remove(&u);
            }
            Change::Consumer(c) => {
                let u = uuid_of(&c.uuid, "consumer")?;
                self.gens(&c.provider_generations)?;
                self.consumers.insert(u, c);
            }
            Change::ConsumerDeleted(c) => {
                let u = uuid_of(&c.uuid, "consumer")?;
                self.gens(&c.provider_generations)?;
                self.consumers.remove(&u);
            }
            Change::Group(g) => {
                self.groups.insert(uuid_of(&g.uuid, "group")?, g);
            }
            Change::GroupDeleted(u) => {
                self.groups.remove(&uuid_of(&u, "group")?);
            }
            Change::Flavor(f) => {
                self.flavors.insert(f.id.clone(), f);
            }
            Change::FlavorDeleted(id) => {
                self.flavors.remove(&id);
            }
            Change::Image(i) => {
                self.images.insert(uuid_of(&i.uuid, "image")?, i);
            }
            Change::ImageDeleted(u) => {
                self.images.remove(&uuid_of(&u, "image")?);
            }
            Change::ResourceClass(c) => {
                self.classes.insert(c);
            }
            Change::AggregateMetadata(m) => {
                self.aggregate_metadata.insert(m.aggregate, m.metadata);
            }
            Change::Server(s) => {
                self.servers.insert(uuid_of(&s.uuid, "server")?, s);
            }
            Change::ServerDeleted(u) => {
                self.servers.remove(&uuid_of(&u, "server")?);
            }
            Change::DeletedServer(d) => {
                let u = uuid_of(&d.uuid, "deleted server")?;
                if !d.local_host.is_empty() {
                    uuid_of(&d.local_host, "host")?;
                }
                if d.request_id.is_empty() && d.local_host.is_empty() {
                    self.deleted_servers.remove(&u);
                } else if let Some(e) = self.deleted_servers.get_mut(&u) {
                    e.1 = d;
                } else {
                    self.deleted_servers.insert(u, (self.deleted_order, d));
                    self.deleted_order += 1;
                }
            }
            Change::Quota(q) => {
                if q.limits.is_empty() {
                    self.quotas.remove(&q.project);
                } else {
                    self.quotas.insert(q.project.clone(), q);
                }
            }
        }
        Ok(())
    }

    /// Objects held, for the start-up report.
    pub fn summary(&self) -> String {
        let allocations: usize = self
            .consumers
            .values()
            .map(|c| c.allocations.len() + c.moving.len())
            .sum();
        format!(
            "{} providers, {} consumers ({} allocations), {} servers, {} groups, {} flavors, {} images",
            self.providers.len(),
            self.consumers.len(),
            allocations,
            self.servers.len(),
            self.groups.len(),
            self.flavors.len(),
            self.images.len()
        )
    }
}

/// Damage found at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    /// The file.
    pub file: PathBuf,
    /// Byte offset of the first bad byte.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.file.display(),
            self.offset,
            self.what
        )
    }
}

/// What start-up found and did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// The snapshot loaded and its record count.
    pub snapshot: Option<(PathBuf, u64)>,
    /// Log segments replayed.
    pub segments: usize,
    /// Log records replayed.
    pub records: u64,
    /// A torn final record dropped: the file, its offset and the bytes dropped.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Damage skipped under `--recover` (refused otherwise).
    pub damage: Vec<Damage>,
    /// Where damaged files were moved.
    pub moved_to: Option<PathBuf>,
    /// Time taken to read everything.
    pub elapsed: Duration,
}

/// Something that can list every object as records (the engine, the conductor).
pub trait SnapshotSource: Send + Sync {
    /// Calls `out` once per object.
    fn export(&self, out: &mut dyn FnMut(Record));
}

/// The durable store. See the module doc.
pub struct Store {
    dir: PathBuf,
    wal: Arc<Wal>,
    snapshot_after: u64,
    source: Mutex<Option<Arc<dyn SnapshotSource>>>,
    /// Serialises snapshots.
    snapshotting: Mutex<()>,
    /// Holds the directory's `flock` until `close`.
    lock: Mutex<Option<File>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// Why a change is not durable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

struct Files {
    snapshots: Vec<(u64, PathBuf)>,
    segments: Vec<(u64, PathBuf)>,
}

fn list_files(dir: &Path) -> Result<Files, String> {
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.ends_with(".tmp") {
            // A snapshot that a crash interrupted; never complete, never used.
            let _ = std::fs::remove_file(&path);
        } else if let Some(n) = name
            .strip_prefix("snap-")
            .and_then(|r| r.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            snapshots.push((n, path));
        } else if let Some(n) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            segments.push((n, path));
        }
    }
    snapshots.sort();
    segments.sort();
    Ok(Files {
        snapshots,
        segments,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Progress callback: (what, done, total).
pub type Progress<'a> = &'a dyn Fn(&str, u64, u64);

/// Frames read but not yet applied: decoded in parallel (the costly part of a start),
/// applied in order.
struct Pending<'a> {
    frames: Vec<(usize, &'a [u8])>,
}

impl<'a> Pending<'a> {
    const BATCH: usize = 1 << 14;

    fn new() -> Self {
        Self {
            frames: Vec::with_capacity(Self::BATCH),
        }
    }

    /// Decodes and applies what is pending. Returns the records applied and, for the
    /// first record that failed, its offset and why; with `stop_at_error` nothing after
    /// that record is applied.
    fn flush(
        &mut self,
        state: &mut State,
        stop_at_error: bool,
        errors: &mut Vec<(usize, String)>,
    ) -> (u64, bool) {
        use rayon::prelude::*;
        let decoded: Vec<Result<Record, prost::DecodeError>> = self
            .frames
            .par_iter()
            .map(|(_, payload)| Record::decode(*payload))
            .collect();
        let mut applied = 0;
        for ((off, _), rec) in self.frames.drain(..).zip(decoded) {
            match rec.map_err(|e| e.to_string()).and_then(|r| state.apply(r)) {
                Ok(()) => applied += 1,
                Err(e) => {
                    errors.push((off, format!("undecodable record: {e}")));
                    if stop_at_error {
                        return (applied, true);
                    }
                }
            }
        }
        (applied, false)
    }
}

fn load_snapshot(
    path: &Path,
    bytes: &[u8],
    state: &mut State,
    damage: &mut Vec<Damage>,
    progress: Progress,
) -> Result<u64, String> {
    let total = bytes.len() as u64;
    let dmg = |offset: usize, what: String| Damage {
        file: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    let before = damage.len();
    if let Err(e) = frame::parse_header(frame::SNAP_MAGIC, bytes) {
        damage.push(dmg(0, e));
        return Ok(0);
    }
    let mut off = frame::HEADER_LEN;
    let mut count = 0u64;
    let mut last_report = 0;
    let mut pending = Pending::new();
    let mut errors = Vec::new();
    let result = loop {
        match frame::read_item(bytes, off) {
            frame::Item::Frame(payload, next) => {
                pending.frames.push((off, payload));
                if pending.frames.len() >= Pending::BATCH {
                    count += pending.flush(state, false, &mut errors).0;
                }
                off = next;
                if off - last_report > 64 << 20 {
                    last_report = off;
                    progress("snapshot", off as u64, total);
                }
            }
            frame::Item::Trailer(n) => break Some(n),
            frame::Item::End => {
                damage.push(dmg(off, "no trailer: the snapshot is incomplete".into()));
                break None;
            }
            frame::Item::Bad(what) => {
                damage.push(dmg(off, what));
                match frame::next_valid_frame(bytes, off) {
                    Some(n) => off = n,
                    None => break None,
                }
            }
        }
    };
    count += pending.flush(state, false, &mut errors).0;
    damage.extend(errors.into_iter().map(|(o, e)| dmg(o, e)));
    if let Some(n) = result
        && n != count
        && damage.len() == before
    {
        damage.push(dmg(
            off,
            format!("trailer counts {n} records, {count} verified"),
        ));
    }
    Ok(count)
}

/// Reads one segment: applies its records, returns (records, verified length, next LSN).
/// Stops at the first bad item; `skip_damage` then resumes at the next verified frame.
fn load_segment(
    path: &Path,
    bytes: &[u8],
    state: &mut State,
    is_last: bool,
    skip_damage: bool,
    report: &mut RecoveryReport,
) -> Result<(u64, u64), String> {
    let dmg = |offset: usize, what: String| Damage {
        file: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    if let Err(e) = frame::parse_header(frame::WAL_MAGIC, bytes) {
        report.damage.push(dmg(0, e));
        return Ok((0, 0));
    }
    let mut off = frame::HEADER_LEN;
    let mut count = 0u64;
    let mut pending = Pending::new();
    let mut errors = Vec::new();
    // Where reading stopped (the verified length), unless a flush stops earlier.
    let mut end = loop {
        match frame::read_item(bytes, off) {
            frame::Item::Frame(payload, next) => {
                pending.frames.push((off, payload));
                if pending.frames.len() >= Pending::BATCH {
                    let (n, stopped) = pending.flush(state, !skip_damage, &mut errors);
                    count += n;
                    if stopped {
                        break None;
                    }
                }
                off = next;
            }
            frame::Item::End => break Some(off),
            frame::Item::Trailer(_) => {
                report
                    .damage
                    .push(dmg(off, "a snapshot trailer inside a log segment".into()));
                break Some(off);
            }
            frame::Item::Bad(what) => {
                let resume = frame::next_valid_frame(bytes, off);
                if is_last && resume.is_none() {
                    report.torn_tail =
                        Some((path.to_path_buf(), off as u64, (bytes.len() - off) as u64));
                    break Some(off);
                }
                report.damage.push(dmg(
                    off,
                    match resume {
                        Some(r) => format!("{what}; verified records resume at byte {r}"),
                        None => what,
                    },
                ));
                match resume {
                    Some(r) if skip_damage => off = r,
                    _ => break Some(off),
                }
            }
        }
    };
    let (n, stopped) = pending.flush(state, !skip_damage, &mut errors);
    count += n;
    if stopped || end.is_none() {
        // An undecodable record ends the verified part (without --recover).
        end = errors.first().map(|(o, _)| *o);
    }
    report
        .damage
        .extend(errors.into_iter().map(|(o, e)| dmg(o, e)));
    Ok((count, end.unwrap_or(off) as u64))
}

/// Reads a log segment (`snapshot == false`) or a snapshot from memory, as start-up would,
/// without touching any file: for tools and the fuzzer. Damage is reported, never a panic.
pub fn decode_file(bytes: &[u8], snapshot: bool, recover: bool) -> (State, RecoveryReport) {
    let mut state = State::default();
    let mut report = RecoveryReport::default();
    let path = Path::new(if snapshot { "snapshot" } else { "segment" });
    let r = if snapshot {
        load_snapshot(path, bytes, &mut state, &mut report.damage, &|_, _, _| {}).map(|_| ())
    } else {
        load_segment(path, bytes, &mut state, true, recover, &mut report).map(|_| ())
    };
    if let Err(e) = r {
        report.damage.push(Damage {
            file: path.to_path_buf(),
            offset: 0,
            what: e,
        });
    }
    (state, report)
}

impl Store {
    /// Opens (creating if needed) the store in `config.data_dir`: locks it, loads the
    /// newest snapshot and replays the log. Damage other than a torn final record is an
    /// error describing it, unless `recover`.
    pub fn open(
        config: &StoreConfig,
        recover: bool,
        progress: Progress,
    ) -> Result<(Arc<Store>, State, RecoveryReport), String> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                format!(
                    "{} is in use by another berth-engine ({e}); one engine per data directory",
                    dir.display()
                )
            },
        )?;
        let start = Instant::now();
        let files = list_files(dir)?;
        let mut state = State::default();
        let mut report = RecoveryReport::default();
        let mut next_lsn = 1u64;
        let mut damaged_files: Vec<PathBuf> = Vec::new();
        if let Some((base, path)) = files.snapshots.last() {
            let before = report.damage.len();
            let bytes = read(path)?;
            let n = load_snapshot(path, &bytes, &mut state, &mut report.damage, progress)?;
            if report.damage.len() > before {
                damaged_files.push(path.clone());
            }
            report.snapshot = Some((path.clone(), n));
            next_lsn = *base;
        }
        // Segments older than the snapshot were folded into it (a crash can leave them
        // behind, before their deletion).
        let segments: Vec<&(u64, PathBuf)> = files
            .segments
            .iter()
            .filter(|(b, _)| *b >= next_lsn)
            .collect();
        let mut tail: Option<(PathBuf, u64, u64)> = None;
        for (i, (base, path)) in segments.iter().enumerate() {
            if *base != next_lsn {
                report.damage.push(Damage {
                    file: path.clone(),
                    offset: 0,
                    what: format!(
                        "log starts at record {base} but record {next_lsn} was expected: records {next_lsn}..{base} are missing"
                    ),
                });
                damaged_files.push(path.clone());
                if !recover {
                    break;
                }
            }
            let is_last = i + 1 == segments.len();
            let before = report.damage.len();
            let bytes = read(path)?;
            let (n, len) = load_segment(path, &bytes, &mut state, is_last, recover, &mut report)?;
            if report.damage.len() > before {
                damaged_files.push(path.clone());
            }
            report.segments += 1;
            report.records += n;
            next_lsn = next_lsn.max(*base) + n;
            progress("log", (i + 1) as u64, segments.len() as u64);
            if is_last {
                tail = Some((path.clone(), *base, len));
            }
        }
        report.elapsed = start.elapsed();
        if !report.damage.is_empty() && !recover {
            let list: Vec<String> = report.damage.iter().map(|d| format!("  {d}")).collect();
            return Err(format!(
                "the data in {} is damaged (checksums do not verify):\n{}\nverified before the damage: {}.\nNothing was loaded. Restore the directory from a backup, or start with --recover to load every record that verifies (the damaged files are moved to {}/damaged-<time>/ and kept).",
                dir.display(),
                list.join("\n"),
                state.summary(),
                dir.display()
            ));
        }
        if !damaged_files.is_empty() {
            // Keep the evidence, start from a clean log and a fresh snapshot.
            let aside = dir.join(format!(
                "damaged-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            std::fs::create_dir_all(&aside)
                .map_err(|e| format!("cannot create {}: {e}", aside.display()))?;
            let all: Vec<&PathBuf> = files
                .snapshots
                .iter()
                .chain(&files.segments)
                .map(|(_, p)| p)
                .collect();
            for p in all {
                if let Some(name) = p.file_name() {
                    std::fs::rename(p, aside.join(name))
                        .map_err(|e| format!("cannot move {} aside: {e}", p.display()))?;
                }
            }
            report.moved_to = Some(aside);
            tail = None;
        }
        let wal = Wal::start(
            dir,
            next_lsn,
            tail.map(|(p, base, len)| (p, base, len.max(frame::HEADER_LEN as u64))),
        )
        .map_err(|e| format!("cannot open the log in {}: {e}", dir.display()))?;
        let store = Arc::new(Store {
            dir: dir.clone(),
            wal,
            snapshot_after: config.snapshot_after_mb.max(1) << 20,
            source: Mutex::new(None),
            snapshotting: Mutex::new(()),
            lock: Mutex::new(Some(lock)),
        });
        Ok((store, state, report))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Logs `rec`; returns its LSN. Call it while holding the lock under which the change
    /// became visible.
    pub fn append(&self, rec: &Record) -> u64 {
        self.wal.append(&rec.encode_to_vec())
    }

    /// The last LSN handed out: waiting for it covers every change made so far.
    pub fn appended(&self) -> u64 {
        self.wal.appended()
    }

    /// `Err` while the disk refuses writes: check before changing anything.
    pub fn writable(&self) -> Result<(), Unavailable> {
        match self.wal.failure() {
            None => Ok(()),
            Some(why) => Err(Unavailable(why.to_string())),
        }
    }

    /// Waits until record `lsn` is on disk.
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), Unavailable> {
        if self.wal.durable_lsn() >= lsn {
            return Ok(());
        }
        let outcome = match self.wal.wait(lsn) {
            Ok(None) => Ok(()),
            Ok(Some(rx)) => rx
                .await
                .unwrap_or_else(|_| Err(Arc::from("the log writer stopped"))),
            Err(why) => Err(why),
        };
        outcome.map_err(|why| Unavailable(why.to_string()))
    }

    /// Sets what snapshots dump, and starts the thread that takes one whenever the log has
    /// grown by `snapshot_after_mb`.
    pub fn set_source(self: &Arc<Self>, source: Arc<dyn SnapshotSource>) {
        *self.source.lock() = Some(source);
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("berth-snapshot".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let Some(store) = weak.upgrade() else { return };
                    if store.wal.since_rotation() >= store.snapshot_after
                        && let Err(e) = store.snapshot()
                    {
                        tracing::error!("snapshot failed: {e}");
                    }
                }
            });
    }

    /// Takes a snapshot now (see the module doc); returns (records, bytes).
    pub fn snapshot(&self) -> Result<(u64, u64), String> {
        let Some(source) = self.source.lock().clone() else {
            return Err("nothing to snapshot yet".into());
        };
        let _one = self.snapshotting.lock();
        let started = Instant::now();
        let base = self.wal.rotate()?;
        let name = format!("snap-{base:020}.snap");
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        let write = || -> std::io::Result<(u64, u64)> {
            let mut file = File::create(&tmp)?;
            let mut buf = Vec::with_capacity(1 << 20);
            buf.extend_from_slice(&frame::header(frame::SNAP_MAGIC, base));
            let mut count = 0u64;
            let mut bytes = 0u64;
            let mut err: Option<std::io::Error> = None;
            let mut scratch = Vec::new();
            source.export(&mut |rec| {
                scratch.clear();
                if rec.encode(&mut scratch).is_err() {
                    return;
                }
                frame::push_frame(&mut buf, &scratch);
                count += 1;
                if buf.len() >= 1 << 20 && err.is_none() {
                    bytes += buf.len() as u64;
                    if let Err(e) = file.write_all(&buf) {
                        err = Some(e);
                    }
                    buf.clear();
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            frame::push_trailer(&mut buf, count);
            bytes += buf.len() as u64;
            file.write_all(&buf)?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &path)?;
            wal::sync_dir(&self.dir)?;
            Ok((count, bytes))
        };
        let (count, bytes) = write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write snapshot {}: {e}", path.display())
        })?;
        // The snapshot and the log from `base` now hold everything: drop what is older.
        if let Ok(files) = list_files(&self.dir) {
            for (b, p) in files.snapshots.iter().chain(&files.segments) {
                if *b < base {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        tracing::info!(
            records = count,
            mib = format!("{:.1}", bytes as f64 / (1 << 20) as f64),
            ms = started.elapsed().as_millis() as u64,
            "snapshot written: {}",
            path.display()
        );
        Ok((count, bytes))
    }

    /// Flushes the log and stops its writer (graceful shutdown); waits up to 5 s for the
    /// last records to reach the disk.
    pub fn close(&self) {
        *self.source.lock() = None;
        self.wal.stop();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.wal.durable_lsn() < self.wal.appended() && Instant::now() < deadline {
            if self.wal.failure().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Another engine may use the directory from now on.
        self.lock.lock().take();
    }
}
