//! The store against the engine: whatever sequence of changes, a reopened directory
//! rebuilds exactly the state that was logged — through snapshots, torn tails and (with
//! `recover`) damage.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{SnapshotSource, State, Store, StoreConfig};
use crate::model::{
    Allocation, FlavorSpec, GroupPolicy, ImageSpec, Inventory, ProviderSpec, ProviderUpdate,
    RequestSpec, ServerGroupSpec,
};
use crate::{AllocationRequest, Engine, EngineConfig, ProviderFilter};

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        ephemeral: false,
        snapshot_after_mb: 1024,
    }
}

struct Source(Arc<Engine>);

impl SnapshotSource for Source {
    fn export(&self, out: &mut dyn FnMut(super::record::Record)) {
        self.0.export(out);
    }
}

/// Opens `dir`, rebuilds an engine from it and attaches the store.
fn open(
    dir: &Path,
    recover: bool,
) -> Result<(Arc<Engine>, Arc<Store>, super::RecoveryReport), String> {
    let (store, state, report) = Store::open(&config(dir), recover, &|_, _, _| {})?;
    let engine = Arc::new(Engine::new(EngineConfig::default()).map_err(|e| e.to_string())?);
    let r = engine.restore(&state);
    assert!(r.skipped.is_empty(), "skipped on restore: {:?}", r.skipped);
    engine.attach_store(store.clone());
    store.set_source(Arc::new(Source(engine.clone())));
    Ok((engine, store, report))
}

/// Waits until everything appended is on disk.
fn settle(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.wal.durable_lsn() < store.appended() {
        assert!(Instant::now() < deadline, "the log did not reach the disk");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Everything a client can read, in a stable order.
fn fingerprint(e: &Engine) -> String {
    let mut out = String::new();
    for p in e.list_providers(&ProviderFilter::default()).unwrap() {
        out += &format!("{p:?}\n");
    }
    let mut ids = e.consumer_ids();
    ids.sort();
    for c in ids {
        out += &format!("{:?}\n", e.get_allocations(&c).unwrap());
    }
    for g in e.list_groups() {
        out += &format!("{g:?}\n");
    }
    for f in e.list_flavors() {
        out += &format!("{f:?}\n");
    }
    for i in e.list_images() {
        out += &format!("{i:?}\n");
    }
    let mut classes = e.list_resource_classes();
    classes.sort();
    out += &format!("{classes:?}\n");
    out += &format!("{:?}\n", e.aggregate_metadata("agg-a"));
    for p in ["demo", "other"] {
        out += &format!("{:?}\n", e.project_usages(p, None).unwrap());
        out += &format!("{:?}\n", e.quota(p).unwrap());
    }
    out
}

/// Equal fingerprints, or the differing lines.
#[track_caller]
fn assert_same(got: &str, want: &str) {
    if got == want {
        return;
    }
    let g: Vec<&str> = got.lines().collect();
    let w: Vec<&str> = want.lines().collect();
    let only_got: Vec<&&str> = g.iter().filter(|l| !w.contains(l)).collect();
    let only_want: Vec<&&str> = w.iter().filter(|l| !g.contains(l)).collect();
    panic!(
        "rebuilt state differs\nonly after reopen:\n{only_got:#?}\nonly before:\n{only_want:#?}"
    );
}

fn host(name: &str, az: &str) -> ProviderSpec {
    ProviderSpec::new(name)
        .az(az)
        .inventory(
            "VCPU",
            Inventory {
                allocation_ratio: 4.0,
                ..Inventory::new(16)
            },
        )
        .inventory("MEMORY_MB", Inventory::new(65536))
        .inventory("DISK_GB", Inventory::new(1000))
}

/// A busy history touching every kind of record.
fn workload(e: &Engine, seed: u64) -> Vec<Uuid> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut hosts = Vec::new();
    for i in 0..12 {
        let mut spec = host(
            &format!("h{seed}-{i}"),
            if i % 2 == 0 { "az1" } else { "az2" },
        );
        if i % 3 == 0 {
            spec = spec
                .with_trait("HW_CPU_X86_AVX2")
                .aggregate("agg-a")
                .inventory("CUSTOM_GPU", Inventory::new(2));
        }
        hosts.push(e.create_provider(spec).unwrap().uuid);
    }
    e.create_resource_class(&format!("CUSTOM_FPGA{seed}"))
        .unwrap();
    e.set_aggregate_metadata("agg-a", BTreeMap::from([("ssd".into(), "true".into())]))
        .unwrap();
    // Quotas: set, overridden to unlimited, and one set then unset (never binding here).
    e.set_quota(
        "other",
        &[
            ("instances".into(), Some(10_000 + seed)),
            (format!("CUSTOM_FPGA{seed}"), Some(seed)),
            ("VCPU".into(), None),
        ],
        &[],
    )
    .unwrap();
    e.set_quota("demo", &[("MEMORY_MB".into(), Some(1 << 40))], &[])
        .unwrap();
    e.set_quota(
        "demo",
        &[("DISK_GB".into(), Some(1_000_000 + seed))],
        &["MEMORY_MB".into()],
    )
    .unwrap();
    e.create_flavor(FlavorSpec {
        id: Some(format!("f{seed}")),
        name: format!("small-{seed}"),
        vcpus: 2,
        ram_mb: 2048,
        disk_gb: 10,
        extra_specs: BTreeMap::from([("trait:HW_CPU_X86_AVX2".into(), "required".into())]),
    })
    .unwrap();
    e.create_flavor(FlavorSpec {
        id: Some(format!("gone{seed}")),
        name: format!("gone-{seed}"),
        vcpus: 1,
        ram_mb: 512,
        disk_gb: 1,
        extra_specs: BTreeMap::new(),
    })
    .unwrap();
    e.delete_flavor(&format!("gone{seed}")).unwrap();
    e.create_image(ImageSpec {
        id: None,
        name: format!("img-{seed}"),
        properties: BTreeMap::from([("hw_architecture".into(), "x86_64".into())]),
    })
    .unwrap();
    let anti = e
        .create_group(ServerGroupSpec {
            id: None,
            name: format!("anti-{seed}"),
            policy: GroupPolicy::AntiAffinity,
            max_server_per_host: Some(2),
            project_id: "demo".into(),
        })
        .unwrap();
    let mut consumers = Vec::new();
    for n in 0..40 {
        let mut spec = RequestSpec::resources(&[("VCPU", 1 + rng.u64(0..4)), ("MEMORY_MB", 1024)]);
        if n % 4 == 0 {
            spec.group = Some(anti.id.to_string());
        }
        if n % 5 == 0 {
            spec.num_instances = 3;
        }
        if n % 7 == 0 {
            spec.project_id = "other".into();
        }
        for s in e.select_destinations(&spec).unwrap() {
            consumers.push(s.consumer);
        }
    }
    // Placement-style writes.
    let direct = Uuid::new_v4();
    e.replace_allocations(
        &direct,
        AllocationRequest {
            consumer_generation: None,
            project_id: "demo".into(),
            user_id: "u".into(),
            allocations: vec![Allocation {
                provider: hosts[0],
                resources: vec![("CUSTOM_GPU".into(), 1), ("VCPU".into(), 2)],
            }],
        },
    )
    .unwrap();
    consumers.push(direct);
    // Releases, and a move left half-way and one confirmed.
    for c in consumers.iter().step_by(5) {
        e.release(c).unwrap();
    }
    consumers.retain(|c| e.get_allocations(c).is_ok());
    let mover = consumers[1];
    e.move_claim(&mover, &RequestSpec::resources(&[("VCPU", 1)]), false)
        .unwrap();
    let confirmed = consumers[2];
    e.move_claim(&confirmed, &RequestSpec::resources(&[("VCPU", 2)]), false)
        .unwrap();
    e.confirm_move(&confirmed).unwrap();
    // Provider changes, and a delete of an unused one.
    let spare = e
        .create_provider(host(&format!("spare-{seed}"), "az1"))
        .unwrap();
    e.update_provider(
        &hosts[1],
        None,
        ProviderUpdate {
            name: Some(format!("renamed-{seed}")),
            ..ProviderUpdate::default()
        },
    )
    .unwrap();
    e.set_traits(&hosts[2], None, &["COMPUTE_STATUS_DISABLED".to_string()])
        .unwrap();
    e.delete_provider(&spare.uuid).unwrap();
    consumers
}

#[test]
fn engine_state_survives_reopen_with_and_without_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (e, store, report) = open(dir.path(), false).unwrap();
    assert!(report.snapshot.is_none() && report.records == 0);
    workload(&e, 1);
    // A snapshot in the middle, then more changes in the new segment.
    let (records, _) = store.snapshot().unwrap();
    assert!(records > 40, "snapshot held {records} records");
    workload(&e, 2);
    settle(&store);
    let want = fingerprint(&e);
    store.close();
    drop((e, store));

    let (e2, store2, report) = open(dir.path(), false).unwrap();
    assert!(report.snapshot.is_some(), "{report:?}");
    assert!(report.records > 0 && report.damage.is_empty() && report.torn_tail.is_none());
    assert_same(&fingerprint(&e2), &want);
    // The rebuilt engine keeps going: it logs and reopens again to the same state.
    workload(&e2, 3);
    settle(&store2);
    let want = fingerprint(&e2);
    store2.close();
    drop((e2, store2));
    let (e3, _s3, _) = open(dir.path(), false).unwrap();
    assert_same(&fingerprint(&e3), &want);
}

#[test]
fn changes_during_a_snapshot_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (e, store, _) = open(dir.path(), false).unwrap();
    workload(&e, 1);
    // Changes race with snapshots: the fuzzy dump plus the log after it must still
    // rebuild the final state.
    std::thread::scope(|s| {
        let e = &e;
        s.spawn(move || {
            for seed in 10..16 {
                workload(e, seed);
            }
        });
        for _ in 0..5 {
            store.snapshot().unwrap();
        }
    });
    settle(&store);
    let want = fingerprint(&e);
    store.close();
    drop((e, store));
    let (e2, _s, _) = open(dir.path(), false).unwrap();
    assert_same(&fingerprint(&e2), &want);
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    let files = super::list_files(dir).unwrap();
    files.segments.last().unwrap().1.clone()
}

#[test]
fn a_torn_tail_is_dropped_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let (e, store, _) = open(dir.path(), false).unwrap();
    workload(&e, 1);
    settle(&store);
    let want = fingerprint(&e);
    store.close();
    drop((e, store));
    // A crash mid-write: half a frame at the end.
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let good = bytes.len() as u64;
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(&seg, &bytes).unwrap();

    let (e2, store2, report) = open(dir.path(), false).unwrap();
    let (path, offset, dropped) = report.torn_tail.clone().expect("torn tail reported");
    assert_eq!((path, offset, dropped), (seg.clone(), good, 10));
    assert_same(&fingerprint(&e2), &want);
    // Appends continue after the good prefix, and the next open is clean.
    e2.create_flavor(FlavorSpec {
        id: Some("after".into()),
        name: "after".into(),
        vcpus: 1,
        ram_mb: 1,
        disk_gb: 0,
        extra_specs: BTreeMap::new(),
    })
    .unwrap();
    settle(&store2);
    let want = fingerprint(&e2);
    store2.close();
    drop((e2, store2));
    let (e3, _s, report) = open(dir.path(), false).unwrap();
    assert!(
        report.torn_tail.is_none() && report.damage.is_empty(),
        "{report:?}"
    );
    assert_same(&fingerprint(&e3), &want);
}

#[test]
fn damage_in_the_middle_stops_the_start_unless_recover() {
    let dir = tempfile::tempdir().unwrap();
    let (e, store, _) = open(dir.path(), false).unwrap();
    workload(&e, 1);
    settle(&store);
    let consumers = e.consumer_count();
    store.close();
    drop((e, store));
    let seg = last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a payload byte of the second-to-last record (the disabled trait of hosts[2]):
    // verified records follow it, so this is damage, not a torn tail.
    let mut frames = Vec::new();
    let mut off = super::frame::HEADER_LEN;
    while let super::frame::Item::Frame(_, next) = super::frame::read_item(&bytes, off) {
        frames.push(off);
        off = next;
    }
    let at = frames[frames.len() - 2] + super::frame::FRAME_HEADER + 3;
    bytes[at] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();

    let err = open(dir.path(), false).expect_err("damage refused");
    assert!(
        err.contains("checksum") || err.contains("undecodable"),
        "{err}"
    );
    assert!(err.contains("--recover"), "{err}");
    assert!(err.contains(&seg.display().to_string()), "{err}");
    // Nothing was changed by the refused start.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);

    let (e2, store2, report) = open(dir.path(), true).unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(report.damage[0].offset, frames[frames.len() - 2] as u64);
    let aside = report.moved_to.clone().expect("damaged files moved aside");
    assert!(aside.join(seg.file_name().unwrap()).exists());
    // Only that record is lost: the host is not disabled, everything else is there.
    assert_eq!(e2.consumer_count(), consumers);
    let disabled = e2
        .list_providers(&ProviderFilter::default())
        .unwrap()
        .iter()
        .filter(|p| p.disabled)
        .count();
    assert_eq!(disabled, 0);
    assert!(e2.get_flavor("f1").is_ok());
    // The recovered state was written afresh: a snapshot reopens to it without damage.
    store2.snapshot().unwrap();
    settle(&store2);
    let want = fingerprint(&e2);
    store2.close();
    drop((e2, store2));
    let (e3, _s, report) = open(dir.path(), false).unwrap();
    assert!(report.damage.is_empty(), "{report:?}");
    assert_same(&fingerprint(&e3), &want);
}

#[test]
fn one_engine_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (_e, _store, _) = open(dir.path(), false).unwrap();
    let err =
        Store::open(&config(dir.path()), false, &|_, _, _| {}).expect_err("second open refused");
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn state_apply_rejects_records_it_did_not_write() {
    use super::record::{Change, ConsumerRec, Record};
    let mut s = State::default();
    assert!(s.apply(Record { change: None }).is_err());
    let bad = Record {
        change: Some(Change::Consumer(ConsumerRec {
            uuid: vec![1, 2, 3],
            ..ConsumerRec::default()
        })),
    };
    assert!(s.apply(bad).unwrap_err().contains("16"));
}

#[test]
fn a_quota_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (e, store, _) = open(dir.path(), false).unwrap();
    e.create_resource_class("CUSTOM_GPU").unwrap();
    e.set_quota(
        "acme",
        &[
            ("VCPU".into(), Some(10)),
            ("instances".into(), Some(3)),
            ("CUSTOM_GPU".into(), None),
        ],
        &[],
    )
    .unwrap();
    e.set_quota("gone", &[("VCPU".into(), Some(1))], &[])
        .unwrap();
    e.set_quota("gone", &[], &["VCPU".into()]).unwrap();
    settle(&store);
    let want = e.quota("acme").unwrap();
    store.close();
    drop((e, store));

    // From the log alone, then from a snapshot.
    for round in 0..2 {
        let (e, store, _) = open(dir.path(), false).unwrap();
        assert_eq!(e.quota("acme").unwrap(), want, "round {round}");
        let vcpu = want.limits.iter().find(|l| l.resource == "VCPU").unwrap();
        assert_eq!(vcpu.limit, Some(10));
        assert_eq!(
            e.quota("gone").unwrap().limits.len(),
            1,
            "an unset limit stays unset"
        );
        // Still enforced.
        let h = e.create_provider(host("h", "az1")).unwrap().uuid;
        let mut spec = RequestSpec::resources(&[("VCPU", 11)]);
        spec.project_id = "acme".into();
        assert!(matches!(
            e.select_destinations(&spec),
            Err(crate::EngineError::QuotaExceeded(_))
        ));
        e.delete_provider(&h).unwrap();
        if round == 0 {
            store.snapshot().unwrap();
        }
        settle(&store);
        store.close();
    }
}
