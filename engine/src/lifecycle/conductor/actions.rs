//! The actions that stay on the server's host — power, snapshot, rebuild, shelve,
//! shelve-offload, unshelve, lock — and delete. Moves are in `moves`.

use std::sync::Arc;

use berth_proto::v1 as pb;
use uuid::Uuid;

use super::idempotency::{self, Lookup};
use super::server::{ServerRecord, StoredReply, instance_spec};
use super::{
    Action, ActionReply, CallIds, Conductor, ConductorError, REMEMBERED_DELETES, Result, TaskState,
    VmState,
};
use crate::error::EngineError;
use crate::model::{ImageSpec, RequestSpec, validate_name};

use TaskState as T;
use VmState as V;

/// Every state but UNSPECIFIED: what delete, lock and unlock accept.
pub(super) const ANY_STATE: &[VmState] = &[
    V::Building,
    V::Active,
    V::Stopped,
    V::Paused,
    V::Suspended,
    V::Resized,
    V::Shelved,
    V::ShelvedOffloaded,
    V::Error,
];

/// A power action: one node action, one vm_state change.
struct Power {
    action: &'static str,
    task: TaskState,
    accepts: &'static [VmState],
    kind: pb::ActionKind,
    hard: bool,
    to: VmState,
}

const STOP: Power = Power {
    action: "stop",
    task: T::PoweringOff,
    accepts: &[V::Active, V::Error],
    kind: pb::ActionKind::Stop,
    hard: false,
    to: V::Stopped,
};
const START: Power = Power {
    action: "start",
    task: T::PoweringOn,
    accepts: &[V::Stopped],
    kind: pb::ActionKind::Start,
    hard: false,
    to: V::Active,
};
const SOFT_REBOOT: Power = Power {
    action: "reboot",
    task: T::Rebooting,
    accepts: &[V::Active],
    kind: pb::ActionKind::Reboot,
    hard: false,
    to: V::Active,
};
const HARD_REBOOT: Power = Power {
    action: "reboot",
    task: T::Rebooting,
    accepts: &[V::Active, V::Stopped, V::Paused, V::Suspended, V::Error],
    kind: pb::ActionKind::Reboot,
    hard: true,
    to: V::Active,
};
const PAUSE: Power = Power {
    action: "pause",
    task: T::Pausing,
    accepts: &[V::Active],
    kind: pb::ActionKind::Pause,
    hard: false,
    to: V::Paused,
};
const UNPAUSE: Power = Power {
    action: "unpause",
    task: T::Unpausing,
    accepts: &[V::Paused],
    kind: pb::ActionKind::Unpause,
    hard: false,
    to: V::Active,
};
const SUSPEND: Power = Power {
    action: "suspend",
    task: T::Suspending,
    accepts: &[V::Active, V::Paused],
    kind: pb::ActionKind::Suspend,
    hard: false,
    to: V::Suspended,
};
const RESUME: Power = Power {
    action: "resume",
    task: T::Resuming,
    accepts: &[V::Suspended],
    kind: pb::ActionKind::Resume,
    hard: false,
    to: V::Active,
};

/// The spec of the server's domain as it is.
pub(super) fn spec_of(r: &ServerRecord) -> pb::InstanceSpec {
    let s = &r.server;
    instance_spec(&s.uuid, &s.flavor, &s.image, &s.metadata)
}

/// How unshelve brings the server back.
enum Unshelve {
    /// SHELVED: its domain is still on its host.
    Start(crate::HostChoice),
    /// SHELVED_OFFLOADED: schedule again.
    Schedule(Box<RequestSpec>),
}

impl Conductor {
    pub(super) async fn run_action(
        self: Arc<Self>,
        uuid: Uuid,
        action: Action,
        ids: CallIds,
    ) -> Result<ActionReply> {
        match action {
            Action::Stop => self.power(uuid, &ids, &STOP).await,
            Action::Start => self.power(uuid, &ids, &START).await,
            Action::Reboot { hard: false } => self.power(uuid, &ids, &SOFT_REBOOT).await,
            Action::Reboot { hard: true } => self.power(uuid, &ids, &HARD_REBOOT).await,
            Action::Pause => self.power(uuid, &ids, &PAUSE).await,
            Action::Unpause => self.power(uuid, &ids, &UNPAUSE).await,
            Action::Suspend => self.power(uuid, &ids, &SUSPEND).await,
            Action::Resume => self.power(uuid, &ids, &RESUME).await,
            Action::Snapshot { image_name } => self.snapshot(uuid, &ids, image_name).await,
            Action::Rebuild { image } => self.rebuild(uuid, &ids, image).await,
            Action::Shelve => self.shelve(uuid, &ids).await,
            Action::ShelveOffload => self.shelve_offload(uuid, &ids).await,
            Action::Unshelve => self.unshelve(uuid, &ids).await,
            Action::Resize { flavor } => self.resize(uuid, &ids, &flavor).await,
            Action::Migrate { host } => self.migrate(uuid, &ids, host.as_deref()).await,
            Action::ConfirmResize => self.confirm_resize(uuid, &ids).await,
            Action::RevertResize => self.revert_resize(uuid, &ids).await,
            Action::LiveMigrate { host } => self.live_migrate(uuid, &ids, host.as_deref()).await,
            Action::Evacuate { host } => self.evacuate(uuid, &ids, host.as_deref()).await,
            Action::Lock { reason } => self.set_lock(uuid, &ids, Some(reason)).await,
            Action::Unlock => self.set_lock(uuid, &ids, None).await,
        }
    }

    async fn power(&self, uuid: Uuid, ids: &CallIds, p: &Power) -> Result<ActionReply> {
        // Where the vm_state alone proves the action done (not a reboot, which stays ACTIVE),
        // a retry of an unresolved request can find it done.
        let done_in = (!p.accepts.contains(&p.to)).then_some(p.to);
        let (b, (host, spec)) = go!(self
            .begin_with(uuid, ids, p.action, p.task, p.accepts, done_in, |r| Ok((
                self.connected_host(&r.server, p.action)?,
                spec_of(r)
            )))
            .await);
        let out = self
            .node_with(&host, p.kind, spec, p.hard, String::new(), ids)
            .await;
        Ok(match out {
            Err(f) if !f.answered() => return Err(self.unresolved(&b, f)),
            Ok(o) => {
                let how = if p.kind == pb::ActionKind::Reboot {
                    if p.hard { "hard reboot" } else { "soft reboot" }
                } else {
                    p.action
                };
                self.finish(&b, true, format!("{how} on {}", host.name), None, |r| {
                    r.server.vm_state = p.to;
                    r.server.power_state = o.power_state;
                })
            }
            Err(f) => self.finish(&b, false, f.message, None, |_| {}),
        })
    }

    async fn snapshot(&self, uuid: Uuid, ids: &CallIds, image_name: String) -> Result<ActionReply> {
        let n = image_name.chars().count();
        if n == 0 || n > super::create::MAX_TEXT_CHARS {
            return Err(ConductorError::invalid(
                "image_name",
                format!(
                    "is {n} characters long; it must be 1 to {}",
                    super::create::MAX_TEXT_CHARS
                ),
            ));
        }
        validate_name("image_name", &image_name)?;
        // The name is checked after the request id: a repeat of a snapshot that created
        // the image gets the first answer, not ALREADY_EXISTS.
        let (b, (host, spec, source)) = go!(self
            .begin(
                uuid,
                ids,
                "snapshot",
                T::ImageSnapshot,
                &[V::Active, V::Stopped, V::Paused, V::Suspended],
                |r| {
                    if self.engine.get_image(&image_name).is_ok() {
                        return Err(EngineError::exists("image named", &image_name).into());
                    }
                    Ok((
                        self.connected_host(&r.server, "snapshot")?,
                        spec_of(r),
                        r.server.image.clone(),
                    ))
                }
            )
            .await);
        let snap = self.node_with(
            &host,
            pb::ActionKind::Snapshot,
            spec,
            false,
            image_name.clone(),
            ids,
        );
        let o = match self.with_io_op(&host, snap).await {
            Ok(o) => o,
            Err(f) => return Ok(self.finish(&b, false, f.message, None, |_| {})),
        };
        let mut properties = source.properties.clone();
        properties.insert("base_image".into(), source.id.to_string());
        properties.insert("instance_uuid".into(), uuid.to_string());
        let created = self.engine.create_image(ImageSpec {
            id: None,
            name: image_name.clone(),
            properties,
        });
        Ok(match created {
            Ok(img) => self.finish(
                &b,
                true,
                // Ends with `(<image id>)`, which a restart reads back for the answer.
                format!(
                    "snapshot {} taken on {}; image {} ({})",
                    o.snapshot_id, host.name, img.name, img.id
                ),
                Some(img.id),
                |r| {
                    if !o.power_state.is_empty() {
                        r.server.power_state = o.power_state;
                    }
                },
            ),
            Err(e) => self.finish(
                &b,
                false,
                format!(
                    "snapshot {} taken on {} but its image record could not be created: {e}",
                    o.snapshot_id, host.name
                ),
                None,
                |_| {},
            ),
        })
    }

    async fn rebuild(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        image: Option<String>,
    ) -> Result<ActionReply> {
        let new_image = match image.as_deref().filter(|i| !i.is_empty()) {
            Some(i) => Some(self.engine.get_image(i)?),
            None => None,
        };
        let (b, (host, image)) = go!(self
            .begin(
                uuid,
                ids,
                "rebuild",
                T::Rebuilding,
                &[V::Active, V::Stopped, V::Error],
                |r| Ok((
                    self.connected_host(&r.server, "rebuild")?,
                    new_image.unwrap_or_else(|| r.server.image.clone())
                ))
            )
            .await);
        let spec = {
            let r = b.rec.lock();
            instance_spec(&uuid, &r.server.flavor, &image, &r.server.metadata)
        };
        let (how, out) = self
            .with_io_op(&host, async {
                let out = self
                    .node(&host, pb::ActionKind::Rebuild, spec.clone(), ids)
                    .await;
                match out {
                    // The domain is gone (a server in ERROR after reconciliation): build it
                    // again.
                    Err(f) if f.code == "NOT_FOUND" => (
                        "domain was missing, spawned it again",
                        self.node(&host, pb::ActionKind::Spawn, spec, ids).await,
                    ),
                    out => ("rebuilt", out),
                }
            })
            .await;
        Ok(match out {
            Ok(o) => self.finish(
                &b,
                true,
                format!("{how} on {} from image {}", host.name, image.name),
                None,
                |r| {
                    r.server.image = image;
                    r.server.vm_state = if o.power_state == "SHUTOFF" {
                        V::Stopped
                    } else {
                        V::Active
                    };
                    r.server.power_state = o.power_state;
                },
            ),
            Err(f) => self.finish(&b, false, f.message, None, |r| {
                r.server.vm_state = V::Error;
            }),
        })
    }

    async fn shelve(&self, uuid: Uuid, ids: &CallIds) -> Result<ActionReply> {
        let (b, (host, spec, from)) = go!(self
            .begin(
                uuid,
                ids,
                "shelve",
                T::Shelving,
                &[V::Active, V::Stopped, V::Paused, V::Suspended],
                |r| Ok((
                    self.connected_host(&r.server, "shelve")?,
                    spec_of(r),
                    r.server.vm_state
                ))
            )
            .await);
        // A suspended domain cannot be stopped (its saved memory would be lost): resume it.
        if from == V::Suspended
            && let Err(f) = self
                .node(&host, pb::ActionKind::Resume, spec.clone(), ids)
                .await
        {
            return Ok(self.finish(&b, false, f.message, None, |_| {}));
        }
        let stopped = match self
            .node(&host, pb::ActionKind::Stop, spec.clone(), ids)
            .await
        {
            Ok(o) => o.power_state,
            Err(f) => {
                return Ok(self.finish(&b, false, f.message, None, |r| {
                    if from == V::Suspended {
                        r.server.vm_state = V::Active;
                        r.server.power_state = "RUNNING".into();
                    }
                }));
            }
        };
        // Unique per shelve of this server: the history index of this action.
        let name = format!("shelved-{uuid}-{}", b.hist);
        let snap = self.node_with(
            &host,
            pb::ActionKind::Snapshot,
            spec,
            false,
            name.clone(),
            ids,
        );
        Ok(match self.with_io_op(&host, snap).await {
            Ok(o) => self.finish(
                &b,
                true,
                format!(
                    "stopped on {} and snapshotted as {name} (snapshot {})",
                    host.name, o.snapshot_id
                ),
                None,
                |r| {
                    r.server.vm_state = V::Shelved;
                    r.server.power_state = stopped;
                },
            ),
            Err(f) => self.finish(
                &b,
                false,
                format!("stopped, but {}", f.message),
                None,
                |r| {
                    r.server.vm_state = V::Stopped;
                    r.server.power_state = stopped;
                },
            ),
        })
    }

    async fn shelve_offload(&self, uuid: Uuid, ids: &CallIds) -> Result<ActionReply> {
        let (b, (host, spec)) = go!(self
            .begin(
                uuid,
                ids,
                "shelve_offload",
                T::ShelvingOffloading,
                &[V::Shelved],
                |r| Ok((
                    self.connected_host(&r.server, "shelve_offload")?,
                    spec_of(r)
                ))
            )
            .await);
        match self.node(&host, pb::ActionKind::Delete, spec, ids).await {
            Ok(_) => {}
            // A retry deletes again, which is a no-op for a domain already gone.
            Err(f) if !f.answered() => return Err(self.unresolved(&b, f)),
            Err(f) => return Ok(self.finish(&b, false, f.message, None, |_| {})),
        }
        // Releasing also drops the server-group membership (the engine forgets a consumer
        // without allocations); unshelve schedules it with its group again.
        let _ = self.engine.release(&uuid);
        Ok(self.finish(
            &b,
            true,
            format!(
                "domain deleted on {}; resources and server-group membership released",
                host.name
            ),
            None,
            |r| {
                self.set_host(&b.rec, r, None);
                r.server.vm_state = V::ShelvedOffloaded;
                r.server.power_state.clear();
            },
        ))
    }

    async fn unshelve(&self, uuid: Uuid, ids: &CallIds) -> Result<ActionReply> {
        let (b, (how, spec)) = go!(self
            .begin(
                uuid,
                ids,
                "unshelve",
                T::Unshelving,
                &[V::Shelved, V::ShelvedOffloaded],
                |r| {
                    let s = &r.server;
                    let how = if s.vm_state == V::Shelved {
                        Unshelve::Start(self.connected_host(s, "unshelve")?)
                    } else {
                        Unshelve::Schedule(Box::new(RequestSpec {
                            flavor: Some(s.flavor.id.clone()),
                            image: Some(s.image.id.to_string()),
                            group: s.group.map(|g| g.to_string()),
                            availability_zone: r.requested_az.clone(),
                            num_instances: 1,
                            instance_uuids: vec![uuid],
                            project_id: s.project_id.clone(),
                            user_id: s.user_id.clone(),
                            ..RequestSpec::default()
                        }))
                    };
                    Ok((how, spec_of(r)))
                }
            )
            .await);
        let request = match how {
            Unshelve::Start(host) => {
                return match self.node(&host, pb::ActionKind::Start, spec, ids).await {
                    Ok(o) => {
                        Ok(
                            self.finish(&b, true, format!("started on {}", host.name), None, |r| {
                                r.server.vm_state = V::Active;
                                r.server.power_state = o.power_state;
                            }),
                        )
                    }
                    // Starting again is a no-op for a running domain.
                    Err(f) if !f.answered() => Err(self.unresolved(&b, f)),
                    Err(f) => Ok(self.finish(&b, false, f.message, None, |_| {})),
                };
            }
            Unshelve::Schedule(request) => request,
        };
        let host = match self.engine.select_destinations(&request) {
            Ok(mut sel) if !sel.is_empty() => sel.swap_remove(0).host,
            Ok(_) => {
                return Err(self.abort(
                    &b,
                    ConductorError::Internal("the scheduler returned no host".into()),
                ));
            }
            Err(e) => return Err(self.abort(&b, e.into())),
        };
        let zone = self.zone_of(&host.uuid);
        {
            let mut r = b.rec.lock();
            self.set_host(&b.rec, &mut r, Some(host.clone()));
            r.server.availability_zone = zone;
        }
        Ok(match self.build_on(&host, uuid, spec, ids).await {
            Ok(o) => self.finish(
                &b,
                true,
                format!("scheduled to {} and spawned", host.name),
                None,
                |r| {
                    r.server.vm_state = V::Active;
                    r.server.power_state = o.power_state;
                },
            ),
            Err(f) => self.finish(&b, false, f.message, None, |r| {
                self.set_host(&b.rec, r, None);
                r.server.vm_state = V::ShelvedOffloaded;
                r.server.power_state.clear();
            }),
        })
    }

    /// Lock and unlock: a flag, valid in any state and during a task (nothing runs).
    async fn set_lock(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        lock: Option<String>,
    ) -> Result<ActionReply> {
        ids.validate()?;
        let action = if lock.is_some() { "lock" } else { "unlock" };
        let rec = self.record(&uuid)?;
        let pending = {
            let mut r = rec.lock();
            match r.requests.lookup(&ids.request_id) {
                Lookup::Done(d) => return Ok(r.replay(&d)),
                Lookup::Pending(rx) => rx,
                Lookup::New => {
                    let hist = r.start_action(action, &ids.request_id);
                    let message = match lock {
                        Some(reason) => {
                            let m = if reason.is_empty() {
                                "locked".to_string()
                            } else {
                                format!("locked: {reason}")
                            };
                            r.server.locked = true;
                            r.server.locked_reason = reason;
                            m
                        }
                        None => {
                            r.server.locked = false;
                            r.server.locked_reason.clear();
                            "unlocked".to_string()
                        }
                    };
                    r.end_action(hist, true, message);
                    let reply = ActionReply {
                        server: r.server.clone(),
                        image_id: None,
                    };
                    let stored = StoredReply {
                        server: super::Server {
                            actions: Vec::new(),
                            ..reply.server.clone()
                        },
                        actions_len: reply.server.actions.len(),
                        image_id: None,
                    };
                    let cap = self.cap();
                    r.requests.start(&ids.request_id, cap);
                    r.requests
                        .finish(&ids.request_id, Some(stored), Ok(reply.clone()), cap);
                    super::count(action, "ok");
                    return Ok(reply);
                }
            }
        };
        idempotency::wait(pending).await
    }

    pub(super) async fn delete_server(self: Arc<Self>, uuid: Uuid, ids: CallIds) -> Result<()> {
        ids.validate()?;
        if !ids.request_id.is_empty()
            && self
                .deleted
                .lock()
                .iter()
                .any(|(u, r)| *u == uuid && *r == ids.request_id)
        {
            return Ok(());
        }
        let (b, (hosts, spec)) = match self
            .begin(uuid, &ids, "delete", T::Deleting, ANY_STATE, |r| {
                let s = &r.server;
                let mut hosts: Vec<crate::HostChoice> = s.host.iter().cloned().collect();
                if let Some(m) = &s.resize {
                    hosts.push(m.source.clone());
                }
                Ok((hosts, spec_of(r)))
            })
            .await?
        {
            super::Start::Go(b, p) => (b, p),
            // A repeat of a delete that was still running (now done), or a request id
            // another action on this server used.
            super::Start::Answer(a) => {
                return if a
                    .server
                    .actions
                    .last()
                    .is_some_and(|x| x.action == "delete" && x.ok)
                {
                    Ok(())
                } else {
                    Err(ConductorError::invalid(
                        "request_id",
                        "was used by another action on this server",
                    ))
                };
            }
        };
        let mut notes: Vec<String> = Vec::new();
        for h in hosts {
            let out = if self.dispatcher.is_connected(&h.uuid) {
                self.node(&h, pb::ActionKind::Delete, spec.clone(), &ids)
                    .await
                    .map(|_| ())
            } else {
                Err(super::NodeFailure {
                    message: String::new(),
                    code: String::new(),
                    not_connected: true,
                    maybe_ran: false,
                })
            };
            match out {
                Ok(()) => notes.push(format!("domain deleted on {}", h.name)),
                Err(f) if f.not_connected => {
                    // Nova's local delete: the domain, if it still exists, is deleted when
                    // the node registers again and reports it.
                    self.local_deleted.insert(uuid, h.uuid);
                    tracing::warn!(server = %uuid, host = %h.name, "host {} has no connected node: server {uuid} deleted locally", h.name);
                    notes.push(format!(
                        "host {} has no connected node: deleted locally (its domain is deleted when the node registers again)",
                        h.name
                    ));
                }
                Err(f) => {
                    let msg = format!(
                        "{}; the server is ERROR and still holds its resources: delete it again",
                        f.message
                    );
                    let e = ConductorError::Unavailable(msg.clone());
                    let mut r = b.rec.lock();
                    r.server.vm_state = V::Error;
                    r.server.fault.clone_from(&msg);
                    r.server.task_state = T::None;
                    r.end_action(b.hist, false, msg);
                    r.requests
                        .finish(&ids.request_id, None, Err(e.clone()), self.cap());
                    super::count("delete", "failed");
                    return Err(e);
                }
            }
        }
        match self.engine.release(&uuid) {
            Ok(()) | Err(EngineError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(server = %uuid, error = %e, "delete: releasing the allocations failed")
            }
        }
        let message = if notes.is_empty() {
            "deleted (it had no domain)".to_string()
        } else {
            notes.join("; ")
        };
        {
            let mut r = b.rec.lock();
            r.deleted = true;
            self.set_host(&b.rec, &mut r, None);
            r.server.task_state = T::None;
            r.end_action(b.hist, true, message.clone());
            let reply = ActionReply {
                server: r.server.clone(),
                image_id: None,
            };
            r.requests
                .finish(&ids.request_id, None, Ok(reply), self.cap());
            self.servers.remove(&uuid);
        }
        let locally = self.local_deleted.contains_key(&uuid);
        if locally || !ids.request_id.is_empty() {
            let mut d = self.deleted.lock();
            if !ids.request_id.is_empty() {
                d.push_back((uuid, ids.request_id.clone()));
                while d.len() > REMEMBERED_DELETES {
                    d.pop_front();
                }
            }
            // Both must survive a restart: a repeat answers as this call did, and the
            // domain a local delete left is still deleted when its node comes back.
            self.log_deleted(&d, uuid);
        }
        super::count("delete", "ok");
        tracing::info!(server = %uuid, "server {uuid} deleted: {message}");
        Ok(())
    }
}
