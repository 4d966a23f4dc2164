//! The real `berth-engine` binary as a child process: spawned with its output collected in
//! the background (so its pipes never fill), waited for until SERVING, stopped by signal,
//! and killed on drop if still running.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use berth_engine::auth::{Role, TokenSpec};

use crate::{AuthChannel, berth_engine_binary, connect, with_token};

/// How long a start may take before a test gives up.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// A spawned `berth-engine`. See the module doc.
pub struct EngineProc {
    /// The process.
    pub child: Child,
    /// Its `--data-dir`, where it writes the admin token.
    data_dir: Option<std::path::PathBuf>,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl EngineProc {
    /// `berth-engine ARGS` with the `BERTH_*` variables of the caller's environment removed.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_limited(args, None)
    }

    /// As [`EngineProc::spawn`], with a file-size limit (`ulimit -f`, in bytes rounded
    /// down to KiB) when given: the engine's writes past it fail as on a full disk.
    pub fn spawn_limited(args: &[&str], file_size_limit: Option<u64>) -> Self {
        let mut cmd = match file_size_limit {
            None => Command::new(berth_engine_binary()),
            Some(bytes) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("ulimit -f {} && exec \"$0\" \"$@\"", bytes / 1024))
                    .arg(berth_engine_binary());
                c
            }
        };
        cmd.args(args)
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
            "BERTH_EPHEMERAL",
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
        let readers = collect_output(&mut child, &output);
        let data_dir = args
            .iter()
            .position(|a| *a == "--data-dir")
            .and_then(|i| args.get(i + 1))
            .map(std::path::PathBuf::from);
        Self {
            child,
            data_dir,
            output,
            readers,
        }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().expect("log buffer").clone()
    }

    /// Polls for the exit until `deadline`; `None` if still running. Async, so the test's
    /// runtime keeps serving its own connections to the server meanwhile (a client that
    /// cannot answer the server's GOAWAY/PING would hold up the graceful shutdown).
    pub async fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
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
    pub async fn finish(mut self, within: Duration) -> (ExitStatus, String) {
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

    /// Polls the health service until it answers SERVING (panics if the process dies or
    /// [`START_DEADLINE`] passes); the channel carries the admin token the engine wrote to
    /// its `--data-dir` (none when it runs `--insecure`).
    pub async fn wait_serving(&mut self, addr: SocketAddr) -> AuthChannel {
        let ch = self.wait_serving_plain(addr).await;
        let token = match &self.data_dir {
            Some(dir) if dir.join("admin.token").exists() => admin_token(dir),
            _ => String::new(),
        };
        with_token(ch, &token)
    }

    /// [`EngineProc::wait_serving`] without a token.
    pub async fn wait_serving_plain(&mut self, addr: SocketAddr) -> Channel {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                panic!("berth-engine exited early ({st}):\n{}", self.output());
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
                "berth-engine not SERVING on {addr} within {START_DEADLINE:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, ...).
    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }
}

/// The admin token an engine wrote to `data_dir` at start, checked to be private (mode
/// 0600).
pub fn admin_token(data_dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = data_dir.join("admin.token");
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

/// A one-hour `node` token for the node called `name`, signed with the key an engine keeps
/// in `data_dir`.
pub fn node_token(data_dir: &std::path::Path, name: &str) -> String {
    let (key, _) =
        berth_engine::auth::files::load_key(data_dir, false).expect("the engine's token key");
    key.issue(&TokenSpec {
        subject: name.into(),
        project: String::new(),
        roles: vec![Role::Node],
        ttl: Duration::from_secs(3600),
    })
    .expect("a valid token spec")
}

/// Appends the child's stdout and stderr (both piped) to `output` from two threads, so its
/// pipes never fill; the threads end when the child closes them.
pub fn collect_output(child: &mut Child, output: &Arc<Mutex<String>>) -> Vec<JoinHandle<()>> {
    let pipes: Vec<Box<dyn Read + Send>> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    pipes
        .into_iter()
        .map(|mut pipe| {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .expect("output lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        })
        .collect()
}

/// `kill -SIGNAL pid`, asserting it was delivered.
pub fn signal_pid(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{signal} {pid}: {st}");
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
