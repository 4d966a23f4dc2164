//! Runs the `berth` binary as a script would: exit codes, where text goes (stdout vs
//! stderr) and `--help`. None of these needs a running engine; tests against a live
//! engine live in the workspace's `tests/` crate.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Output};

fn berth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        // The caller's environment must not steer the tests.
        .env_remove("BERTH_ENGINE")
        .env_remove("BERTH_OUTPUT")
        .env_remove("BERTH_TIMEOUT")
        .env_remove("BERTH_PROJECT")
        .env_remove("BERTH_USER")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_DATA_DIR")
        .env_remove("BERTH_CA_CERT")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A loopback URL where nothing listens: bind a port, then free it.
fn dead_engine() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn unreachable_engine_exits_3_with_a_hint() {
    let url = dead_engine();
    for args in [
        vec!["host", "list"],
        vec!["-o", "json", "usage"],
        vec!["schedule", "--flavor", "m1", "--dry-run"],
        vec!["server", "list"],
        vec!["server", "stop", "0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10"],
        vec!["host", "evacuate", "compute-1"],
    ] {
        let mut full = vec!["--engine", url.as_str()];
        full.extend(&args);
        let out = berth(&full);
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "error: UNAVAILABLE: cannot reach the engine at {url}"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("hint: is berth-engine running at {url}?")),
            "{err}"
        );
    }
}

#[test]
fn engine_url_without_scheme_gets_http() {
    let url = dead_engine();
    let bare = url.trim_start_matches("http://");
    let out = berth(&["--engine", bare, "host", "list"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains(&url));
}

#[test]
fn usage_errors_exit_2_and_name_the_bad_part() {
    let out = berth(&["inventory", "set", "compute-1", "VCPU=64,ratio=abc"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("ratio 'abc' is not a number"), "{err}");

    let out = berth(&["host", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));

    // Checked before connecting: a usage error even with no engine around.
    let url = dead_engine();
    let out = berth(&[
        "--engine",
        &url,
        "group",
        "create",
        "g",
        "--policy",
        "affinity",
        "--max-per-host",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: --max-per-host"));

    let out = berth(&[
        "--engine",
        &url,
        "server",
        "delete",
        "0b4c7f7e-55a3-4bd4-a8a1-6f0f7c2d9e10",
        "0B4C7F7E-55A3-4BD4-A8A1-6F0F7C2D9E10",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is given twice"));

    let out = berth(&["server", "stop", "web-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("'web-1' is not a UUID"));

    let out = berth(&["--engine", "https://127.0.0.1:1", "host", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--ca-cert"));
}

#[test]
fn every_command_has_help_with_examples() {
    let groups: &[(&str, &[&str])] = &[
        (
            "host",
            &[
                "list", "show", "create", "delete", "disable", "enable", "evacuate",
            ],
        ),
        (
            "server",
            &[
                "create",
                "list",
                "show",
                "delete",
                "stop",
                "start",
                "reboot",
                "pause",
                "unpause",
                "suspend",
                "resume",
                "snapshot",
                "rebuild",
                "shelve",
                "shelve-offload",
                "unshelve",
                "resize",
                "confirm-resize",
                "revert-resize",
                "migrate",
                "live-migrate",
                "evacuate",
                "lock",
                "unlock",
            ],
        ),
        ("inventory", &["set", "show"]),
        ("trait", &["set", "show", "list"]),
        ("aggregate", &["set", "show"]),
        ("flavor", &["create", "list", "show", "delete"]),
        ("image", &["create", "list", "show", "delete"]),
        ("group", &["create", "list", "show", "delete"]),
        ("allocation", &["show", "delete"]),
        ("quota", &["show", "set"]),
    ];
    for (group, subs) in groups {
        let out = berth(&[group, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{group} --help");
        for sub in *subs {
            let out = berth(&[group, sub, "--help"]);
            assert_eq!(out.status.code(), Some(0), "{group} {sub} --help");
            let help = text(&out.stdout);
            assert!(help.contains("Examples:"), "{group} {sub}: {help}");
            assert!(
                help.contains("--engine <URL>"),
                "{group} {sub}: globals shown"
            );
        }
    }
    for top in ["schedule", "usage"] {
        let out = berth(&[top, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(text(&out.stdout).contains("Examples:"), "{top}");
    }
    let out = berth(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.contains("Exit status:"), "{help}");
}

#[test]
fn version_prints_and_exits_0() {
    let out = berth(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("berth "));
}
