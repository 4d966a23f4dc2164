//! CreateServer: schedule and claim every server at once (all or nothing), then spawn each
//! on its host concurrently. A failed spawn releases the claim, records a build failure on
//! that host (its weigher then avoids it) and schedules that one server again with the
//! failed hosts ignored, up to `max_attempts` hosts in all; a server that runs out ends in
//! ERROR with no host and no allocation, its fault listing every attempt.

use std::sync::Arc;

use berth_proto::v1 as pb;
use uuid::Uuid;

use super::idempotency;
use super::server::{ServerRecord, instance_spec, now_ms};
use super::{
    CallIds, Conductor, ConductorError, CreateRequest, NodeFailure, Rec, Result, Server, TaskState,
    VmState,
};
use crate::HostChoice;
use crate::lifecycle::ActionOutcome;
use crate::model::RequestSpec;

/// Most metadata entries on a server.
pub const MAX_METADATA_ENTRIES: usize = 128;
/// Longest metadata key or value, and server name, in characters.
pub const MAX_TEXT_CHARS: usize = 255;

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Checks the request's own fields (the engine checks names it resolves).
fn validate(req: &CreateRequest, max_count: u32) -> Result<u32> {
    let n = chars(&req.name);
    if n == 0 || n > MAX_TEXT_CHARS {
        return Err(ConductorError::invalid(
            "name",
            format!("is {n} characters long; it must be 1 to {MAX_TEXT_CHARS}"),
        ));
    }
    if req.name.chars().any(char::is_control) {
        return Err(ConductorError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    for (field, v) in [("flavor", &req.flavor), ("image", &req.image)] {
        if v.is_empty() {
            return Err(ConductorError::invalid(field, "is required"));
        }
    }
    for (field, v) in [("project_id", &req.project_id), ("user_id", &req.user_id)] {
        if v.is_empty() {
            return Err(ConductorError::invalid(field, "is required"));
        }
        crate::model::validate_name(field, v)?;
    }
    let count = req.count.max(1);
    if count > max_count {
        return Err(ConductorError::invalid(
            "count",
            format!("{count} exceeds the limit of {max_count} per request"),
        ));
    }
    if req.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ConductorError::invalid(
            "metadata",
            format!(
                "has {} entries; at most {MAX_METADATA_ENTRIES}",
                req.metadata.len()
            ),
        ));
    }
    for (k, v) in &req.metadata {
        let (kn, vn) = (chars(k), chars(v));
        if kn == 0 || kn > MAX_TEXT_CHARS {
            return Err(ConductorError::invalid(
                format!("metadata[{k}]"),
                format!("keys are 1 to {MAX_TEXT_CHARS} characters"),
            ));
        }
        if vn > MAX_TEXT_CHARS {
            return Err(ConductorError::invalid(
                format!("metadata[{k}]"),
                format!("values are at most {MAX_TEXT_CHARS} characters"),
            ));
        }
    }
    Ok(count)
}

impl Conductor {
    pub(super) async fn create_servers(
        self: Arc<Self>,
        req: CreateRequest,
        ids: CallIds,
    ) -> Result<Vec<Server>> {
        ids.validate()?;
        let max = self.engine.config().scheduler.max_instances_per_request;
        let count = validate(&req, max)?;

        // Idempotency by (project, request id).
        idempotency::once(
            &self.creates,
            req.project_id.clone(),
            &ids.request_id,
            self.cap(),
            self.create_claimed(&req, &ids, count),
        )
        .await
    }

    async fn create_claimed(
        self: &Arc<Self>,
        req: &CreateRequest,
        ids: &CallIds,
        count: u32,
    ) -> Result<Vec<Server>> {
        let flavor = self.engine.get_flavor(&req.flavor)?;
        let image = self.engine.get_image(&req.image)?;
        let group = match &req.group {
            Some(g) => Some(self.engine.get_group(g)?.id),
            None => None,
        };
        let spec = RequestSpec {
            flavor: Some(flavor.id.clone()),
            required_traits: req.required_traits.clone(),
            forbidden_traits: req.forbidden_traits.clone(),
            availability_zone: req.availability_zone.clone(),
            group: group.map(|g| g.to_string()),
            image: Some(image.id.to_string()),
            num_instances: count,
            instance_uuids: (0..count).map(|_| Uuid::new_v4()).collect(),
            force_hosts: req.force_hosts.clone(),
            project_id: req.project_id.clone(),
            user_id: req.user_id.clone(),
            ..RequestSpec::default()
        };
        let selections = match self.engine.select_destinations(&spec) {
            Ok(s) => s,
            Err(e) => {
                super::count("create", "refused");
                tracing::info!(error = %e, "create: no servers placed");
                return Err(e.into());
            }
        };

        let now = now_ms();
        let mut builds: Vec<(Rec, HostChoice)> = Vec::with_capacity(selections.len());
        for (i, sel) in selections.into_iter().enumerate() {
            let name = if count > 1 {
                format!("{}-{}", req.name, i + 1)
            } else {
                req.name.clone()
            };
            let server = Server {
                uuid: sel.consumer,
                seq: self.next_seq(),
                name,
                project_id: req.project_id.clone(),
                user_id: req.user_id.clone(),
                flavor: flavor.clone(),
                image: image.clone(),
                vm_state: VmState::Building,
                task_state: TaskState::Spawning,
                power_state: String::new(),
                host: None,
                availability_zone: self.zone_of(&sel.host.uuid),
                group,
                metadata: req.metadata.clone(),
                locked: false,
                locked_reason: String::new(),
                fault: String::new(),
                created_at_ms: now,
                updated_at_ms: now,
                resize: None,
                actions: Vec::new(),
            };
            let rec = self.cell(ServerRecord {
                server,
                requests: Default::default(),
                requested_az: req.availability_zone.clone(),
                sync_votes: 0,
                deleted: false,
            });
            {
                let mut r = rec.lock();
                r.start_action("create", &ids.request_id);
                self.set_host(&rec, &mut r, Some(sel.host.clone()));
            }
            self.servers.insert(sel.consumer, rec.clone());
            builds.push((rec, sel.host));
        }

        // Each server spawns (and retries) on its own; collect them in request order.
        let mut base = spec;
        base.num_instances = 1;
        base.instance_uuids.clear();
        let handles: Vec<_> = builds
            .into_iter()
            .map(|(rec, host)| {
                let me = self.clone();
                let base = base.clone();
                let ids = ids.clone();
                tokio::spawn(async move { me.build(rec, host, base, ids).await })
            })
            .collect();
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(
                h.await
                    .map_err(|e| ConductorError::Internal(format!("a build task failed: {e}")))?,
            );
        }
        Ok(out)
    }

    /// The zone of a host (empty if it vanished).
    pub(super) fn zone_of(&self, host: &Uuid) -> String {
        self.engine
            .get_provider(host)
            .map(|p| p.availability_zone)
            .unwrap_or_default()
    }

    /// Spawns one server, retrying elsewhere on failure. `base` is the create's request
    /// spec for one instance.
    async fn build(
        self: Arc<Self>,
        rec: Rec,
        first: HostChoice,
        base: RequestSpec,
        ids: CallIds,
    ) -> Server {
        let max = self.engine.config().scheduler.max_attempts.max(1) as usize;
        let (uuid, spec) = {
            let r = rec.lock();
            let s = &r.server;
            (
                s.uuid,
                instance_spec(&s.uuid, &s.flavor, &s.image, &s.metadata),
            )
        };
        // (host, why it failed there)
        let mut failures: Vec<(HostChoice, String)> = Vec::new();
        let mut host = first;
        loop {
            let attempt = failures.len() + 1;
            let failure = match self.build_on(&host, uuid, spec.clone(), &ids).await {
                Ok(o) => {
                    let mut msg = attempts_text(&failures);
                    msg.push_str(&format!(
                        "spawned on {} (attempt {attempt} of {max})",
                        host.name
                    ));
                    return self.end_build(&rec, true, msg, |r| {
                        r.server.vm_state = VmState::Active;
                        r.server.power_state = o.power_state;
                    });
                }
                Err(f) => f,
            };
            tracing::warn!(server = %uuid, host = %host.name, attempt, "build attempt failed: {}", failure.message);
            failures.push((host.clone(), failure.message));
            {
                let mut r = rec.lock();
                self.set_host(&rec, &mut r, None);
                r.server.task_state = TaskState::Scheduling;
            }
            if failures.len() >= max {
                let msg = format!(
                    "build failed after {} attempt(s): {}",
                    failures.len(),
                    reasons(&failures)
                );
                return self.end_build(&rec, false, msg, |_| {});
            }
            let mut again = base.clone();
            again.instance_uuids = vec![uuid];
            again.ignore_hosts = failures.iter().map(|(h, _)| h.uuid.to_string()).collect();
            match self.engine.select_destinations(&again) {
                Ok(mut sel) if !sel.is_empty() => {
                    let next = sel.swap_remove(0).host;
                    let zone = self.zone_of(&next.uuid);
                    let mut r = rec.lock();
                    self.set_host(&rec, &mut r, Some(next.clone()));
                    r.server.availability_zone = zone;
                    r.server.task_state = TaskState::Spawning;
                    host = next;
                }
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "the scheduler returned no host".into(),
                    };
                    let msg = format!(
                        "build failed after {} attempt(s): {}; no host for attempt {}: {why}",
                        failures.len(),
                        reasons(&failures),
                        failures.len() + 1
                    );
                    return self.end_build(&rec, false, msg, |_| {});
                }
            }
        }
    }

    /// Spawns server `uuid` where the scheduler placed it (create, unshelve). Success
    /// clears `host`'s build failures; a failure releases the server's allocations and
    /// records a build failure on `host`, so its weigher avoids it.
    pub(super) async fn build_on(
        &self,
        host: &HostChoice,
        uuid: Uuid,
        instance: pb::InstanceSpec,
        ids: &CallIds,
    ) -> Result<ActionOutcome, NodeFailure> {
        let out = self.spawn(host, uuid, instance, ids).await;
        match &out {
            Ok(_) => {
                let _ = self.engine.clear_build_failures(&host.uuid);
            }
            Err(_) => {
                // Releasing cannot fail but for an unknown consumer, which is what we want.
                let _ = self.engine.release(&uuid);
                let _ = self.engine.record_build_failure(&host.uuid);
            }
        }
        out
    }

    /// Closes the create record: ACTIVE via `apply`, or ERROR with no host.
    fn end_build(
        &self,
        rec: &Rec,
        ok: bool,
        message: String,
        apply: impl FnOnce(&mut ServerRecord),
    ) -> Server {
        let mut r = rec.lock();
        if ok {
            r.server.fault.clear();
            apply(&mut r);
        } else {
            self.set_host(rec, &mut r, None);
            r.server.vm_state = VmState::Error;
            r.server.power_state.clear();
            r.server.fault.clone_from(&message);
        }
        r.server.task_state = TaskState::None;
        tracing::info!(server = %r.server.uuid, ok, "create: {message}");
        r.end_action(0, ok, message);
        super::count("create", if ok { "ok" } else { "failed" });
        r.server.clone()
    }
}

/// `attempt 1 on host-a failed: ...; ` for each failure, for a success's message.
fn attempts_text(failures: &[(HostChoice, String)]) -> String {
    failures
        .iter()
        .enumerate()
        .map(|(i, (_, why))| format!("attempt {}: {why}; ", i + 1))
        .collect()
}

/// Every attempt's host and reason.
fn reasons(failures: &[(HostChoice, String)]) -> String {
    failures
        .iter()
        .enumerate()
        .map(|(i, (h, why))| format!("attempt {} on {}: {why}", i + 1, h.name))
        .collect::<Vec<_>>()
        .join("; ")
}
