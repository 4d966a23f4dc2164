//! Faults with compute nodes attached: the real `berth-engine` binary on a data directory
//! and a fixed port, real `berth-node` processes on libvirt's test driver. Each node keeps
//! its domains in a file (`--test-domains-file`) so that they outlive its process as a real
//! host's outlive the agent, and that file counts the driver calls per action and instance:
//! the tests read it to see what really happened on each host.
//!
//! - `restart_with_nodes_connected`: servers in every state on two nodes; the engine is
//!   restarted twice (SIGTERM, then SIGKILL) on the same port and data directory. The nodes
//!   reconnect and register again by themselves with nothing orphaned or missing, every
//!   server keeps its vm_state, power state, host and flavor, the placement usages and
//!   allocations are unchanged, calls repeated with their request ids (create, stop, and
//!   after one more restart delete) are answered without being done again, and actions work
//!   afterwards (start; delete removes the domain from its host).
//! - `node_killed_mid_action`: a node is SIGKILLed while it holds an action, then restarted.
//!   A stop killed before it ran: the client gets UNAVAILABLE, the server keeps its state,
//!   and a retry with the same request id stops it once. A spawn killed after it ran: the
//!   create is retried on the other host, and the stray domain is deleted when the node
//!   comes back — one domain in the end. A start killed after it ran: the host's report
//!   brings the server ACTIVE, and a retry with the same request id is answered without
//!   starting again.
//! - `restored_host_without_its_node_goes_down`: a node dies and the engine restarts; the
//!   restored host goes down `down_after` after the restart (not before, not never) and new
//!   servers go elsewhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::servers_client::ServersClient;
use berth_tests::node::NodeProc;
use berth_tests::proc::EngineProc;
use berth_tests::v1 as pb;
use berth_tests::*;
use pb::server_action_request::Action;
use tonic::Code;

/// Heartbeat interval of the test nodes.
const HEARTBEAT: &str = "0.2";
/// The engine's `[compute] down_after_seconds`.
const DOWN_AFTER: Duration = Duration::from_secs(2);
/// How long a test waits for something that should happen within seconds, on a loaded
/// machine.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a testing node holds an action (before or after its driver runs it): the
/// window in which the test kills it, once the node has logged that it holds the action.
/// The holds that are not cut short cost the test twice this.
const HOLD_MS: &str = "3000";
/// Why a call to a node killed mid-action must fail.
const TOO_LATE: &str = "the node was killed while it held the action, so the call must fail \
    UNAVAILABLE: an answer means the engine took the lost action for a result (or the kill \
    came after HOLD_MS on a very slow machine)";

// ---- The engine -------------------------------------------------------------------------

/// The `berth-engine` binary on a data directory, restartable on the same port.
struct Engine {
    addr: SocketAddr,
    args: Vec<String>,
    proc: Option<EngineProc>,
    channel: Option<AuthChannel>,
    data: std::path::PathBuf,
    /// Output of earlier runs, for the panic report.
    earlier: String,
}

impl Engine {
    /// Starts `berth-engine serve` on a free port over `dir/data`, with `down_after` set to
    /// [`DOWN_AFTER`] by a config file in `dir`.
    async fn start(dir: &Path) -> Self {
        let config = dir.join("berth.toml");
        std::fs::write(
            &config,
            format!("[compute]\ndown_after_seconds = {}\n", DOWN_AFTER.as_secs()),
        )
        .expect("write the engine config");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let args = [
            "serve",
            "--listen",
            &addr.to_string(),
            "--metrics-listen",
            "",
            "--log",
            "info",
            "--config",
            &config.display().to_string(),
            "--data-dir",
            &dir.join("data").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut engine = Self {
            addr,
            args,
            proc: None,
            channel: None,
            data: dir.join("data"),
            earlier: String::new(),
        };
        engine.spawn().await;
        engine
    }

    async fn spawn(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut proc = EngineProc::spawn(&args);
        self.channel = Some(proc.wait_serving(self.addr).await);
        self.proc = Some(proc);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn channel(&self) -> AuthChannel {
        self.channel.clone().expect("the engine is running")
    }

    fn servers(&self) -> ServersClient<AuthChannel> {
        ServersClient::new(self.channel())
    }

    fn placement(&self) -> PlacementClient<AuthChannel> {
        PlacementClient::new(self.channel())
    }

    /// Stops the engine with `signal` (`TERM`: it must exit 0; `KILL`: it dies at once) and
    /// starts it again on the same port and data directory.
    async fn restart(&mut self, signal: &str) {
        self.channel = None;
        let proc = self.proc.take().expect("the engine is running");
        proc.signal(signal);
        let (status, output) = proc.finish(PATIENCE).await;
        if signal == "TERM" {
            assert_eq!(status.code(), Some(0), "exit after SIGTERM:\n{output}");
        }
        self.earlier.push_str(&output);
        self.spawn().await;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let now = self
                .proc
                .as_ref()
                .map(EngineProc::output)
                .unwrap_or_default();
            eprintln!("---- berth-engine output ----\n{}{now}", self.earlier);
        }
    }
}

// ---- The nodes --------------------------------------------------------------------------

/// A `berth-node` child process simulating a host on libvirt's test driver, its domains
/// kept in a file; killed on drop. Its output accumulates across restarts.
struct Node {
    proc: NodeProc,
    domains_file: PathBuf,
}

impl std::ops::Deref for Node {
    type Target = NodeProc;
    fn deref(&self) -> &NodeProc {
        &self.proc
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut NodeProc {
        &mut self.proc
    }
}

impl Node {
    /// Starts `name` with `vcpus` CPUs and `vcpus` × 2 GiB of memory, plus `extra` flags.
    fn start(engine: &Engine, dir: &Path, name: &str, vcpus: u32, extra: &[&str]) -> Self {
        let domains_file = dir.join(format!("{name}-domains.toml"));
        let file = domains_file.display().to_string();
        let token = berth_tests::proc::node_token(&engine.data, name);
        let extra: Vec<&str> = ["--test-domains-file", file.as_str(), "--token", &token]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        let size = (vcpus, u64::from(vcpus) * 2048, 100);
        Node {
            proc: NodeProc::simulated(&engine.url(), dir, name, HEARTBEAT, size, &extra),
            domains_file,
        }
    }

    /// The agent's "registered" log lines so far, one per registration.
    fn registrations(&self) -> Vec<String> {
        self.output()
            .lines()
            .filter(|l| l.contains(": registered "))
            .map(str::to_string)
            .collect()
    }

    /// Waits until the node has registered more than `before` times in all; returns the
    /// newest registration line.
    async fn registered_after(&self, before: usize) -> String {
        wait_for(
            PATIENCE,
            &format!("{} registers again", self.name),
            || async {
                let r = self.registrations();
                (r.len() > before).then(|| r[r.len() - 1].clone())
            },
        )
        .await
    }

    /// Waits for an output line containing every one of `words`; returns it.
    async fn logged(&self, words: &[&str]) -> String {
        wait_for(
            PATIENCE,
            &format!("{} logs {words:?}", self.name),
            || async {
                self.output()
                    .lines()
                    .find(|l| words.iter().all(|w| l.contains(w)))
                    .map(str::to_string)
            },
        )
        .await
    }

    /// What the host really has: its domains file.
    fn domains(&self) -> Domains {
        match std::fs::read_to_string(&self.domains_file) {
            Ok(text) => Domains::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Domains::default(),
            Err(e) => panic!("read {}: {e}", self.domains_file.display()),
        }
    }
}

/// A node's domains file, the two tables the tests read (see `berth_node::durable`).
#[derive(Debug, Default)]
struct Domains {
    /// uuid → power state.
    power: BTreeMap<String, String>,
    /// "<action> <uuid>" → driver calls.
    calls: BTreeMap<String, u64>,
}

impl Domains {
    /// Reads the `[power]` and `[calls]` tables: `key = value` lines, keys bare or in
    /// double quotes, values a quoted string or an integer.
    fn parse(text: &str) -> Self {
        let mut d = Self::default();
        let mut table = "";
        for line in text.lines().map(str::trim) {
            if let Some(t) = line.strip_prefix('[') {
                table = if t.starts_with("power]") {
                    "power"
                } else if t.starts_with("calls]") {
                    "calls"
                } else {
                    ""
                };
                continue;
            }
            let Some((k, v)) = line.split_once(" = ") else {
                continue;
            };
            let k = k.trim_matches('"').to_string();
            match table {
                "power" => {
                    d.power.insert(k, v.trim_matches('"').to_string());
                }
                "calls" => {
                    let n = v
                        .parse()
                        .unwrap_or_else(|e| panic!("calls entry {line:?}: {e}"));
                    d.calls.insert(k, n);
                }
                _ => {}
            }
        }
        d
    }

    /// Driver calls of `action` on `uuid`.
    fn calls(&self, action: &str, uuid: &str) -> u64 {
        self.calls
            .get(&format!("{action} {uuid}"))
            .copied()
            .unwrap_or(0)
    }

    fn power(&self, uuid: &str) -> Option<&str> {
        self.power.get(uuid).map(String::as_str)
    }
}

// ---- Helpers ----------------------------------------------------------------------------

/// The provider named `name`, if it exists.
async fn host(engine: &Engine, name: &str) -> Option<pb::ResourceProvider> {
    let list = engine
        .placement()
        .list_resource_providers(pb::ListResourceProvidersRequest {
            name: name.to_string(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    list.providers.into_iter().find(|h| h.name == name)
}

/// Waits until every named host exists and is up.
async fn wait_up(engine: &Engine, names: &[&str]) {
    for name in names {
        wait_for(PATIENCE, &format!("{name} is up"), || async {
            host(engine, name).await.filter(|h| h.up).map(|_| ())
        })
        .await;
    }
}

/// Flavor `tiny` (1 vCPU, 512 MiB, 1 GiB) and image `cirros`.
async fn catalog(engine: &Engine) {
    let mut c = berth_proto::v1::catalog_client::CatalogClient::new(engine.channel());
    c.create_flavor(pb::CreateFlavorRequest {
        name: "tiny".into(),
        vcpus: 1,
        ram_mb: 512,
        disk_gb: 1,
        ..Default::default()
    })
    .await
    .expect("create flavor");
    c.create_image(pb::CreateImageRequest {
        name: "cirros".into(),
        ..Default::default()
    })
    .await
    .expect("create image");
}

/// A create request of `count` tiny cirros servers; on `host` when given.
fn create_req(name: &str, count: u32, host: Option<&str>) -> pb::CreateServerRequest {
    pb::CreateServerRequest {
        name: name.into(),
        flavor: "tiny".into(),
        image: "cirros".into(),
        count,
        project_id: "demo".into(),
        user_id: "alice".into(),
        request_id: format!("create-{name}"),
        force_hosts: host.map(|h| vec![h.to_string()]).unwrap_or_default(),
        ..Default::default()
    }
}

async fn create(engine: &Engine, req: pb::CreateServerRequest) -> Vec<pb::Server> {
    let name = req.name.clone();
    let servers = engine
        .servers()
        .create_server(req)
        .await
        .unwrap_or_else(|s| panic!("create {name}: {s:?}"))
        .into_inner()
        .servers;
    for s in &servers {
        assert_eq!(s.vm_state(), pb::VmState::Active, "{name}: {s:?}");
    }
    servers
}

async fn get(engine: &Engine, uuid: &str) -> pb::Server {
    engine
        .servers()
        .get_server(pb::GetServerRequest { uuid: uuid.into() })
        .await
        .unwrap_or_else(|s| panic!("get {uuid}: {s:?}"))
        .into_inner()
        .server
        .expect("server in response")
}

async fn act(
    engine: &Engine,
    uuid: &str,
    request_id: &str,
    action: Action,
) -> Result<pb::Server, tonic::Status> {
    engine
        .servers()
        .server_action(pb::ServerActionRequest {
            uuid: uuid.into(),
            request_id: request_id.into(),
            action: Some(action),
        })
        .await
        .map(|r| r.into_inner().server.expect("server in response"))
}

fn noargs() -> pb::NoArgs {
    pb::NoArgs {}
}

/// What must survive a restart of one server.
#[derive(Debug, Clone, PartialEq)]
struct Kept {
    vm_state: pb::VmState,
    task_state: pb::TaskState,
    power_state: String,
    host_uuid: String,
    flavor: String,
    allocations: BTreeMap<String, BTreeMap<String, u64>>,
}

async fn kept(engine: &Engine, uuid: &str) -> Kept {
    let s = get(engine, uuid).await;
    let allocations = engine
        .placement()
        .get_allocations(pb::GetAllocationsRequest {
            consumer_uuid: uuid.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("allocations of {uuid}: {e:?}"))
        .into_inner()
        .allocations
        .into_iter()
        .map(|a| {
            let r = a
                .resources
                .into_iter()
                .map(|r| (r.resource_class, r.amount))
                .collect();
            (a.provider_uuid, r)
        })
        .collect();
    Kept {
        vm_state: s.vm_state(),
        task_state: s.task_state(),
        power_state: s.power_state,
        host_uuid: s.host_uuid,
        flavor: s.flavor,
        allocations,
    }
}

/// Used amounts per class on the named host.
async fn usages(engine: &Engine, name: &str) -> BTreeMap<String, u64> {
    let h = host(engine, name)
        .await
        .unwrap_or_else(|| panic!("host {name}"));
    provider_usages(&mut engine.placement(), &h.uuid)
        .await
        .usages
        .into_iter()
        .map(|u| (u.resource_class, u.used))
        .collect()
}

// ---- The tests --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_nodes_connected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = Engine::start(dir.path()).await;
    let a = Node::start(&engine, dir.path(), "node-a", 8, &[]);
    let b = Node::start(&engine, dir.path(), "node-b", 8, &[]);
    wait_up(&engine, &["node-a", "node-b"]).await;
    catalog(&engine).await;

    // Three servers on each node; one stopped, one paused.
    let mut all = create(&engine, create_req("on-a", 3, Some("node-a"))).await;
    all.extend(create(&engine, create_req("on-b", 3, Some("node-b"))).await);
    let uuids: Vec<String> = all.iter().map(|s| s.uuid.clone()).collect();
    let (stopped, paused, doomed) = (&uuids[0], &uuids[3], &uuids[4]);
    act(&engine, stopped, "stop-0", Action::Stop(noargs()))
        .await
        .expect("stop");
    act(&engine, paused, "pause-3", Action::Pause(noargs()))
        .await
        .expect("pause");
    let mut before = BTreeMap::new();
    for u in &uuids {
        before.insert(u.clone(), kept(&engine, u).await);
    }
    assert_eq!(before[stopped].vm_state, pb::VmState::Stopped);
    assert_eq!(before[paused].power_state, "PAUSED");
    let usage_before = (
        usages(&engine, "node-a").await,
        usages(&engine, "node-b").await,
    );
    assert_eq!(usage_before.0.get("VCPU"), Some(&3), "{usage_before:?}");

    for signal in ["TERM", "KILL"] {
        let registered = (a.registrations().len(), b.registrations().len());
        engine.restart(signal).await;
        // The nodes come back by themselves, and report nothing the engine does not know
        // and miss nothing it expects.
        for (node, n) in [(&a, registered.0), (&b, registered.1)] {
            let line = node.registered_after(n).await;
            assert!(
                line.contains("orphans=[]") && line.contains("missing=[]"),
                "{signal}: {} registered with {line}",
                node.name
            );
        }
        wait_up(&engine, &["node-a", "node-b"]).await;
        // Let heartbeats flow (each may correct a power state) before comparing.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for u in &uuids {
            assert_eq!(
                kept(&engine, u).await,
                before[u],
                "after SIG{signal}: server {u}"
            );
        }
        assert_eq!(
            (
                usages(&engine, "node-a").await,
                usages(&engine, "node-b").await
            ),
            usage_before,
            "after SIG{signal}: usages"
        );
        let list = engine
            .servers()
            .list_servers(pb::ListServersRequest::default())
            .await
            .expect("list")
            .into_inner()
            .servers;
        assert_eq!(list.len(), uuids.len(), "after SIG{signal}: {list:?}");
        assert!(list.iter().all(|s| s.vm_state() != pb::VmState::Error));
    }
    // The hosts agree with the engine.
    let (on_a, on_b) = (a.domains(), b.domains());
    assert_eq!(on_a.power(stopped), Some("SHUTOFF"));
    assert_eq!(on_b.power(paused), Some("PAUSED"));
    assert_eq!(on_a.power.len() + on_b.power.len(), uuids.len());

    // Calls repeated with their request ids are answered as before the restarts, and
    // nothing is done again: no server created, no domain spawned or stopped twice.
    for (name, host, first) in [
        ("on-a", "node-a", &uuids[..3]),
        ("on-b", "node-b", &uuids[3..]),
    ] {
        let again = engine
            .servers()
            .create_server(create_req(name, 3, Some(host)))
            .await
            .unwrap_or_else(|s| panic!("repeat create {name}: {s:?}"))
            .into_inner()
            .servers;
        assert_eq!(
            again.iter().map(|s| s.uuid.as_str()).collect::<Vec<_>>(),
            first.iter().map(String::as_str).collect::<Vec<_>>(),
            "repeat create {name}"
        );
    }
    let s = act(&engine, stopped, "stop-0", Action::Stop(noargs()))
        .await
        .expect("repeat stop");
    assert_eq!(s.vm_state(), pb::VmState::Stopped);
    let (on_a, on_b) = (a.domains(), b.domains());
    for u in &uuids {
        let on = if on_a.power(u).is_some() {
            &on_a
        } else {
            &on_b
        };
        assert_eq!(on.calls("spawn", u), 1, "{u}: {on:?}");
    }
    assert_eq!(on_a.calls("stop", stopped), 1, "{on_a:?}");
    let list = engine
        .servers()
        .list_servers(pb::ListServersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .servers;
    assert_eq!(list.len(), uuids.len(), "{list:?}");

    // Actions work after the restarts.
    let started = act(&engine, stopped, "start-0", Action::Start(noargs()))
        .await
        .expect("start after the restarts");
    assert_eq!(
        (started.vm_state(), started.power_state.as_str()),
        (pb::VmState::Active, "RUNNING")
    );
    assert_eq!(a.domains().power(stopped), Some("RUNNING"));
    engine
        .servers()
        .delete_server(pb::DeleteServerRequest {
            uuid: doomed.clone(),
            request_id: "delete-4".into(),
        })
        .await
        .expect("delete after the restarts");
    let on_b = b.domains();
    assert_eq!(on_b.power(doomed), None, "its domain is gone: {on_b:?}");
    assert_eq!(on_b.calls("delete", doomed), 1);
    let e = engine
        .servers()
        .get_server(pb::GetServerRequest {
            uuid: doomed.clone(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        usages(&engine, "node-b").await.get("VCPU"),
        Some(&2),
        "its resources went with it"
    );
    // After one more restart the delete's request id still answers as the delete did.
    engine.restart("KILL").await;
    engine
        .servers()
        .delete_server(pb::DeleteServerRequest {
            uuid: doomed.clone(),
            request_id: "delete-4".into(),
        })
        .await
        .expect("a repeated delete succeeds again");
    assert_eq!(b.domains().calls("delete", doomed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_mid_action() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::start(dir.path()).await;
    // The weighers spread, so the bigger node is tried first.
    let mut slow = Node::start(
        &engine,
        dir.path(),
        "node-slow",
        16,
        &["--action-delay-ms", HOLD_MS],
    );
    let spare = Node::start(&engine, dir.path(), "node-spare", 8, &[]);
    wait_up(&engine, &["node-slow", "node-spare"]).await;
    catalog(&engine).await;
    let victim = create(&engine, create_req("victim", 1, Some("node-slow")))
        .await
        .remove(0)
        .uuid;

    // 1. A stop killed before it ran.
    let stop = {
        let servers = engine.servers();
        let victim = victim.clone();
        tokio::spawn(async move {
            let mut servers = servers;
            servers
                .server_action(pb::ServerActionRequest {
                    uuid: victim,
                    request_id: "stop-victim".into(),
                    action: Some(Action::Stop(noargs())),
                })
                .await
        })
    };
    slow.logged(&["holding stop of", &victim]).await;
    let registered = slow.registrations().len();
    slow.kill();
    let e = stop.await.expect("stop task").expect_err(TOO_LATE);
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    for w in ["closed before it answered stop", "same request_id"] {
        assert!(e.message().contains(w), "{:?} lacks {w:?}", e.message());
    }
    let s = get(&engine, &victim).await;
    assert_eq!(
        (s.vm_state(), s.task_state(), s.power_state.as_str()),
        (pb::VmState::Active, pb::TaskState::None, "RUNNING"),
        "nothing changed: {s:?}"
    );
    assert!(s.fault.contains("outcome is unknown"), "{}", s.fault);
    // While the node is away the retry is refused, not answered from a cache.
    let e = act(&engine, &victim, "stop-victim", Action::Stop(noargs()))
        .await
        .expect_err("no node");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("no connected compute node"), "{e:?}");

    slow.spawn();
    slow.registered_after(registered).await;
    let s = get(&engine, &victim).await;
    assert_eq!(
        (s.vm_state(), s.power_state.as_str()),
        (pb::VmState::Active, "RUNNING")
    );
    let on_slow = slow.domains();
    assert_eq!(
        on_slow.calls("stop", &victim),
        0,
        "it never ran: {on_slow:?}"
    );
    assert_eq!(
        on_slow.power(&victim),
        Some("RUNNING"),
        "as the engine says"
    );
    let s = act(&engine, &victim, "stop-victim", Action::Stop(noargs()))
        .await
        .expect("the retry stops it");
    assert_eq!(
        (s.vm_state(), s.power_state.as_str(), s.fault.as_str()),
        (pb::VmState::Stopped, "SHUTOFF", "")
    );
    let again = act(&engine, &victim, "stop-victim", Action::Stop(noargs()))
        .await
        .expect("the kept answer");
    assert_eq!(again, s);
    let on_slow = slow.domains();
    assert_eq!(
        on_slow.calls("stop", &victim),
        1,
        "stopped once: {on_slow:?}"
    );
    assert_eq!(on_slow.power(&victim), Some("SHUTOFF"));

    // 2. A spawn killed after it ran: the create goes on elsewhere; the stray domain is
    //    deleted when the node comes back.
    let registered = slow.registrations().len();
    slow.kill();
    slow.set_flag("--action-delay-ms", None);
    slow.set_flag("--result-delay-ms", Some(HOLD_MS));
    slow.spawn();
    slow.registered_after(registered).await;
    let creating = {
        let servers = engine.servers();
        tokio::spawn(async move {
            let mut servers = servers;
            servers.create_server(create_req("dup", 1, None)).await
        })
    };
    let line = slow.logged(&["holding the result of spawn of"]).await;
    let registered = slow.registrations().len();
    slow.kill();
    let created = creating
        .await
        .expect("create task")
        .expect("the create goes on")
        .into_inner()
        .servers;
    let dup = created[0].clone();
    assert!(line.contains(&dup.uuid), "{line}");
    assert_eq!(
        (dup.vm_state(), dup.host_name.as_str()),
        (pb::VmState::Active, "node-spare"),
        "{TOO_LATE}: {dup:?}"
    );
    let history: Vec<&str> = dup.actions.iter().map(|a| a.message.as_str()).collect();
    assert!(
        history.iter().any(|m| m.contains("node-slow")),
        "the lost attempt is in the history: {history:?}"
    );
    assert_eq!(
        kept(&engine, &dup.uuid)
            .await
            .allocations
            .keys()
            .collect::<Vec<_>>(),
        [&dup.host_uuid]
    );
    slow.spawn();
    slow.registered_after(registered).await;
    wait_for(PATIENCE, "the stray domain is deleted", || async {
        slow.domains().power(&dup.uuid).is_none().then_some(())
    })
    .await;
    let (on_slow, on_spare) = (slow.domains(), spare.domains());
    assert_eq!(on_slow.calls("spawn", &dup.uuid), 1, "{on_slow:?}");
    assert_eq!(on_slow.calls("delete", &dup.uuid), 1, "{on_slow:?}");
    assert_eq!(on_spare.calls("spawn", &dup.uuid), 1, "{on_spare:?}");
    assert_eq!(on_spare.power(&dup.uuid), Some("RUNNING"));
    // The same request id gets the recorded outcome; nothing is built again.
    let again = engine
        .servers()
        .create_server(create_req("dup", 1, None))
        .await
        .expect("repeat create")
        .into_inner()
        .servers;
    assert_eq!(
        again.iter().map(|s| &s.uuid).collect::<Vec<_>>(),
        [&dup.uuid]
    );
    assert_eq!(spare.domains().calls("spawn", &dup.uuid), 1);
    assert_eq!(slow.domains().calls("spawn", &dup.uuid), 1);

    // 3. A start killed after it ran: the node's report says RUNNING, and the retry is
    //    answered as done without starting again.
    let starting = {
        let servers = engine.servers();
        let victim = victim.clone();
        tokio::spawn(async move {
            let mut servers = servers;
            servers
                .server_action(pb::ServerActionRequest {
                    uuid: victim,
                    request_id: "start-victim".into(),
                    action: Some(Action::Start(noargs())),
                })
                .await
        })
    };
    slow.logged(&["holding the result of start of", &victim])
        .await;
    let registered = slow.registrations().len();
    slow.kill();
    let e = starting.await.expect("start task").expect_err(TOO_LATE);
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(get(&engine, &victim).await.vm_state(), pb::VmState::Stopped);
    slow.spawn();
    slow.registered_after(registered).await;
    wait_for(PATIENCE, "the host's report makes it ACTIVE", || async {
        (get(&engine, &victim).await.vm_state() == pb::VmState::Active).then_some(())
    })
    .await;
    let s = act(&engine, &victim, "start-victim", Action::Start(noargs()))
        .await
        .expect("the retry is answered");
    assert_eq!(
        (s.vm_state(), s.task_state()),
        (pb::VmState::Active, pb::TaskState::None)
    );
    let last = s.actions.last().expect("history");
    assert!(
        last.ok && last.action == "start" && last.request_id == "start-victim",
        "{last:?}"
    );
    assert!(last.message.contains("earlier attempt"), "{}", last.message);
    assert_eq!(slow.domains().calls("start", &victim), 1, "started once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_host_without_its_node_goes_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut engine = Engine::start(dir.path()).await;
    // The dying node is the bigger one: while up, it is where new servers go.
    let mut dies = Node::start(&engine, dir.path(), "node-dies", 16, &[]);
    let stays = Node::start(&engine, dir.path(), "node-stays", 8, &[]);
    wait_up(&engine, &["node-dies", "node-stays"]).await;
    catalog(&engine).await;
    let first = create(&engine, create_req("first", 1, None))
        .await
        .remove(0);
    assert_eq!(first.host_name, "node-dies");

    dies.kill();
    let registered = stays.registrations().len();
    let restarted = Instant::now();
    engine.restart("KILL").await;
    stays.registered_after(registered).await;
    wait_for(
        DOWN_AFTER + PATIENCE,
        "node-dies goes down without its node",
        || async {
            host(&engine, "node-dies")
                .await
                .filter(|h| !h.up)
                .map(|_| ())
        },
    )
    .await;
    let waited = restarted.elapsed();
    assert!(
        waited >= DOWN_AFTER,
        "down {waited:?} after the restart: sooner than down_after ({DOWN_AFTER:?})"
    );
    assert!(
        host(&engine, "node-stays").await.is_some_and(|h| h.up),
        "the host whose node came back is up"
    );
    let next = create(&engine, create_req("next", 1, None)).await.remove(0);
    assert_eq!(next.host_name, "node-stays", "a down host gets no servers");
    // Its server is still recorded there, ready to be evacuated.
    let s = get(&engine, &first.uuid).await;
    assert_eq!(
        (s.vm_state(), s.host_name.as_str()),
        (pb::VmState::Active, "node-dies")
    );
    let e = act(&engine, &first.uuid, "stop-first", Action::Stop(noargs()))
        .await
        .expect_err("no node");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}
