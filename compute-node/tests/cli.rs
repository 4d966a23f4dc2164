//! The `berth-node` binary, run as an operator would.

// Test helpers outside #[test] fns unwrap too: a panic is the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn berth_node(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth-node"))
        .args(args)
        // No BERTH_NODE_* from the caller's environment may leak into the run.
        .env_clear()
        .output()
        .expect("binary runs")
}

#[test]
fn once_prints_the_simulated_nodes_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.xml");
    let out = berth_node(&[
        "--once",
        "--name",
        "sim-1",
        "--az",
        "az9",
        "--trait",
        "CUSTOM_SSD",
        "--test-node-vcpus",
        "32",
        "--test-node-memory-mb",
        "65536",
        "--test-node-disk-gb",
        "200",
        "--test-node-file",
        file.to_str().unwrap(),
        "--reserved-disk-gb",
        "10",
        "--ram-ratio",
        "1.5",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(file.exists(), "node file written");
    assert!(stdout.starts_with("node sim-1\n"), "{stdout}");
    assert!(stdout.contains("availability zone: az9"));
    assert!(stdout.contains("traits: CUSTOM_SSD"));
    assert!(stdout.contains("hypervisor: TEST"));
    let row = |class: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(class))
            .unwrap_or_else(|| panic!("no {class} row in {stdout}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // class total reserved ratio max_unit capacity
    assert_eq!(row("VCPU"), ["VCPU", "32", "0", "4", "32", "128"]);
    assert_eq!(
        row("MEMORY_MB"),
        ["MEMORY_MB", "65536", "512", "1.5", "65536", "97536"]
    );
    assert_eq!(row("DISK_GB"), ["DISK_GB", "200", "10", "1", "200", "190"]);
    assert!(stdout.contains("domains: 0"));
}

#[test]
fn once_on_the_default_test_uri_lists_its_domain() {
    let out = berth_node(&["--once", "--name", "h", "--disk-gb", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("domains: 1"), "{stdout}");
    assert!(stdout.contains("RUNNING   test"), "{stdout}");
}

#[test]
fn without_once_it_keeps_dialling_the_engine_until_sigterm_then_exits_0() {
    // A port with nothing behind it: the agent retries with backoff until told to stop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let engine = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_berth-node"))
        .args([
            "--name",
            "h",
            "--hypervisor",
            "fake",
            "--engine",
            &engine,
            "--heartbeat-interval",
            "0.2",
            "--reconnect-backoff-max",
            "0.1",
        ])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary runs");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}

#[test]
fn help_names_the_agent_flags() {
    let out = berth_node(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--engine",
        "--hypervisor",
        "--heartbeat-interval",
        "--reconnect-backoff",
        "--reconnect-backoff-max",
        "--fail-spawns",
        "--once",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("127.0.0.1:50051"), "{help}");
}

#[test]
fn bad_settings_fail_with_a_message() {
    let out = berth_node(&["--once", "--cpu-ratio", "0", "--disk-gb", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cpu_ratio"));
    let out = berth_node(&["--once", "--reserved-vcpus", "99", "--disk-gb", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved_vcpus"));
}
