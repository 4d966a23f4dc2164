//! `berth.v1.Servers`: the instance lifecycle. Converts, calls the [`Conductor`], converts
//! back; conductor errors become statuses in [`to_status`], in one place.

use std::sync::Arc;

use berth_proto::v1 as pb;
use berth_proto::v1::server_action_request::Action as PbAction;
use berth_proto::v1::servers_server::Servers;
use tonic::{Request, Response, Status};

use super::convert::{btree, opt_str, provider_pb, uuid};
use super::layer::REQUEST_ID;
use super::paging::page;
use super::scope;
use super::status::{self, invalid};
use crate::auth::Scope;
use crate::error::EngineError;
use crate::lifecycle::Conductor;
use crate::lifecycle::conductor::{
    Action, ActionRecord, CallIds, ConductorError, CreateRequest, Server, ServerFilter, VmState,
};

/// The Servers service.
pub struct ServersApi {
    conductor: Arc<Conductor>,
}

impl ServersApi {
    /// The service over `conductor`.
    pub fn new(conductor: Arc<Conductor>) -> Self {
        Self { conductor }
    }

    /// NOT_FOUND, as for a server that does not exist, unless the caller sees server `u`.
    fn visible<T>(&self, req: &Request<T>, u: &uuid::Uuid) -> Result<(), Status> {
        let Scope::Project(p) = Scope::of(req) else {
            return Ok(());
        };
        match self.conductor.get(u) {
            Ok(s) if s.project_id == p => Ok(()),
            Ok(_) => Err(to_status(ConductorError::ServerNotFound(*u))),
            Err(e) => Err(to_status(e)),
        }
    }
}

type R<T> = Result<Response<T>, Status>;

/// Converts a conductor error to a status: INVALID_ARGUMENT naming the field, NOT_FOUND,
/// FAILED_PRECONDITION (vm_state, task in progress, locked, host state), UNAVAILABLE (no
/// connected node), INTERNAL; engine errors as `status::to_status` maps them
/// (RESOURCE_EXHAUSTED with a `NoValidHostDetail` for no valid host).
pub fn to_status(e: ConductorError) -> Status {
    let msg = e.to_string();
    match e {
        ConductorError::InvalidArgument { field, reason } => invalid(&field, reason),
        ConductorError::ServerNotFound(_) => Status::not_found(msg),
        ConductorError::InvalidState { .. }
        | ConductorError::TaskInProgress { .. }
        | ConductorError::Locked { .. }
        | ConductorError::Precondition(_) => Status::failed_precondition(msg),
        ConductorError::Unavailable(_) => Status::unavailable(msg),
        ConductorError::Engine(e) => status::to_status(e),
        ConductorError::Internal(_) => Status::internal(msg),
    }
}

/// The call's ids: the message's idempotency key and the gRPC call's `x-request-id`.
fn call_ids<T>(req: &Request<T>, request_id: &str) -> CallIds {
    CallIds {
        request_id: request_id.to_string(),
        trace_id: req
            .metadata()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    }
}

fn action_pb(a: &ActionRecord) -> pb::ServerActionRecord {
    pb::ServerActionRecord {
        action: a.action.to_string(),
        request_id: a.request_id.clone(),
        started_at_ms: a.started_at_ms,
        finished_at_ms: a.finished_at_ms,
        ok: a.ok,
        message: a.message.clone(),
    }
}

/// A server on the wire.
pub fn server_pb(s: Server) -> pb::Server {
    let (source, old_flavor) = match &s.resize {
        Some(m) => (m.source.name.clone(), m.old_flavor.name.clone()),
        None => (String::new(), String::new()),
    };
    pb::Server {
        uuid: s.uuid.to_string(),
        name: s.name,
        project_id: s.project_id,
        user_id: s.user_id,
        flavor: s.flavor.name.clone(),
        image: s.image.name.clone(),
        vm_state: s.vm_state as i32,
        task_state: s.task_state as i32,
        power_state: s.power_state,
        host_uuid: s
            .host
            .as_ref()
            .map(|h| h.uuid.to_string())
            .unwrap_or_default(),
        host_name: s.host.map(|h| h.name).unwrap_or_default(),
        availability_zone: s.availability_zone,
        group: s.group.map(|g| g.to_string()).unwrap_or_default(),
        addresses: Vec::new(),
        metadata: s.metadata.into_iter().collect(),
        locked: s.locked,
        locked_reason: s.locked_reason,
        fault: s.fault,
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        resize_source_host: source,
        resize_old_flavor: old_flavor,
        actions: s.actions.iter().map(action_pb).collect(),
    }
}

/// The action of a request (exactly one is required).
fn action(a: Option<PbAction>) -> Result<Action, Status> {
    let host = |m: pb::MoveArgs| opt_str(m.host);
    Ok(match a {
        None => {
            return Err(invalid(
                "action",
                "is required: set exactly one of stop, start, reboot, pause, unpause, suspend, resume, snapshot, rebuild, shelve, shelve_offload, unshelve, resize, confirm_resize, revert_resize, migrate, live_migrate, evacuate, lock, unlock",
            ));
        }
        Some(PbAction::Stop(_)) => Action::Stop,
        Some(PbAction::Start(_)) => Action::Start,
        Some(PbAction::Reboot(r)) => Action::Reboot { hard: r.hard },
        Some(PbAction::Pause(_)) => Action::Pause,
        Some(PbAction::Unpause(_)) => Action::Unpause,
        Some(PbAction::Suspend(_)) => Action::Suspend,
        Some(PbAction::Resume(_)) => Action::Resume,
        Some(PbAction::Snapshot(s)) => Action::Snapshot {
            image_name: s.image_name,
        },
        Some(PbAction::Rebuild(r)) => Action::Rebuild {
            image: opt_str(r.image),
        },
        Some(PbAction::Shelve(_)) => Action::Shelve,
        Some(PbAction::ShelveOffload(_)) => Action::ShelveOffload,
        Some(PbAction::Unshelve(_)) => Action::Unshelve,
        Some(PbAction::Resize(r)) => Action::Resize { flavor: r.flavor },
        Some(PbAction::ConfirmResize(_)) => Action::ConfirmResize,
        Some(PbAction::RevertResize(_)) => Action::RevertResize,
        Some(PbAction::Migrate(m)) => Action::Migrate { host: host(m) },
        Some(PbAction::LiveMigrate(m)) => Action::LiveMigrate { host: host(m) },
        Some(PbAction::Evacuate(m)) => Action::Evacuate { host: host(m) },
        Some(PbAction::Lock(l)) => Action::Lock { reason: l.reason },
        Some(PbAction::Unlock(_)) => Action::Unlock,
    })
}

fn required(field: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        Err(invalid(field, "is required"))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Servers for ServersApi {
    async fn create_server(
        &self,
        req: Request<pb::CreateServerRequest>,
    ) -> R<pb::CreateServerResponse> {
        let ids = call_ids(&req, &req.get_ref().request_id);
        let scope = Scope::of(&req);
        let r = req.get_ref();
        if !scope.is_all() {
            scope.require("project_id", &r.project_id)?;
            if !r.force_hosts.is_empty() {
                return Err(scope::admin_only("force_hosts"));
            }
            if !r.group.is_empty() {
                scope::group(self.conductor.engine(), scope, &r.group)?;
            }
        }
        let r = req.into_inner();
        let create = CreateRequest {
            name: r.name,
            flavor: r.flavor,
            image: r.image,
            group: opt_str(r.group),
            availability_zone: opt_str(r.availability_zone),
            count: r.count,
            metadata: btree(r.metadata),
            project_id: r.project_id,
            user_id: r.user_id,
            required_traits: r.required_traits,
            forbidden_traits: r.forbidden_traits,
            force_hosts: r.force_hosts,
        };
        let servers = self
            .conductor
            .create(create, ids)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateServerResponse {
            servers: servers.into_iter().map(server_pb).collect(),
        }))
    }

    async fn get_server(&self, req: Request<pb::GetServerRequest>) -> R<pb::GetServerResponse> {
        let u = uuid("uuid", &req.get_ref().uuid)?;
        let s = self.conductor.get(&u).map_err(to_status)?;
        if !Scope::of(&req).sees(&s.project_id) {
            return Err(to_status(ConductorError::ServerNotFound(u)));
        }
        Ok(Response::new(pb::GetServerResponse {
            server: Some(server_pb(s)),
        }))
    }

    async fn list_servers(
        &self,
        req: Request<pb::ListServersRequest>,
    ) -> R<pb::ListServersResponse> {
        // A member lists its own project's servers, and only by project.
        let own = match Scope::of(&req) {
            Scope::All => None,
            Scope::Project(p) => {
                let r = req.get_ref();
                if !r.project_id.is_empty() {
                    Scope::Project(p).require("project_id", &r.project_id)?;
                }
                if !r.host.is_empty() {
                    return Err(scope::admin_only("host"));
                }
                Some(p.to_string())
            }
        };
        let mut r = req.into_inner();
        if let Some(p) = own {
            r.project_id = p;
        }
        let host = match opt_str(r.host) {
            Some(h) => Some(self.conductor.engine().resolve_host(&h).ok_or_else(|| {
                status::to_status(EngineError::not_found("resource provider", &h))
            })?),
            None => None,
        };
        let vm_state = match VmState::try_from(r.vm_state) {
            Ok(VmState::Unspecified) => None,
            Ok(v) => Some(v),
            Err(_) => {
                return Err(invalid(
                    "vm_state",
                    format!("{} is not a VmState", r.vm_state),
                ));
            }
        };
        let filter = ServerFilter {
            host,
            project_id: opt_str(r.project_id),
            vm_state,
        };
        let all = self.conductor.list(&filter);
        let (items, next) = page(all, r.page_size, &r.page_token, |s| {
            format!("{:020}", s.seq)
        })?;
        Ok(Response::new(pb::ListServersResponse {
            servers: items.into_iter().map(server_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_server(
        &self,
        req: Request<pb::DeleteServerRequest>,
    ) -> R<pb::DeleteServerResponse> {
        let ids = call_ids(&req, &req.get_ref().request_id);
        let u = uuid("uuid", &req.get_ref().uuid)?;
        self.visible(&req, &u)?;
        self.conductor.delete(u, ids).await.map_err(to_status)?;
        Ok(Response::new(pb::DeleteServerResponse {}))
    }

    async fn server_action(
        &self,
        req: Request<pb::ServerActionRequest>,
    ) -> R<pb::ServerActionResponse> {
        let ids = call_ids(&req, &req.get_ref().request_id);
        let u = uuid("uuid", &req.get_ref().uuid)?;
        self.visible(&req, &u)?;
        if !Scope::of(&req).is_all() {
            // Nova's defaults: moving a server between hosts is an operator's decision.
            match &req.get_ref().action {
                Some(PbAction::Migrate(_)) => return Err(scope::admin_only("migrate")),
                Some(PbAction::LiveMigrate(_)) => return Err(scope::admin_only("live_migrate")),
                Some(PbAction::Evacuate(_)) => return Err(scope::admin_only("evacuate")),
                _ => {}
            }
        }
        let r = req.into_inner();
        let a = action(r.action)?;
        let reply = self.conductor.action(u, a, ids).await.map_err(to_status)?;
        Ok(Response::new(pb::ServerActionResponse {
            server: Some(server_pb(reply.server)),
            image_id: reply.image_id.map(|i| i.to_string()).unwrap_or_default(),
        }))
    }

    async fn set_host_enabled(
        &self,
        req: Request<pb::SetHostEnabledRequest>,
    ) -> R<pb::SetHostEnabledResponse> {
        let r = req.into_inner();
        required("host", &r.host)?;
        let info = self
            .conductor
            .set_host_enabled(&r.host, r.enabled, &r.reason)
            .map_err(to_status)?;
        Ok(Response::new(pb::SetHostEnabledResponse {
            host: Some(provider_pb(info)),
        }))
    }

    async fn evacuate_host(
        &self,
        req: Request<pb::EvacuateHostRequest>,
    ) -> R<pb::EvacuateHostResponse> {
        let ids = call_ids(&req, &req.get_ref().request_id);
        let r = req.into_inner();
        required("host", &r.host)?;
        let results = self
            .conductor
            .evacuate_host(&r.host, ids)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::EvacuateHostResponse {
            results: results
                .into_iter()
                .map(|e| pb::EvacuationResult {
                    uuid: e.uuid.to_string(),
                    ok: e.ok,
                    message: e.message,
                })
                .collect(),
        }))
    }
}
