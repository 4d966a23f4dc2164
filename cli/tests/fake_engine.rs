//! Runs the `berth` binary against an in-process fake of the engine's Servers service
//! (bound to `127.0.0.1:0`): what the server and host lifecycle commands put on the wire
//! (request ids in the request and as `x-request-id`, deadlines, filters, paging) and how
//! they report the answers (exit codes, stdout vs stderr). The fake knows nothing of
//! states; tests against the real engine live in the workspace's `tests/` crate.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::servers_server::{Servers, ServersServer};
use tonic::{Request, Response, Status};

const U_OK: &str = "0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10";
/// Its actions fail on the "node": the call succeeds, the history says failed.
const U_FAIL: &str = "1b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e11";
/// Delete is refused.
const U_LOCKED: &str = "2b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e12";
/// Actions take longer than the tests' --timeout.
const U_SLOW: &str = "3b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e13";

/// One call as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    rpc: &'static str,
    /// The request's `request_id` field (empty for RPCs without one).
    field: String,
    /// The `x-request-id` metadata.
    header: Option<String>,
    /// Whether a `grpc-timeout` came along.
    deadline: bool,
    /// Filters or arguments worth checking, as text.
    detail: String,
}

/// The calls seen so far. A std mutex: held for a push or a clone, never across an await.
type Log = Arc<Mutex<Vec<Seen>>>;

struct Fake {
    log: Log,
}

impl Fake {
    fn note<T>(&self, rpc: &'static str, req: &Request<T>, field: &str, detail: String) {
        let md = req.metadata();
        self.log.lock().unwrap().push(Seen {
            rpc,
            field: field.to_owned(),
            header: md
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            deadline: md.get("grpc-timeout").is_some(),
            detail,
        });
    }
}

fn server(uuid: &str, name: &str, state: pb::VmState) -> pb::Server {
    pb::Server {
        uuid: uuid.into(),
        name: name.into(),
        project_id: "acme".into(),
        user_id: "alice".into(),
        flavor: "m1.small".into(),
        image: "cirros".into(),
        vm_state: state.into(),
        power_state: "RUNNING".into(),
        host_uuid: "6f1c2a8e-0d7b-4c1e-9a51-3b2f0e4d5c6a".into(),
        host_name: "compute-1".into(),
        created_at_ms: 1_717_243_205_000,
        updated_at_ms: 1_717_243_205_000,
        actions: vec![pb::ServerActionRecord {
            action: "create".into(),
            request_id: "create-1".into(),
            started_at_ms: 1_717_243_205_000,
            finished_at_ms: 1_717_243_210_000,
            ok: true,
            message: "spawned on compute-1".into(),
        }],
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Servers for Fake {
    async fn create_server(
        &self,
        req: Request<pb::CreateServerRequest>,
    ) -> Result<Response<pb::CreateServerResponse>, Status> {
        let r = req.get_ref();
        let detail = format!(
            "name={} count={} project={} user={} meta={:?}",
            r.name, r.count, r.project_id, r.user_id, r.metadata
        );
        self.note("CreateServer", &req, &r.request_id.clone(), detail);
        let r = req.into_inner();
        let mut servers = vec![server(U_OK, &format!("{}-1", r.name), pb::VmState::Active)];
        if r.name == "bad" {
            let mut s = server(U_FAIL, "bad-2", pb::VmState::Error);
            s.fault = "attempt 1 on compute-1: image not found; attempt 2 on compute-2: image \
                       not found"
                .into();
            servers.push(s);
        }
        Ok(Response::new(pb::CreateServerResponse { servers }))
    }

    async fn get_server(
        &self,
        req: Request<pb::GetServerRequest>,
    ) -> Result<Response<pb::GetServerResponse>, Status> {
        let uuid = req.get_ref().uuid.clone();
        self.note("GetServer", &req, "", uuid.clone());
        if uuid != U_OK {
            return Err(Status::not_found(format!("server {uuid} not found")));
        }
        Ok(Response::new(pb::GetServerResponse {
            server: Some(server(U_OK, "web-1", pb::VmState::Active)),
        }))
    }

    async fn list_servers(
        &self,
        req: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        let r = req.get_ref().clone();
        let detail = format!(
            "host={} project={} state={} token={}",
            r.host, r.project_id, r.vm_state, r.page_token
        );
        self.note("ListServers", &req, "", detail);
        // Two pages, to check that the CLI follows them.
        let (servers, next) = match r.page_token.as_str() {
            "" => (vec![server(U_OK, "web-1", pb::VmState::Active)], "p2"),
            "p2" => (vec![server(U_FAIL, "web-2", pb::VmState::Stopped)], ""),
            other => return Err(Status::invalid_argument(format!("bad token {other}"))),
        };
        Ok(Response::new(pb::ListServersResponse {
            servers,
            next_page_token: next.into(),
        }))
    }

    async fn delete_server(
        &self,
        req: Request<pb::DeleteServerRequest>,
    ) -> Result<Response<pb::DeleteServerResponse>, Status> {
        let r = req.get_ref().clone();
        self.note("DeleteServer", &req, &r.request_id, r.uuid.clone());
        if r.uuid == U_LOCKED {
            return Err(Status::failed_precondition(format!(
                "server {} is locked",
                r.uuid
            )));
        }
        Ok(Response::new(pb::DeleteServerResponse {}))
    }

    async fn server_action(
        &self,
        req: Request<pb::ServerActionRequest>,
    ) -> Result<Response<pb::ServerActionResponse>, Status> {
        let r = req.get_ref().clone();
        self.note(
            "ServerAction",
            &req,
            &r.request_id,
            format!("{:?}", r.action),
        );
        if r.uuid == U_SLOW {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        let fail = r.uuid == U_FAIL;
        let mut s = server(
            &r.uuid,
            "web-1",
            if fail {
                pb::VmState::Error
            } else {
                pb::VmState::Stopped
            },
        );
        s.actions.push(pb::ServerActionRecord {
            action: "stop".into(),
            request_id: r.request_id.clone(),
            started_at_ms: 1_717_243_300_000,
            finished_at_ms: 1_717_243_301_500,
            ok: !fail,
            message: if fail {
                "domain crashed on boot".into()
            } else {
                "done".into()
            },
        });
        let image_id = match r.action {
            Some(pb::server_action_request::Action::Snapshot(_)) => "img-new".into(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ServerActionResponse {
            server: Some(s),
            image_id,
        }))
    }

    async fn set_host_enabled(
        &self,
        req: Request<pb::SetHostEnabledRequest>,
    ) -> Result<Response<pb::SetHostEnabledResponse>, Status> {
        let r = req.get_ref().clone();
        let detail = format!("host={} enabled={} reason={}", r.host, r.enabled, r.reason);
        self.note("SetHostEnabled", &req, "", detail);
        Ok(Response::new(pb::SetHostEnabledResponse {
            host: Some(pb::ResourceProvider {
                uuid: "6f1c2a8e-0d7b-4c1e-9a51-3b2f0e4d5c6a".into(),
                name: r.host,
                up: true,
                disabled: !r.enabled,
                ..Default::default()
            }),
        }))
    }

    async fn evacuate_host(
        &self,
        req: Request<pb::EvacuateHostRequest>,
    ) -> Result<Response<pb::EvacuateHostResponse>, Status> {
        let r = req.get_ref().clone();
        self.note("EvacuateHost", &req, &r.request_id, r.host.clone());
        Ok(Response::new(pb::EvacuateHostResponse {
            results: vec![
                pb::EvacuationResult {
                    uuid: U_OK.into(),
                    ok: true,
                    message: "rebuilt on compute-2".into(),
                },
                pb::EvacuationResult {
                    uuid: U_FAIL.into(),
                    ok: false,
                    message: "no valid host".into(),
                },
            ],
        }))
    }
}

/// A running fake; dropping it stops the server.
struct Engine {
    url: String,
    log: Log,
    _rt: tokio::runtime::Runtime,
}

impl Engine {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let log = Log::default();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let svc = ServersServer::new(Fake { log: log.clone() });
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Self { url, log, _rt: rt }
    }

    /// Runs `berth --engine <fake> ARGS...`.
    fn berth(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("--engine")
            .arg(&self.url)
            .args(args)
            .env_remove("BERTH_OUTPUT")
            .env_remove("BERTH_TIMEOUT")
            .env_remove("BERTH_PROJECT")
            .env_remove("BERTH_USER")
            .output()
            .unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn an_action_sends_one_fresh_request_id_in_the_field_and_as_metadata() {
    let e = Engine::start();
    let out = e.berth(&["server", "stop", U_OK]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let seen = e.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.rpc, "ServerAction");
    assert_eq!(s.header.as_deref(), Some(s.field.as_str()));
    assert_eq!(
        uuid::Uuid::parse_str(&s.field).unwrap().get_version_num(),
        4
    );
    assert!(s.deadline, "the deadline goes to the engine");
    assert!(s.detail.starts_with("Some(Stop("), "{}", s.detail);
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("action:      stop\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("request_id:  {}\n", s.field)),
        "{stdout}"
    );
    assert!(stdout.contains("result:      ok: done\n"), "{stdout}");
    assert!(stdout.contains("vm_state:           STOPPED\n"), "{stdout}");

    // A second run gets another id; --request-id pins it.
    e.berth(&["server", "stop", U_OK]);
    e.berth(&["server", "stop", U_OK, "--request-id", "retry-1"]);
    let seen = e.seen();
    assert_ne!(seen[1].field, seen[0].field);
    assert_eq!(seen[2].field, "retry-1");
    assert_eq!(seen[2].header.as_deref(), Some("retry-1"));
}

#[test]
fn a_failed_node_action_prints_the_server_and_exits_1() {
    let e = Engine::start();
    let out = e.berth(&["server", "start", U_FAIL]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("result:      failed: domain crashed on boot\n"),
        "{stdout}"
    );
    assert_eq!(
        text(&out.stderr),
        format!("error: start failed: domain crashed on boot (server {U_FAIL} is now ERROR)\n")
    );
    // The same as JSON: the answer on stdout, the failure on stderr.
    let out = e.berth(&["-o", "json", "server", "start", U_FAIL]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["server"]["vm_state"], "ERROR");
}

#[test]
fn snapshot_prints_the_new_image_id() {
    let e = Engine::start();
    let out = e.berth(&["-o", "json", "server", "snapshot", U_OK, "--name", "golden"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["action"], "snapshot");
    assert_eq!(v["image_id"], "img-new");
    assert!(e.seen()[0].detail.contains("image_name: \"golden\""));
}

#[test]
fn a_timed_out_action_says_how_to_retry_safely() {
    let e = Engine::start();
    let out = e.berth(&[
        "--timeout",
        "1",
        "server",
        "reboot",
        U_SLOW,
        "--request-id",
        "slow-1",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    // Our deadline or the engine's copy of it, whichever fires first: not "unreachable".
    assert!(
        err.starts_with("error: DEADLINE_EXCEEDED: ") || err.starts_with("error: CANCELLED: "),
        "{err}"
    );
    assert!(
        err.ends_with(
            "hint: the engine may have done it, or may still be doing it; repeat the command \
             with --request-id slow-1 to retry without doing it twice\n"
        ),
        "{err}"
    );
}

#[test]
fn delete_tries_every_server_and_reports_the_ones_that_failed() {
    let e = Engine::start();
    let out = e.berth(&["-o", "json", "server", "delete", U_LOCKED, U_OK]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([{"deleted": "server", "id": U_OK}]));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: could not delete 1 of 2 servers\n  \
             {U_LOCKED}: FAILED_PRECONDITION: server {U_LOCKED} is locked\n"
        )
    );
    let seen = e.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].field, seen[1].field,
        "one request id for the command"
    );
    assert_eq!(seen[1].header.as_deref(), Some(seen[1].field.as_str()));

    // One server: its error is the command's, as for every other delete.
    let out = e.berth(&["server", "delete", U_LOCKED]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: FAILED_PRECONDITION: server {U_LOCKED} is locked\n")
    );
    let out = e.berth(&["server", "delete", U_OK]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("Deleted server {U_OK}\n"));
}

#[test]
fn create_sends_the_defaults_and_fails_when_a_server_ends_in_error() {
    let e = Engine::start();
    let out = e.berth(&[
        "server", "create", "web", "--flavor", "m1.small", "--image", "cirros", "--meta",
        "role=web",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("UUID "), "{stdout}");
    assert!(stdout.contains("web-1  ACTIVE"), "{stdout}");
    let s = &e.seen()[0];
    assert_eq!(
        s.detail,
        "name=web count=1 project=default user=default meta={\"role\": \"web\"}"
    );
    assert_eq!(s.header.as_deref(), Some(s.field.as_str()));
    assert!(!s.field.is_empty());

    let out = e.berth(&["server", "create", "bad", "--flavor", "f", "--image", "i"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("FAULT"),
        "the table shows the fault"
    );
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: 1 of 2 servers failed to build\n  {U_FAIL} (bad-2): attempt 1 on compute-1: \
             image not found; attempt 2 on compute-2: image not found\n"
        )
    );
}

#[test]
fn list_follows_every_page_with_the_same_filters() {
    let e = Engine::start();
    let out = e.berth(&[
        "-o",
        "json",
        "server",
        "list",
        "--host",
        "compute-1",
        "--project",
        "acme",
        "--state",
        "STOPPED",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);
    let details: Vec<String> = e.seen().into_iter().map(|s| s.detail).collect();
    assert_eq!(
        details,
        [
            "host=compute-1 project=acme state=3 token=",
            "host=compute-1 project=acme state=3 token=p2"
        ]
    );
}

#[test]
fn show_prints_the_history_and_not_found_is_exit_1() {
    let e = Engine::start();
    let out = e.berth(&["server", "show", U_OK]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\nACTION  REQUEST_ID"), "{stdout}");
    assert!(stdout.contains("create  create-1"), "{stdout}");
    let out = e.berth(&["server", "show", U_FAIL]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: NOT_FOUND: server {U_FAIL} not found\n")
    );
}

#[test]
fn host_disable_enable_and_evacuate() {
    let e = Engine::start();
    let out = e.berth(&["host", "disable", "compute-1", "--reason", "RAM swap"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("state:              up,disabled\n"));
    let out = e.berth(&["host", "enable", "compute-1"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("state:              up\n"));

    let out = e.berth(&["host", "evacuate", "compute-1", "--request-id", "ev-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!(
            "host compute-1  request_id ev-1\n\
             SERVER                                RESULT  MESSAGE\n\
             {U_OK}  ok      rebuilt on compute-2\n\
             {U_FAIL}  failed  no valid host\n"
        )
    );
    assert_eq!(
        text(&out.stderr),
        "error: could not evacuate 1 of 2 servers from compute-1\n"
    );

    let seen = e.seen();
    let details: Vec<&str> = seen.iter().map(|s| s.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "host=compute-1 enabled=false reason=RAM swap",
            "host=compute-1 enabled=true reason=",
            "compute-1"
        ]
    );
    // SetHostEnabled has no request id field, but the call still carries one for the logs.
    assert!(seen[0].header.is_some());
    assert_eq!(seen[2].field, "ev-1");
    assert_eq!(seen[2].header.as_deref(), Some("ev-1"));
}
