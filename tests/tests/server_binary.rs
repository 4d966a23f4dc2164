//! The real `berth-engine` binary: `serve` on a free loopback port comes up SERVING, does
//! real work, exports Prometheus metrics, and on SIGTERM shuts down gracefully with exit
//! code 0 and a log line saying it stopped; a port already in use is a clean failure.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_tests::v1 as pb;
use berth_tests::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A spawned server whose stdout and stderr are collected in the background (so its pipes
/// never fill up), killed on drop if still running.
struct Proc {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    /// Its data directory (token key, admin token).
    data: tempfile::TempDir,
}

impl Proc {
    /// Spawns `berth-engine ARGS --data-dir <a fresh temporary directory>`.
    fn spawn(args: &[&str]) -> Self {
        let data = tempfile::tempdir().expect("a data directory");
        let mut cmd = Command::new(berth_engine_binary());
        cmd.args(args)
            .arg("--data-dir")
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        for var in [
            "BERTH_CONFIG",
            "BERTH_LISTEN",
            "BERTH_METRICS_LISTEN",
            "BERTH_LOG",
            "BERTH_SHARDS",
            "BERTH_DATA_DIR",
            "BERTH_INSECURE",
            "BERTH_TLS_CERT",
            "BERTH_TLS_KEY",
            "BERTH_TLS_CLIENT_CA",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("spawn berth-engine");
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for mut pipe in pipes {
            let output = output.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .expect("log buffer")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }));
        }
        Self {
            child,
            output,
            readers,
            data,
        }
    }

    /// The admin token the engine wrote on its first start, which must be private.
    fn admin_token(&self) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.data.path().join("admin.token");
        let mode = std::fs::metadata(&path)
            .expect("admin.token written at start")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin.token mode {mode:o}");
        std::fs::read_to_string(&path)
            .expect("read admin.token")
            .trim()
            .to_string()
    }

    fn output(&self) -> String {
        self.output.lock().expect("log buffer").clone()
    }

    /// Polls for the exit until `deadline`; `None` if still running. Async, so the test's
    /// runtime keeps serving its own connections to the server meanwhile (a client that
    /// cannot answer the server's GOAWAY/PING would hold up the graceful shutdown).
    async fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the exit and for both pipes to be drained; returns the status and output.
    async fn finish(mut self, within: Duration) -> (ExitStatus, String) {
        let status = self
            .wait_until(Instant::now() + within)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "berth-engine still running after {within:?}:\n{}",
                    self.output()
                )
            });
        for r in self.readers.drain(..) {
            r.join().expect("reader thread");
        }
        (status, self.output())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls the health service until it answers SERVING (or the process dies, or the deadline
/// passes).
async fn wait_serving(proc: &mut Proc, addr: std::net::SocketAddr) -> tonic::transport::Channel {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(st) = proc.child.try_wait().expect("try_wait") {
            panic!("berth-engine exited early ({st}):\n{}", proc.output());
        }
        if let Ok(ch) = connect(addr).await {
            let mut h = HealthClient::new(ch.clone());
            let status = h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status())
                .ok();
            if status == Some(ServingStatus::Serving) {
                return ch;
            }
        }
        assert!(
            Instant::now() < deadline,
            "berth-engine not SERVING on {addr} within {DEADLINE:?}:\n{}",
            proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/1.0 GET on loopback; returns the whole response.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read response");
    body
}

fn sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM {pid}: {st}");
}

#[tokio::test]
async fn binary_serves_and_stops_gracefully_on_sigterm() {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let mut proc = Proc::spawn(&[
        "serve",
        "--listen",
        &addr.to_string(),
        "--metrics-listen",
        &metrics.to_string(),
        "--log",
        "info",
    ]);
    let ch = with_token(wait_serving(&mut proc, addr).await, &proc.admin_token());

    // It does real work, with the admin token it wrote.
    let mut p = PlacementClient::new(ch.clone());
    let host = create_provider(
        &mut p,
        provider_request("bin-host", host_inventories(4, 4096, 40)),
    )
    .await;
    let sel = SchedulerClient::new(ch.clone())
        .select_destinations(pb::SelectDestinationsRequest {
            spec: Some(spec(&[("VCPU", 1), ("MEMORY_MB", 512)], "proj-bin")),
        })
        .await
        .expect("select")
        .into_inner()
        .selections;
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0].host_uuid, host.uuid);

    // Prometheus metrics are served, with the per-RPC counter.
    let m = http_get(metrics, "/metrics");
    assert!(m.starts_with("HTTP/1.") && m.contains(" 200 "), "{m}");
    assert!(m.contains("berth_grpc_requests_total"), "{m}");
    assert!(m.contains("SelectDestinations"), "{m}");

    // Graceful shutdown, with a client still connected (idle): it must not hold the
    // server up until the 30 s grace period runs out.
    let started = Instant::now();
    sigterm(proc.child.id());
    let (status, log) = proc.finish(Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}; log:\n{log}");
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}:\n{log}"
    );
    drop(p);
    drop(ch);
    assert!(log.contains("berth-engine serving gRPC"), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("berth-engine stopped"), "{log}");
    // The log lines carry the request id of the calls that caused them.
    assert!(log.contains("request_id"), "{log}");
    // And the port is free again.
    std::net::TcpListener::bind(addr).expect("the port is released after exit");
}

#[tokio::test]
async fn binary_fails_cleanly_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let proc = Proc::spawn(&[
        "serve",
        "--listen",
        &addr.to_string(),
        "--metrics-listen",
        "",
    ]);
    let (status, log) = proc.finish(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cannot listen on"), "{log}");
    assert!(log.contains(&addr.to_string()), "{log}");
}

#[tokio::test]
async fn binary_refuses_to_expose_plain_text_or_insecure_off_loopback() {
    for (extra, words) in [(None, "without TLS"), (Some("--insecure"), "--insecure")] {
        let addr = format!("0.0.0.0:{}", free_port());
        let mut args = vec!["serve", "--listen", &addr, "--metrics-listen", ""];
        args.extend(extra);
        let proc = Proc::spawn(&args);
        let (status, log) = proc.finish(DEADLINE).await;
        assert_eq!(status.code(), Some(1), "{extra:?}: {log}");
        assert!(
            log.contains(words) && (log.contains("loopback") || log.contains("127.0.0.1")),
            "{extra:?}: {log}"
        );
    }
}
