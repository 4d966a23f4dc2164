//! A `berth-engine` child process for the run, so its CPU time and peak RSS can be read
//! apart from the harness's (from /proc).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Security;

/// The spawned engine; killed on drop.
pub struct EngineProcess {
    child: Child,
    /// gRPC URL.
    pub url: String,
    /// The admin token it wrote (none when insecure) and its CA (with TLS).
    pub credentials: berth_node::agent::Credentials,
    _config: tempfile_lite::TempFile,
    /// Its data directory (and, with TLS, its certificates).
    _data: tempfile::TempDir,
}

mod tempfile_lite {
    //! A file removed on drop (enough for one config file; no extra dependency).
    use std::path::PathBuf;
    pub struct TempFile(pub PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn default_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("berth-engine"), dir.parent()?.join("berth-engine")]
        .into_iter()
        .find(|p| p.exists())
}

impl EngineProcess {
    /// Starts `berth-engine serve` on a free port with `threads` serving threads, secured as
    /// `security` says, and waits
    /// until it accepts connections. Durable in `data_dir` when given, `--ephemeral`
    /// otherwise (the token key and admin token then go to a temporary directory).
    pub async fn spawn(
        bin: Option<&Path>,
        pack: bool,
        security: Security,
        data_dir: Option<&Path>,
        threads: usize,
    ) -> Result<Self, String> {
        let bin = bin.map(Path::to_path_buf).or_else(default_bin).ok_or(
            "cannot find berth-engine next to berth-load; build it (cargo build --release -p berth-engine) or pass --engine-bin / --engine",
        )?;
        let port = free_port()?;
        let mult = if pack { -1.0 } else { 1.0 };
        let config = tempfile_lite::TempFile(
            std::env::temp_dir().join(format!("berth-load-{}-{port}.toml", std::process::id())),
        );
        let data = tempfile::tempdir().map_err(|e| format!("a data directory: {e}"))?;
        let d = data.path();
        let secure = match security {
            Security::Insecure => "insecure = true\n".to_string(),
            Security::Token => String::new(),
            Security::Tls => {
                berth_engine::auth::tls::cert_init(&berth_engine::auth::tls::CertInit {
                    dir: d.join("pki"),
                    ..Default::default()
                })?;
                format!(
                    "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                    d.join("pki/engine.pem").display(),
                    d.join("pki/engine.key").display()
                )
            }
        };
        std::fs::write(
            &config.0,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"\"\nlog = \"warn\"\n\
                 threads = {threads}\n{secure}\
                 [engine.scheduler]\nmax_instances_per_host = 1000\n\
                 [engine.scheduler.multipliers]\nram = {mult:.1}\ncpu = {mult:.1}\ndisk = {mult:.1}\n",
            ),
        )
        .map_err(|e| format!("writing {}: {e}", config.0.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg("--config").arg(&config.0);
        let keys = match data_dir {
            Some(dir) => dir.to_path_buf(),
            None => {
                cmd.arg("--ephemeral");
                d.to_path_buf()
            }
        };
        cmd.arg("--data-dir").arg(&keys);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let tls = security == Security::Tls;
        let mut me = Self {
            child,
            // The development certificate names localhost, 127.0.0.1 and ::1.
            url: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
            credentials: berth_node::agent::Credentials::default(),
            _config: config,
            _data: data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not start listening on port {port} within 20s",
                    bin.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if tls {
            let ca = me._data.path().join("pki/ca.pem");
            me.credentials.ca_cert =
                Some(std::fs::read(&ca).map_err(|e| format!("{}: {e}", ca.display()))?);
        }
        if security != Security::Insecure {
            // Written at start, before the engine serves.
            let path = keys.join("admin.token");
            while !path.exists() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} did not write {}",
                        bin.display(),
                        path.display()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let token =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            me.credentials.token = Some(token.trim().to_string());
        }
        Ok(me)
    }

    /// User + system CPU seconds so far (from /proc; 0 where unavailable).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    /// Peak resident set (VmHWM), MiB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid` (a number, or `self`) so far, from
/// /proc/PID/stat; 0 where unavailable.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" of the command name: utime and stime are the 12th and 13th.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<f64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}
