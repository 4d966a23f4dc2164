//! A fixed amount of gRPC work against a running engine, for profiling the engine's
//! per-RPC cost with callgrind (instruction counts are stable on a noisy machine):
//!
//! ```text
//! cargo build --release -p berth-engine -p berth-load --example grpc_profile
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.engine \
//!     target/release/berth-engine serve --ephemeral --insecure --config CONFIG &   # flat-1k's config
//! target/release/examples/grpc_profile http://127.0.0.1:PORT --pairs 2000 --zero-pid PID
//! callgrind_annotate --inclusive=yes /tmp/cg.engine.PID   # (the dump after the run)
//! ```
//!
//! It builds flat-1k's cloud (1,000 providers, 4 flavors) through the API, then — with
//! `--zero-pid`, after `callgrind_control -z PID` zeroed the engine's counters — runs
//! `--pairs` SelectDestinations + Release pairs from `--clients` concurrent clients over
//! `--connections` connections, then `callgrind_control -d PID` dumps the counters: the
//! engine's instructions for exactly those pairs. `--mode health` runs pairs of
//! `grpc.health.v1.Health/Check` instead (the same server and layer, no engine work: the
//! transport's floor). `--insecure`: this client sends no token (the auth layer's own cost
//! is measured by `berth-load --security`, README "Security").

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use berth_proto::v1 as pb;
use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use tonic::transport::Channel;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn callgrind_control(flag: &str, pid: u32) {
    let out = Command::new("callgrind_control")
        .arg(flag)
        .arg(pid.to_string())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "callgrind_control {flag} {pid}: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("callgrind_control: {e}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let pairs: u64 = arg(&args, "--pairs", 2000);
    let clients: usize = arg(&args, "--clients", 8);
    let connections: usize = arg(&args, "--connections", 8);
    let hosts: usize = arg(&args, "--hosts", 1000);
    let zero_pid: u32 = arg(&args, "--zero-pid", 0);
    let health = args
        .iter()
        .position(|a| a == "--mode")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|m| m == "health");

    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(
            Channel::from_shared(url.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let run_id = format!("{:08x}", fastrand::u32(..));
    let aggregate = format!("load-{run_id}");
    if !health {
        let mut catalog = CatalogClient::new(channels[0].clone());
        for (name, vcpus, ram, disk) in berth_load::FLAVORS {
            let r = catalog
                .create_flavor(pb::CreateFlavorRequest {
                    name: name.to_string(),
                    vcpus: *vcpus,
                    ram_mb: *ram,
                    disk_gb: *disk,
                    ..Default::default()
                })
                .await;
            if let Err(s) = r
                && s.code() != tonic::Code::AlreadyExists
            {
                return Err(s.into());
            }
        }
        let mut placement = PlacementClient::new(channels[0].clone());
        for i in 0..hosts {
            // Seed 42: berth-load's default, so this is flat-1k's cloud.
            placement
                .create_resource_provider(berth_load::provider_request(42, i, &run_id))
                .await?;
        }
    }
    if zero_pid != 0 {
        callgrind_control("-z", zero_pid);
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ch = channels[c % channels.len()].clone();
        let next = next.clone();
        let errors = errors.clone();
        let aggregate = aggregate.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c as u64);
            if health {
                use tonic_health::pb::HealthCheckRequest;
                use tonic_health::pb::health_client::HealthClient;
                let mut h = HealthClient::new(ch);
                while next.fetch_add(1, Ordering::Relaxed) < pairs {
                    for _ in 0..2 {
                        if h.check(HealthCheckRequest::default()).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                return;
            }
            let mut sched = SchedulerClient::new(ch);
            while next.fetch_add(1, Ordering::Relaxed) < pairs {
                let flavor = berth_load::FLAVORS[rng.usize(..berth_load::FLAVORS.len())].0;
                let spec = pb::RequestSpec {
                    flavor: Some(flavor.to_string()),
                    project_id: aggregate.clone(),
                    user_id: "berth-load".into(),
                    num_instances: 1,
                    member_of: vec![pb::AggregateSet {
                        aggregates: vec![aggregate.clone()],
                    }],
                    ..Default::default()
                };
                match sched
                    .select_destinations(pb::SelectDestinationsRequest { spec: Some(spec) })
                    .await
                {
                    Ok(r) => {
                        for s in r.into_inner().selections {
                            if sched
                                .release(pb::ReleaseRequest {
                                    consumer_uuid: s.consumer_uuid,
                                })
                                .await
                                .is_err()
                            {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let el = start.elapsed();
    if zero_pid != 0 {
        callgrind_control("-d", zero_pid);
    }
    println!(
        "{} pairs ({}), {clients} clients, {connections} connections: {:.1} s, {:.0} pairs/s, {} errors",
        pairs,
        if health { "health" } else { "select+release" },
        el.as_secs_f64(),
        pairs as f64 / el.as_secs_f64(),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}
