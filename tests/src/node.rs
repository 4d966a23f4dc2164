//! A real `berth-node` as a child process simulating a host on libvirt's test driver: its
//! output collected across restarts, killed (SIGKILL) on drop, its output printed when the
//! test fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::berth_node_binary;
use crate::proc::collect_output;

/// See the module doc.
pub struct NodeProc {
    /// The node's name.
    pub name: String,
    /// Its command line (kept for restarts).
    pub args: Vec<String>,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl NodeProc {
    /// Starts `berth-node` as `name` against `engine_url`, simulating a host of
    /// `(vcpus, memory_mb, disk_gb)` whose test-driver state is `dir/NAME.xml`, heartbeating
    /// every `heartbeat` seconds and reconnecting within half a second; `extra` flags last.
    pub fn simulated(
        engine_url: &str,
        dir: &Path,
        name: &str,
        heartbeat: &str,
        (vcpus, memory_mb, disk_gb): (u32, u64, u64),
        extra: &[&str],
    ) -> Self {
        let mut args: Vec<String> = [
            "--engine",
            engine_url,
            "--name",
            name,
            "--test-node-vcpus",
            &vcpus.to_string(),
            "--test-node-memory-mb",
            &memory_mb.to_string(),
            "--test-node-disk-gb",
            &disk_gb.to_string(),
            "--test-node-file",
            &dir.join(format!("{name}.xml")).display().to_string(),
            "--heartbeat-interval",
            heartbeat,
            "--reconnect-backoff-max",
            "0.5",
            "--log",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut node = Self {
            name: name.to_string(),
            args,
            child: None,
            output: Arc::new(Mutex::new(String::new())),
        };
        node.spawn();
        node
    }

    /// (Re)starts the process with `args`, `BERTH_NODE_*` variables removed.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(berth_node_binary());
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        for (k, _) in std::env::vars() {
            if k.starts_with("BERTH_NODE_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn berth-node");
        collect_output(&mut child, &self.output);
        self.child = Some(child);
    }

    /// SIGKILL: the node dies without a word to the engine.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Replaces flag `flag`'s value, or drops the flag when `value` is `None`; for the next
    /// [`NodeProc::spawn`].
    pub fn set_flag(&mut self, flag: &str, value: Option<&str>) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args.drain(i..(i + 2).min(self.args.len()));
        }
        if let Some(v) = value {
            self.args.push(flag.to_string());
            self.args.push(v.to_string());
        }
    }

    /// Everything it printed, across restarts.
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- berth-node {} output ----\n{}",
                self.name,
                self.output()
            );
        }
    }
}
