//! Moves: resize and cold migration (to RESIZED, then confirm or revert), live migration
//! and evacuation. Each claims its destination with the engine's `move_claim` while the
//! server keeps its source allocations, then spawns on the destination; `confirm_move`
//! drops the source's allocations, `revert_move` the destination's.

use std::sync::Arc;

use berth_proto::v1 as pb;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::actions::spec_of;
use super::idempotency;
use super::server::{MoveInfo, ServerRecord, instance_spec};
use super::{
    ActionReply, Begun, CallIds, Conductor, ConductorError, EVACUATE_CONCURRENCY, EvacuationResult,
    NodeFailure, Result, TaskState, VmState,
};
use crate::HostChoice;
use crate::error::EngineError;
use crate::lifecycle::ActionOutcome;
use crate::model::{Flavor, RequestSpec};

use TaskState as T;
use VmState as V;

/// What evacuate accepts (the host must be down as well).
const EVACUABLE: &[VmState] = &[
    V::Active,
    V::Stopped,
    V::Paused,
    V::Suspended,
    V::Resized,
    V::Shelved,
    V::Error,
];

/// The request spec of a move: the server's image, zone, project, and `flavor`; a named
/// destination is forced. The engine adds the consumer's group and excludes its hosts.
fn move_spec(r: &ServerRecord, flavor: &Flavor, dest: Option<&HostChoice>) -> RequestSpec {
    let s = &r.server;
    RequestSpec {
        flavor: Some(flavor.id.clone()),
        image: Some(s.image.id.to_string()),
        availability_zone: r.requested_az.clone(),
        force_hosts: dest.map(|d| vec![d.uuid.to_string()]).unwrap_or_default(),
        num_instances: 1,
        project_id: s.project_id.clone(),
        user_id: s.user_id.clone(),
        ..RequestSpec::default()
    }
}

/// Refuses a named destination that is the server's own host.
fn not_current(dest: Option<&HostChoice>, current: &HostChoice) -> Result<()> {
    match dest {
        Some(d) if d.uuid == current.uuid => Err(ConductorError::invalid(
            "host",
            format!("{} is the server's current host", d.name),
        )),
        _ => Ok(()),
    }
}

/// Everything a cold move needs, gathered under the server's lock.
struct ColdMove {
    source: HostChoice,
    new_flavor: Arc<Flavor>,
    old: pb::InstanceSpec,
    new: pb::InstanceSpec,
    old_flavor: Arc<Flavor>,
    was_stopped: bool,
    spec: RequestSpec,
}

impl Conductor {
    /// A named destination (uuid or name), or `None` to let the scheduler choose.
    fn destination(&self, host: Option<&str>) -> Result<Option<HostChoice>> {
        let Some(h) = host.filter(|h| !h.is_empty()) else {
            return Ok(None);
        };
        let uuid = self
            .engine
            .resolve_host(h)
            .ok_or_else(|| EngineError::not_found("resource provider", h))?;
        let info = self.engine.get_provider(&uuid)?;
        Ok(Some(HostChoice {
            uuid,
            name: info.name,
        }))
    }

    fn live_capable(&self, h: &HostChoice) -> Result<()> {
        if self.dispatcher.live_migration(&h.uuid) {
            Ok(())
        } else {
            Err(ConductorError::Precondition(format!(
                "host {} cannot live-migrate (its hypervisor does not support it)",
                h.name
            )))
        }
    }

    /// Spawns the moving server on `dest`, where `move_claim` claimed for it. A failure
    /// gives the destination's claim back (`revert_move`): the server keeps its source.
    async fn spawn_moved(
        &self,
        dest: &HostChoice,
        uuid: Uuid,
        instance: pb::InstanceSpec,
        ids: &CallIds,
    ) -> Result<ActionOutcome, NodeFailure> {
        let out = self.spawn(dest, uuid, instance, ids).await;
        if out.is_err() {
            let _ = self.engine.revert_move(&uuid);
        }
        out
    }

    /// Ends a move whose spawn on the destination failed (`spawn_moved` gave the claim
    /// back): nothing else changed, the server stays on `source`. `what` says so, as in
    /// "move was reverted".
    fn rolled_back(
        &self,
        b: &Begun,
        f: NodeFailure,
        what: &str,
        source: &HostChoice,
    ) -> ActionReply {
        let message = format!(
            "{}; the {what}, the server stays on {}",
            f.message, source.name
        );
        self.finish(b, false, message, None, |_| {})
    }

    /// Ends a move that landed on `dest`: the server's host and zone become `dest`'s, then
    /// `apply` sets the rest.
    fn landed(
        &self,
        b: &Begun,
        dest: HostChoice,
        notes: &[String],
        apply: impl FnOnce(&mut ServerRecord),
    ) -> ActionReply {
        let zone = self.zone_of(&dest.uuid);
        self.finish(b, true, notes.join("; "), None, |r| {
            self.set_host(&b.rec, r, Some(dest));
            r.server.availability_zone = zone;
            apply(r);
        })
    }

    pub(super) async fn resize(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        flavor: &str,
    ) -> Result<ActionReply> {
        if flavor.is_empty() {
            return Err(ConductorError::invalid("flavor", "is required"));
        }
        let new = self.engine.get_flavor(flavor)?;
        self.cold_move(uuid, ids, "resize", Some(new), None).await
    }

    pub(super) async fn migrate(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        host: Option<&str>,
    ) -> Result<ActionReply> {
        let dest = self.destination(host)?;
        self.cold_move(uuid, ids, "migrate", None, dest).await
    }

    /// Resize (`flavor`) or cold migration (`dest`): claim, spawn on the destination, stop
    /// the source (kept for a revert) → RESIZED.
    async fn cold_move(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        action: &'static str,
        flavor: Option<Arc<Flavor>>,
        dest: Option<HostChoice>,
    ) -> Result<ActionReply> {
        let (b, m) = go!(self
            .begin(
                uuid,
                ids,
                action,
                T::ResizeMigrating,
                &[V::Active, V::Stopped],
                |r| {
                    let s = &r.server;
                    let source = self.connected_host(s, action)?;
                    not_current(dest.as_ref(), &source)?;
                    let new_flavor = flavor.clone().unwrap_or_else(|| s.flavor.clone());
                    if flavor.is_some() && new_flavor.id == s.flavor.id {
                        return Err(ConductorError::invalid(
                            "flavor",
                            format!("{} is the server's current flavor", new_flavor.name),
                        ));
                    }
                    Ok(ColdMove {
                        source,
                        old: spec_of(r),
                        new: instance_spec(&uuid, &new_flavor, &s.image, &s.metadata),
                        spec: move_spec(r, &new_flavor, dest.as_ref()),
                        new_flavor,
                        old_flavor: s.flavor.clone(),
                        was_stopped: s.vm_state == V::Stopped,
                    })
                }
            )
            .await);
        let dest = match self.engine.move_claim(&uuid, &m.spec, false) {
            Ok(sel) => sel.host,
            Err(e) => return Err(self.abort(&b, e.into())),
        };
        let spawned = match self.spawn_moved(&dest, uuid, m.new.clone(), ids).await {
            Ok(o) => o,
            Err(f) => return Ok(self.rolled_back(&b, f, "move was reverted", &m.source)),
        };
        let mut notes = vec![format!(
            "spawned on {} with flavor {}",
            dest.name, m.new_flavor.name
        )];
        let mut power = spawned.power_state;
        if m.was_stopped {
            match self
                .node(&dest, pb::ActionKind::Stop, m.new.clone(), ids)
                .await
            {
                Ok(o) => power = o.power_state,
                Err(f) => notes.push(f.message),
            }
        }
        match self.node(&m.source, pb::ActionKind::Stop, m.old, ids).await {
            Ok(_) => notes.push(format!("stopped on {}, kept for a revert", m.source.name)),
            Err(f) => notes.push(format!("{} (it is deleted on confirm)", f.message)),
        }
        Ok(self.landed(&b, dest, &notes, |r| {
            r.server.flavor = m.new_flavor;
            r.server.resize = Some(MoveInfo {
                source: m.source,
                old_flavor: m.old_flavor,
                was_stopped: m.was_stopped,
            });
            r.server.vm_state = V::Resized;
            r.server.power_state = power;
        }))
    }

    pub(super) async fn confirm_resize(&self, uuid: Uuid, ids: &CallIds) -> Result<ActionReply> {
        let (b, (m, spec)) = go!(self
            .begin(
                uuid,
                ids,
                "confirm_resize",
                T::ResizeConfirming,
                &[V::Resized],
                |r| Ok((resize_of(r)?, spec_of(r)))
            )
            .await);
        let mut notes = Vec::new();
        if self.dispatcher.is_connected(&m.source.uuid) {
            match self
                .node(&m.source, pb::ActionKind::Delete, spec, ids)
                .await
            {
                Ok(_) => notes.push(format!("source domain deleted on {}", m.source.name)),
                Err(f) => notes.push(format!(
                    "{} (it is deleted when the node registers again)",
                    f.message
                )),
            }
        } else {
            notes.push(format!(
                "host {} has no connected node: its domain is deleted when the node registers again",
                m.source.name
            ));
        }
        let to = if m.was_stopped { V::Stopped } else { V::Active };
        Ok(match self.engine.confirm_move(&uuid) {
            Ok(()) => {
                notes.push(format!("allocations on {} released", m.source.name));
                self.finish(&b, true, notes.join("; "), None, |r| {
                    r.server.resize = None;
                    r.server.vm_state = to;
                })
            }
            Err(e) => self.finish(
                &b,
                false,
                format!("confirming the move's allocations failed: {e}"),
                None,
                |r| {
                    r.server.resize = None;
                    r.server.vm_state = V::Error;
                },
            ),
        })
    }

    pub(super) async fn revert_resize(&self, uuid: Uuid, ids: &CallIds) -> Result<ActionReply> {
        let (b, (m, dest, new, old)) = go!(self
            .begin(
                uuid,
                ids,
                "revert_resize",
                T::ResizeReverting,
                &[V::Resized],
                |r| {
                    let m = resize_of(r)?;
                    self.require_connected(&m.source)?;
                    let s = &r.server;
                    let old = instance_spec(&uuid, &m.old_flavor, &s.image, &s.metadata);
                    Ok((m, s.host.clone(), spec_of(r), old))
                }
            )
            .await);
        let mut notes = Vec::new();
        if let Some(dest) = &dest {
            match self.node(dest, pb::ActionKind::Delete, new, ids).await {
                Ok(_) => notes.push(format!("domain deleted on {}", dest.name)),
                Err(f) => notes.push(format!(
                    "{} (it is deleted when the node registers again)",
                    f.message
                )),
            }
        }
        let source = m.source.clone();
        let zone = self.zone_of(&source.uuid);
        let back = |r: &mut ServerRecord| {
            self.set_host(&b.rec, r, Some(m.source.clone()));
            r.server.availability_zone = zone.clone();
            r.server.flavor = m.old_flavor.clone();
            r.server.resize = None;
        };
        if let Err(e) = self.engine.revert_move(&uuid) {
            return Ok(self.finish(
                &b,
                false,
                format!("reverting the move's allocations failed: {e}"),
                None,
                |r| {
                    back(r);
                    r.server.vm_state = V::Error;
                },
            ));
        }
        notes.push(format!("allocations back on {}", source.name));
        if m.was_stopped {
            return Ok(self.finish(&b, true, notes.join("; "), None, |r| {
                back(r);
                r.server.vm_state = V::Stopped;
                r.server.power_state = "SHUTOFF".into();
            }));
        }
        Ok(
            match self.node(&source, pb::ActionKind::Start, old, ids).await {
                Ok(o) => {
                    notes.push(format!("started on {}", source.name));
                    self.finish(&b, true, notes.join("; "), None, |r| {
                        back(r);
                        r.server.vm_state = V::Active;
                        r.server.power_state = o.power_state;
                    })
                }
                Err(f) => self.finish(&b, false, f.message, None, |r| {
                    back(r);
                    r.server.vm_state = V::Error;
                }),
            },
        )
    }

    pub(super) async fn live_migrate(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        host: Option<&str>,
    ) -> Result<ActionReply> {
        let named = self.destination(host)?;
        let (b, (source, was, inst, base)) = go!(self
            .begin(
                uuid,
                ids,
                "live_migrate",
                T::Migrating,
                &[V::Active, V::Paused],
                |r| {
                    let s = &r.server;
                    let source = self.connected_host(s, "live_migrate")?;
                    self.live_capable(&source)?;
                    not_current(named.as_ref(), &source)?;
                    if let Some(d) = &named {
                        self.live_capable(d)?;
                    }
                    Ok((
                        source,
                        s.vm_state,
                        spec_of(r),
                        move_spec(r, &s.flavor, named.as_ref()),
                    ))
                }
            )
            .await);
        // The scheduler does not know which hypervisors can live-migrate: a chosen host
        // that cannot is given back and ignored, up to max_attempts hosts.
        let max = self.engine.config().scheduler.max_attempts.max(1) as usize;
        let mut incapable: Vec<HostChoice> = Vec::new();
        let dest = loop {
            let mut spec = base.clone();
            spec.ignore_hosts
                .extend(incapable.iter().map(|h| h.uuid.to_string()));
            let sel = match self.engine.move_claim(&uuid, &spec, false) {
                Ok(sel) => sel,
                Err(e) if incapable.is_empty() => return Err(self.abort(&b, e.into())),
                Err(e) => {
                    return Err(self.abort(
                        &b,
                        ConductorError::Precondition(format!(
                            "no live-migration-capable destination: {} cannot live-migrate, and then {e}",
                            names(&incapable)
                        )),
                    ));
                }
            };
            if self.dispatcher.live_migration(&sel.host.uuid) {
                break sel.host;
            }
            let _ = self.engine.revert_move(&uuid);
            incapable.push(sel.host);
            if incapable.len() >= max {
                return Err(self.abort(
                    &b,
                    ConductorError::Precondition(format!(
                        "no live-migration-capable destination among the best {max} hosts: {} cannot live-migrate",
                        names(&incapable)
                    )),
                ));
            }
        };
        let spawned = match self.spawn_moved(&dest, uuid, inst.clone(), ids).await {
            Ok(o) => o,
            Err(f) => return Ok(self.rolled_back(&b, f, "migration was rolled back", &source)),
        };
        let mut notes = vec![format!(
            "live-migrated from {} to {}",
            source.name, dest.name
        )];
        let mut power = spawned.power_state;
        if was == V::Paused {
            match self
                .node(&dest, pb::ActionKind::Pause, inst.clone(), ids)
                .await
            {
                Ok(o) => power = o.power_state,
                Err(f) => notes.push(f.message),
            }
        }
        if let Err(f) = self.node(&source, pb::ActionKind::Delete, inst, ids).await {
            notes.push(format!(
                "{} (it is deleted when the node registers again)",
                f.message
            ));
        }
        if let Err(e) = self.engine.confirm_move(&uuid) {
            notes.push(format!("confirming the allocations failed: {e}"));
        }
        Ok(self.landed(&b, dest, &notes, |r| {
            r.server.power_state = power;
        }))
    }

    pub(super) async fn evacuate(
        &self,
        uuid: Uuid,
        ids: &CallIds,
        host: Option<&str>,
    ) -> Result<ActionReply> {
        let named = self.destination(host)?;
        let (b, (source, was, inst, spec)) = go!(
            self.begin(uuid, ids, "evacuate", T::RebuildSpawning, EVACUABLE, |r| {
                let s = &r.server;
                let source = s.host.clone().ok_or_else(|| {
                    ConductorError::Precondition(format!(
                        "cannot evacuate server {uuid}: it has no host"
                    ))
                })?;
                if s.vm_state == V::Resized {
                    return Err(ConductorError::Precondition(format!(
                        "cannot evacuate server {uuid} while it is RESIZED: confirm or revert the resize first"
                    )));
                }
                // A host the engine no longer knows is as good as down.
                let up = self
                    .engine
                    .get_provider(&source.uuid)
                    .map(|p| p.up)
                    .unwrap_or(false);
                if up {
                    return Err(ConductorError::Precondition(format!(
                        "cannot evacuate server {uuid}: its host {} is up; only the servers of a down host can be evacuated",
                        source.name
                    )));
                }
                not_current(named.as_ref(), &source)?;
                Ok((
                    source,
                    s.vm_state,
                    spec_of(r),
                    move_spec(r, &s.flavor, named.as_ref()),
                ))
            })
            .await
        );
        let dest = match self.engine.move_claim(&uuid, &spec, false) {
            Ok(sel) => sel.host,
            Err(e) => return Err(self.abort(&b, e.into())),
        };
        let spawned = match self.spawn_moved(&dest, uuid, inst.clone(), ids).await {
            Ok(o) => o,
            Err(f) => {
                return Ok(self.finish(&b, false, f.message, None, |r| {
                    r.server.vm_state = V::Error;
                }));
            }
        };
        let mut notes = vec![format!(
            "evacuated from {} (down) to {}; the domain left on {} is deleted when its node registers again",
            source.name, dest.name, source.name
        )];
        if let Err(e) = self.engine.confirm_move(&uuid) {
            notes.push(format!("confirming the allocations failed: {e}"));
        }
        let to = match was {
            V::Stopped => V::Stopped,
            V::Shelved => V::Shelved,
            _ => V::Active,
        };
        let mut power = spawned.power_state;
        if to != V::Active {
            match self.node(&dest, pb::ActionKind::Stop, inst, ids).await {
                Ok(o) => power = o.power_state,
                Err(f) => notes.push(f.message),
            }
        }
        Ok(self.landed(&b, dest, &notes, |r| {
            r.server.vm_state = to;
            r.server.power_state = power;
        }))
    }

    pub(super) async fn evacuate_all(
        self: Arc<Self>,
        host: &str,
        ids: CallIds,
    ) -> Result<Vec<EvacuationResult>> {
        ids.validate()?;
        let h = self
            .engine
            .resolve_host(host)
            .ok_or_else(|| EngineError::not_found("resource provider", host))?;
        let info = self.engine.get_provider(&h)?;
        if info.up {
            return Err(ConductorError::Precondition(format!(
                "host {} is up; only a down host can be evacuated",
                info.name
            )));
        }
        // Idempotency by (host, request id).
        idempotency::once(&self.evacuations, h, &ids.request_id, self.cap(), async {
            let results = self.evacuate_servers(h, &ids).await;
            tracing::info!(host = %info.name, servers = results.len(), ok = results.iter().filter(|r| r.ok).count(), "host {} evacuated", info.name);
            Ok(results)
        })
        .await
    }

    /// Evacuates the servers of down host `h`, in creation order, a few at a time.
    async fn evacuate_servers(self: &Arc<Self>, h: Uuid, ids: &CallIds) -> Vec<EvacuationResult> {
        let recs: Vec<_> = self
            .by_host
            .get(&h)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let mut servers: Vec<(u64, Uuid)> = recs
            .iter()
            .map(|r| {
                let r = r.lock();
                (r.server.seq, r.server.uuid)
            })
            .collect();
        servers.sort_unstable();
        let limit = Arc::new(Semaphore::new(EVACUATE_CONCURRENCY));
        let handles: Vec<_> = servers
            .into_iter()
            .map(|(_, uuid)| {
                let me = self.clone();
                let limit = limit.clone();
                let ids = ids.part(&uuid);
                let task = tokio::spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    me.run_action(uuid, super::Action::Evacuate { host: None }, ids)
                        .await
                });
                (uuid, task)
            })
            .collect();
        let mut results = Vec::with_capacity(handles.len());
        for (uuid, task) in handles {
            let result = match task.await {
                Ok(Ok(reply)) => {
                    let s = &reply.server;
                    let moved = s.host.as_ref().is_some_and(|x| x.uuid != h);
                    EvacuationResult {
                        uuid,
                        ok: moved && s.vm_state != V::Error,
                        message: s
                            .actions
                            .last()
                            .map(|a| a.message.clone())
                            .unwrap_or_default(),
                    }
                }
                Ok(Err(e)) => EvacuationResult {
                    uuid,
                    ok: false,
                    message: e.to_string(),
                },
                Err(e) => EvacuationResult {
                    uuid,
                    ok: false,
                    message: format!("the evacuation's task failed: {e}"),
                },
            };
            results.push(result);
        }
        results
    }
}

/// The pending move of a RESIZED server.
fn resize_of(r: &ServerRecord) -> Result<MoveInfo> {
    r.server.resize.clone().ok_or_else(|| {
        ConductorError::Precondition(format!(
            "server {} has no resize or migration to confirm or revert",
            r.server.uuid
        ))
    })
}

/// Host names, comma-separated.
fn names(hosts: &[HostChoice]) -> String {
    hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
