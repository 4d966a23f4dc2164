//! Servers on disk: each server's lock is a [`ServerCell`] whose guard logs the server's
//! new state when it is released after a change (so every change is logged, in order,
//! while the lock is still held), and the conductor's dump and rebuild for snapshots and
//! start-up. What a deleted server leaves behind — its delete's request id, a local delete
//! its host has yet to carry out — is logged as a [`DeletedServerRec`]. The answers by
//! request id are not logged: start-up rebuilds them from the servers' histories.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use uuid::Uuid;

use super::idempotency::RequestLog;
use super::server::{ActionRecord, MoveInfo, Server, ServerRecord, StoredReply, now_ms};
use super::{Conductor, REMEMBERED_DELETES, Rec, TaskState, VmState};
use crate::HostChoice;
use crate::model::{Flavor, ImageSpec};
use crate::state::persist::{flavor_rec, flavor_spec, image_rec};
use crate::store::record::{ActionRec, Change, DeletedServerRec, HostRec, Record, ServerRec};
use crate::store::{State, Store};

/// A server's record behind its mutex, with the store its changes go to.
#[derive(Debug)]
pub(crate) struct ServerCell {
    inner: Mutex<ServerRecord>,
    store: Option<Arc<Store>>,
}

/// The guard of a [`ServerCell`]: a mutable borrow marks the record changed, and a changed
/// record is logged when the guard drops (before the mutex is released).
pub(crate) struct RecGuard<'a> {
    guard: MutexGuard<'a, ServerRecord>,
    store: Option<&'a Arc<Store>>,
    changed: bool,
}

impl ServerCell {
    pub fn new(record: ServerRecord, store: Option<Arc<Store>>) -> Self {
        Self {
            inner: Mutex::new(record),
            store,
        }
    }

    pub fn lock(&self) -> RecGuard<'_> {
        RecGuard {
            guard: self.inner.lock(),
            store: self.store.as_ref(),
            changed: false,
        }
    }
}

impl Deref for RecGuard<'_> {
    type Target = ServerRecord;
    fn deref(&self) -> &ServerRecord {
        &self.guard
    }
}

impl DerefMut for RecGuard<'_> {
    fn deref_mut(&mut self) -> &mut ServerRecord {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for RecGuard<'_> {
    fn drop(&mut self) {
        if !self.changed {
            return;
        }
        if let Some(store) = self.store {
            let r = &*self.guard;
            let change = if r.deleted {
                Change::ServerDeleted(r.server.uuid.as_bytes().to_vec())
            } else {
                Change::Server(server_rec(r))
            };
            store.append(&Record {
                change: Some(change),
            });
        }
    }
}

fn host_rec(h: &HostChoice) -> HostRec {
    HostRec {
        uuid: h.uuid.as_bytes().to_vec(),
        name: h.name.clone(),
    }
}

fn host_of(h: &HostRec) -> Result<HostChoice, String> {
    Ok(HostChoice {
        uuid: Uuid::from_slice(&h.uuid).map_err(|_| "a host uuid is not 16 bytes")?,
        name: h.name.clone(),
    })
}

/// A server record as a log record.
pub(crate) fn server_rec(r: &ServerRecord) -> ServerRec {
    let s = &r.server;
    ServerRec {
        uuid: s.uuid.as_bytes().to_vec(),
        seq: s.seq,
        name: s.name.clone(),
        project_id: s.project_id.clone(),
        user_id: s.user_id.clone(),
        flavor: Some(flavor_rec(&s.flavor)),
        image: Some(image_rec(&s.image)),
        vm_state: s.vm_state as i32,
        task_state: s.task_state as i32,
        power_state: s.power_state.clone(),
        host: s.host.as_ref().map(host_rec),
        availability_zone: s.availability_zone.clone(),
        group: s.group.map_or_else(Vec::new, |g| g.as_bytes().to_vec()),
        metadata: s.metadata.clone(),
        locked: s.locked,
        locked_reason: s.locked_reason.clone(),
        fault: s.fault.clone(),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        resize_source: s.resize.as_ref().map(|m| host_rec(&m.source)),
        resize_old_flavor: s.resize.as_ref().map(|m| flavor_rec(&m.old_flavor)),
        resize_was_stopped: s.resize.as_ref().is_some_and(|m| m.was_stopped),
        actions: s
            .actions
            .iter()
            .map(|a| ActionRec {
                action: a.action.to_string(),
                request_id: a.request_id.clone(),
                started_at_ms: a.started_at_ms,
                finished_at_ms: a.finished_at_ms,
                ok: a.ok,
                message: a.message.clone(),
            })
            .collect(),
        requested_az: r.requested_az.clone(),
    }
}

/// History entries name their action with a `&'static str`; these are the names the
/// conductor uses (anything else, from a newer engine, reads as "unknown").
const ACTION_NAMES: &[&str] = &[
    "create",
    "delete",
    "stop",
    "start",
    "reboot",
    "pause",
    "unpause",
    "suspend",
    "resume",
    "snapshot",
    "rebuild",
    "shelve",
    "shelve_offload",
    "unshelve",
    "resize",
    "confirm_resize",
    "revert_resize",
    "migrate",
    "live_migrate",
    "evacuate",
    "lock",
    "unlock",
    "reconcile",
    "restart",
];

fn action_name(name: &str) -> &'static str {
    ACTION_NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("unknown")
}

fn flavor_of(f: &crate::store::record::FlavorRec) -> Result<Arc<Flavor>, String> {
    flavor_spec(f)
        .into_flavor()
        .map(Arc::new)
        .map_err(|e| format!("flavor {}: {e}", f.id))
}

/// A server record back from its log record. A task that was running when the engine
/// stopped cannot finish: it is cleared and noted, and a server that was still building
/// goes to ERROR (its node reports what really exists).
fn record_of(uuid: Uuid, s: &ServerRec) -> Result<ServerRecord, String> {
    let flavor = flavor_of(s.flavor.as_ref().ok_or("no flavor")?)?;
    let image = s.image.as_ref().ok_or("no image")?;
    let image = Arc::new(
        ImageSpec {
            id: Some(Uuid::from_slice(&image.uuid).map_err(|_| "image uuid is not 16 bytes")?),
            name: image.name.clone(),
            properties: image.properties.clone(),
        }
        .into_image()
        .map_err(|e| format!("image: {e}"))?,
    );
    let resize = match (&s.resize_source, &s.resize_old_flavor) {
        (Some(src), Some(f)) => Some(MoveInfo {
            source: host_of(src)?,
            old_flavor: flavor_of(f)?,
            was_stopped: s.resize_was_stopped,
        }),
        _ => None,
    };
    let vm_state = VmState::try_from(s.vm_state).map_err(|_| format!("vm_state {}", s.vm_state))?;
    let task_state =
        TaskState::try_from(s.task_state).map_err(|_| format!("task_state {}", s.task_state))?;
    let server = Server {
        uuid,
        seq: s.seq,
        name: s.name.clone(),
        project_id: s.project_id.clone(),
        user_id: s.user_id.clone(),
        flavor,
        image,
        vm_state,
        task_state,
        power_state: s.power_state.clone(),
        host: s.host.as_ref().map(host_of).transpose()?,
        availability_zone: s.availability_zone.clone(),
        group: if s.group.is_empty() {
            None
        } else {
            Some(Uuid::from_slice(&s.group).map_err(|_| "group uuid is not 16 bytes")?)
        },
        metadata: s.metadata.clone(),
        locked: s.locked,
        locked_reason: s.locked_reason.clone(),
        fault: s.fault.clone(),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        resize,
        actions: s
            .actions
            .iter()
            .map(|a| ActionRecord {
                action: action_name(&a.action),
                request_id: a.request_id.clone(),
                started_at_ms: a.started_at_ms,
                finished_at_ms: a.finished_at_ms,
                ok: a.ok,
                message: a.message.clone(),
            })
            .collect(),
    };
    let mut r = ServerRecord {
        server,
        requests: Default::default(),
        requested_az: s.requested_az.clone(),
        sync_votes: 0,
        deleted: false,
    };
    if r.server.task_state != TaskState::None {
        let task = super::task_state_name(r.server.task_state);
        let now = now_ms();
        for a in r
            .server
            .actions
            .iter_mut()
            .filter(|a| a.finished_at_ms == 0)
        {
            a.finished_at_ms = now;
            a.ok = false;
            a.message = "interrupted: the engine restarted while it ran".into();
        }
        r.server.task_state = TaskState::None;
        if r.server.vm_state == VmState::Building {
            r.server.vm_state = VmState::Error;
        }
        r.server.fault = format!(
            "task {task} was interrupted by an engine restart; the server's host reports its real state"
        );
        r.note("restart", false, r.server.fault.clone());
    }
    Ok(r)
}

/// The image a snapshot's history entry names: its message ends `image <name> (<uuid>)`
/// (see `Conductor::snapshot`).
fn snapshot_image(message: &str) -> Option<Uuid> {
    let (_, id) = message.strip_suffix(')')?.rsplit_once('(')?;
    Uuid::parse_str(id).ok()
}

/// Rebuilds a restored server's request log (its action request ids) from its history, as
/// the actions had left it — the newest `cap` ids, the last entry of each id deciding:
///
/// - an action that succeeded is answered: a repeat gets the server as it is now (its
///   history as it was when the action ended, and a snapshot's image id), not run again;
/// - one that failed, did not get an answer from its node, or was interrupted by the
///   restart is *unresolved*: a repeat is evaluated again, as after a node that never
///   answered — acting if the server still accepts it, or answered as done if the server
///   is found idle in the state the action leads to (`Conductor::begin_with`). Without a
///   restart a failure the node reported is answered again with that failure; after a
///   restart the retry tries again (the first attempt changed nothing the retry relies on).
///
/// `create` entries belong to the project's CreateServer log (see `Conductor::restore`).
fn rebuild_requests(r: &mut ServerRecord, cap: usize) {
    if cap == 0 {
        return;
    }
    // Newest first, one entry per id, until `cap` ids.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut picks: Vec<(usize, &ActionRecord)> = Vec::new();
    for (i, a) in r.server.actions.iter().enumerate().rev() {
        if a.request_id.is_empty() || a.action == "create" || !seen.insert(&a.request_id) {
            continue;
        }
        picks.push((i, a));
        if picks.len() == cap {
            break;
        }
    }
    if picks.is_empty() {
        return;
    }
    let now = Server {
        actions: Vec::new(),
        ..r.server.clone()
    };
    for (i, a) in picks.into_iter().rev() {
        let done = (a.ok && a.finished_at_ms != 0).then(|| StoredReply {
            server: now.clone(),
            actions_len: i + 1,
            image_id: if a.action == "snapshot" {
                snapshot_image(&a.message)
            } else {
                None
            },
        });
        r.requests.remember(&a.request_id, done, cap);
    }
}

impl Conductor {
    /// A cell for a new server record, logging to the engine's store.
    pub(crate) fn cell(&self, record: ServerRecord) -> Rec {
        Arc::new(ServerCell::new(record, self.engine.store().cloned()))
    }

    /// Every server as records (a snapshot's dump).
    pub fn export(&self, out: &mut dyn FnMut(Record)) {
        let recs: Vec<Rec> = self.servers.iter().map(|r| r.value().clone()).collect();
        for rec in recs {
            let r = rec.lock();
            if r.deleted {
                continue;
            }
            let s = server_rec(&r);
            drop(r);
            out(Record {
                change: Some(Change::Server(s)),
            });
        }
        let deleted = self.deleted.lock();
        let mut seen: HashSet<Uuid> = HashSet::with_capacity(deleted.len());
        for (uuid, request_id) in deleted.iter() {
            seen.insert(*uuid);
            out(self.deleted_record(*uuid, request_id));
        }
        for e in self.local_deleted.iter() {
            if !seen.contains(e.key()) {
                out(self.deleted_record(*e.key(), ""));
            }
        }
    }

    /// What the conductor remembers of deleted server `uuid`: `request_id` and whether its
    /// host still has to delete its domain.
    fn deleted_record(&self, uuid: Uuid, request_id: &str) -> Record {
        let local_host = self
            .local_deleted
            .get(&uuid)
            .map_or_else(Vec::new, |h| h.as_bytes().to_vec());
        Record {
            change: Some(Change::DeletedServer(DeletedServerRec {
                uuid: uuid.as_bytes().to_vec(),
                request_id: request_id.to_string(),
                local_host,
            })),
        }
    }

    /// Logs what is now remembered of deleted server `uuid` (its delete's request id in
    /// `deleted`, its pending local delete). Call with the `deleted` lock held, after
    /// changing either, so the server's records are logged in the order of its changes.
    pub(super) fn log_deleted(&self, deleted: &VecDeque<(Uuid, String)>, uuid: Uuid) {
        let Some(store) = self.engine.store() else {
            return;
        };
        let request_id = deleted
            .iter()
            .rev()
            .find(|(u, _)| *u == uuid)
            .map_or("", |(_, r)| r.as_str());
        store.append(&self.deleted_record(uuid, request_id));
    }

    /// Rebuilds the servers from what the store read (before any call is served).
    /// Returns the servers restored and those that could not be, with why.
    ///
    /// The answers by request id are rebuilt too, so a client retrying a call whose answer
    /// the restart lost gets it answered rather than done again:
    ///
    /// - CreateServer, per (project, request id): from the servers whose `create` history
    ///   entry has that id, in creation order — the newest `remembered_request_ids` creates
    ///   of each project. A repeat gets those servers as they are now (a create the restart
    ///   interrupted: its servers, in ERROR) and creates nothing. The servers of a create
    ///   that were deleted since are left out of its answer; a create whose servers were
    ///   *all* deleted since is forgotten, and a repeat creates again. (Without a restart
    ///   the repeat would get the deleted servers as they were; those records are gone, and
    ///   a create whose servers a client has deleted is over for it.)
    /// - Server actions, per (server, request id): from each server's history (see
    ///   `rebuild_requests`).
    /// - DeleteServer: the deletes remembered by request id (the last
    ///   [`REMEMBERED_DELETES`]) answer a repeat as the first was answered, and servers
    ///   deleted while their host's node was away are still deleted from that host when it
    ///   registers again (see [`DeletedServerRec`]).
    pub fn restore(&self, state: &State) -> (usize, Vec<String>) {
        let mut skipped = Vec::new();
        let mut max_seq = 0;
        let mut by_seq: BTreeMap<u64, Uuid> = BTreeMap::new();
        let cap = self.cap();
        // (project, create request id) → (seq, uuid) of its servers.
        let mut creates: HashMap<(String, String), Vec<(u64, Uuid)>> = HashMap::new();
        for (uuid, s) in &state.servers {
            match record_of(*uuid, s) {
                Ok(mut r) => {
                    rebuild_requests(&mut r, cap);
                    if let Some(a) = r.server.actions.iter().find(|a| a.action == "create")
                        && !a.request_id.is_empty()
                        && cap > 0
                    {
                        creates
                            .entry((r.server.project_id.clone(), a.request_id.clone()))
                            .or_default()
                            .push((r.server.seq, *uuid));
                    }
                    max_seq = max_seq.max(r.server.seq + 1);
                    by_seq.insert(r.server.seq, *uuid);
                    let host = r.server.host.as_ref().map(|h| h.uuid);
                    let interrupted = r
                        .server
                        .actions
                        .last()
                        .is_some_and(|a| a.action == "restart");
                    let rec = self.cell(r);
                    if interrupted {
                        // Log the cleared task, so the note is not repeated on a later start.
                        rec.lock().sync_votes = 0;
                    }
                    if let Some(h) = host {
                        self.by_host
                            .entry(h)
                            .or_default()
                            .insert(*uuid, rec.clone());
                    }
                    self.servers.insert(*uuid, rec);
                }
                Err(e) => skipped.push(format!("server {uuid}: {e}")),
            }
        }
        self.seq
            .fetch_max(max_seq, std::sync::atomic::Ordering::Relaxed);
        self.restore_creates(creates, cap);
        self.restore_deleted(state, &mut skipped);
        (by_seq.len(), skipped)
    }

    /// The CreateServer answers (see [`restore`](Self::restore)): per project, the newest
    /// `cap` creates, each answered with its surviving servers in creation order.
    fn restore_creates(&self, creates: HashMap<(String, String), Vec<(u64, Uuid)>>, cap: usize) {
        type Group = (u64, String, Vec<(u64, Uuid)>);
        let mut by_project: HashMap<String, Vec<Group>> = HashMap::new();
        for ((project, request_id), mut members) in creates {
            members.sort_unstable();
            by_project
                .entry(project)
                .or_default()
                .push((members[0].0, request_id, members));
        }
        for (project, mut groups) in by_project {
            groups.sort_unstable_by_key(|g| g.0);
            let old = groups.len().saturating_sub(cap);
            let mut log = RequestLog::default();
            for (_, request_id, members) in groups.into_iter().skip(old) {
                let servers: Vec<Server> = members
                    .iter()
                    .filter_map(|(_, u)| self.servers.get(u).map(|e| e.value().clone()))
                    .map(|rec| rec.lock().server.clone())
                    .collect();
                log.remember(&request_id, Some(servers), cap);
            }
            self.creates.insert(project, log);
        }
    }

    /// The deletes remembered by request id and the pending local deletes.
    fn restore_deleted(&self, state: &State, skipped: &mut Vec<String>) {
        let mut gone: Vec<(u64, Uuid, &DeletedServerRec)> = state
            .deleted_servers
            .iter()
            .map(|(u, (order, d))| (*order, *u, d))
            .collect();
        gone.sort_unstable_by_key(|g| g.0);
        let mut deleted = self.deleted.lock();
        for (_, uuid, d) in gone {
            if self.servers.contains_key(&uuid) {
                // A delete that failed on its second host after a local delete on the first
                // (the server stays, in ERROR): a repeated delete must delete it, and its
                // registration reconciles the first host as any other.
                continue;
            }
            if !d.local_host.is_empty() {
                match Uuid::from_slice(&d.local_host) {
                    Ok(h) => {
                        self.local_deleted.insert(uuid, h);
                    }
                    Err(_) => skipped.push(format!(
                        "deleted server {uuid}: its host uuid is not 16 bytes"
                    )),
                }
            }
            if !d.request_id.is_empty() {
                deleted.push_back((uuid, d.request_id.clone()));
                if deleted.len() > REMEMBERED_DELETES {
                    deleted.pop_front();
                }
            }
        }
    }
}
