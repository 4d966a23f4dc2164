//! Faults against the real `berth-engine` binary on a data directory:
//!
//! - `kill_9_under_claim_load_loses_nothing_acknowledged`: 64 clients claim and release on
//!   a tight cloud; the engine is SIGKILLed mid-load and restarted. Every acknowledged
//!   claim is there on its host, every acknowledged release and every request that failed
//!   has no allocation, and each provider's usage is exactly the sum of the allocations
//!   that exist — within capacity.
//! - `full_data_directory_refuses_writes_and_keeps_reads`: with a file-size limit the log
//!   stops growing; writes then fail UNAVAILABLE naming the cause, reads keep answering, and
//!   a restart without the limit has every acknowledged write.
//! - `damaged_snapshot_is_refused_then_recovered`: a flipped byte in the snapshot stops
//!   the start with a report naming the file; `--recover` starts and reports what it lost.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_tests::proc::EngineProc;
use berth_tests::v1 as pb;
use berth_tests::*;
use tonic::Code;

const HOSTS: usize = 60;
const CLIENTS: usize = 64;

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn start(addr: SocketAddr, data: &str, extra: &[&str]) -> EngineProc {
    let listen = addr.to_string();
    let mut args = vec![
        "serve",
        "--listen",
        &listen,
        "--metrics-listen",
        "",
        "--data-dir",
        data,
    ];
    args.extend_from_slice(extra);
    EngineProc::spawn(&args)
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Claimed (answer received): consumer → host.
    claimed: HashMap<String, String>,
    /// Released (answer received).
    released: HashSet<String>,
    /// The engine answered with an error: nothing may exist for these.
    refused: HashSet<String>,
    /// No answer (the engine died during the call): either outcome is allowed.
    in_doubt: HashSet<String>,
}

/// An error the engine itself gave (as opposed to the connection dying under the call).
fn answered(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::ResourceExhausted
            | Code::InvalidArgument
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::NotFound
    )
}

async fn client_loop(
    ch: AuthChannel,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let mut s = SchedulerClient::new(ch);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let consumer = new_uuid();
        let mut req = spec(&[("VCPU", 1 + n % 2), ("MEMORY_MB", 512)], "durable");
        req.instance_uuids = vec![consumer.clone()];
        match s
            .select_destinations(pb::SelectDestinationsRequest { spec: Some(req) })
            .await
        {
            Ok(r) => {
                let host = r
                    .into_inner()
                    .selections
                    .first()
                    .map(|x| x.host_uuid.clone())
                    .unwrap_or_default();
                seen.lock()
                    .expect("seen")
                    .claimed
                    .insert(consumer.clone(), host);
            }
            Err(e) if answered(&e) => {
                seen.lock().expect("seen").refused.insert(consumer);
                continue;
            }
            Err(_) => {
                seen.lock().expect("seen").in_doubt.insert(consumer);
                return;
            }
        }
        if n.is_multiple_of(3) {
            match s
                .release(pb::ReleaseRequest {
                    consumer_uuid: consumer.clone(),
                })
                .await
            {
                Ok(_) => {
                    seen.lock().expect("seen").released.insert(consumer);
                }
                Err(e) if answered(&e) => panic!("release of {consumer} refused: {e:?}"),
                Err(_) => {
                    seen.lock().expect("seen").in_doubt.insert(consumer);
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_claim_load_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_string_lossy().into_owned();
    let addr = addr();
    let mut engine = start(addr, &dir, &[]);
    let ch = engine.wait_serving(addr).await;
    let mut p = PlacementClient::new(ch.clone());
    // Tight: 60 hosts × 8 VCPU = 480 VCPU, and claims of 1–2 VCPU keep coming, so the
    // cloud fills and claims race for the last places.
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        let h = create_provider(
            &mut p,
            provider_request(&format!("d-{i}"), host_inventories(8, 1 << 20, 100)),
        )
        .await;
        hosts.push(h.uuid);
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        // Several connections, as separate clients would have.
        let ch = connect(addr).await.expect("connect");
        let ch = with_token(ch, &berth_tests::proc::admin_token(data.path()));
        tasks.push(tokio::spawn(client_loop(ch, seen.clone(), stop.clone())));
    }
    // Kill once a good number of claims were acknowledged (or after a while regardless).
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (claimed, refused) = {
            let s = seen.lock().expect("seen");
            (s.claimed.len(), s.refused.len())
        };
        // Enough claims, or the cloud is full and claims are being refused.
        if claimed >= 2000 || refused >= 500 || Instant::now() > deadline {
            break;
        }
    }
    engine.signal("KILL");
    println!("killed after {:?} of load", started.elapsed());
    let _ = engine
        .wait_until(Instant::now() + Duration::from_secs(10))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client task");
    }
    drop((p, ch));
    let seen = Arc::try_unwrap(seen)
        .ok()
        .expect("clients are done")
        .into_inner()
        .expect("seen");
    assert!(
        seen.claimed.len() >= 100,
        "the load made only {} claims before the kill",
        seen.claimed.len()
    );

    let mut engine = start(addr, &dir, &[]);
    let ch = engine.wait_serving(addr).await;
    let mut p = PlacementClient::new(ch.clone());
    // Every consumer the clients ever named, with what exists for it now.
    let mut held: HashMap<String, pb::GetAllocationsResponse> = HashMap::new();
    let all: HashSet<&String> = seen
        .claimed
        .keys()
        .chain(&seen.refused)
        .chain(&seen.in_doubt)
        .collect();
    for c in all {
        match p
            .get_allocations(pb::GetAllocationsRequest {
                consumer_uuid: c.clone(),
            })
            .await
        {
            Ok(r) => {
                held.insert(c.clone(), r.into_inner());
            }
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{c}: {e:?}"),
        }
    }
    for (c, host) in &seen.claimed {
        if seen.released.contains(c) {
            assert!(
                !held.contains_key(c),
                "released {c} is back after the restart"
            );
        } else if !seen.in_doubt.contains(c) {
            let a = held
                .get(c)
                .unwrap_or_else(|| panic!("acknowledged claim {c} lost in the crash"));
            assert_eq!(a.allocations.len(), 1, "{c}: {a:?}");
            assert_eq!(&a.allocations[0].provider_uuid, host, "{c} moved");
        }
    }
    for c in &seen.refused {
        assert!(
            !held.contains_key(c),
            "{c} was refused but holds {:?}",
            held[c]
        );
    }
    // Usage is exactly what the surviving allocations add up to, within capacity.
    let mut sums: HashMap<(String, String), u64> = HashMap::new();
    for a in held.values().flat_map(|r| &r.allocations) {
        for r in &a.resources {
            *sums
                .entry((a.provider_uuid.clone(), r.resource_class.clone()))
                .or_default() += r.amount;
        }
    }
    for h in &hosts {
        let usages = provider_usages(&mut p, h).await.usages;
        for u in &usages {
            let want = sums
                .get(&(h.clone(), u.resource_class.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                u.used, want,
                "{h} {}: usage vs allocations",
                u.resource_class
            );
            assert!(u.used <= u.capacity, "{h} over-committed: {u:?}");
        }
    }
    let log = engine.output();
    assert!(log.contains("state restored from"), "{log}");
}

#[tokio::test]
async fn full_data_directory_refuses_writes_and_keeps_reads() {
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_string_lossy().into_owned();
    let addr = addr();
    let listen = addr.to_string();
    // 64 KiB per file: room for a few dozen providers, then the log cannot grow.
    let mut engine = EngineProc::spawn_limited(
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-listen",
            "",
            "--data-dir",
            &dir,
        ],
        Some(64 * 1024),
    );
    let ch = engine.wait_serving(addr).await;
    let mut p = PlacementClient::new(ch.clone());
    let mut created = Vec::new();
    let refusal = loop {
        assert!(created.len() < 10_000, "the file-size limit never bit");
        let req = provider_request(
            &format!("full-{}-{}", created.len(), "x".repeat(150)),
            host_inventories(8, 4096, 100),
        );
        match p.create_resource_provider(req).await {
            Ok(r) => created.push(r.into_inner().provider.expect("provider").uuid),
            Err(e) => break e,
        }
    };
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    assert!(
        refusal.message().contains("cannot write the log"),
        "{refusal:?}"
    );
    // Reads keep working.
    let first = get_provider(&mut p, &created[0]).await;
    assert!(first.name.starts_with("full-0-"));
    let listed = p
        .list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect("list while the disk is full")
        .into_inner();
    assert!(listed.providers.len() >= created.len().min(50));
    // Further writes are refused up front, with the reason.
    let again = p
        .create_resource_provider(provider_request("after-full", host_inventories(1, 1, 1)))
        .await
        .expect_err("writes stay refused");
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");
    assert!(again.message().contains("refused"), "{again:?}");
    let log = engine.output();
    assert!(log.contains("cannot write the log"), "{log}");
    engine.signal("KILL");
    let _ = engine
        .wait_until(Instant::now() + Duration::from_secs(10))
        .await;
    drop((p, ch));

    // Without the limit: everything acknowledged is there, nothing is damaged.
    let mut engine = start(addr, &dir, &[]);
    let ch = engine.wait_serving(addr).await;
    let mut p = PlacementClient::new(ch);
    for u in &created {
        get_provider(&mut p, u).await;
    }
    let out = engine.output();
    assert!(!out.contains("damaged"), "{out}");
}

#[tokio::test]
async fn damaged_snapshot_is_refused_then_recovered() {
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_string_lossy().into_owned();
    let addr = addr();
    let mut engine = start(addr, &dir, &[]);
    let ch = engine.wait_serving(addr).await;
    let mut p = PlacementClient::new(ch.clone());
    for i in 0..20 {
        create_provider(
            &mut p,
            provider_request(&format!("snap-{i}"), host_inventories(4, 4096, 40)),
        )
        .await;
    }
    drop((p, ch));
    // A clean stop writes a snapshot holding everything.
    engine.signal("TERM");
    let (status, log) = engine.finish(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{log}");
    let snap = std::fs::read_dir(data.path())
        .expect("list data dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .expect("a snapshot after a clean stop");
    let mut bytes = std::fs::read(&snap).expect("read snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&snap, &bytes).expect("write snapshot");

    // Refused, with a report that names the file and the way out.
    let engine = start(addr, &dir, &[]);
    let (status, log) = engine.finish(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&snap.display().to_string()), "{log}");
    assert!(log.contains("--recover"), "{log}");
    assert!(log.contains("Nothing was loaded"), "{log}");

    // --recover: starts with what verified and says what it did.
    let mut engine = start(addr, &dir, &["--recover"]);
    let ch = engine.wait_serving(addr).await;
    let mut p = PlacementClient::new(ch);
    let listed = p
        .list_resource_providers(pb::ListResourceProvidersRequest::default())
        .await
        .expect("list")
        .into_inner()
        .providers;
    assert!(
        (19..=20).contains(&listed.len()),
        "{} providers after recovery",
        listed.len()
    );
    let log = engine.output();
    assert!(log.contains("damaged"), "{log}");
    assert!(log.contains("kept in"), "{log}");
}
