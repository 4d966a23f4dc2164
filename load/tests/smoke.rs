//! CI smoke run of the load harness: small lifecycle, churn and fill scenarios against a real
//! `berth-engine` child process, asserting correctness only (no over-commit, no unexpected
//! error, every audit check at 0), never speed.

use berth_load::{Args, Report};
use clap::Parser;

/// Runs `berth-load` with these flags (plus `--quiet` and the engine binary) on its own
/// runtime, single-threaded like the harness's.
fn run(flags: &[&str]) -> Report {
    let engine = berth_tests::berth_engine_binary();
    let mut argv = vec!["berth-load", "--quiet", "--engine-bin"];
    argv.push(engine.to_str().expect("a UTF-8 path"));
    argv.extend_from_slice(flags);
    let args = Args::try_parse_from(argv).expect("valid flags");
    let rt = tokio::runtime::Builder::new_current_thread()
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

#[test]
fn fill_places_until_no_flavor_fits_anywhere() {
    let report = run(&["--scenario", "fill-20", "--clients", "4"]);
    let a = &report.audit;
    assert_eq!(a.overcommits, 0, "over-commits: {report:#?}");
    assert_eq!(a.usage_mismatches, 0, "usage mismatches: {report:#?}");
    assert_eq!(report.unexpected_errors(), 0, "errors: {:?}", report.errors);
    assert!(report.ok(), "the report's own verdict: {report:#?}");
    assert_eq!(a.providers, 20);
    assert!(a.live_instances > 0, "nothing placed: {report:#?}");
    // The fill stops only when even the smallest flavor (1 VCPU, 2 GiB, 20 GB) fits on no
    // host, so every host lacks room for it in some class, which is then more than 96%
    // full on the smallest host shape (RAM 1 − 2048/65024, VCPU 1 − 1/64, disk 1 − 20/1000).
    let b = a.binding.as_ref().expect("a fill places");
    assert!(b.min > 0.96, "a host left with room: {b:?}");
    assert!(b.mean >= b.min && b.mean <= 1.0, "{b:?}");
    assert_eq!(b.hosts_by_class.values().sum::<u64>(), 20, "{b:?}");
}
