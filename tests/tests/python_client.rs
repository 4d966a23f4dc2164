//! A Python client that knows nothing but the server's address: runs
//! `scripts/grpc_python_check.sh`, which starts the real `berth-engine` binary and drives it
//! from Python with message classes built from server reflection alone. The venv is kept
//! under the target dir, so only the first run pays for `pip install`.

use std::process::Command;
use std::time::Duration;

use berth_tests::berth_engine_binary;

#[test]
fn python_reflection_client() {
    let python = Command::new("python3").arg("--version").output();
    match python {
        Ok(out) if out.status.success() => {}
        _ => {
            println!("SKIPPED python_reflection_client: python3 is not installed");
            return;
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let bin = berth_engine_binary();
    // <target>/<profile>/berth-engine → <target>/grpc-python-venv
    let venv = bin
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("grpc-python-venv");
    let child = Command::new("bash")
        .arg(root.join("scripts/grpc_python_check.sh"))
        .env("BERTH_ENGINE_BIN", &bin)
        .env("BERTH_PY_VENV", &venv)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run scripts/grpc_python_check.sh");
    let pid = child.id();
    // Collect the output on another thread (so the pipes never fill), with a deadline: a
    // first run creates the venv (pip install); later ones take about a second.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(out) => out.expect("script output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("grpc_python_check.sh did not finish within 600 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpc_python_check.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("grpc_python_check: OK"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("berth-engine stopped cleanly"),
        "{stdout}\n{stderr}"
    );
}
