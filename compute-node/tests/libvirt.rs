//! `LibvirtHypervisor` against libvirt's in-process test driver: no daemon needed.
//!
//! States are checked twice: through the driver under test and through a second, raw `virt`
//! connection, so a mapping bug in the driver cannot hide behind itself. `test:///default` is
//! shared by every connection in this process, so each test uses its own uuids and names;
//! tests that need a host to themselves use a node file.

// Test helpers outside #[test] fns unwrap too: a panic is the failure report wanted here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use berth_node::hypervisor::transition;
use berth_node::libvirt::{LibvirtHypervisor, LibvirtOptions};
use berth_node::testnode::TestNode;
use berth_node::{ActionKind, Hypervisor, HypervisorError, InstanceSpec, PowerState};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::{Domain, DomainState};

const DEFAULT: &str = "test:///default";

fn open(uri: &str) -> LibvirtHypervisor {
    LibvirtHypervisor::connect(LibvirtOptions {
        uri: uri.into(),
        disk_gb: 250,
        ..LibvirtOptions::default()
    })
    .expect("test driver opens")
}

fn spec(name: &str) -> InstanceSpec {
    let uuid = Uuid::new_v4();
    InstanceSpec {
        uuid,
        name: format!("{name}-{}", &uuid.simple().to_string()[..8]),
        vcpus: 2,
        memory_mb: 1024,
        disk_gb: 10,
        image_id: "img-1".into(),
        image_name: "cirros".into(),
        flavor_name: "m1.small".into(),
        metadata: BTreeMap::from([("owner".into(), "tests".into())]),
    }
}

/// The domain as a separate raw connection sees it: libvirt state and managed-save flag.
struct Raw(Connect);

impl Raw {
    fn open() -> Self {
        Raw(Connect::open(Some(DEFAULT)).unwrap())
    }
    fn domain(&self, uuid: Uuid) -> Option<Domain> {
        self.0.lookup_domain_by_uuid(uuid).ok()
    }
    fn state(&self, uuid: Uuid) -> (DomainState, bool) {
        let d = self.domain(uuid).expect("domain exists in libvirt");
        (
            d.info().unwrap().state.unwrap(),
            d.has_managed_save(0).unwrap(),
        )
    }
    fn berth_metadata(&self, uuid: Uuid) -> BTreeMap<String, String> {
        let xml = self.domain(uuid).unwrap().xml_desc(0).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let mut out = BTreeMap::new();
        for n in doc
            .descendants()
            .filter(|n| n.tag_name().namespace() == Some(berth_node::domain_xml::BERTH_XMLNS))
        {
            for a in n.attributes() {
                out.insert(
                    format!("{}.{}", n.tag_name().name(), a.name()),
                    a.value().to_string(),
                );
            }
            if let Some(t) = n.text().filter(|t| !t.trim().is_empty()) {
                out.insert(format!("{}.text", n.tag_name().name()), t.to_string());
            }
        }
        out
    }
}

fn listed_state(h: &LibvirtHypervisor, uuid: Uuid) -> Option<PowerState> {
    h.list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.uuid == uuid)
        .map(|d| d.state)
}

#[test]
fn default_node_info_is_libvirts_fixed_test_host() {
    let h = open(DEFAULT);
    let n = h.node_info().unwrap();
    assert_eq!(n.vcpus, 16);
    assert_eq!(n.memory_mb, 3 * 1024);
    assert_eq!(n.arch, "i686");
    assert_eq!(n.hypervisor_type, "TEST");
    assert_eq!(n.disk_gb, 250, "disk comes from the options, not libvirt");
    assert!(!h.live_migration_supported());
}

#[test]
fn node_file_shapes_the_host_and_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    // A space and a '#' in the path exercise the URI's percent-encoding.
    let sub = dir.path().join("a dir#1");
    std::fs::create_dir(&sub).unwrap();
    let uri = TestNode::new(48, 256 * 1024)
        .write(&sub.join("node.xml"))
        .unwrap();
    let h = open(&uri);
    let n = h.node_info().unwrap();
    assert_eq!(
        (n.vcpus, n.memory_mb, n.arch.as_str()),
        (48, 256 * 1024, "x86_64")
    );
    assert!(h.list_domains().unwrap().is_empty());
    // Each connection to a node file is its own host: a domain spawned on one is not on another.
    let s = spec("isolated");
    h.spawn(&s).unwrap();
    assert_eq!(open(&uri).list_domains().unwrap().len(), 0);
    assert_eq!(h.list_domains().unwrap().len(), 1);
}

#[test]
fn a_large_node_is_not_capped_by_the_default_topology() {
    let dir = tempfile::tempdir().unwrap();
    let uri = TestNode::new(512, 4 * 1024 * 1024)
        .write(&dir.path().join("n.xml"))
        .unwrap();
    let n = open(&uri).node_info().unwrap();
    assert_eq!((n.vcpus, n.memory_mb), (512, 4 * 1024 * 1024));
}

#[test]
fn default_host_lists_libvirts_own_test_domain() {
    let h = open(DEFAULT);
    let test = h
        .list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.name == "test")
        .expect("test:///default ships a running domain called test");
    assert_eq!(test.state, PowerState::Running);
    assert_eq!(
        test.uuid.to_string(),
        "6695eb01-f6a4-8304-79aa-97f2502e193f"
    );
}

#[test]
fn full_lifecycle_reaches_the_real_libvirt_states() {
    let h = open(DEFAULT);
    let raw = Raw::open();
    let s = spec("life");
    let u = s.uuid;

    h.spawn(&s).unwrap();
    assert_eq!(raw.state(u), (DomainState::Running, false));
    assert_eq!(listed_state(&h, u), Some(PowerState::Running));
    assert_eq!(raw.domain(u).unwrap().name().unwrap(), s.name);

    h.stop(u).unwrap();
    assert_eq!(raw.state(u), (DomainState::Shutoff, false));
    h.stop(u).unwrap(); // idempotent
    assert_eq!(listed_state(&h, u), Some(PowerState::Shutoff));

    h.start(u).unwrap();
    assert_eq!(raw.state(u), (DomainState::Running, false));
    h.start(u).unwrap(); // idempotent

    h.pause(u).unwrap();
    assert_eq!(raw.state(u), (DomainState::Paused, false));
    assert_eq!(listed_state(&h, u), Some(PowerState::Paused));
    h.unpause(u).unwrap();
    assert_eq!(raw.state(u), (DomainState::Running, false));

    h.reboot(u, false).unwrap();
    assert_eq!(raw.state(u), (DomainState::Running, false));
    h.reboot(u, true).unwrap();
    assert_eq!(raw.state(u), (DomainState::Running, false));

    h.suspend(u).unwrap();
    assert_eq!(
        raw.state(u),
        (DomainState::Shutoff, true),
        "managed save: off with an image"
    );
    assert_eq!(listed_state(&h, u), Some(PowerState::Suspended));
    h.resume(u).unwrap();
    assert_eq!(
        raw.state(u),
        (DomainState::Running, false),
        "restored, image consumed"
    );

    assert_eq!(h.snapshot(u, "before-upgrade").unwrap(), "before-upgrade");
    let dom = raw.domain(u).unwrap();
    assert!(Domain::lookup_snapshot_by_name(&dom, "before-upgrade", 0).is_ok());
    assert!(matches!(
        h.snapshot(u, "before-upgrade"),
        Err(HypervisorError::AlreadyExists { .. })
    ));
    assert_eq!(
        raw.state(u),
        (DomainState::Running, false),
        "snapshot leaves state alone"
    );

    let mut rebuilt = s.clone();
    rebuilt.image_id = "img-2".into();
    rebuilt.image_name = "debian".into();
    h.rebuild(&rebuilt).unwrap();
    assert_eq!(raw.state(u), (DomainState::Running, false));
    let meta = raw.berth_metadata(u);
    assert_eq!(meta.get("image.id").map(String::as_str), Some("img-2"));
    assert_eq!(meta.get("image.name").map(String::as_str), Some("debian"));

    h.delete(u).unwrap();
    assert!(
        raw.domain(u).is_none(),
        "domain, snapshots and all are gone"
    );
    assert_eq!(listed_state(&h, u), None);
    h.delete(u).unwrap(); // idempotent
}

#[test]
fn suspend_from_paused_resumes_running() {
    let h = open(DEFAULT);
    let raw = Raw::open();
    let s = spec("paused-save");
    h.spawn(&s).unwrap();
    h.pause(s.uuid).unwrap();
    h.suspend(s.uuid).unwrap();
    assert_eq!(raw.state(s.uuid), (DomainState::Shutoff, true));
    h.resume(s.uuid).unwrap();
    assert_eq!(raw.state(s.uuid), (DomainState::Running, false));
    h.delete(s.uuid).unwrap();
}

#[test]
fn hard_reboot_of_a_suspended_domain_discards_the_saved_image() {
    let h = open(DEFAULT);
    let raw = Raw::open();
    let s = spec("hard");
    h.spawn(&s).unwrap();
    h.suspend(s.uuid).unwrap();
    h.reboot(s.uuid, true).unwrap();
    assert_eq!(raw.state(s.uuid), (DomainState::Running, false));
    h.delete(s.uuid).unwrap();
}

#[test]
fn rebuild_keeps_a_stopped_domain_stopped() {
    let h = open(DEFAULT);
    let raw = Raw::open();
    let s = spec("rebuild-off");
    h.spawn(&s).unwrap();
    h.stop(s.uuid).unwrap();
    let mut next = s.clone();
    next.image_id = "img-3".into();
    h.rebuild(&next).unwrap();
    assert_eq!(raw.state(s.uuid), (DomainState::Shutoff, false));
    assert_eq!(raw.berth_metadata(s.uuid)["image.id"], "img-3");
    let mut renamed = next.clone();
    renamed.name = format!("{}-renamed", s.name);
    assert!(matches!(
        h.rebuild(&renamed),
        Err(HypervisorError::InvalidSpec(_))
    ));
    h.delete(s.uuid).unwrap();
}

#[test]
fn delete_removes_suspended_domains_with_snapshots() {
    let h = open(DEFAULT);
    let raw = Raw::open();
    let s = spec("del");
    h.spawn(&s).unwrap();
    h.snapshot(s.uuid, "one").unwrap();
    h.snapshot(s.uuid, "two").unwrap();
    h.suspend(s.uuid).unwrap();
    h.delete(s.uuid).unwrap();
    assert!(raw.domain(s.uuid).is_none());
}

#[test]
fn spawn_refuses_duplicates_and_bad_specs_without_leaving_anything() {
    let h = open(DEFAULT);
    let raw = Raw::open();
    let s = spec("dup");
    h.spawn(&s).unwrap();
    assert!(matches!(
        h.spawn(&s),
        Err(HypervisorError::AlreadyExists { .. })
    ));
    let mut same_name = spec("other");
    same_name.name = s.name.clone();
    assert!(matches!(
        h.spawn(&same_name),
        Err(HypervisorError::AlreadyExists { .. })
    ));
    assert!(raw.domain(same_name.uuid).is_none());
    let mut bad = spec("bad");
    bad.name = "nul\u{0}name".into();
    assert!(matches!(
        h.spawn(&bad),
        Err(HypervisorError::InvalidSpec(_))
    ));
    assert!(raw.domain(bad.uuid).is_none());
    h.delete(s.uuid).unwrap();
}

#[test]
fn hostile_strings_reach_libvirt_intact() {
    let h = open(DEFAULT);
    let raw = Raw::open();
    let mut s = spec("x");
    s.name = format!("<name><evil> & \"q\" 'x' {}", s.uuid.simple());
    s.flavor_name = "</berth:flavor><x/>".into();
    s.metadata = BTreeMap::from([("k\"<>".into(), "v&'\n</berth:property>".into())]);
    h.spawn(&s).unwrap();
    assert_eq!(raw.domain(s.uuid).unwrap().name().unwrap(), s.name);
    let listed = h
        .list_domains()
        .unwrap()
        .into_iter()
        .find(|d| d.uuid == s.uuid)
        .unwrap();
    assert_eq!(listed.name, s.name);
    let meta = raw.berth_metadata(s.uuid);
    assert_eq!(meta["flavor.name"], "</berth:flavor><x/>");
    assert_eq!(meta["property.key"], "k\"<>");
    assert_eq!(meta["property.text"], "v&'\n</berth:property>");
    h.delete(s.uuid).unwrap();
}

#[test]
fn libvirt_refuses_slashes_in_names_and_so_does_validation() {
    // Validation refuses it before libvirt sees it, so the fake behaves the same.
    let h = open(DEFAULT);
    let mut s = spec("slash");
    s.name = "</name><evil>".into();
    assert!(matches!(h.spawn(&s), Err(HypervisorError::InvalidSpec(m)) if m.contains('/')));
    assert!(Raw::open().domain(s.uuid).is_none());
}

#[test]
fn unknown_uuids_are_not_found_except_for_delete() {
    let h = open(DEFAULT);
    let ghost = Uuid::new_v4();
    let nf = Err(HypervisorError::NotFound { uuid: ghost });
    assert_eq!(h.stop(ghost), nf);
    assert_eq!(h.start(ghost), nf);
    assert_eq!(h.reboot(ghost, true), nf);
    assert_eq!(h.pause(ghost), nf);
    assert_eq!(h.resume(ghost), nf);
    assert_eq!(
        h.snapshot(ghost, "s"),
        Err(HypervisorError::NotFound { uuid: ghost })
    );
    assert_eq!(h.delete(ghost), Ok(()));
}

/// Drives a fresh domain into `state` with ordinary actions.
fn domain_in(h: &dyn Hypervisor, state: PowerState) -> InstanceSpec {
    let s = spec("conf");
    h.spawn(&s).unwrap();
    match state {
        PowerState::Running => {}
        PowerState::Paused => h.pause(s.uuid).unwrap(),
        PowerState::Suspended => h.suspend(s.uuid).unwrap(),
        PowerState::Shutoff => h.stop(s.uuid).unwrap(),
        other => unreachable!("{other} is not reachable through the API"),
    }
    s
}

fn apply(h: &dyn Hypervisor, s: &InstanceSpec, action: ActionKind) -> Result<(), HypervisorError> {
    match action {
        ActionKind::Stop => h.stop(s.uuid),
        ActionKind::Start => h.start(s.uuid),
        ActionKind::SoftReboot => h.reboot(s.uuid, false),
        ActionKind::HardReboot => h.reboot(s.uuid, true),
        ActionKind::Pause => h.pause(s.uuid),
        ActionKind::Unpause => h.unpause(s.uuid),
        ActionKind::Suspend => h.suspend(s.uuid),
        ActionKind::Resume => h.resume(s.uuid),
        ActionKind::Snapshot => h.snapshot(s.uuid, "snap").map(drop),
        ActionKind::Rebuild => {
            let mut next = s.clone();
            next.image_id = "img-rebuilt".into();
            h.rebuild(&next)
        }
        ActionKind::Delete => h.delete(s.uuid),
        ActionKind::Spawn | ActionKind::LiveMigrate => unreachable!(),
    }
}

/// The conformance check: from every state the API can reach, every action ends the same way
/// on libvirt as on the fake (same end state, or the same refusal), and that way is what the
/// contract table says.
#[test]
fn libvirt_and_the_fake_agree_on_every_transition() {
    let fake = berth_node::fake::FakeHypervisor::default();
    let dir = tempfile::tempdir().unwrap();
    let uri = TestNode::new(64, 1024 * 1024)
        .write(&dir.path().join("conf.xml"))
        .unwrap();
    let lv = open(&uri);
    let states = [
        PowerState::Running,
        PowerState::Paused,
        PowerState::Suspended,
        PowerState::Shutoff,
    ];
    let mut checked = 0;
    for state in states {
        for action in ActionKind::ALL {
            if matches!(action, ActionKind::Spawn | ActionKind::LiveMigrate) {
                continue;
            }
            let outcome = |h: &dyn Hypervisor| {
                let s = domain_in(h, state);
                let result = apply(h, &s, action);
                let end = h
                    .list_domains()
                    .unwrap()
                    .into_iter()
                    .find(|d| d.uuid == s.uuid);
                (result.map_err(|e| e.code()), end.map(|d| d.state))
            };
            let on_fake = outcome(&fake);
            let on_libvirt = outcome(&lv);
            assert_eq!(on_libvirt, on_fake, "{state} --{action}--> libvirt vs fake");
            let allowed = transition(state, action).is_ok();
            assert_eq!(
                on_libvirt.0.is_ok(),
                allowed,
                "{state} --{action}--> vs table"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * 11);
}
