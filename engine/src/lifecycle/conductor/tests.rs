//! Conductor tests: a real engine with a few hosts, nodes simulated by [`FakeDispatcher`].

use std::collections::HashSet;
use std::sync::Arc;

use berth_proto::v1 as pb;
use uuid::Uuid;

use super::fake_dispatcher::FakeDispatcher;
use super::*;
use crate::lifecycle::{ReconcileReport, Reconciler};
use crate::model::{FlavorSpec, GroupPolicy, ImageSpec, Inventory, ProviderSpec, ServerGroupSpec};
use crate::{Engine, EngineConfig};

use TaskState as T;
use VmState as V;
use pb::ActionKind as K;

struct Cloud {
    engine: Arc<Engine>,
    fake: Arc<FakeDispatcher>,
    conductor: Arc<Conductor>,
    hosts: Vec<HostChoice>,
}

/// `n` hosts `h0..`: 16 VCPU, 32 GiB less 1 GiB per index (so the RAM weigher picks h0
/// first), 1000 GB disk; all connected and able to live-migrate. Flavors `small` (1 VCPU,
/// 1024 MB, 10 GB) and `large` (2, 4096, 20); image `cirros`.
fn cloud(n: usize) -> Cloud {
    cloud_with(n, ComputeConfig::default())
}

fn cloud_with(n: usize, config: ComputeConfig) -> Cloud {
    let engine = Arc::new(Engine::new(EngineConfig::default()).unwrap());
    let fake = FakeDispatcher::new();
    let hosts = populate(&engine, &fake, n);
    let conductor = Conductor::new(engine.clone(), fake.clone(), config);
    Cloud {
        engine,
        fake,
        conductor,
        hosts,
    }
}

/// [`cloud`]'s hosts (connected in `fake`), flavors and image.
fn populate(engine: &Engine, fake: &FakeDispatcher, n: usize) -> Vec<HostChoice> {
    let mut hosts = Vec::new();
    for i in 0..n {
        let spec = ProviderSpec::new(format!("h{i}"))
            .inventory("VCPU", Inventory::new(16))
            .inventory("MEMORY_MB", Inventory::new(32768 - i as u64 * 1024))
            .inventory("DISK_GB", Inventory::new(1000));
        let info = engine.create_provider(spec).unwrap();
        fake.add_host(info.uuid, true);
        hosts.push(HostChoice {
            uuid: info.uuid,
            name: info.name,
        });
    }
    for (name, vcpus, ram_mb, disk_gb) in [("small", 1, 1024, 10), ("large", 2, 4096, 20)] {
        engine
            .create_flavor(FlavorSpec {
                name: name.into(),
                vcpus,
                ram_mb,
                disk_gb,
                ..Default::default()
            })
            .unwrap();
    }
    engine
        .create_image(ImageSpec {
            id: None,
            name: "cirros".into(),
            properties: [("os_distro".to_string(), "cirros".to_string())].into(),
        })
        .unwrap();
    hosts
}

fn request(count: u32) -> CreateRequest {
    CreateRequest {
        name: "vm".into(),
        flavor: "small".into(),
        image: "cirros".into(),
        count,
        project_id: "demo".into(),
        user_id: "alice".into(),
        ..Default::default()
    }
}

impl Cloud {
    fn host(&self, name: &str) -> HostChoice {
        self.hosts.iter().find(|h| h.name == name).unwrap().clone()
    }

    async fn create(&self, count: u32) -> Vec<Server> {
        self.conductor
            .create(request(count), CallIds::default())
            .await
            .unwrap()
    }

    async fn one(&self) -> Server {
        let s = self.create(1).await.remove(0);
        assert_eq!(s.vm_state, V::Active, "{:?}", s.fault);
        s
    }

    async fn act(&self, uuid: Uuid, a: Action) -> Server {
        self.try_act(uuid, a).await.unwrap().server
    }

    async fn try_act(&self, uuid: Uuid, a: Action) -> Result<ActionReply> {
        self.conductor.action(uuid, a, CallIds::default()).await
    }

    fn used(&self, host: &HostChoice, class: &str) -> u64 {
        self.engine
            .get_provider(&host.uuid)
            .unwrap()
            .usages
            .iter()
            .find(|u| u.class == class)
            .map_or(0, |u| u.used)
    }

    fn total_used(&self, class: &str) -> u64 {
        self.hosts.iter().map(|h| self.used(h, class)).sum()
    }

    /// Allocations agree with the servers: a server with a host holds exactly that host
    /// (a RESIZED one: its source, moving to its host); one without holds nothing; and the
    /// domain exists where the server is.
    fn check_invariants(&self) {
        let servers = self.conductor.list(&ServerFilter::default());
        let mut with_allocs = 0;
        for s in &servers {
            match &s.host {
                None => assert!(
                    self.engine.get_allocations(&s.uuid).is_err(),
                    "{} has no host but holds allocations",
                    s.uuid
                ),
                Some(h) => {
                    with_allocs += 1;
                    let a = self.engine.get_allocations(&s.uuid).unwrap();
                    let hosts: Vec<Uuid> = a.allocations.iter().map(|x| x.provider).collect();
                    let moving: Vec<Uuid> = a.moving.iter().map(|x| x.provider).collect();
                    match &s.resize {
                        Some(m) => {
                            assert_eq!(s.vm_state, V::Resized);
                            assert_eq!(hosts, vec![m.source.uuid], "{}", s.uuid);
                            assert_eq!(moving, vec![h.uuid], "{}", s.uuid);
                        }
                        None => {
                            assert_eq!(hosts, vec![h.uuid], "{} {:?}", s.uuid, s.vm_state);
                            assert!(moving.is_empty(), "{}", s.uuid);
                        }
                    }
                    if s.vm_state != V::Error {
                        assert!(
                            self.fake.power(h.uuid, s.uuid).is_some(),
                            "{} ({:?}) has no domain on {}",
                            s.uuid,
                            s.vm_state,
                            h.name
                        );
                    }
                }
            }
            assert_eq!(s.task_state, T::None);
        }
        assert_eq!(self.engine.consumer_count(), with_allocs);
    }
}

fn refused(r: Result<ActionReply>) -> String {
    match r {
        Err(e @ ConductorError::InvalidState { .. })
        | Err(e @ ConductorError::TaskInProgress { .. })
        | Err(e @ ConductorError::Locked { .. })
        | Err(e @ ConductorError::Precondition(_)) => e.to_string(),
        other => panic!("expected a FAILED_PRECONDITION refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn create_ten_servers_across_hosts() {
    let c = cloud(4);
    let servers = c.create(10).await;
    assert_eq!(servers.len(), 10);
    let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names[0], "vm-1");
    assert_eq!(names[9], "vm-10");
    let mut used_hosts = HashSet::new();
    for s in &servers {
        assert_eq!(s.vm_state, V::Active);
        assert_eq!(s.task_state, T::None);
        assert_eq!(s.power_state, "RUNNING");
        assert_eq!(s.availability_zone, "nova");
        let h = s.host.clone().unwrap();
        assert_eq!(c.fake.power(h.uuid, s.uuid), Some("RUNNING"));
        used_hosts.insert(h.uuid);
        let create = &s.actions[0];
        assert_eq!(create.action, "create");
        assert!(create.ok && create.finished_at_ms >= create.started_at_ms);
        assert!(
            create.message.contains("attempt 1 of 3"),
            "{}",
            create.message
        );
    }
    assert_eq!(used_hosts.len(), 4, "the RAM weigher spreads");
    assert_eq!(c.fake.count(K::Spawn), 10);
    assert_eq!(c.total_used("MEMORY_MB"), 10 * 1024);
    assert_eq!(c.conductor.list(&ServerFilter::default()).len(), 10);
    let on_h0 = c.conductor.list(&ServerFilter {
        host: Some(c.hosts[0].uuid),
        ..Default::default()
    });
    assert!(!on_h0.is_empty());
    assert!(on_h0.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        c.conductor.counts_by_vm_state().get(&V::Active).copied(),
        Some(10)
    );
    c.check_invariants();
}

#[tokio::test]
async fn create_validates_and_places_all_or_nothing() {
    let c = cloud(2);
    let bad = |f: fn(&mut CreateRequest)| {
        let mut r = request(1);
        f(&mut r);
        r
    };
    for (req, field) in [
        (bad(|r| r.name.clear()), "name"),
        (bad(|r| r.flavor.clear()), "flavor"),
        (bad(|r| r.image.clear()), "image"),
        (bad(|r| r.project_id.clear()), "project_id"),
        (bad(|r| r.count = 1001), "count"),
        (
            bad(|r| r.metadata = (0..129).map(|i| (format!("k{i}"), "v".into())).collect()),
            "metadata",
        ),
        (
            bad(|r| r.metadata = [("k".to_string(), "v".repeat(256))].into()),
            "metadata[k]",
        ),
    ] {
        match c.conductor.create(req, CallIds::default()).await {
            Err(ConductorError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(matches!(
        c.conductor
            .create(bad(|r| r.flavor = "nope".into()), CallIds::default())
            .await,
        Err(ConductorError::Engine(EngineError::NotFound {
            kind: "flavor",
            ..
        }))
    ));
    // 2 hosts × 16 VCPU: 40 large servers cannot all fit, so none is created.
    let mut big = request(40);
    big.flavor = "large".into();
    big.count = 40;
    match c.conductor.create(big, CallIds::default()).await {
        Err(ConductorError::Engine(EngineError::NoValidHost(nvh))) => {
            assert!(nvh.detail.contains("of 40"), "{nvh}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.conductor.server_count(), 0);
    assert_eq!(c.engine.consumer_count(), 0);
    assert_eq!(c.fake.total(), 0);
}

#[tokio::test]
async fn every_action_happy_path() {
    let c = cloud(2);
    let s = c.one().await;
    let u = s.uuid;
    let h = s.host.clone().unwrap();
    let power = |c: &Cloud| c.fake.power(h.uuid, u);

    let s = c.act(u, Action::Stop).await;
    assert_eq!(
        (s.vm_state, s.power_state.as_str()),
        (V::Stopped, "SHUTOFF")
    );
    assert_eq!(power(&c), Some("SHUTOFF"));
    let s = c.act(u, Action::Start).await;
    assert_eq!((s.vm_state, s.power_state.as_str()), (V::Active, "RUNNING"));
    let s = c.act(u, Action::Reboot { hard: false }).await;
    assert_eq!(s.vm_state, V::Active);
    assert_eq!(
        s.actions.last().unwrap().message,
        format!("soft reboot on {}", h.name)
    );
    let s = c.act(u, Action::Pause).await;
    assert_eq!((s.vm_state, s.power_state.as_str()), (V::Paused, "PAUSED"));
    let s = c.act(u, Action::Reboot { hard: true }).await;
    assert_eq!((s.vm_state, s.power_state.as_str()), (V::Active, "RUNNING"));
    c.act(u, Action::Pause).await;
    let s = c.act(u, Action::Unpause).await;
    assert_eq!(s.vm_state, V::Active);
    let s = c.act(u, Action::Suspend).await;
    assert_eq!(
        (s.vm_state, s.power_state.as_str()),
        (V::Suspended, "SUSPENDED")
    );
    let s = c.act(u, Action::Resume).await;
    assert_eq!((s.vm_state, s.power_state.as_str()), (V::Active, "RUNNING"));

    // Snapshot → a new image record.
    let reply = c
        .try_act(
            u,
            Action::Snapshot {
                image_name: "snap-1".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(reply.server.vm_state, V::Active);
    let id = reply.image_id.unwrap();
    let img = c.engine.get_image("snap-1").unwrap();
    assert_eq!(img.id, id);
    let cirros = c.engine.get_image("cirros").unwrap();
    assert_eq!(img.properties["base_image"], cirros.id.to_string());
    assert_eq!(img.properties["instance_uuid"], u.to_string());
    assert_eq!(img.properties["os_distro"], "cirros");
    match c
        .try_act(
            u,
            Action::Snapshot {
                image_name: "snap-1".into(),
            },
        )
        .await
    {
        Err(ConductorError::Engine(EngineError::AlreadyExists { .. })) => {}
        other => panic!("{other:?}"),
    }

    // Rebuild: ACTIVE stays ACTIVE with the new image; STOPPED stays STOPPED.
    let s = c
        .act(
            u,
            Action::Rebuild {
                image: Some("snap-1".into()),
            },
        )
        .await;
    assert_eq!((s.vm_state, s.image.name.as_str()), (V::Active, "snap-1"));
    assert_eq!(c.fake.domains(h.uuid)[&u].image, id.to_string());
    c.act(u, Action::Stop).await;
    let s = c.act(u, Action::Rebuild { image: None }).await;
    assert_eq!(
        (s.vm_state, s.power_state.as_str()),
        (V::Stopped, "SHUTOFF")
    );
    c.act(u, Action::Start).await;

    // Shelve → unshelve on the same host.
    let s = c.act(u, Action::Shelve).await;
    assert_eq!(
        (s.vm_state, s.power_state.as_str()),
        (V::Shelved, "SHUTOFF")
    );
    let snaps = &c.fake.domains(h.uuid)[&u].snapshots;
    assert!(snaps.iter().any(|n| n.starts_with("shelved-")), "{snaps:?}");
    assert_eq!(c.used(&h, "MEMORY_MB"), 1024, "SHELVED keeps its resources");
    let s = c.act(u, Action::Unshelve).await;
    assert_eq!((s.vm_state, s.host.clone()), (V::Active, Some(h.clone())));
    // Shelving a suspended server resumes it first.
    c.act(u, Action::Suspend).await;
    assert_eq!(c.act(u, Action::Shelve).await.vm_state, V::Shelved);

    // Offload → no host, no allocation; unshelve schedules again.
    let s = c.act(u, Action::ShelveOffload).await;
    assert_eq!(s.vm_state, V::ShelvedOffloaded);
    assert_eq!((s.host.clone(), s.power_state.as_str()), (None, ""));
    assert!(c.fake.power(h.uuid, u).is_none());
    assert_eq!(c.total_used("MEMORY_MB"), 0);
    c.check_invariants();
    let s = c.act(u, Action::Unshelve).await;
    assert_eq!(s.vm_state, V::Active);
    let h2 = s.host.clone().unwrap();
    assert_eq!(c.used(&h2, "MEMORY_MB"), 1024);
    assert_eq!(c.fake.power(h2.uuid, u), Some("RUNNING"));

    // Lock / unlock.
    let s = c
        .act(
            u,
            Action::Lock {
                reason: "maintenance".into(),
            },
        )
        .await;
    assert!(s.locked);
    assert_eq!(s.locked_reason, "maintenance");
    let s = c.act(u, Action::Unlock).await;
    assert!(!s.locked);

    let names: Vec<&str> = s.actions.iter().map(|a| a.action).collect();
    assert_eq!(names.first(), Some(&"create"));
    assert!(names.contains(&"snapshot") && names.contains(&"shelve_offload"));
    assert!(
        s.actions.iter().all(|a| a.ok && a.finished_at_ms > 0),
        "{:?}",
        s.actions
    );
    c.check_invariants();
}

#[tokio::test]
async fn invalid_state_refusal_names_the_states() {
    let c = cloud(1);
    let u = c.one().await.uuid;
    let m = refused(c.try_act(u, Action::Start).await);
    assert_eq!(
        m,
        format!("cannot start server {u}: its vm_state is ACTIVE; start accepts STOPPED")
    );
    let m = refused(c.try_act(u, Action::ConfirmResize).await);
    assert!(m.contains("ACTIVE") && m.contains("accepts RESIZED"), "{m}");
    c.act(u, Action::Stop).await;
    let m = refused(c.try_act(u, Action::Reboot { hard: false }).await);
    assert!(
        m.contains("vm_state is STOPPED; reboot accepts ACTIVE"),
        "{m}"
    );
    // Hard reboot accepts STOPPED.
    assert_eq!(
        c.act(u, Action::Reboot { hard: true }).await.vm_state,
        V::Active
    );
    let status = crate::api::servers::to_status(c.try_act(u, Action::Unshelve).await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("SHELVED, SHELVED_OFFLOADED"));
    assert_eq!(c.fake.count(K::Start), 0);
}

#[tokio::test]
async fn locked_server_refuses_everything_but_unlock() {
    let c = cloud(1);
    let u = c.one().await.uuid;
    c.act(
        u,
        Action::Lock {
            reason: "audit".into(),
        },
    )
    .await;
    let m = refused(c.try_act(u, Action::Stop).await);
    assert!(m.contains("locked (audit)"), "{m}");
    match c.conductor.delete(u, CallIds::default()).await {
        Err(ConductorError::Locked {
            action: "delete", ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c.fake.count(K::Stop), 0);
    c.act(u, Action::Unlock).await;
    assert_eq!(c.act(u, Action::Stop).await.vm_state, V::Stopped);
    c.conductor.delete(u, CallIds::default()).await.unwrap();
}

#[tokio::test]
async fn task_in_progress_refuses_other_actions() {
    let c = cloud(1);
    let u = c.one().await.uuid;
    let gate = c.fake.gate(c.hosts[0].uuid);
    let conductor = c.conductor.clone();
    let stop =
        tokio::spawn(async move { conductor.action(u, Action::Stop, CallIds::default()).await });
    while c.conductor.get(&u).unwrap().task_state == T::None {
        tokio::task::yield_now().await;
    }
    assert_eq!(c.conductor.get(&u).unwrap().task_state, T::PoweringOff);
    let m = refused(c.try_act(u, Action::Pause).await);
    assert!(m.contains("task_state POWERING_OFF is in progress"), "{m}");
    assert!(matches!(
        c.conductor.delete(u, CallIds::default()).await,
        Err(ConductorError::TaskInProgress { .. })
    ));
    // Lock is a flag: allowed during a task.
    c.act(
        u,
        Action::Lock {
            reason: String::new(),
        },
    )
    .await;
    gate.add_permits(1000);
    let s = stop.await.unwrap().unwrap().server;
    assert_eq!((s.vm_state, s.task_state), (V::Stopped, T::None));
    assert!(s.locked);
}

#[tokio::test]
async fn repeated_request_ids_do_not_act_twice() {
    let c = cloud(2);
    // Creates, by (project, request id).
    let ids = CallIds::request("create-1");
    let first = c.conductor.create(request(2), ids.clone()).await.unwrap();
    let again = c.conductor.create(request(2), ids.clone()).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(c.fake.count(K::Spawn), 2);
    assert_eq!(c.conductor.server_count(), 2);
    let mut other = request(1);
    other.project_id = "other".into();
    c.conductor.create(other, ids.clone()).await.unwrap();
    assert_eq!(c.conductor.server_count(), 3, "request ids are per project");

    // Actions, by (server, request id).
    let u = first[0].uuid;
    let r1 = c
        .conductor
        .action(u, Action::Stop, CallIds::request("a"))
        .await
        .unwrap();
    c.act(u, Action::Start).await;
    let r2 = c
        .conductor
        .action(u, Action::Stop, CallIds::request("a"))
        .await
        .unwrap();
    assert_eq!(r1, r2, "the first answer, history as it was");
    assert_eq!(c.fake.count(K::Stop), 1);
    assert_eq!(c.conductor.get(&u).unwrap().vm_state, V::Active);

    // A repeat arriving while the first still runs waits for it.
    let gate = c.fake.gate(first[1].host.clone().unwrap().uuid);
    let v = first[1].uuid;
    let a = {
        let co = c.conductor.clone();
        tokio::spawn(async move { co.action(v, Action::Pause, CallIds::request("p")).await })
    };
    while c.conductor.get(&v).unwrap().task_state == T::None {
        tokio::task::yield_now().await;
    }
    let b = {
        let co = c.conductor.clone();
        tokio::spawn(async move { co.action(v, Action::Pause, CallIds::request("p")).await })
    };
    tokio::task::yield_now().await;
    gate.add_permits(1000);
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_eq!(a, b);
    assert_eq!(c.fake.count(K::Pause), 1);

    // Deletes, even after the server is forgotten.
    c.conductor.delete(v, CallIds::request("d")).await.unwrap();
    c.conductor.delete(v, CallIds::request("d")).await.unwrap();
    assert!(matches!(
        c.conductor.delete(v, CallIds::request("e")).await,
        Err(ConductorError::ServerNotFound(_))
    ));
    assert_eq!(c.fake.count(K::Delete), 1);
}

#[tokio::test]
async fn concurrent_duplicate_creates_create_once() {
    let c = cloud(1);
    let gate = c.fake.gate(c.hosts[0].uuid);
    let spawn = |id: &'static str| {
        let co = c.conductor.clone();
        tokio::spawn(async move { co.create(request(1), CallIds::request(id)).await })
    };
    let a = spawn("same");
    while c.conductor.server_count() == 0 {
        tokio::task::yield_now().await;
    }
    let b = spawn("same");
    tokio::task::yield_now().await;
    gate.add_permits(1000);
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_eq!(a, b);
    assert_eq!(c.conductor.server_count(), 1);
    assert_eq!(c.fake.count(K::Spawn), 1);
}

#[tokio::test]
async fn build_retries_on_another_host() {
    let c = cloud(3);
    let h0 = c.host("h0");
    c.fake.fail_next_spawns(h0.uuid, 1);
    let s = c.create(1).await.remove(0);
    assert_eq!(s.vm_state, V::Active);
    let h = s.host.clone().unwrap();
    assert_ne!(h.uuid, h0.uuid);
    assert_eq!(c.engine.get_provider(&h0.uuid).unwrap().failed_builds, 1);
    assert_eq!(c.engine.get_provider(&h.uuid).unwrap().failed_builds, 0);
    assert_eq!(c.used(&h0, "MEMORY_MB"), 0, "the failed claim was released");
    assert_eq!(c.used(&h, "MEMORY_MB"), 1024);
    let m = &s.actions[0].message;
    assert!(m.contains("injected spawn failure"), "{m}");
    assert!(
        m.contains(&format!("spawned on {} (attempt 2 of 3)", h.name)),
        "{m}"
    );
    assert_eq!(c.fake.count(K::Spawn), 2);
    // A success clears the host's count (Nova resets it).
    c.engine.record_build_failure(&h.uuid).unwrap();
    c.fake.fail_next_spawns(h0.uuid, 0);
    c.create(1).await;
    c.check_invariants();
}

#[tokio::test]
async fn all_attempts_failing_ends_in_error_with_every_reason() {
    let c = cloud(3);
    for h in &c.hosts {
        c.fake.fail_next_spawns(h.uuid, 5);
    }
    let s = c.create(1).await.remove(0);
    assert_eq!(s.vm_state, V::Error);
    assert_eq!(s.task_state, T::None);
    assert_eq!(s.host, None);
    assert!(
        s.fault.starts_with("build failed after 3 attempt(s)"),
        "{}",
        s.fault
    );
    for h in &c.hosts {
        assert!(
            s.fault
                .contains(&format!("on {}: spawn on {} failed", h.name, h.name)),
            "{}",
            s.fault
        );
        assert_eq!(c.engine.get_provider(&h.uuid).unwrap().failed_builds, 1);
    }
    assert_eq!(s.fault.matches("injected spawn failure").count(), 3);
    assert!(!s.actions[0].ok);
    assert_eq!(c.engine.consumer_count(), 0);
    assert_eq!(c.total_used("MEMORY_MB"), 0);
    assert_eq!(c.total_used("VCPU"), 0);
    c.check_invariants();
    // ERROR without a host: delete works.
    c.conductor
        .delete(s.uuid, CallIds::default())
        .await
        .unwrap();
    assert_eq!(c.conductor.server_count(), 0);
}

#[tokio::test]
async fn resize_then_confirm_releases_the_source() {
    let c = cloud(3);
    let s = c.one().await;
    let (u, src) = (s.uuid, s.host.clone().unwrap());
    let s = c
        .act(
            u,
            Action::Resize {
                flavor: "large".into(),
            },
        )
        .await;
    assert_eq!(s.vm_state, V::Resized);
    let dst = s.host.clone().unwrap();
    assert_ne!(dst.uuid, src.uuid);
    assert_eq!(s.flavor.name, "large");
    let m = s.resize.clone().unwrap();
    assert_eq!(
        (m.source.clone(), m.old_flavor.name.as_str()),
        (src.clone(), "small")
    );
    assert_eq!(
        c.fake.power(src.uuid, u),
        Some("SHUTOFF"),
        "source kept, stopped"
    );
    assert_eq!(c.fake.power(dst.uuid, u), Some("RUNNING"));
    assert_eq!(c.fake.domains(dst.uuid)[&u].vcpus, 2);
    assert_eq!(c.used(&src, "MEMORY_MB"), 1024);
    assert_eq!(c.used(&dst, "MEMORY_MB"), 4096);
    c.check_invariants();
    // The API shows the move.
    let p = crate::api::servers::server_pb(s);
    assert_eq!(
        (p.resize_source_host.as_str(), p.resize_old_flavor.as_str()),
        (src.name.as_str(), "small")
    );

    let s = c.act(u, Action::ConfirmResize).await;
    assert_eq!((s.vm_state, s.resize.clone()), (V::Active, None));
    assert!(c.fake.power(src.uuid, u).is_none(), "source domain deleted");
    assert_eq!(c.used(&src, "MEMORY_MB"), 0);
    assert_eq!(c.used(&src, "VCPU"), 0);
    assert_eq!(c.used(&dst, "MEMORY_MB"), 4096);
    c.check_invariants();
    // Same flavor is refused.
    match c
        .try_act(
            u,
            Action::Resize {
                flavor: "large".into(),
            },
        )
        .await
    {
        Err(ConductorError::InvalidArgument { field, .. }) => assert_eq!(field, "flavor"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn resize_then_revert_restores_the_source() {
    let c = cloud(3);
    let s = c.one().await;
    let (u, src) = (s.uuid, s.host.clone().unwrap());
    c.act(u, Action::Stop).await;
    let s = c
        .act(
            u,
            Action::Resize {
                flavor: "large".into(),
            },
        )
        .await;
    let dst = s.host.clone().unwrap();
    assert_eq!(
        c.fake.power(dst.uuid, u),
        Some("SHUTOFF"),
        "a stopped server stays off"
    );
    let s = c.act(u, Action::RevertResize).await;
    assert_eq!(s.vm_state, V::Stopped, "it was stopped");
    assert_eq!(s.flavor.name, "small");
    assert_eq!(s.host, Some(src.clone()));
    assert!(c.fake.power(dst.uuid, u).is_none());
    assert_eq!(c.used(&dst, "MEMORY_MB"), 0);
    assert_eq!(c.used(&src, "MEMORY_MB"), 1024);
    c.check_invariants();

    // An active one comes back running.
    c.act(u, Action::Start).await;
    c.act(
        u,
        Action::Resize {
            flavor: "large".into(),
        },
    )
    .await;
    let s = c.act(u, Action::RevertResize).await;
    assert_eq!((s.vm_state, s.power_state.as_str()), (V::Active, "RUNNING"));
    assert_eq!(c.fake.power(src.uuid, u), Some("RUNNING"));
    c.check_invariants();
}

#[tokio::test]
async fn failed_move_spawn_reverts_the_claim() {
    let c = cloud(2);
    let s = c.one().await;
    let (u, src) = (s.uuid, s.host.clone().unwrap());
    let other = c.hosts.iter().find(|h| h.uuid != src.uuid).unwrap().clone();
    c.fake.fail_next_spawns(other.uuid, 1);
    let s = c.act(u, Action::Migrate { host: None }).await;
    assert_eq!(s.vm_state, V::Active);
    assert_eq!(s.host, Some(src.clone()));
    let last = s.actions.last().unwrap();
    assert!(
        !last.ok && last.message.contains("the move was reverted"),
        "{last:?}"
    );
    assert_eq!(c.used(&other, "MEMORY_MB"), 0);
    c.check_invariants();
    // Migrate to a named host.
    let s = c
        .act(
            u,
            Action::Migrate {
                host: Some(other.name.clone()),
            },
        )
        .await;
    assert_eq!(
        (s.vm_state, s.host.clone()),
        (V::Resized, Some(other.clone()))
    );
    assert_eq!(s.flavor.name, "small");
    c.act(u, Action::ConfirmResize).await;
    c.check_invariants();
}

#[tokio::test]
async fn no_valid_host_for_a_move_fails_the_call_and_changes_nothing() {
    let c = cloud(1);
    let u = c.one().await.uuid;
    match c.try_act(u, Action::Migrate { host: None }).await {
        Err(ConductorError::Engine(EngineError::NoValidHost(_))) => {}
        other => panic!("{other:?}"),
    }
    let s = c.conductor.get(&u).unwrap();
    assert_eq!((s.vm_state, s.task_state), (V::Active, T::None));
    assert!(!s.actions.last().unwrap().ok);
    let status = crate::api::servers::to_status(
        c.try_act(u, Action::Migrate { host: None })
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    use prost::Message as _;
    let d = pb::NoValidHostDetail::decode(status.details()).unwrap();
    assert_eq!(d.hosts_considered, 1);
}

#[tokio::test]
async fn live_migration_needs_both_hosts_capable() {
    let c = cloud(2);
    let s = c.one().await;
    let (u, src) = (s.uuid, s.host.clone().unwrap());
    let dst = c.hosts.iter().find(|h| h.uuid != src.uuid).unwrap().clone();
    // The source cannot.
    c.fake.add_host(src.uuid, false);
    c.fake.insert_domain(src.uuid, u, "RUNNING");
    let m = refused(c.try_act(u, Action::LiveMigrate { host: None }).await);
    assert_eq!(
        m,
        format!(
            "host {} cannot live-migrate (its hypervisor does not support it)",
            src.name
        )
    );
    // The only destination cannot.
    c.fake.add_host(src.uuid, true);
    c.fake.insert_domain(src.uuid, u, "RUNNING");
    c.fake.add_host(dst.uuid, false);
    let m = refused(
        c.try_act(
            u,
            Action::LiveMigrate {
                host: Some(dst.name.clone()),
            },
        )
        .await,
    );
    assert!(
        m.contains(&format!("host {} cannot live-migrate", dst.name)),
        "{m}"
    );
    let m = refused(c.try_act(u, Action::LiveMigrate { host: None }).await);
    assert!(m.contains("no live-migration-capable destination"), "{m}");
    assert_eq!(c.used(&dst, "MEMORY_MB"), 0);
    // Both can: moved, state unchanged, source gone.
    c.fake.add_host(dst.uuid, true);
    c.act(u, Action::Pause).await;
    let s = c.act(u, Action::LiveMigrate { host: None }).await;
    assert_eq!((s.vm_state, s.host.clone()), (V::Paused, Some(dst.clone())));
    assert_eq!(c.fake.power(dst.uuid, u), Some("PAUSED"));
    assert!(c.fake.power(src.uuid, u).is_none());
    assert_eq!(c.used(&src, "MEMORY_MB"), 0);
    assert_eq!(c.used(&dst, "MEMORY_MB"), 1024);
    c.check_invariants();
}

#[tokio::test]
async fn evacuate_only_from_a_down_host() {
    let c = cloud(3);
    let s = c.one().await;
    let (u, src) = (s.uuid, s.host.clone().unwrap());
    c.act(u, Action::Stop).await;
    let m = refused(c.try_act(u, Action::Evacuate { host: None }).await);
    assert!(m.contains(&format!("its host {} is up", src.name)), "{m}");
    assert!(matches!(
        c.conductor
            .evacuate_host(&src.name, CallIds::default())
            .await,
        Err(ConductorError::Precondition(_))
    ));

    c.engine.set_host_up(&src.uuid, false).unwrap();
    c.fake.set_connected(src.uuid, false);
    let s = c.act(u, Action::Evacuate { host: None }).await;
    assert_eq!(s.vm_state, V::Stopped, "it was stopped");
    let dst = s.host.clone().unwrap();
    assert_ne!(dst.uuid, src.uuid);
    assert_eq!(c.fake.power(dst.uuid, u), Some("SHUTOFF"));
    assert_eq!(c.used(&src, "MEMORY_MB"), 0);
    assert_eq!(c.used(&dst, "MEMORY_MB"), 1024);
    c.check_invariants();

    // The old host comes back reporting the old domain: it is to be deleted.
    c.fake.set_connected(src.uuid, true);
    c.engine.set_host_up(&src.uuid, true).unwrap();
    let report = c
        .conductor
        .node_registered(src.uuid, &c.fake.reports(src.uuid));
    assert_eq!(
        report,
        ReconcileReport {
            to_delete: vec![u],
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn evacuate_host_moves_every_server() {
    let c = cloud(3);
    let h0 = c.host("h0");
    let mut req = request(3);
    req.force_hosts = vec!["h0".into()];
    let servers = c.conductor.create(req, CallIds::default()).await.unwrap();
    assert!(servers.iter().all(|s| s.host.as_ref() == Some(&h0)));
    c.engine.set_host_up(&h0.uuid, false).unwrap();
    let results = c
        .conductor
        .evacuate_host("h0", CallIds::request("evac"))
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.ok), "{results:?}");
    assert_eq!(
        results.iter().map(|r| r.uuid).collect::<Vec<_>>(),
        servers.iter().map(|s| s.uuid).collect::<Vec<_>>()
    );
    assert_eq!(c.used(&h0, "MEMORY_MB"), 0);
    assert_eq!(c.total_used("MEMORY_MB"), 3 * 1024);
    let again = c
        .conductor
        .evacuate_host("h0", CallIds::request("evac"))
        .await
        .unwrap();
    assert_eq!(again, results);
    assert_eq!(c.fake.count(K::Spawn), 6);
    c.check_invariants();
}

#[tokio::test]
async fn shelve_offload_releases_and_unshelve_reschedules_in_the_group() {
    let c = cloud(3);
    c.engine
        .create_group(ServerGroupSpec {
            id: None,
            name: "g".into(),
            policy: GroupPolicy::AntiAffinity,
            max_server_per_host: None,
            project_id: "demo".into(),
        })
        .unwrap();
    let mut req = request(2);
    req.group = Some("g".into());
    let servers = c.conductor.create(req, CallIds::default()).await.unwrap();
    let u = servers[0].uuid;
    c.act(u, Action::Shelve).await;
    let s = c.act(u, Action::ShelveOffload).await;
    assert_eq!(s.vm_state, V::ShelvedOffloaded);
    assert!(c.engine.get_allocations(&u).is_err());
    assert_eq!(
        c.engine.get_group("g").unwrap().members.len(),
        1,
        "release leaves the group"
    );
    let s = c.act(u, Action::Unshelve).await;
    assert_eq!(s.vm_state, V::Active);
    let g = c.engine.get_group("g").unwrap();
    assert_eq!(g.members.len(), 2, "unshelve rejoins it");
    assert_ne!(s.host, servers[1].host, "anti-affinity still holds");
    c.check_invariants();
}

#[tokio::test]
async fn delete_releases_and_forgets() {
    let c = cloud(2);
    let s = c.one().await;
    let h = s.host.clone().unwrap();
    c.conductor
        .delete(s.uuid, CallIds::default())
        .await
        .unwrap();
    assert!(matches!(
        c.conductor.get(&s.uuid),
        Err(ConductorError::ServerNotFound(_))
    ));
    assert!(c.fake.power(h.uuid, s.uuid).is_none());
    assert_eq!(c.engine.consumer_count(), 0);
    assert_eq!(c.total_used("MEMORY_MB"), 0);
    assert!(
        c.conductor
            .list(&ServerFilter {
                host: Some(h.uuid),
                ..Default::default()
            })
            .is_empty()
    );

    // A RESIZED server: both domains go.
    let s = c.one().await;
    c.act(
        s.uuid,
        Action::Resize {
            flavor: "large".into(),
        },
    )
    .await;
    c.conductor
        .delete(s.uuid, CallIds::default())
        .await
        .unwrap();
    for h in &c.hosts {
        assert!(c.fake.domains(h.uuid).is_empty());
    }
    assert_eq!(c.engine.consumer_count(), 0);
}

#[tokio::test]
async fn delete_without_a_connected_node_is_local_and_reconciled_later() {
    let c = cloud(1);
    let s = c.one().await;
    let h = s.host.clone().unwrap();
    c.fake.set_connected(h.uuid, false);
    // Other actions need the node.
    assert!(matches!(
        c.try_act(s.uuid, Action::Stop).await,
        Err(ConductorError::Unavailable(_))
    ));
    c.conductor
        .delete(s.uuid, CallIds::default())
        .await
        .unwrap();
    assert_eq!(c.engine.consumer_count(), 0);
    assert_eq!(c.fake.power(h.uuid, s.uuid), Some("RUNNING"), "still there");
    c.fake.set_connected(h.uuid, true);
    let report = c.conductor.node_registered(h.uuid, &c.fake.reports(h.uuid));
    assert_eq!(report.to_delete, vec![s.uuid]);
    assert!(report.orphans.is_empty());
    // Once only.
    let report = c.conductor.node_registered(h.uuid, &c.fake.reports(h.uuid));
    assert_eq!(report.orphans, vec![s.uuid]);
}

#[tokio::test]
async fn registration_reconciles_missing_orphans_and_moved() {
    let c = cloud(2);
    let servers = c.create(3).await;
    let h0 = c.host("h0");
    let on_h0: Vec<&Server> = servers
        .iter()
        .filter(|s| s.host.as_ref() == Some(&h0))
        .collect();
    assert!(!on_h0.is_empty());
    let gone = on_h0[0].uuid;
    c.fake.remove_domain(h0.uuid, gone);
    let stranger = Uuid::new_v4();
    c.fake.insert_domain(h0.uuid, stranger, "RUNNING");
    // A domain of a server living on h1.
    let elsewhere = servers
        .iter()
        .find(|s| s.host.as_ref() != Some(&h0))
        .unwrap()
        .uuid;
    c.fake.insert_domain(h0.uuid, elsewhere, "SHUTOFF");
    let mut reports = c.fake.reports(h0.uuid);
    reports.push(pb::DomainReport {
        uuid: "not-a-uuid".into(),
        name: "someone-elses".into(),
        power_state: "RUNNING".into(),
    });
    let report = c.conductor.node_registered(h0.uuid, &reports);
    assert_eq!(report.missing, vec![gone]);
    assert_eq!(report.orphans, vec![stranger]);
    assert_eq!(report.to_delete, vec![elsewhere]);
    let s = c.conductor.get(&gone).unwrap();
    assert_eq!(s.vm_state, V::Error);
    assert_eq!(s.fault, "domain missing on host h0 after it re-registered");
    assert_eq!(s.actions.last().unwrap().action, "reconcile");
    // Registering again reports it again, without another history entry.
    let again = c.conductor.node_registered(h0.uuid, &reports);
    assert_eq!(again.missing, vec![gone]);
    assert_eq!(
        c.conductor.get(&gone).unwrap().actions.len(),
        s.actions.len()
    );
    // Rebuild recovers it (spawning the missing domain again).
    let s = c.act(gone, Action::Rebuild { image: None }).await;
    assert_eq!((s.vm_state, s.fault.as_str()), (V::Active, ""));
    assert_eq!(c.fake.power(h0.uuid, gone), Some("RUNNING"));
}

#[tokio::test]
async fn heartbeats_follow_the_guest_after_two_reports() {
    let c = cloud(1);
    let s = c.one().await;
    let h = s.host.clone().unwrap();
    let before = c.conductor.get(&s.uuid).unwrap();
    c.conductor.node_heartbeat(h.uuid, &c.fake.reports(h.uuid));
    assert_eq!(c.conductor.get(&s.uuid).unwrap(), before, "nothing changed");

    c.fake.set_power(h.uuid, s.uuid, "SHUTOFF");
    c.conductor.node_heartbeat(h.uuid, &c.fake.reports(h.uuid));
    let once = c.conductor.get(&s.uuid).unwrap();
    assert_eq!(
        (once.vm_state, once.power_state.as_str()),
        (V::Active, "SHUTOFF")
    );
    c.conductor.node_heartbeat(h.uuid, &c.fake.reports(h.uuid));
    let twice = c.conductor.get(&s.uuid).unwrap();
    assert_eq!(twice.vm_state, V::Stopped);
    let last = twice.actions.last().unwrap();
    assert_eq!((last.action, last.request_id.as_str()), ("reconcile", ""));
    assert!(
        last.message.contains("ACTIVE → STOPPED"),
        "{}",
        last.message
    );

    c.fake.set_power(h.uuid, s.uuid, "RUNNING");
    for _ in 0..2 {
        c.conductor.node_heartbeat(h.uuid, &c.fake.reports(h.uuid));
    }
    assert_eq!(c.conductor.get(&s.uuid).unwrap().vm_state, V::Active);
    // Paused by the guest: only the power state follows.
    c.fake.set_power(h.uuid, s.uuid, "PAUSED");
    for _ in 0..2 {
        c.conductor.node_heartbeat(h.uuid, &c.fake.reports(h.uuid));
    }
    let s = c.conductor.get(&s.uuid).unwrap();
    assert_eq!((s.vm_state, s.power_state.as_str()), (V::Active, "PAUSED"));
    // Unknown hosts and domains are ignored.
    c.conductor
        .node_heartbeat(Uuid::new_v4(), &c.fake.reports(h.uuid));
}

#[tokio::test]
async fn set_host_enabled_toggles_the_disabled_trait() {
    let c = cloud(1);
    let info = c
        .conductor
        .set_host_enabled("h0", false, "maintenance")
        .unwrap();
    assert!(info.disabled);
    assert!(info.traits.contains(&crate::DISABLED_TRAIT.to_string()));
    assert!(matches!(
        c.conductor.create(request(1), CallIds::default()).await,
        Err(ConductorError::Engine(EngineError::NoValidHost(_)))
    ));
    let again = c.conductor.set_host_enabled("h0", false, "").unwrap();
    assert_eq!(again.generation, info.generation, "no change, no write");
    let info = c
        .conductor
        .set_host_enabled(&c.hosts[0].uuid.to_string(), true, "")
        .unwrap();
    assert!(!info.disabled && info.traits.is_empty());
    c.one().await;
    assert!(matches!(
        c.conductor.set_host_enabled("nope", true, ""),
        Err(ConductorError::Engine(EngineError::NotFound { .. }))
    ));
}

#[tokio::test]
async fn api_converts_and_maps_errors() {
    use crate::api::servers::ServersApi;
    use pb::servers_server::Servers as _;
    use tonic::{Code, Request};
    let c = cloud(2);
    let api = ServersApi::new(c.conductor.clone());
    let created = api
        .create_server(Request::new(pb::CreateServerRequest {
            name: "web".into(),
            flavor: "small".into(),
            image: "cirros".into(),
            count: 3,
            metadata: [("role".to_string(), "web".to_string())].into(),
            project_id: "demo".into(),
            user_id: "alice".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .servers;
    assert_eq!(created.len(), 3);
    let first = &created[0];
    assert_eq!(first.vm_state, pb::VmState::Active as i32);
    assert_eq!(
        (first.flavor.as_str(), first.image.as_str()),
        ("small", "cirros")
    );
    assert_eq!(first.metadata["role"], "web");
    assert!(!first.host_uuid.is_empty() && !first.host_name.is_empty());

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .list_servers(Request::new(pb::ListServersRequest {
                page_size: 2,
                page_token: token.clone(),
                vm_state: pb::VmState::Active as i32,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.servers.into_iter().map(|s| s.uuid));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        created.iter().map(|s| s.uuid.clone()).collect::<Vec<_>>()
    );

    let action = |uuid: &str, a: Option<pb::server_action_request::Action>| {
        Request::new(pb::ServerActionRequest {
            uuid: uuid.to_string(),
            request_id: String::new(),
            action: a,
        })
    };
    use pb::server_action_request::Action as A;
    let reply = api
        .server_action(action(
            &first.uuid,
            Some(A::Snapshot(pb::SnapshotArgs {
                image_name: "img".into(),
            })),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.image_id.is_empty());
    let e = api
        .server_action(action(&first.uuid, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("invalid action"), "{}", e.message());
    let e = api
        .server_action(action(&first.uuid, Some(A::Start(pb::NoArgs {}))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("ACTIVE"));
    let e = api
        .get_server(Request::new(pb::GetServerRequest {
            uuid: Uuid::new_v4().to_string(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = api
        .get_server(Request::new(pb::GetServerRequest { uuid: "x".into() }))
        .await
        .unwrap_err();
    assert!(e.message().contains("invalid uuid"), "{}", e.message());
    let e = api
        .create_server(Request::new(pb::CreateServerRequest {
            name: "x".into(),
            flavor: "small".into(),
            image: "cirros".into(),
            project_id: "demo".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("user_id"));
    let e = api
        .create_server(Request::new(pb::CreateServerRequest {
            name: "x".into(),
            flavor: "large".into(),
            image: "cirros".into(),
            count: 100,
            project_id: "demo".into(),
            user_id: "u".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    c.fake.set_connected(c.hosts[0].uuid, false);
    c.fake.set_connected(c.hosts[1].uuid, false);
    let e = api
        .server_action(action(&first.uuid, Some(A::Stop(pb::NoArgs {}))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let host = api
        .set_host_enabled(Request::new(pb::SetHostEnabledRequest {
            host: "h1".into(),
            enabled: false,
            reason: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .host
        .unwrap();
    assert!(host.disabled);
    let e = api
        .evacuate_host(Request::new(pb::EvacuateHostRequest {
            host: "h1".into(),
            request_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    api.delete_server(Request::new(pb::DeleteServerRequest {
        uuid: first.uuid.clone(),
        request_id: String::new(),
    }))
    .await
    .unwrap();
}

mod prop {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Create,
        Act(usize, u8),
        Delete(usize),
        FailSpawns(usize),
        HostDown(usize),
        Heartbeat(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => Just(Op::Create),
            8 => (0..6usize, 0..16u8).prop_map(|(s, a)| Op::Act(s, a)),
            1 => (0..6usize).prop_map(Op::Delete),
            1 => (0..3usize).prop_map(Op::FailSpawns),
            1 => (0..3usize).prop_map(Op::HostDown),
            1 => (0..3usize).prop_map(Op::Heartbeat),
        ]
    }

    fn action(a: u8) -> Action {
        match a {
            0 => Action::Stop,
            1 => Action::Start,
            2 => Action::Reboot { hard: true },
            3 => Action::Pause,
            4 => Action::Unpause,
            5 => Action::Suspend,
            6 => Action::Resume,
            7 => Action::Shelve,
            8 => Action::ShelveOffload,
            9 => Action::Unshelve,
            10 => Action::Resize {
                flavor: "large".into(),
            },
            11 => Action::Migrate { host: None },
            12 => Action::ConfirmResize,
            13 => Action::RevertResize,
            14 => Action::LiveMigrate { host: None },
            _ => Action::Evacuate { host: None },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the sequence of actions and faults, allocations agree with where the
        /// servers are, and no task is left set.
        #[test]
        fn allocations_follow_the_servers(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let c = cloud(3);
                for op in ops {
                    let servers = c.conductor.list(&ServerFilter::default());
                    let pick = |i: usize| servers.get(i % servers.len().max(1)).map(|s| s.uuid);
                    match op {
                        Op::Create => {
                            let _ = c.conductor.create(request(1), CallIds::default()).await;
                        }
                        Op::Act(i, a) => {
                            if let Some(u) = pick(i) {
                                let _ = c.try_act(u, action(a)).await;
                            }
                        }
                        Op::Delete(i) => {
                            if let Some(u) = pick(i) {
                                let _ = c.conductor.delete(u, CallIds::default()).await;
                            }
                        }
                        Op::FailSpawns(h) => c.fake.fail_next_spawns(c.hosts[h].uuid, 1),
                        Op::HostDown(h) => {
                            let up = c.engine.get_provider(&c.hosts[h].uuid).unwrap().up;
                            c.engine.set_host_up(&c.hosts[h].uuid, !up).unwrap();
                        }
                        Op::Heartbeat(h) => {
                            let h = c.hosts[h].uuid;
                            c.conductor.node_heartbeat(h, &c.fake.reports(h));
                        }
                    }
                    c.check_invariants();
                }
            });
        }
    }
}

#[tokio::test]
async fn node_failures_go_to_the_history() {
    let c = cloud(1);
    let s = c.one().await;
    let h = s.host.clone().unwrap();
    c.fake.fail_all(h.uuid, Some(K::Stop));
    let s = c.act(s.uuid, Action::Stop).await;
    assert_eq!((s.vm_state, s.task_state), (V::Active, T::None));
    let last = s.actions.last().unwrap();
    assert!(
        !last.ok && last.message.contains("stop on h0 failed: DRIVER"),
        "{last:?}"
    );
    assert_eq!(s.fault, last.message);
    c.fake.fail_all(h.uuid, None);
    let s = c.act(s.uuid, Action::Stop).await;
    assert_eq!(
        (s.vm_state, s.fault.as_str()),
        (V::Stopped, ""),
        "a success clears the fault"
    );
    // A node that fails to delete: ERROR, resources kept, UNAVAILABLE; a retry works.
    c.fake.fail_all(h.uuid, Some(K::Delete));
    match c.conductor.delete(s.uuid, CallIds::request("d1")).await {
        Err(ConductorError::Unavailable(m)) => assert!(m.contains("delete it again"), "{m}"),
        other => panic!("{other:?}"),
    }
    let s = c.conductor.get(&s.uuid).unwrap();
    assert_eq!(s.vm_state, V::Error);
    assert_eq!(c.engine.consumer_count(), 1);
    c.fake.fail_all(h.uuid, None);
    c.conductor
        .delete(s.uuid, CallIds::request("d1"))
        .await
        .unwrap();
    assert_eq!(c.engine.consumer_count(), 0);
}

#[tokio::test]
async fn an_unanswered_action_is_unresolved_and_a_retry_completes_it_once() {
    let c = cloud(1);
    let s = c.one().await;
    let h = s.host.clone().unwrap();
    let stop = |id: &'static str| {
        c.conductor
            .action(s.uuid, Action::Stop, CallIds::request(id))
    };

    // The node dies before doing it: UNAVAILABLE, nothing changed, nothing cached.
    c.fake.lose_answers(h.uuid, 1, false);
    match stop("s1").await {
        Err(ConductorError::Unavailable(m)) => {
            assert!(m.contains("closed before it answered stop"), "{m}");
            assert!(m.contains("same request_id is safe"), "{m}");
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    let now = c.conductor.get(&s.uuid).unwrap();
    assert_eq!((now.vm_state, now.task_state), (V::Active, T::None));
    assert!(now.fault.contains("outcome is unknown"), "{}", now.fault);
    let last = now.actions.last().unwrap();
    assert!(!last.ok && last.request_id == "s1", "{last:?}");
    assert_eq!(c.fake.count(K::Stop), 0);
    // The retry does it, once; a third call gets the kept answer.
    let done = stop("s1").await.unwrap().server;
    assert_eq!((done.vm_state, done.fault.as_str()), (V::Stopped, ""));
    assert_eq!(stop("s1").await.unwrap().server, done);
    assert_eq!(c.fake.count(K::Stop), 1);
    assert_eq!(c.fake.power(h.uuid, s.uuid), Some("SHUTOFF"));

    // The node dies after doing it: the answer is lost, the host reports the domain when
    // it registers again, and the retry finds it done instead of acting again.
    c.act(s.uuid, Action::Start).await;
    c.fake.lose_answers(h.uuid, 1, true);
    assert!(matches!(
        stop("s2").await,
        Err(ConductorError::Unavailable(_))
    ));
    assert_eq!(c.conductor.get(&s.uuid).unwrap().vm_state, V::Active);
    assert_eq!(c.fake.count(K::Stop), 2);
    c.conductor.node_registered(h.uuid, &c.fake.reports(h.uuid));
    assert_eq!(c.conductor.get(&s.uuid).unwrap().vm_state, V::Stopped);
    let settled = stop("s2").await.unwrap().server;
    assert_eq!(
        (settled.vm_state, settled.task_state),
        (V::Stopped, T::None)
    );
    let last = settled.actions.last().unwrap();
    assert!(
        last.ok && last.action == "stop" && last.request_id == "s2",
        "{last:?}"
    );
    assert!(last.message.contains("earlier attempt"), "{}", last.message);
    assert_eq!(stop("s2").await.unwrap().server, settled, "kept answer");
    assert_eq!(c.fake.count(K::Stop), 2, "not sent again");
    // A new request id is a new stop: refused, the server is STOPPED.
    refused(stop("s3").await);

    // While the node is away a retry is refused, and stays retryable.
    c.act(s.uuid, Action::Start).await;
    c.fake.lose_answers(h.uuid, 1, false);
    assert!(stop("s4").await.is_err());
    c.fake.set_connected(h.uuid, false);
    match stop("s4").await {
        Err(ConductorError::Unavailable(m)) => assert!(m.contains("no connected"), "{m}"),
        other => panic!("{other:?}"),
    }
    c.fake.set_connected(h.uuid, true);
    assert_eq!(stop("s4").await.unwrap().server.vm_state, V::Stopped);
    c.check_invariants();
}

// ---- Restarts ---------------------------------------------------------------------------

/// What a snapshot of a durable engine dumps: the engine's objects, then the servers.
struct Everything(Arc<Engine>, Arc<Conductor>);

impl crate::store::SnapshotSource for Everything {
    fn export(&self, out: &mut dyn FnMut(crate::store::record::Record)) {
        self.0.export(out);
        self.1.export(out);
    }
}

/// A [`Cloud`] on a data directory, restartable as the binary restarts: the engine and the
/// conductor are rebuilt from what the directory holds. The fake nodes outlive a restart,
/// as real hosts outlive the engine.
struct Durable {
    dir: tempfile::TempDir,
    store: Arc<crate::store::Store>,
    cloud: Cloud,
}

impl std::ops::Deref for Durable {
    type Target = Cloud;
    fn deref(&self) -> &Cloud {
        &self.cloud
    }
}

/// Opens `dir` the way the engine starts: read the store, rebuild the engine, log to the
/// store, rebuild the servers.
fn open_cloud(
    dir: &std::path::Path,
    fake: Arc<FakeDispatcher>,
    hosts: Vec<HostChoice>,
    config: ComputeConfig,
) -> (Arc<crate::store::Store>, Cloud) {
    let store_config = crate::store::StoreConfig {
        data_dir: dir.to_path_buf(),
        ephemeral: false,
        snapshot_after_mb: 1024,
    };
    let (store, state, _) =
        crate::store::Store::open(&store_config, false, &|_, _, _| {}).expect("open the store");
    let engine = Arc::new(Engine::new(EngineConfig::default()).unwrap());
    let r = engine.restore(&state);
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    engine.attach_store(store.clone());
    let conductor = Conductor::new(engine.clone(), fake.clone(), config);
    let (_, skipped) = conductor.restore(&state);
    assert!(skipped.is_empty(), "{skipped:?}");
    store.set_source(Arc::new(Everything(engine.clone(), conductor.clone())));
    (
        store,
        Cloud {
            engine,
            fake,
            conductor,
            hosts,
        },
    )
}

impl Durable {
    /// [`cloud`] on a new data directory.
    fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeDispatcher::new();
        let (store, mut cloud) = open_cloud(dir.path(), fake, Vec::new(), Default::default());
        cloud.hosts = populate(&cloud.engine, &cloud.fake, n);
        Self { dir, store, cloud }
    }

    /// Stops the engine (its log flushed, as a crash after the answers were durable would
    /// leave it) and starts it again on the same directory, with `config`.
    fn restart_with(self, config: ComputeConfig) -> Self {
        let Self { dir, store, cloud } = self;
        store.close();
        let Cloud {
            engine,
            fake,
            conductor,
            hosts,
        } = cloud;
        drop((engine, conductor, store));
        let (store, cloud) = open_cloud(dir.path(), fake, hosts, config);
        Self { dir, store, cloud }
    }

    fn restart(self) -> Self {
        self.restart_with(ComputeConfig::default())
    }
}

#[tokio::test]
async fn request_ids_survive_a_restart() {
    let c = Durable::new(2);
    let h1 = c.host("h1");
    let ids = CallIds::request;
    // A create of two servers and one of a single server; one more whose server is deleted.
    let created = c
        .conductor
        .create(request(2), ids("create-1"))
        .await
        .unwrap();
    let mut single = request(1);
    single.force_hosts = vec!["h1".into()];
    let solo = c
        .conductor
        .create(single.clone(), ids("create-2"))
        .await
        .unwrap();
    let doomed = c
        .conductor
        .create(request(1), ids("create-3"))
        .await
        .unwrap()[0]
        .uuid;
    c.conductor.delete(doomed, ids("delete-1")).await.unwrap();
    let (u, v) = (created[0].uuid, solo[0].uuid);
    let hu = created[0].host.clone().unwrap();
    let stopped = c
        .conductor
        .action(u, Action::Stop, ids("stop-1"))
        .await
        .unwrap();
    let snap = Action::Snapshot {
        image_name: "snap-1".into(),
    };
    let snapped = c
        .conductor
        .action(v, snap.clone(), ids("snap-1"))
        .await
        .unwrap();
    let image = snapped.image_id.unwrap();
    assert_eq!(
        c.conductor
            .action(v, snap.clone(), ids("snap-1"))
            .await
            .unwrap(),
        snapped,
        "a repeated snapshot is answered, not refused for its image name"
    );
    // A stop whose answer the node lost after doing it: unresolved.
    c.fake.lose_answers(h1.uuid, 1, true);
    assert!(matches!(
        c.conductor.action(v, Action::Stop, ids("stop-2")).await,
        Err(ConductorError::Unavailable(_))
    ));
    let counts = |c: &Cloud| {
        (
            c.conductor.server_count(),
            c.engine.consumer_count(),
            c.total_used("MEMORY_MB"),
            c.fake.count(K::Spawn),
            c.fake.count(K::Stop),
            c.fake.count(K::Snapshot),
            c.fake.count(K::Delete),
        )
    };
    let before = counts(&c.cloud);
    assert_eq!(before, (3, 3, 3 * 1024, 4, 2, 1, 1));

    let c = c.restart();
    let uuids = |s: &[Server]| s.iter().map(|s| s.uuid).collect::<Vec<_>>();
    // The creates are answered with their servers; nothing is created.
    let again = c
        .conductor
        .create(request(2), ids("create-1"))
        .await
        .unwrap();
    assert_eq!(uuids(&again), uuids(&created));
    assert_eq!(again[0].vm_state, V::Stopped, "as the server is now");
    let again = c
        .conductor
        .create(single.clone(), ids("create-2"))
        .await
        .unwrap();
    assert_eq!(uuids(&again), uuids(&solo));
    // The actions are answered with their first answer's history; nothing runs again.
    let r = c
        .conductor
        .action(u, Action::Stop, ids("stop-1"))
        .await
        .unwrap();
    assert_eq!(r.server.actions, stopped.server.actions);
    assert_eq!((r.server.vm_state, r.server.uuid), (V::Stopped, u));
    let r = c
        .conductor
        .action(v, snap.clone(), ids("snap-1"))
        .await
        .unwrap();
    assert_eq!(r.image_id, Some(image));
    assert_eq!(r.server.actions, snapped.server.actions);
    // The delete too, rather than NOT_FOUND; a new request id is NOT_FOUND.
    c.conductor.delete(doomed, ids("delete-1")).await.unwrap();
    assert!(matches!(
        c.conductor.delete(doomed, ids("delete-2")).await,
        Err(ConductorError::ServerNotFound(_))
    ));
    assert_eq!(counts(&c.cloud), before);
    // The unresolved stop: the host reports it done, and the retry is answered so.
    c.conductor
        .node_registered(h1.uuid, &c.fake.reports(h1.uuid));
    let r = c
        .conductor
        .action(v, Action::Stop, ids("stop-2"))
        .await
        .unwrap();
    assert_eq!(r.server.vm_state, V::Stopped);
    assert!(
        r.server
            .actions
            .last()
            .unwrap()
            .message
            .contains("earlier attempt")
    );
    assert_eq!(counts(&c.cloud), before, "nothing ran again");
    // A request id the restart did not see is a new request.
    c.conductor
        .action(u, Action::Start, ids("start-1"))
        .await
        .unwrap();
    assert_eq!(c.fake.power(hu.uuid, u), Some("RUNNING"));
    c.check_invariants();

    // Through a snapshot, and the restart's own answers (the settled stop) too.
    c.store.snapshot().unwrap();
    let c = c.restart();
    let again = c
        .conductor
        .create(request(2), ids("create-1"))
        .await
        .unwrap();
    assert_eq!(uuids(&again), uuids(&created));
    let before = counts(&c.cloud);
    c.conductor.delete(doomed, ids("delete-1")).await.unwrap();
    for (s, id) in [(u, "start-1"), (v, "stop-2"), (u, "stop-1")] {
        c.conductor
            .action(s, Action::Stop, ids(id))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    assert_eq!(counts(&c.cloud), before, "nothing ran again");
    assert_eq!(
        c.fake.power(hu.uuid, u),
        Some("RUNNING"),
        "start-1 answered, not a stop"
    );

    // Only the newest `remembered_request_ids` per scope are kept.
    let c = c.restart_with(ComputeConfig {
        remembered_request_ids: 1,
        ..Default::default()
    });
    let again = c.conductor.create(single, ids("create-2")).await.unwrap();
    assert_eq!(
        uuids(&again),
        uuids(&solo),
        "the newest create of the project"
    );
    assert_eq!(counts(&c.cloud), before);
    let new = c
        .conductor
        .create(request(2), ids("create-1"))
        .await
        .unwrap();
    assert_ne!(uuids(&new), uuids(&created), "forgotten: created again");
    assert_eq!(c.conductor.server_count(), 5);
    c.check_invariants();
}

#[tokio::test]
async fn a_local_delete_survives_a_restart() {
    let c = Durable::new(1);
    let (a, b) = (c.one().await.uuid, c.one().await.uuid);
    let h = c.host("h0");
    c.fake.set_connected(h.uuid, false);
    // One local delete reaches the restart in a snapshot, the other in the log.
    c.conductor.delete(a, CallIds::default()).await.unwrap();
    c.store.snapshot().unwrap();
    c.conductor.delete(b, CallIds::default()).await.unwrap();
    assert_eq!(c.engine.consumer_count(), 0);
    assert_eq!(c.fake.domains(h.uuid).len(), 2, "still there");

    let c = c.restart();
    c.fake.set_connected(h.uuid, true);
    let report = c.conductor.node_registered(h.uuid, &c.fake.reports(h.uuid));
    let mut both = vec![a, b];
    both.sort_unstable();
    assert_eq!(report.to_delete, both);
    assert!(report.orphans.is_empty() && report.missing.is_empty());

    // Once only, across a restart too.
    let c = c.restart();
    let report = c.conductor.node_registered(h.uuid, &c.fake.reports(h.uuid));
    assert_eq!((report.orphans, report.to_delete), (both, vec![]));
}
