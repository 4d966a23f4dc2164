//! How long a durable engine takes to come back: builds a cloud of `--hosts` providers and
//! `--allocations` consumers (one allocation each) in a temporary data directory, then
//! reopens it twice — once replaying the write-ahead log only, once from a snapshot — and
//! prints the time to read the files and to rebuild the engine.
//!
//! ```sh
//! cargo run --release -p berth-engine --example restart_time -- --hosts 100000 --allocations 1000000
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_engine::model::{Allocation, Inventory, ProviderSpec};
use berth_engine::store::record::Record;
use berth_engine::store::{SnapshotSource, Store, StoreConfig};
use berth_engine::{AllocationRequest, Engine, EngineConfig};
use uuid::Uuid;

struct Source(Arc<Engine>);

impl SnapshotSource for Source {
    fn export(&self, out: &mut dyn FnMut(Record)) {
        self.0.export(out);
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open(cfg: &StoreConfig) -> Result<(Arc<Engine>, Arc<Store>, Duration, Duration), String> {
    let t = Instant::now();
    let (store, state, report) = Store::open(cfg, false, &|_, _, _| {})?;
    let read = t.elapsed();
    let t = Instant::now();
    let engine = Arc::new(Engine::new(EngineConfig::default()).map_err(|e| e.to_string())?);
    let r = engine.restore(&state);
    let rebuild = t.elapsed();
    if !r.skipped.is_empty() || !report.damage.is_empty() {
        return Err(format!(
            "{:?} {:?}",
            r.skipped.first(),
            report.damage.first()
        ));
    }
    engine.attach_store(store.clone());
    Ok((engine, store, read, rebuild))
}

fn main() -> Result<(), String> {
    let hosts = arg("--hosts", 100_000);
    let allocations = arg("--allocations", 1_000_000);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cfg = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        ephemeral: false,
        snapshot_after_mb: 1 << 20,
    };
    let (engine, store, _, _) = open(&cfg)?;
    let t = Instant::now();
    let mut uuids = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let spec = ProviderSpec::new(format!("host-{i:06}"))
            .az(if i % 2 == 0 { "az1" } else { "az2" })
            .inventory(
                "VCPU",
                Inventory {
                    allocation_ratio: 16.0,
                    ..Inventory::new(64)
                },
            )
            .inventory("MEMORY_MB", Inventory::new(1 << 20))
            .inventory("DISK_GB", Inventory::new(10_000));
        uuids.push(
            engine
                .create_provider(spec)
                .map_err(|e| e.to_string())?
                .uuid,
        );
    }
    for n in 0..allocations {
        let req = AllocationRequest {
            consumer_generation: None,
            project_id: format!("project-{}", n % 100),
            user_id: "user".into(),
            allocations: vec![Allocation {
                provider: uuids[n % hosts],
                resources: vec![("VCPU".into(), 1), ("MEMORY_MB".into(), 512)],
            }],
        };
        engine
            .replace_allocations(&Uuid::new_v4(), req)
            .map_err(|e| e.to_string())?;
    }
    let built = t.elapsed();
    store.close();
    let log_mb = dir_mb(dir.path());
    drop((engine, store));
    println!(
        "built {hosts} providers and {allocations} allocations in {:.1} s ({log_mb:.0} MiB of log)",
        built.as_secs_f64()
    );

    let (engine, store, read, rebuild) = open(&cfg)?;
    println!(
        "restart from the log:      read {:.2} s + rebuild {:.2} s = {:.2} s ({} consumers)",
        read.as_secs_f64(),
        rebuild.as_secs_f64(),
        (read + rebuild).as_secs_f64(),
        engine.consumer_count()
    );
    store.set_source(Arc::new(Source(engine.clone())));
    let t = Instant::now();
    let (records, bytes) = store.snapshot()?;
    println!(
        "snapshot: {records} records, {:.0} MiB, in {:.2} s",
        bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    store.close();
    drop((engine, store));

    let (engine, store, read, rebuild) = open(&cfg)?;
    println!(
        "restart from the snapshot: read {:.2} s + rebuild {:.2} s = {:.2} s ({} consumers)",
        read.as_secs_f64(),
        rebuild.as_secs_f64(),
        (read + rebuild).as_secs_f64(),
        engine.consumer_count()
    );
    store.close();
    Ok(())
}

fn dir_mb(dir: &std::path::Path) -> f64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
        .unwrap_or(0) as f64
        / (1 << 20) as f64
}

// As in the berth-engine binary: the rebuild allocates millions of small objects.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
