//! Runs a parsed command against the engine: builds the requests, calls the services
//! (Placement, Scheduler, Catalog, Servers), follows pages, and turns the answers into
//! [`Output`] views.

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_proto::v1::server_action_request::Action;
use berth_proto::v1::servers_client::ServersClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::args::{
    AggregateCommand, AllocationCommand, Cli, Command, FlavorCommand, GroupCommand, HostCommand,
    ImageCommand, InventoryCommand, InventorySpec, Policy, QuotaCommand, RequestIdArg,
    ScheduleArgs, ServerActionCommand, ServerCommand, ServerCreateArgs, ServerMoveArgs,
    ServerState, ServerTarget, TraitCommand, UsageArgs, check_distinct_classes,
};
use crate::auth::{self, AuthChannel, BearerToken, Credentials, TokenSource};
use crate::error::{CliError, chain, status_line};
use crate::output::{
    AggregatesView, AllocationView, ConsumerView, DeletedView, EvacuationView, ExplainView,
    FlavorView, GroupView, HostUsageView, HostView, ImageView, InventoriesView, InventoryView,
    Output, ProjectUsageView, QuotaView, SelectionView, ServerActionView, ServerView,
    ServersDeletedView, TraitsView,
};

/// Attempts of a read-generation-then-replace write before a conflict is reported.
const WRITE_ATTEMPTS: usize = 3;
/// Pages fetched per list call.
const PAGE_SIZE: u32 = 500;
/// Metadata key the engine reads the caller's request id from (and logs it under).
pub const REQUEST_ID_KEY: &str = "x-request-id";

/// Normalises `--engine`: adds `http://` when no scheme is given; rejects anything that
/// is not an `http://` or `https://` URI.
pub fn engine_url(raw: &str) -> Result<String, CliError> {
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(CliError::Usage(format!(
            "--engine {raw}: expected an http:// or https:// URL such as http://127.0.0.1:50051"
        )));
    }
    Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::Usage(format!("--engine {raw}: {}", chain(&e))))?;
    Ok(url)
}

/// Clients of the engine's services over one channel.
#[derive(Debug, Clone)]
pub struct Clients {
    url: String,
    /// `--timeout`: also sent as each mutation's deadline.
    timeout: Duration,
    placement: PlacementClient<AuthChannel>,
    scheduler: SchedulerClient<AuthChannel>,
    catalog: CatalogClient<AuthChannel>,
    servers: ServersClient<AuthChannel>,
    /// Where the token came from, for the hint on UNAUTHENTICATED.
    token_source: TokenSource,
}

impl Clients {
    /// Connects to `url` (already normalised by [`engine_url`]) sending `credentials`'
    /// token, over TLS checked against `ca_cert` for an `https://` URL; a failure to
    /// connect is [`CliError::Unreachable`].
    pub async fn connect(
        url: &str,
        timeout: Duration,
        credentials: Credentials,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self, CliError> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| CliError::Usage(format!("--engine {url}: {}", chain(&e))))?
            .connect_timeout(timeout)
            .timeout(timeout);
        if url.starts_with("https://") {
            let path = ca_cert.ok_or_else(|| {
                CliError::Usage(format!(
                    "--engine {url}: https needs the CA that signed the engine's certificate \
                     (--ca-cert or BERTH_CA_CERT; berth-engine cert init writes ca.pem)"
                ))
            })?;
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--ca-cert {}: {e}", path.display())))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| CliError::Usage(format!("--ca-cert: {}", chain(&e))))?;
        } else if let Some(path) = ca_cert {
            return Err(CliError::Usage(format!(
                "--ca-cert {} is for TLS: use an https:// --engine URL",
                path.display()
            )));
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::Unreachable {
                url: url.to_owned(),
                reason: chain(&e),
            })?;
        let channel = InterceptedService::new(channel, BearerToken::new(credentials.header));
        Ok(Self {
            url: url.to_owned(),
            timeout,
            placement: PlacementClient::new(channel.clone()),
            scheduler: SchedulerClient::new(channel.clone()),
            catalog: CatalogClient::new(channel.clone()),
            servers: ServersClient::new(channel),
            token_source: credentials.source,
        })
    }

    fn fail(&self, status: Status) -> CliError {
        match auth::hint(&status, &self.token_source) {
            Some(hint) => CliError::Hinted {
                error: Box::new(CliError::Rpc(status)),
                hint,
            },
            None => CliError::from_status(status, &self.url),
        }
    }
}

/// Runs the command. The caller prints the result.
pub async fn execute(cli: &Cli) -> Result<Output, CliError> {
    let url = engine_url(&cli.engine)?;
    // Checks that need no engine come first, so a bad command line is exit 2 even when
    // the engine is down.
    precheck(&cli.command)?;
    let credentials = auth::credentials(&url, cli.token.as_deref(), &cli.data_dir)?;
    let mut c = Clients::connect(
        &url,
        Duration::from_secs(cli.timeout),
        credentials,
        cli.ca_cert.as_deref(),
    )
    .await?;
    let result = dispatch(&mut c, &cli.command).await;
    result.map_err(|e| match e {
        CliError::Rpc(status) => c.fail(status),
        other => other,
    })
}

/// Command-line checks that clap cannot express.
pub fn precheck(cmd: &Command) -> Result<(), CliError> {
    match cmd {
        Command::Inventory(InventoryCommand::Set(a)) => {
            check_distinct_classes(&a.specs).map_err(CliError::Usage)
        }
        Command::Host(HostCommand::Create(a)) => {
            check_distinct_classes(&a.inventories).map_err(CliError::Usage)
        }
        Command::Group(GroupCommand::Create(a))
            if a.max_per_host.is_some() && a.policy != Policy::AntiAffinity =>
        {
            Err(CliError::Usage(
                "--max-per-host only applies to --policy anti-affinity".into(),
            ))
        }
        Command::Schedule(a)
            if !a.instance_uuid.is_empty()
                && a.count != 1
                && a.count as usize != a.instance_uuid.len() =>
        {
            Err(CliError::Usage(format!(
                "--count {} but {} --instance-uuid given; they must match",
                a.count,
                a.instance_uuid.len()
            )))
        }
        Command::Server(ServerCommand::Create(a)) => {
            first_duplicate(a.metadata.iter().map(|(k, _)| k)).map_or(Ok(()), |k| {
                Err(CliError::Usage(format!("--meta key '{k}' is given twice")))
            })
        }
        Command::Quota(QuotaCommand::Set(a)) => {
            let named: Vec<String> = a
                .limits()
                .into_iter()
                .map(|(r, _)| r)
                .chain(a.unset.iter().cloned())
                .collect();
            if named.is_empty() {
                return Err(CliError::Usage(
                    "quota set: give a limit (--instances, --vcpu, --memory-mb, --class) or \
                     --unset"
                        .into(),
                ));
            }
            first_duplicate(&named).map_or(Ok(()), |r| {
                Err(CliError::Usage(format!("{r} is given twice")))
            })
        }
        Command::Server(ServerCommand::Delete(a)) => first_duplicate(&a.uuids)
            .map_or(Ok(()), |u| {
                Err(CliError::Usage(format!("server {u} is given twice")))
            }),
        _ => Ok(()),
    }
}

/// The first item that occurs twice.
fn first_duplicate<'a, I: IntoIterator<Item = &'a String>>(items: I) -> Option<&'a String> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().find(|i| !seen.insert(*i))
}

async fn dispatch(c: &mut Clients, cmd: &Command) -> Result<Output, CliError> {
    match cmd {
        Command::Server(s) => server(c, s).await,
        Command::Host(h) => host(c, h).await,
        Command::Inventory(i) => inventory(c, i).await,
        Command::Trait(t) => traits(c, t).await,
        Command::Aggregate(a) => aggregates(c, a).await,
        Command::Flavor(f) => flavor(c, f).await,
        Command::Image(i) => image(c, i).await,
        Command::Group(g) => group(c, g).await,
        Command::Schedule(s) => schedule(c, s).await,
        Command::Allocation(a) => allocation(c, a).await,
        Command::Usage(u) => usage(c, u).await,
        Command::Quota(q) => quota(c, q).await,
    }
}

// ---- helpers -----------------------------------------------------------------------------

/// Follows `next_page_token` until the last page. `fetch(token)` returns one page's items
/// and the next token. A server that hands back a token it already gave is an error, not
/// an endless loop.
async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, CliError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    let mut seen = std::collections::HashSet::new();
    loop {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        if !seen.insert(next.clone()) {
            return Err(Status::internal(format!(
                "engine returned page token {next:?} twice; stopping"
            ))
            .into());
        }
        token = next;
    }
}

/// A host argument to a provider UUID: a UUID is taken as is (normalised); anything else
/// is looked up as a name.
async fn resolve_host(c: &mut Clients, host: &str) -> Result<String, CliError> {
    if let Ok(u) = uuid::Uuid::parse_str(host) {
        return Ok(u.hyphenated().to_string());
    }
    let resp = c
        .placement
        .list_resource_providers(pb::ListResourceProvidersRequest {
            name: host.to_owned(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    resp.providers
        .into_iter()
        .next()
        .map(|p| p.uuid)
        .ok_or_else(|| Status::not_found(format!("no host with UUID or name '{host}'")).into())
}

fn inventory_to_proto(s: &InventorySpec) -> pb::Inventory {
    pb::Inventory {
        resource_class: s.class.clone(),
        total: s.total,
        reserved: s.reserved.unwrap_or(0),
        min_unit: s.min_unit.unwrap_or(0),
        max_unit: s.max_unit.unwrap_or(0),
        step_size: s.step_size.unwrap_or(0),
        allocation_ratio: s.ratio.unwrap_or(0.0),
    }
}

/// The inventory list to send: the specs alone, or with `amend` the current inventory with
/// each named class replaced (or added).
pub fn merge_inventories(
    current: &[pb::Inventory],
    specs: &[InventorySpec],
    amend: bool,
) -> Vec<pb::Inventory> {
    let mut out: Vec<pb::Inventory> = if amend {
        current
            .iter()
            .filter(|i| !specs.iter().any(|s| s.class == i.resource_class))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    out.extend(specs.iter().map(inventory_to_proto));
    out.sort_by(|a, b| a.resource_class.cmp(&b.resource_class));
    out
}

/// Runs `attempt` up to [`WRITE_ATTEMPTS`] times while it fails with ABORTED (a
/// generation conflict: someone wrote the provider between our read and our write).
async fn retry_on_conflict<T, F, Fut>(mut attempt: F) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut n = 1;
    loop {
        match attempt().await {
            Err(s) if s.code() == Code::Aborted && n < WRITE_ATTEMPTS => n += 1,
            Err(s) if s.code() == Code::Aborted => {
                return Err(Status::aborted(format!(
                    "{} (gave up after {WRITE_ATTEMPTS} attempts: the host keeps changing)",
                    s.message()
                ))
                .into());
            }
            other => return other.map_err(Into::into),
        }
    }
}

fn to_amounts(resources: &[crate::args::ResourceArg]) -> Vec<pb::ResourceAmount> {
    resources
        .iter()
        .map(|r| pb::ResourceAmount {
            resource_class: r.class.clone(),
            amount: r.amount,
        })
        .collect()
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

// ---- host --------------------------------------------------------------------------------

async fn host(c: &mut Clients, cmd: &HostCommand) -> Result<Output, CliError> {
    match cmd {
        HostCommand::List(a) => {
            let req = pb::ListResourceProvidersRequest {
                name: opt(&a.name),
                availability_zone: opt(&a.az),
                required_traits: a.traits.clone(),
                member_of: a.member_of.clone(),
                resources: to_amounts(&a.resource),
                page_size: PAGE_SIZE,
                page_token: String::new(),
            };
            let placement = c.placement.clone();
            let hosts = all_pages(|token| {
                let mut p = placement.clone();
                let mut req = req.clone();
                req.page_token = token;
                async move {
                    let r = p.list_resource_providers(req).await?.into_inner();
                    Ok((r.providers, r.next_page_token))
                }
            })
            .await?;
            Ok(Output::Hosts(
                hosts.into_iter().map(HostView::from).collect(),
            ))
        }
        HostCommand::Show { host } => {
            let uuid = resolve_host(c, host).await?;
            Ok(Output::Host(Box::new(get_host(c, &uuid).await?)))
        }
        HostCommand::Create(a) => {
            let resp = c
                .placement
                .create_resource_provider(pb::CreateResourceProviderRequest {
                    uuid: opt(&a.uuid),
                    name: a.name.clone(),
                    availability_zone: opt(&a.az),
                    traits: a.traits.clone(),
                    aggregates: a.aggregates.clone(),
                    inventories: merge_inventories(&[], &a.inventories, false),
                    capabilities: a.capabilities.iter().cloned().collect(),
                    arch: opt(&a.arch),
                    hypervisor_type: opt(&a.hypervisor_type),
                    hypervisor_version: opt(&a.hypervisor_version),
                })
                .await?
                .into_inner();
            let p = resp
                .provider
                .ok_or_else(|| Status::internal("CreateResourceProvider returned no provider"))?;
            Ok(Output::Host(Box::new(p.into())))
        }
        HostCommand::Delete { host } => {
            let uuid = resolve_host(c, host).await?;
            c.placement
                .delete_resource_provider(pb::DeleteResourceProviderRequest { uuid: uuid.clone() })
                .await?;
            Ok(Output::Deleted(DeletedView {
                deleted: "host",
                id: uuid,
            }))
        }
        HostCommand::Disable { host, reason } => {
            set_host_enabled(c, host, false, opt(reason)).await
        }
        HostCommand::Enable { host } => set_host_enabled(c, host, true, String::new()).await,
        HostCommand::Evacuate { host, request } => {
            let id = request_id(request);
            let req = mutation(
                pb::EvacuateHostRequest {
                    host: host.clone(),
                    request_id: id.clone(),
                },
                &id,
                c.timeout,
            )?;
            let resp = match c.servers.evacuate_host(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Err(mutation_error(s, &c.url, &id)),
            };
            Ok(Output::Evacuation(EvacuationView {
                host: host.clone(),
                request_id: id,
                results: resp.results.into_iter().map(Into::into).collect(),
            }))
        }
    }
}

/// Servers.SetHostEnabled. It has no request id field (setting a flag is idempotent by
/// nature); a fresh id still goes out as `x-request-id` so the engine's log names the call.
async fn set_host_enabled(
    c: &mut Clients,
    host: &str,
    enabled: bool,
    reason: String,
) -> Result<Output, CliError> {
    let id = uuid::Uuid::new_v4().to_string();
    let req = mutation(
        pb::SetHostEnabledRequest {
            host: host.to_owned(),
            enabled,
            reason,
        },
        &id,
        c.timeout,
    )?;
    let p = c
        .servers
        .set_host_enabled(req)
        .await?
        .into_inner()
        .host
        .ok_or_else(|| Status::internal("SetHostEnabled returned no host"))?;
    Ok(Output::Host(Box::new(p.into())))
}

async fn get_host(c: &mut Clients, uuid: &str) -> Result<HostView, CliError> {
    let p = c
        .placement
        .get_resource_provider(pb::GetResourceProviderRequest {
            uuid: uuid.to_owned(),
        })
        .await?
        .into_inner()
        .provider
        .ok_or_else(|| Status::internal("GetResourceProvider returned no provider"))?;
    Ok(p.into())
}

// ---- servers -----------------------------------------------------------------------------

/// The request id to send: the one given with `--request-id`, or a fresh UUID v4.
pub fn request_id(arg: &RequestIdArg) -> String {
    arg.request_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A mutating request: `request_id` also goes out as `x-request-id` metadata (so the
/// engine's logs carry the id the caller can retry with), and the call's deadline as
/// `grpc-timeout` (the contract: the client's deadline bounds the engine's wait).
pub fn mutation<T>(
    message: T,
    request_id: &str,
    timeout: Duration,
) -> Result<tonic::Request<T>, CliError> {
    let value: MetadataValue<Ascii> = request_id.parse().map_err(|_| {
        CliError::Usage(format!(
            "request id '{request_id}' cannot be sent as x-request-id metadata"
        ))
    })?;
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(REQUEST_ID_KEY, value);
    req.set_timeout(timeout);
    Ok(req)
}

/// A failed mutation. When the outcome is unknown (deadline passed, connection lost) the
/// engine may have done the work, so the error says how to retry without doing it twice.
pub fn mutation_error(status: Status, url: &str, request_id: &str) -> CliError {
    let e = CliError::from_status(status, url);
    let uncertain = match &e {
        CliError::Unreachable { .. } => true,
        CliError::Rpc(s) => matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled),
        _ => false,
    };
    if uncertain {
        CliError::Hinted {
            error: Box::new(e),
            hint: format!(
                "the engine may have done it, or may still be doing it; repeat the command \
                 with --request-id {request_id} to retry without doing it twice"
            ),
        }
    } else {
        e
    }
}

/// The CreateServer request for `berth server create`.
pub fn create_server_request(a: &ServerCreateArgs, request_id: &str) -> pb::CreateServerRequest {
    pb::CreateServerRequest {
        name: a.name.clone(),
        flavor: a.flavor.clone(),
        image: a.image.clone(),
        group: opt(&a.group),
        availability_zone: opt(&a.az),
        count: a.count,
        metadata: a.metadata.iter().cloned().collect(),
        project_id: a.project.clone(),
        user_id: a.user.clone(),
        request_id: request_id.to_owned(),
        required_traits: a.traits.clone(),
        forbidden_traits: a.forbid_trait.clone(),
        force_hosts: a.hosts.clone(),
    }
}

/// The wire value of a CLI vm_state.
pub fn vm_state_to_proto(s: ServerState) -> pb::VmState {
    match s {
        ServerState::Building => pb::VmState::Building,
        ServerState::Active => pb::VmState::Active,
        ServerState::Stopped => pb::VmState::Stopped,
        ServerState::Paused => pb::VmState::Paused,
        ServerState::Suspended => pb::VmState::Suspended,
        ServerState::Resized => pb::VmState::Resized,
        ServerState::Shelved => pb::VmState::Shelved,
        ServerState::ShelvedOffloaded => pb::VmState::ShelvedOffloaded,
        ServerState::Error => pb::VmState::Error,
    }
}

/// For an action subcommand: the target server and the `ServerAction` oneof to send.
pub fn server_action(cmd: &ServerActionCommand) -> (&ServerTarget, Action) {
    use ServerActionCommand as C;
    let no = pb::NoArgs {};
    let moved = |a: &ServerMoveArgs| pb::MoveArgs { host: opt(&a.host) };
    match cmd {
        C::Stop(t) => (t, Action::Stop(no)),
        C::Start(t) => (t, Action::Start(no)),
        C::Reboot(a) => (&a.target, Action::Reboot(pb::RebootArgs { hard: a.hard })),
        C::Pause(t) => (t, Action::Pause(no)),
        C::Unpause(t) => (t, Action::Unpause(no)),
        C::Suspend(t) => (t, Action::Suspend(no)),
        C::Resume(t) => (t, Action::Resume(no)),
        C::Snapshot(a) => (
            &a.target,
            Action::Snapshot(pb::SnapshotArgs {
                image_name: a.name.clone(),
            }),
        ),
        C::Rebuild(a) => (
            &a.target,
            Action::Rebuild(pb::RebuildArgs {
                image: opt(&a.image),
            }),
        ),
        C::Shelve(t) => (t, Action::Shelve(no)),
        C::ShelveOffload(t) => (t, Action::ShelveOffload(no)),
        C::Unshelve(t) => (t, Action::Unshelve(no)),
        C::Resize(a) => (
            &a.target,
            Action::Resize(pb::ResizeArgs {
                flavor: a.flavor.clone(),
            }),
        ),
        C::ConfirmResize(t) => (t, Action::ConfirmResize(no)),
        C::RevertResize(t) => (t, Action::RevertResize(no)),
        C::Migrate(a) => (&a.target, Action::Migrate(moved(a))),
        C::LiveMigrate(a) => (&a.target, Action::LiveMigrate(moved(a))),
        C::Evacuate(a) => (&a.target, Action::Evacuate(moved(a))),
        C::Lock(a) => (
            &a.target,
            Action::Lock(pb::LockArgs {
                reason: opt(&a.reason),
            }),
        ),
        C::Unlock(t) => (t, Action::Unlock(no)),
    }
}

/// The name the action history uses for an action (`live_migrate`, `shelve_offload`).
pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Stop(_) => "stop",
        Action::Start(_) => "start",
        Action::Reboot(_) => "reboot",
        Action::Pause(_) => "pause",
        Action::Unpause(_) => "unpause",
        Action::Suspend(_) => "suspend",
        Action::Resume(_) => "resume",
        Action::Snapshot(_) => "snapshot",
        Action::Rebuild(_) => "rebuild",
        Action::Shelve(_) => "shelve",
        Action::ShelveOffload(_) => "shelve_offload",
        Action::Unshelve(_) => "unshelve",
        Action::Resize(_) => "resize",
        Action::ConfirmResize(_) => "confirm_resize",
        Action::RevertResize(_) => "revert_resize",
        Action::Migrate(_) => "migrate",
        Action::LiveMigrate(_) => "live_migrate",
        Action::Evacuate(_) => "evacuate",
        Action::Lock(_) => "lock",
        Action::Unlock(_) => "unlock",
    }
}

/// The view of a ServerAction answer. The outcome is read from the server's history entry
/// for `request_id` (the newest one, should the id have been reused): a node action that
/// failed is recorded there while the call itself succeeds.
pub fn action_view(
    action: &'static str,
    request_id: &str,
    resp: pb::ServerActionResponse,
) -> Result<ServerActionView, CliError> {
    let server: ServerView = resp
        .server
        .ok_or_else(|| Status::internal("ServerAction returned no server"))?
        .into();
    let record = server
        .actions
        .iter()
        .rev()
        .find(|r| r.request_id.as_deref() == Some(request_id));
    let (ok, message) = match record {
        Some(r) if r.finished_at_ms.is_some() => (Some(r.ok), Some(r.message.clone())),
        Some(r) => (None, Some(r.message.clone())),
        None => (None, None),
    };
    Ok(ServerActionView {
        action: action.to_owned(),
        request_id: request_id.to_owned(),
        ok,
        message,
        image_id: (!resp.image_id.is_empty()).then_some(resp.image_id),
        server,
    })
}

async fn server(c: &mut Clients, cmd: &ServerCommand) -> Result<Output, CliError> {
    match cmd {
        ServerCommand::Action(a) => {
            let (target, action) = server_action(a);
            let id = request_id(&target.request);
            let name = action_name(&action);
            let req = mutation(
                pb::ServerActionRequest {
                    uuid: target.uuid.clone(),
                    request_id: id.clone(),
                    action: Some(action),
                },
                &id,
                c.timeout,
            )?;
            let resp = match c.servers.server_action(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Err(mutation_error(s, &c.url, &id)),
            };
            Ok(Output::ServerAction(Box::new(action_view(
                name, &id, resp,
            )?)))
        }
        ServerCommand::Create(a) => {
            let id = request_id(&a.request);
            let req = mutation(create_server_request(a, &id), &id, c.timeout)?;
            let resp = match c.servers.create_server(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => return Err(mutation_error(s, &c.url, &id)),
            };
            Ok(Output::ServersCreated(
                resp.servers.into_iter().map(ServerView::from).collect(),
            ))
        }
        ServerCommand::List(a) => {
            let req = pb::ListServersRequest {
                host: opt(&a.host),
                project_id: opt(&a.project),
                vm_state: a
                    .state
                    .map_or(pb::VmState::Unspecified, vm_state_to_proto)
                    .into(),
                page_size: PAGE_SIZE,
                page_token: String::new(),
            };
            let servers = c.servers.clone();
            let all = all_pages(|token| {
                let mut sc = servers.clone();
                let mut req = req.clone();
                req.page_token = token;
                async move {
                    let r = sc.list_servers(req).await?.into_inner();
                    Ok((r.servers, r.next_page_token))
                }
            })
            .await?;
            Ok(Output::Servers(
                all.into_iter().map(ServerView::from).collect(),
            ))
        }
        ServerCommand::Show { uuid } => {
            let s = c
                .servers
                .get_server(pb::GetServerRequest { uuid: uuid.clone() })
                .await?
                .into_inner()
                .server
                .ok_or_else(|| Status::internal("GetServer returned no server"))?;
            Ok(Output::Server(Box::new(s.into())))
        }
        ServerCommand::Delete(a) => {
            let id = request_id(&a.request);
            let mut view = ServersDeletedView {
                deleted: Vec::new(),
                failures: Vec::new(),
            };
            for uuid in &a.uuids {
                let req = mutation(
                    pb::DeleteServerRequest {
                        uuid: uuid.clone(),
                        request_id: id.clone(),
                    },
                    &id,
                    c.timeout,
                )?;
                match c.servers.delete_server(req).await {
                    Ok(_) => view.deleted.push(DeletedView {
                        deleted: "server",
                        id: uuid.clone(),
                    }),
                    Err(s) => match mutation_error(s, &c.url, &id) {
                        // One server: its error is the command's error, as for any delete.
                        // Several: the others are still tried; the failures go to stderr.
                        CliError::Rpc(s) if a.uuids.len() > 1 => {
                            view.failures.push(format!("{uuid}: {}", status_line(&s)));
                        }
                        e => return Err(e),
                    },
                }
            }
            Ok(Output::ServersDeleted(view))
        }
    }
}

// ---- inventory / traits / aggregates -----------------------------------------------------

async fn inventory(c: &mut Clients, cmd: &InventoryCommand) -> Result<Output, CliError> {
    match cmd {
        InventoryCommand::Set(a) => {
            let uuid = resolve_host(c, &a.host).await?;
            let placement = c.placement.clone();
            let resp = retry_on_conflict(|| {
                let mut p = placement.clone();
                let uuid = uuid.clone();
                async move {
                    let cur = p
                        .get_inventories(pb::GetInventoriesRequest { uuid: uuid.clone() })
                        .await?
                        .into_inner();
                    let inventories = merge_inventories(&cur.inventories, &a.specs, a.amend);
                    p.replace_inventories(pb::ReplaceInventoriesRequest {
                        uuid,
                        generation: cur.generation,
                        inventories,
                    })
                    .await
                    .map(tonic::Response::into_inner)
                }
            })
            .await?;
            Ok(Output::Inventories(InventoriesView {
                host_uuid: uuid,
                generation: resp.generation,
                inventories: resp.inventories.iter().map(InventoryView::from).collect(),
                usages: Vec::new(),
            }))
        }
        InventoryCommand::Show { host } => {
            let uuid = resolve_host(c, host).await?;
            let h = get_host(c, &uuid).await?;
            Ok(Output::Inventories(InventoriesView {
                host_uuid: h.uuid,
                generation: h.generation,
                inventories: h.inventories,
                usages: h.usages,
            }))
        }
    }
}

async fn traits(c: &mut Clients, cmd: &TraitCommand) -> Result<Output, CliError> {
    match cmd {
        TraitCommand::Set {
            host,
            traits,
            clear,
        } => {
            let uuid = resolve_host(c, host).await?;
            let new: Vec<String> = if *clear { Vec::new() } else { traits.clone() };
            let placement = c.placement.clone();
            let resp = retry_on_conflict(|| {
                let mut p = placement.clone();
                let uuid = uuid.clone();
                let new = new.clone();
                async move {
                    let cur = p
                        .get_traits(pb::GetTraitsRequest { uuid: uuid.clone() })
                        .await?
                        .into_inner();
                    p.replace_traits(pb::ReplaceTraitsRequest {
                        uuid,
                        generation: cur.generation,
                        traits: new,
                    })
                    .await
                    .map(tonic::Response::into_inner)
                }
            })
            .await?;
            Ok(Output::Traits(TraitsView {
                host_uuid: uuid,
                generation: resp.generation,
                traits: resp.traits,
            }))
        }
        TraitCommand::Show { host } => {
            let uuid = resolve_host(c, host).await?;
            let r = c
                .placement
                .get_traits(pb::GetTraitsRequest { uuid: uuid.clone() })
                .await?
                .into_inner();
            Ok(Output::Traits(TraitsView {
                host_uuid: uuid,
                generation: r.generation,
                traits: r.traits,
            }))
        }
        TraitCommand::List { prefix } => {
            let r = c
                .placement
                .list_traits(pb::ListTraitsRequest {
                    prefix: prefix.clone(),
                })
                .await?
                .into_inner();
            Ok(Output::TraitNames(r.traits))
        }
    }
}

async fn aggregates(c: &mut Clients, cmd: &AggregateCommand) -> Result<Output, CliError> {
    match cmd {
        AggregateCommand::Set {
            host,
            aggregates,
            clear,
        } => {
            let uuid = resolve_host(c, host).await?;
            let new: Vec<String> = if *clear {
                Vec::new()
            } else {
                aggregates.clone()
            };
            let placement = c.placement.clone();
            let resp = retry_on_conflict(|| {
                let mut p = placement.clone();
                let uuid = uuid.clone();
                let new = new.clone();
                async move {
                    let cur = p
                        .get_aggregates(pb::GetAggregatesRequest { uuid: uuid.clone() })
                        .await?
                        .into_inner();
                    p.replace_aggregates(pb::ReplaceAggregatesRequest {
                        uuid,
                        generation: cur.generation,
                        aggregates: new,
                    })
                    .await
                    .map(tonic::Response::into_inner)
                }
            })
            .await?;
            Ok(Output::Aggregates(AggregatesView {
                host_uuid: uuid,
                generation: resp.generation,
                aggregates: resp.aggregates,
            }))
        }
        AggregateCommand::Show { host } => {
            let uuid = resolve_host(c, host).await?;
            let r = c
                .placement
                .get_aggregates(pb::GetAggregatesRequest { uuid: uuid.clone() })
                .await?
                .into_inner();
            Ok(Output::Aggregates(AggregatesView {
                host_uuid: uuid,
                generation: r.generation,
                aggregates: r.aggregates,
            }))
        }
    }
}

// ---- catalog -----------------------------------------------------------------------------

async fn flavor(c: &mut Clients, cmd: &FlavorCommand) -> Result<Output, CliError> {
    match cmd {
        FlavorCommand::Create(a) => {
            let f = c
                .catalog
                .create_flavor(pb::CreateFlavorRequest {
                    id: opt(&a.id),
                    name: a.name.clone(),
                    vcpus: a.vcpus,
                    ram_mb: a.ram,
                    disk_gb: a.disk,
                    extra_specs: a.properties.iter().cloned().collect(),
                })
                .await?
                .into_inner()
                .flavor
                .ok_or_else(|| Status::internal("CreateFlavor returned no flavor"))?;
            Ok(Output::Flavor(f.into()))
        }
        FlavorCommand::List => {
            let catalog = c.catalog.clone();
            let fs = all_pages(|token| {
                let mut cc = catalog.clone();
                async move {
                    let r = cc
                        .list_flavors(pb::ListFlavorsRequest {
                            page_size: PAGE_SIZE,
                            page_token: token,
                        })
                        .await?
                        .into_inner();
                    Ok((r.flavors, r.next_page_token))
                }
            })
            .await?;
            Ok(Output::Flavors(
                fs.into_iter().map(FlavorView::from).collect(),
            ))
        }
        FlavorCommand::Show { flavor } => {
            let f = c
                .catalog
                .get_flavor(pb::GetFlavorRequest { id: flavor.clone() })
                .await?
                .into_inner()
                .flavor
                .ok_or_else(|| Status::internal("GetFlavor returned no flavor"))?;
            Ok(Output::Flavor(f.into()))
        }
        FlavorCommand::Delete { flavor } => {
            c.catalog
                .delete_flavor(pb::DeleteFlavorRequest { id: flavor.clone() })
                .await?;
            Ok(Output::Deleted(DeletedView {
                deleted: "flavor",
                id: flavor.clone(),
            }))
        }
    }
}

async fn image(c: &mut Clients, cmd: &ImageCommand) -> Result<Output, CliError> {
    match cmd {
        ImageCommand::Create(a) => {
            let i = c
                .catalog
                .create_image(pb::CreateImageRequest {
                    id: opt(&a.id),
                    name: a.name.clone(),
                    properties: a.properties.iter().cloned().collect(),
                })
                .await?
                .into_inner()
                .image
                .ok_or_else(|| Status::internal("CreateImage returned no image"))?;
            Ok(Output::Image(i.into()))
        }
        ImageCommand::List => {
            let catalog = c.catalog.clone();
            let is = all_pages(|token| {
                let mut cc = catalog.clone();
                async move {
                    let r = cc
                        .list_images(pb::ListImagesRequest {
                            page_size: PAGE_SIZE,
                            page_token: token,
                        })
                        .await?
                        .into_inner();
                    Ok((r.images, r.next_page_token))
                }
            })
            .await?;
            Ok(Output::Images(
                is.into_iter().map(ImageView::from).collect(),
            ))
        }
        ImageCommand::Show { image } => {
            let i = c
                .catalog
                .get_image(pb::GetImageRequest { id: image.clone() })
                .await?
                .into_inner()
                .image
                .ok_or_else(|| Status::internal("GetImage returned no image"))?;
            Ok(Output::Image(i.into()))
        }
        ImageCommand::Delete { image } => {
            c.catalog
                .delete_image(pb::DeleteImageRequest { id: image.clone() })
                .await?;
            Ok(Output::Deleted(DeletedView {
                deleted: "image",
                id: image.clone(),
            }))
        }
    }
}

/// The wire value of a CLI policy.
pub fn policy_to_proto(p: Policy) -> pb::ServerGroupPolicy {
    match p {
        Policy::Affinity => pb::ServerGroupPolicy::Affinity,
        Policy::AntiAffinity => pb::ServerGroupPolicy::AntiAffinity,
        Policy::SoftAffinity => pb::ServerGroupPolicy::SoftAffinity,
        Policy::SoftAntiAffinity => pb::ServerGroupPolicy::SoftAntiAffinity,
    }
}

async fn group(c: &mut Clients, cmd: &GroupCommand) -> Result<Output, CliError> {
    match cmd {
        GroupCommand::Create(a) => {
            let g = c
                .catalog
                .create_server_group(pb::CreateServerGroupRequest {
                    id: opt(&a.id),
                    name: a.name.clone(),
                    policy: policy_to_proto(a.policy).into(),
                    max_server_per_host: a.max_per_host.unwrap_or(0),
                    project_id: a.project.clone(),
                })
                .await?
                .into_inner()
                .server_group
                .ok_or_else(|| Status::internal("CreateServerGroup returned no group"))?;
            Ok(Output::Group(g.into()))
        }
        GroupCommand::List => {
            let catalog = c.catalog.clone();
            let gs = all_pages(|token| {
                let mut cc = catalog.clone();
                async move {
                    let r = cc
                        .list_server_groups(pb::ListServerGroupsRequest {
                            page_size: PAGE_SIZE,
                            page_token: token,
                        })
                        .await?
                        .into_inner();
                    Ok((r.server_groups, r.next_page_token))
                }
            })
            .await?;
            Ok(Output::Groups(
                gs.into_iter().map(GroupView::from).collect(),
            ))
        }
        GroupCommand::Show { group } => {
            let g = c
                .catalog
                .get_server_group(pb::GetServerGroupRequest { id: group.clone() })
                .await?
                .into_inner()
                .server_group
                .ok_or_else(|| Status::internal("GetServerGroup returned no group"))?;
            Ok(Output::Group(g.into()))
        }
        GroupCommand::Delete { group } => {
            c.catalog
                .delete_server_group(pb::DeleteServerGroupRequest { id: group.clone() })
                .await?;
            Ok(Output::Deleted(DeletedView {
                deleted: "group",
                id: group.clone(),
            }))
        }
    }
}

// ---- schedule ----------------------------------------------------------------------------

/// The RequestSpec for `berth schedule`.
pub fn request_spec(a: &ScheduleArgs) -> pb::RequestSpec {
    pb::RequestSpec {
        flavor: a.flavor.clone(),
        resources: to_amounts(&a.resources),
        required_traits: a.require_trait.clone(),
        forbidden_traits: a.forbid_trait.clone(),
        member_of: a
            .member_of
            .iter()
            .map(|set| pb::AggregateSet {
                aggregates: set.clone(),
            })
            .collect(),
        forbidden_aggregates: a.forbid_aggregate.clone(),
        availability_zone: opt(&a.az),
        group: opt(&a.group),
        image: opt(&a.image),
        num_instances: if a.instance_uuid.is_empty() {
            a.count
        } else {
            0
        },
        instance_uuids: a.instance_uuid.clone(),
        ignore_hosts: a.ignore_host.clone(),
        force_hosts: a.force_host.clone(),
        same_host: Vec::new(),
        different_host: Vec::new(),
        project_id: a.project.clone(),
        user_id: a.user.clone(),
    }
}

async fn schedule(c: &mut Clients, a: &ScheduleArgs) -> Result<Output, CliError> {
    let spec = request_spec(a);
    if a.dry_run {
        let r = c
            .scheduler
            .explain(pb::ExplainRequest { spec: Some(spec) })
            .await?
            .into_inner();
        return Ok(Output::Explain(ExplainView::from(r)));
    }
    let r = c
        .scheduler
        .select_destinations(pb::SelectDestinationsRequest { spec: Some(spec) })
        .await?
        .into_inner();
    Ok(Output::Selections(
        r.selections.into_iter().map(SelectionView::from).collect(),
    ))
}

// ---- allocations / usage -----------------------------------------------------------------

async fn allocation(c: &mut Clients, cmd: &AllocationCommand) -> Result<Output, CliError> {
    match cmd {
        AllocationCommand::Show { consumer } => {
            let r = c
                .placement
                .get_allocations(pb::GetAllocationsRequest {
                    consumer_uuid: consumer.clone(),
                })
                .await?
                .into_inner();
            let mut allocations: Vec<AllocationView> =
                r.allocations.into_iter().map(Into::into).collect();
            // Names make the table readable; a host deleted meanwhile just has none.
            let mut names: HashMap<String, Option<String>> = HashMap::new();
            for a in &mut allocations {
                if !names.contains_key(&a.provider_uuid) {
                    let name = match get_host(c, &a.provider_uuid).await {
                        Ok(h) => Some(h.name),
                        Err(CliError::Rpc(_)) => None,
                        Err(e) => return Err(e),
                    };
                    names.insert(a.provider_uuid.clone(), name);
                }
                a.provider_name = names.get(&a.provider_uuid).cloned().flatten();
            }
            Ok(Output::Consumer(ConsumerView {
                consumer_uuid: consumer.clone(),
                consumer_generation: r.consumer_generation,
                project_id: r.project_id,
                user_id: r.user_id,
                allocations,
            }))
        }
        AllocationCommand::Delete { consumer, release } => {
            if *release {
                c.scheduler
                    .release(pb::ReleaseRequest {
                        consumer_uuid: consumer.clone(),
                    })
                    .await?;
            } else {
                c.placement
                    .delete_allocations(pb::DeleteAllocationsRequest {
                        consumer_uuid: consumer.clone(),
                    })
                    .await?;
            }
            Ok(Output::Deleted(DeletedView {
                deleted: "allocation",
                id: consumer.clone(),
            }))
        }
    }
}

async fn usage(c: &mut Clients, a: &UsageArgs) -> Result<Output, CliError> {
    if let Some(project) = &a.project {
        let r = c
            .placement
            .get_project_usages(pb::GetProjectUsagesRequest {
                project_id: project.clone(),
                user_id: a.user.clone(),
            })
            .await?
            .into_inner();
        return Ok(Output::ProjectUsage(ProjectUsageView {
            project_id: project.clone(),
            user_id: a.user.clone(),
            instances: r.instances,
            usages: r
                .usages
                .into_iter()
                .map(|u| (u.resource_class, u.amount))
                .collect(),
        }));
    }
    let placement = c.placement.clone();
    let hosts = all_pages(|token| {
        let mut p = placement.clone();
        async move {
            let r = p
                .list_resource_providers(pb::ListResourceProvidersRequest {
                    page_size: PAGE_SIZE,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((r.providers, r.next_page_token))
        }
    })
    .await?;
    let mut rows: Vec<HostUsageView> = hosts.into_iter().map(HostUsageView::from).collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Output::HostUsages(rows))
}

async fn quota(c: &mut Clients, q: &QuotaCommand) -> Result<Output, CliError> {
    let (project_id, limits) = match q {
        QuotaCommand::Show { project } => {
            let r = c
                .placement
                .get_quota(pb::GetQuotaRequest {
                    project_id: project.clone(),
                })
                .await?
                .into_inner();
            (r.project_id, r.limits)
        }
        QuotaCommand::Set(a) => {
            let r = c
                .placement
                .set_quota(pb::SetQuotaRequest {
                    project_id: a.project.clone(),
                    limits: a
                        .limits()
                        .into_iter()
                        .map(|(resource, limit)| pb::QuotaSetting { resource, limit })
                        .collect(),
                    unset: a.unset.clone(),
                })
                .await?
                .into_inner();
            (r.project_id, r.limits)
        }
    };
    Ok(Output::Quota(QuotaView::new(project_id, limits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::parse_inventory;
    use clap::Parser;

    #[test]
    fn engine_urls_are_normalised() {
        assert_eq!(
            engine_url("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(engine_url("http://h:1").unwrap(), "http://h:1");
        assert_eq!(engine_url("https://h:1").unwrap(), "https://h:1");
        assert_eq!(engine_url("ftp://h:1").unwrap_err().exit_code(), 2);
        assert_eq!(engine_url("http://bad host").unwrap_err().exit_code(), 2);
    }

    #[tokio::test]
    async fn https_needs_a_ca_and_a_ca_needs_https() {
        let none = || Credentials {
            header: None,
            source: TokenSource::Missing { looked: None },
        };
        let t = Duration::from_secs(1);
        let e = Clients::connect("https://127.0.0.1:1", t, none(), None)
            .await
            .unwrap_err();
        assert!(e.render().contains("--ca-cert"), "{}", e.render());
        assert_eq!(e.exit_code(), 2);
        let e = Clients::connect("http://127.0.0.1:1", t, none(), Some("ca.pem".as_ref()))
            .await
            .unwrap_err();
        assert!(e.render().contains("https://"), "{}", e.render());
        let e = Clients::connect(
            "https://127.0.0.1:1",
            t,
            none(),
            Some("/nonexistent/ca.pem".as_ref()),
        )
        .await
        .unwrap_err();
        assert!(e.render().contains("/nonexistent/ca.pem"), "{}", e.render());
    }

    fn inv(class: &str, total: u64) -> pb::Inventory {
        pb::Inventory {
            resource_class: class.into(),
            total,
            reserved: 0,
            min_unit: 1,
            max_unit: total,
            step_size: 1,
            allocation_ratio: 1.0,
        }
    }

    #[test]
    fn replace_drops_unnamed_classes_amend_keeps_them() {
        let current = [inv("DISK_GB", 100), inv("MEMORY_MB", 1024), inv("VCPU", 8)];
        let specs = [parse_inventory("VCPU=16,ratio=4.0").unwrap()];
        let replaced = merge_inventories(&current, &specs, false);
        assert_eq!(replaced.len(), 1);
        assert_eq!(replaced[0].resource_class, "VCPU");
        assert_eq!(replaced[0].total, 16);
        assert_eq!(replaced[0].allocation_ratio, 4.0);
        // Settings not given are sent as 0: the engine's default.
        assert_eq!(replaced[0].max_unit, 0);

        let amended = merge_inventories(&current, &specs, true);
        let classes: Vec<&str> = amended.iter().map(|i| i.resource_class.as_str()).collect();
        assert_eq!(classes, ["DISK_GB", "MEMORY_MB", "VCPU"]);
        assert_eq!(amended[2].total, 16);
        assert_eq!(amended[0], current[0]);
    }

    #[test]
    fn request_spec_maps_every_flag() {
        let cli = Cli::try_parse_from([
            "berth",
            "schedule",
            "--flavor",
            "m1",
            "--image",
            "img",
            "--az",
            "az1",
            "--group",
            "g",
            "--count",
            "2",
            "--project",
            "p",
            "--user",
            "u",
            "--resource",
            "CUSTOM_GPU=1",
            "--require-trait",
            "HW_A",
            "--forbid-trait",
            "HW_B",
            "--member-of",
            "a1,a2",
            "--forbid-aggregate",
            "a3",
            "--force-host",
            "h1",
            "--ignore-host",
            "h2",
        ])
        .unwrap();
        let Command::Schedule(a) = &cli.command else {
            panic!("wrong command")
        };
        let s = request_spec(a);
        assert_eq!(s.flavor.as_deref(), Some("m1"));
        assert_eq!(s.image, "img");
        assert_eq!(s.availability_zone, "az1");
        assert_eq!(s.group, "g");
        assert_eq!(s.num_instances, 2);
        assert_eq!(s.project_id, "p");
        assert_eq!(s.user_id, "u");
        assert_eq!(s.resources[0].resource_class, "CUSTOM_GPU");
        assert_eq!(s.required_traits, ["HW_A"]);
        assert_eq!(s.forbidden_traits, ["HW_B"]);
        assert_eq!(s.member_of[0].aggregates, ["a1", "a2"]);
        assert_eq!(s.forbidden_aggregates, ["a3"]);
        assert_eq!(s.force_hosts, ["h1"]);
        assert_eq!(s.ignore_hosts, ["h2"]);
    }

    #[test]
    fn prechecks_catch_what_clap_cannot() {
        let run = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied())).unwrap();
            precheck(&cli.command)
        };
        let e = run(&["inventory", "set", "h", "VCPU=1", "VCPU=2"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.render().contains("VCPU is given twice"));
        let e = run(&[
            "group",
            "create",
            "g",
            "--policy",
            "affinity",
            "--max-per-host",
            "2",
        ])
        .unwrap_err();
        assert!(e.render().contains("--max-per-host"));
        assert!(
            run(&[
                "group",
                "create",
                "g",
                "--policy",
                "anti-affinity",
                "--max-per-host",
                "2"
            ])
            .is_ok()
        );
        let u = "6f1c2a8e-0d7b-4c1e-9a51-3b2f0e4d5c6a";
        assert!(
            run(&[
                "schedule",
                "--flavor",
                "f",
                "--count",
                "2",
                "--instance-uuid",
                u
            ])
            .is_err()
        );
        assert!(run(&["schedule", "--flavor", "f", "--instance-uuid", u]).is_ok());
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied())).unwrap()
    }

    const U: &str = "0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10";

    #[test]
    fn create_server_request_maps_every_flag() {
        let cli = parse(&[
            "server",
            "create",
            "web",
            "--flavor",
            "m1.small",
            "--image",
            "cirros",
            "--group",
            "web-ha",
            "--az",
            "az1",
            "--count",
            "3",
            "--meta",
            "role=web",
            "--meta",
            "tier=gold",
            "--project",
            "acme",
            "--user",
            "alice",
            "--trait",
            "HW_CPU_X86_AVX2",
            "--forbid-trait",
            "CUSTOM_SLOW",
            "--host",
            "compute-1",
            "--host",
            "compute-2",
        ]);
        let Command::Server(ServerCommand::Create(a)) = &cli.command else {
            panic!("wrong command")
        };
        let r = create_server_request(a, "req-1");
        assert_eq!(r.name, "web");
        assert_eq!(r.flavor, "m1.small");
        assert_eq!(r.image, "cirros");
        assert_eq!(r.group, "web-ha");
        assert_eq!(r.availability_zone, "az1");
        assert_eq!(r.count, 3);
        assert_eq!(r.metadata.len(), 2);
        assert_eq!(r.metadata["tier"], "gold");
        assert_eq!(r.project_id, "acme");
        assert_eq!(r.user_id, "alice");
        assert_eq!(r.request_id, "req-1");
        assert_eq!(r.required_traits, ["HW_CPU_X86_AVX2"]);
        assert_eq!(r.forbidden_traits, ["CUSTOM_SLOW"]);
        assert_eq!(r.force_hosts, ["compute-1", "compute-2"]);
    }

    #[test]
    fn every_action_subcommand_maps_to_its_oneof() {
        let cases: &[(&[&str], &str)] = &[
            (&["stop"], "stop"),
            (&["start"], "start"),
            (&["reboot"], "reboot"),
            (&["pause"], "pause"),
            (&["unpause"], "unpause"),
            (&["suspend"], "suspend"),
            (&["resume"], "resume"),
            (&["snapshot", "--name", "img"], "snapshot"),
            (&["rebuild"], "rebuild"),
            (&["shelve"], "shelve"),
            (&["shelve-offload"], "shelve_offload"),
            (&["unshelve"], "unshelve"),
            (&["resize", "--flavor", "m1.large"], "resize"),
            (&["confirm-resize"], "confirm_resize"),
            (&["revert-resize"], "revert_resize"),
            (&["migrate"], "migrate"),
            (&["live-migrate"], "live_migrate"),
            (&["evacuate"], "evacuate"),
            (&["lock"], "lock"),
            (&["unlock"], "unlock"),
        ];
        for (args, name) in cases {
            let mut argv = vec!["server", args[0], U];
            argv.extend(&args[1..]);
            let cli = parse(&argv);
            let Command::Server(ServerCommand::Action(a)) = &cli.command else {
                panic!("{argv:?} is not an action")
            };
            let (target, action) = server_action(a);
            assert_eq!(target.uuid, U, "{argv:?}");
            assert_eq!(target.request.request_id, None, "{argv:?}");
            assert_eq!(action_name(&action), *name, "{argv:?}");
        }
    }

    #[test]
    fn action_arguments_reach_the_request() {
        let action = |args: &[&str]| {
            let cli = parse(args);
            let Command::Server(ServerCommand::Action(a)) = &cli.command else {
                panic!("not an action")
            };
            server_action(a).1
        };
        assert_eq!(
            action(&["server", "reboot", U, "--hard"]),
            Action::Reboot(pb::RebootArgs { hard: true })
        );
        assert_eq!(
            action(&["server", "reboot", U]),
            Action::Reboot(pb::RebootArgs { hard: false })
        );
        assert_eq!(
            action(&["server", "snapshot", U, "--name", "golden"]),
            Action::Snapshot(pb::SnapshotArgs {
                image_name: "golden".into()
            })
        );
        assert_eq!(
            action(&["server", "rebuild", U, "--image", "ubuntu"]),
            Action::Rebuild(pb::RebuildArgs {
                image: "ubuntu".into()
            })
        );
        assert_eq!(
            action(&["server", "rebuild", U]),
            Action::Rebuild(pb::RebuildArgs {
                image: String::new()
            })
        );
        assert_eq!(
            action(&["server", "resize", U, "--flavor", "m1.large"]),
            Action::Resize(pb::ResizeArgs {
                flavor: "m1.large".into()
            })
        );
        for verb in ["migrate", "live-migrate", "evacuate"] {
            let with = action(&["server", verb, U, "--host", "compute-2"]);
            let without = action(&["server", verb, U]);
            let (Action::Migrate(w) | Action::LiveMigrate(w) | Action::Evacuate(w)) = with else {
                panic!("{verb}: {with:?}")
            };
            assert_eq!(w.host, "compute-2");
            let (Action::Migrate(w) | Action::LiveMigrate(w) | Action::Evacuate(w)) = without
            else {
                panic!("{verb}: {without:?}")
            };
            assert_eq!(w.host, "");
        }
        assert_eq!(
            action(&["server", "lock", U, "--reason", "legal hold"]),
            Action::Lock(pb::LockArgs {
                reason: "legal hold".into()
            })
        );
    }

    #[test]
    fn request_ids_are_given_or_fresh_uuid_v4() {
        let given = RequestIdArg {
            request_id: Some("retry-7".into()),
        };
        assert_eq!(request_id(&given), "retry-7");
        let none = RequestIdArg { request_id: None };
        let a = request_id(&none);
        let b = request_id(&none);
        assert_ne!(a, b, "a fresh id each time");
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
    }

    #[test]
    fn mutations_carry_the_request_id_as_metadata_and_a_deadline() {
        let req = mutation(pb::NoArgs {}, "req-42", Duration::from_secs(30)).unwrap();
        assert_eq!(
            req.metadata()
                .get(REQUEST_ID_KEY)
                .unwrap()
                .to_str()
                .unwrap(),
            "req-42"
        );
        assert_eq!(
            req.metadata()
                .get("grpc-timeout")
                .unwrap()
                .to_str()
                .unwrap(),
            "30000000u"
        );
        // The CLI's parser refuses such ids; here the failure is a usage error, not a panic.
        let e = mutation(pb::NoArgs {}, "bad\nid", Duration::from_secs(1)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn an_unknown_outcome_tells_how_to_retry_safely() {
        let url = "http://127.0.0.1:1";
        for status in [
            Status::deadline_exceeded("deadline"),
            Status::cancelled("Timeout expired"),
        ] {
            let e = mutation_error(status, url, "req-5");
            assert_eq!(e.exit_code(), 1);
            let text = e.render();
            assert!(text.starts_with("error: "), "{text}");
            assert!(
                text.ends_with(
                    "repeat the command with --request-id req-5 to retry without doing it twice\n"
                ),
                "{text}"
            );
        }
        // The connection broke during the call.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = mutation_error(Status::from_error(Box::new(io)), url, "req-6");
        assert_eq!(e.exit_code(), 3);
        assert!(e.render().contains("--request-id req-6"));
        // A definite answer needs no hint.
        let e = mutation_error(
            Status::failed_precondition("server is STOPPED; stop needs ACTIVE or ERROR"),
            url,
            "req-7",
        );
        assert_eq!(
            e.render(),
            "error: FAILED_PRECONDITION: server is STOPPED; stop needs ACTIVE or ERROR\n"
        );
    }

    fn answer(records: Vec<pb::ServerActionRecord>, image_id: &str) -> pb::ServerActionResponse {
        pb::ServerActionResponse {
            server: Some(pb::Server {
                uuid: U.into(),
                vm_state: pb::VmState::Error.into(),
                actions: records,
                ..Default::default()
            }),
            image_id: image_id.into(),
        }
    }

    fn rec(request_id: &str, finished: u64, ok: bool, message: &str) -> pb::ServerActionRecord {
        pb::ServerActionRecord {
            action: "start".into(),
            request_id: request_id.into(),
            started_at_ms: 1,
            finished_at_ms: finished,
            ok,
            message: message.into(),
        }
    }

    #[test]
    fn the_outcome_comes_from_this_requests_history_entry() {
        let v = action_view(
            "start",
            "mine",
            answer(
                vec![
                    rec("mine", 2, true, "an older use of the same id"),
                    rec("other", 3, true, "someone else"),
                    rec("mine", 4, false, "domain crashed on boot"),
                    rec("", 5, true, "reconcile"),
                ],
                "",
            ),
        )
        .unwrap();
        assert_eq!(v.ok, Some(false));
        assert_eq!(v.message.as_deref(), Some("domain crashed on boot"));
        assert_eq!(v.image_id, None);
        assert_eq!(v.server.vm_state, "ERROR");
        assert!(Output::ServerAction(Box::new(v)).failure().is_some());

        let v = action_view(
            "snapshot",
            "mine",
            answer(vec![rec("mine", 0, false, "")], "img-1"),
        )
        .unwrap();
        assert_eq!(v.ok, None, "still running: not a failure");
        assert_eq!(v.image_id.as_deref(), Some("img-1"));

        let v = action_view("start", "mine", answer(vec![rec("x", 2, false, "")], "")).unwrap();
        assert_eq!((v.ok, v.message), (None, None));

        let e = action_view(
            "start",
            "mine",
            pb::ServerActionResponse {
                server: None,
                image_id: String::new(),
            },
        )
        .unwrap_err();
        assert!(e.render().contains("INTERNAL"));
    }

    #[test]
    fn server_prechecks_reject_repeated_keys_and_servers() {
        let run = |args: &[&str]| precheck(&parse(args).command);
        let e = run(&[
            "server", "create", "w", "--flavor", "f", "--image", "i", "--meta", "a=1", "--meta",
            "a=2",
        ])
        .unwrap_err();
        assert_eq!(e.render(), "error: --meta key 'a' is given twice\n");
        assert!(
            run(&[
                "server", "create", "w", "--flavor", "f", "--image", "i", "--meta", "a=1",
                "--meta", "b=1",
            ])
            .is_ok()
        );
        let upper = U.to_uppercase();
        let e = run(&["server", "delete", U, &upper]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.render().contains(&format!("server {U} is given twice")));
    }

    #[test]
    fn quota_set_arguments_become_limits() {
        let cli = parse(&[
            "quota",
            "set",
            "--project",
            "acme",
            "--vcpu",
            "-1",
            "--memory-mb",
            "4096",
            "--class",
            "CUSTOM_GPU=unlimited",
            "--instances",
            "0",
            "--unset",
            "DISK_GB",
        ]);
        let Command::Quota(QuotaCommand::Set(a)) = &cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(a.project, "acme");
        assert_eq!(
            a.limits(),
            vec![
                ("instances".to_string(), Some(0)),
                ("VCPU".to_string(), None),
                ("MEMORY_MB".to_string(), Some(4096)),
                ("CUSTOM_GPU".to_string(), None),
            ]
        );
        assert_eq!(a.unset, ["DISK_GB"]);
        assert!(precheck(&cli.command).is_ok());
        let run = |args: &[&str]| precheck(&parse(args).command);
        let e = run(&["quota", "set", "--project", "acme"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.render().contains("give a limit"), "{}", e.render());
        let e = run(&[
            "quota",
            "set",
            "--project",
            "a",
            "--vcpu",
            "1",
            "--class",
            "VCPU=2",
        ])
        .unwrap_err();
        assert!(e.render().contains("VCPU is given twice"), "{}", e.render());
        let e = run(&[
            "quota",
            "set",
            "--project",
            "a",
            "--vcpu",
            "1",
            "--unset",
            "VCPU",
        ])
        .unwrap_err();
        assert!(e.render().contains("VCPU is given twice"), "{}", e.render());
        for bad in [
            &["quota", "set", "--project", "a", "--vcpu", "-2"][..],
            &["quota", "set", "--project", "a", "--vcpu", "many"],
            &["quota", "set", "--project", "a", "--class", "gpu=1"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("berth").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn quota_table_shows_used_over_limit() {
        let view = QuotaView::new(
            "acme".into(),
            vec![
                pb::QuotaLimit {
                    resource: "instances".into(),
                    limit: Some(10),
                    used: 3,
                    source: "project".into(),
                },
                pb::QuotaLimit {
                    resource: "VCPU".into(),
                    limit: None,
                    used: 12,
                    source: "none".into(),
                },
            ],
        );
        let text = Output::Quota(view).render(crate::args::OutputFormat::Table);
        assert!(
            text.starts_with("project_id:") && text.lines().next().unwrap().ends_with(" acme"),
            "{text}"
        );
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["RESOURCE", "USED", "/", "LIMIT", "SOURCE"],
                vec!["instances", "3", "/", "10", "project"],
                vec!["VCPU", "12", "/", "unlimited", "none"],
            ],
            "{text}"
        );
    }

    #[test]
    fn every_cli_state_has_its_wire_value() {
        use clap::ValueEnum as _;
        for s in ServerState::value_variants() {
            let wire = vm_state_to_proto(*s);
            assert_ne!(wire, pb::VmState::Unspecified);
            let name = s.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(
                crate::output::vm_state_name(wire.into()),
                name.to_uppercase().replace('-', "_")
            );
        }
    }
}
