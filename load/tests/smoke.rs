//! CI smoke run of the load harness: small lifecycle and churn scenarios against a real
//! `berth-engine` child process, asserting correctness only (no over-commit, no unexpected
//! error, every audit check at 0), never speed.

use berth_load::{Args, Report};
use clap::Parser;

/// Runs `berth-load` with these flags (plus `--quiet` and the engine binary) on its own
/// runtime, sized like the harness's: worker threads = cores.
fn run(flags: &[&str]) -> Report {
    let engine = berth_tests::berth_engine_binary();
    let mut argv = vec!["berth-load", "--quiet", "--engine-bin"];
    argv.push(engine.to_str().expect("a UTF-8 path"));
    argv.extend_from_slice(flags);
    let args = Args::try_parse_from(argv).expect("valid flags");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(berth_load::run(args))
        .expect("the run completes")
}

fn assert_correct(report: &Report) {
    let a = &report.audit;
    assert_eq!(a.overcommits, 0, "over-commits: {report:#?}");
    assert_eq!(a.usage_mismatches, 0, "usage mismatches: {report:#?}");
    assert_eq!(report.unexpected_errors(), 0, "errors: {:?}", report.errors);
    assert_eq!(
        report.nodes.as_ref().map(|n| n.agent_failures),
        Some(0),
        "agents failed"
    );
    assert!(report.ok(), "the report's own verdict: {report:#?}");
}

#[test]
fn lifecycle_creates_and_deletes_through_simulated_nodes_without_overcommit() {
    let report = run(&[
        "--scenario",
        "lifecycle-20",
        "--clients",
        "4",
        "--count",
        "100",
    ]);
    assert_correct(&report);
    let servers = report.servers.as_ref().expect("lifecycle reports servers");
    assert_eq!(servers.created, 100, "every create answered");
    assert_eq!(servers.error_servers, 0);
    assert_eq!(servers.missing_domains, 0);
    assert_eq!(servers.leaked_domains, 0);
    assert!(servers.domains_checked >= 100, "{servers:?}");
    assert_eq!(report.audit.allocation_mismatches, Some(0));
    assert_eq!(report.audit.providers, 20);
}

#[test]
fn churn_places_only_on_live_hosts_while_nodes_come_and_go() {
    // 0.3 s heartbeats: hosts go down 0.9 s after their agent stops, and the audit's 2 ×
    // down_after margin (1.8 s) passes within the run, with room for a loaded machine.
    let report = run(&[
        "--scenario",
        "churn-50",
        "--clients",
        "4",
        "--duration",
        "4",
        "--heartbeat",
        "0.3",
    ]);
    assert_correct(&report);
    let churn = report.churn.as_ref().expect("churn reports its churn");
    assert!(
        churn.left > 0 && churn.joined > 0 && churn.paused > 0,
        "{churn:?}"
    );
    assert_eq!(churn.claims_on_stopped_hosts, 0);
    assert_eq!(churn.claims_on_down_hosts, 0);
    assert!(churn.checked_claims > 0, "clients placed nothing");
}
