//! The real `berth-engine` binary: `serve` on a free loopback port comes up SERVING, does
//! real work, exports Prometheus metrics, and on SIGTERM shuts down gracefully with exit
//! code 0 and a log line saying it stopped; a port already in use is a clean failure.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_tests::proc::{EngineProc as Proc, admin_token};
use berth_tests::v1 as pb;
use berth_tests::*;

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

#[tokio::test]
async fn binary_serves_and_stops_gracefully_on_sigterm() {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let data = tempfile::tempdir().expect("data dir");
    let data_dir = data.path().to_string_lossy().into_owned();
    let mut proc = Proc::spawn(&[
        "serve",
        "--listen",
        &addr.to_string(),
        "--metrics-listen",
        &metrics.to_string(),
        "--log",
        "info",
        "--data-dir",
        &data_dir,
    ]);
    let ch = proc.wait_serving(addr).await;
    // The admin token the engine wrote, private (mode 0600, checked by admin_token).
    let token = admin_token(data.path());
    assert!(!token.is_empty());

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
    // berth-wire counts open connections: this test's channel is one.
    let open: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("berth_grpc_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no berth_grpc_connections gauge:\n{m}"));
    assert!(open >= 1.0, "{m}");

    // Graceful shutdown, with a client still connected (idle): it must not hold the
    // server up until the 30 s grace period runs out.
    let started = Instant::now();
    proc.signal("TERM");
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
    // A clean stop leaves a snapshot for a fast start.
    assert!(log.contains("snapshot written"), "{log}");
    // And the port is free again.
    std::net::TcpListener::bind(addr).expect("the port is released after exit");

    // Started again on the same data directory, it has the provider and the claim.
    let mut proc = Proc::spawn(&[
        "serve",
        "--listen",
        &addr.to_string(),
        "--metrics-listen",
        "",
        "--data-dir",
        &data_dir,
    ]);
    // The same admin token still works: the key is kept in the data directory.
    let ch = proc.wait_serving(addr).await;
    let mut p = PlacementClient::new(ch.clone());
    let again = get_provider(&mut p, &host.uuid).await;
    assert_eq!(again.name, "bin-host");
    let usages = provider_usages(&mut p, &host.uuid).await.usages;
    assert_eq!(used_of(&usages, "VCPU"), 1, "{usages:?}");
    let held = allocations(&mut p, &sel[0].consumer_uuid).await;
    assert_eq!(held.allocations.len(), 1, "{held:?}");
    assert!(
        proc.output().contains("state restored from"),
        "{}",
        proc.output()
    );
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
        "--ephemeral",
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
        let data = tempfile::tempdir().expect("data dir");
        let dir = data.path().to_string_lossy().into_owned();
        let mut args = vec![
            "serve",
            "--listen",
            &addr,
            "--metrics-listen",
            "",
            "--data-dir",
            &dir,
        ];
        args.extend(extra);
        let proc = Proc::spawn(&args);
        let (status, log) = proc.finish(DEADLINE).await;
        assert_eq!(status.code(), Some(1), "{extra:?}: {log}");
        assert!(
            log.contains(words) && (log.contains("loopback") || log.contains("127.0.0.1")),
            "{extra:?}: {log}"
        );
        // Refused before anything was written.
        let left: Vec<_> = std::fs::read_dir(data.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{extra:?}: {left:?}");
    }
}
