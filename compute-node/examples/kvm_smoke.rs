//! Drives every `Hypervisor` operation of `LibvirtHypervisor` on a real libvirt URI and checks
//! the domain after each step through a second, raw libvirt connection (so a state-mapping bug
//! in the driver cannot hide behind itself). Prints a table; exits 1 on any mismatch.
//!
//! ```text
//! cargo run -p berth-node --example kvm_smoke -- --uri qemu:///system
//! cargo run -p berth-node --example kvm_smoke -- --uri qemu:///system --virt-type qemu   # TCG
//! cargo run -p berth-node --example kvm_smoke -- --uri test:///default
//! ```
//!
//! The guest is diskless (1 vCPU, 64 MiB): with nothing to boot it sits in the BIOS, which is
//! Running as far as libvirt is concerned. `stop` therefore always waits `--shutdown-timeout`
//! before powering off. Snapshots of a diskless QEMU domain are refused by libvirt; the smoke
//! accepts either a snapshot that libvirt then lists or `Unsupported` with none recorded, and
//! says which it got. `scripts/kvm-check.sh` sets the host up and runs this.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_node::domain_xml::DomainType;
use berth_node::libvirt::{LibvirtHypervisor, LibvirtOptions};
use berth_node::{Hypervisor, HypervisorError, InstanceSpec, PowerState};
use clap::Parser;
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::DomainState;

/// Lifecycle smoke test of berth-node's libvirt driver against a real libvirt.
#[derive(Debug, Parser)]
struct Args {
    /// libvirt URI.
    #[arg(long, default_value = "qemu:///system")]
    uri: String,
    /// Force the domain type: kvm or qemu (TCG) [default: what libvirt offers].
    #[arg(long)]
    virt_type: Option<String>,
    /// Seconds `stop` waits for a clean shutdown before `destroy`.
    #[arg(long, default_value_t = 3)]
    shutdown_timeout: u64,
    /// Domain name prefix (a random suffix is added).
    #[arg(long, default_value = "berth-smoke")]
    name: String,
    /// Memory of the guest, MiB.
    #[arg(long, default_value_t = 64)]
    memory_mb: u64,
}

/// What the domain should look like after a step.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// Present, in this state.
    State(PowerState),
    /// No such domain.
    Gone,
}

/// What the call itself should answer.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    Err(&'static str),
    /// A snapshot: `Ok` with one more snapshot in libvirt, or `Unsupported` with none added.
    SnapshotOrUnsupported,
}

struct Row {
    step: usize,
    action: String,
    answer: String,
    want: String,
    libvirt: String,
    driver: String,
    ms: u128,
    ok: bool,
    note: String,
}

struct Smoke {
    h: LibvirtHypervisor,
    raw: Connect,
    uri: String,
    rows: Vec<Row>,
    /// Every domain this run spawned, deleted again at the end whatever happened.
    created: Vec<Uuid>,
}

/// libvirt's view: state name, managed save, and the contract state it implies.
fn raw_view(raw: &Connect, uuid: Uuid) -> (String, Option<PowerState>, u32) {
    let Ok(dom) = raw.lookup_domain_by_uuid(uuid) else {
        return ("(gone)".into(), None, 0);
    };
    let state = dom.info().map(|i| i.state);
    let saved = dom.has_managed_save(0).unwrap_or(false);
    let snaps = dom.num_snapshots(0).unwrap_or(0);
    let (name, ps) = match state {
        Ok(virt::enumutil::Enum::Known(s)) => match s {
            DomainState::Running | DomainState::Blocked => ("running", PowerState::Running),
            DomainState::Shutdown => ("shutdown", PowerState::Running),
            DomainState::Paused => ("paused", PowerState::Paused),
            DomainState::Shutoff if saved => ("shut off (saved)", PowerState::Suspended),
            DomainState::Shutoff => ("shut off", PowerState::Shutoff),
            DomainState::Crashed => ("crashed", PowerState::Crashed),
            DomainState::PMSuspended => ("pmsuspended", PowerState::Suspended),
            DomainState::NoState => ("nostate", PowerState::NoState),
        },
        Ok(virt::enumutil::Enum::Unknown(n)) => {
            return (format!("unknown({n})"), Some(PowerState::NoState), snaps);
        }
        Err(e) => return (format!("error: {}", e.message()), None, snaps),
    };
    (name.into(), Some(ps), snaps)
}

impl Smoke {
    fn driver_view(&self, uuid: Uuid) -> Option<PowerState> {
        self.h
            .list_domains()
            .ok()?
            .into_iter()
            .find(|d| d.uuid == uuid)
            .map(|d| d.state)
    }

    /// Runs `f`, then checks its answer and the domain against `answer` and `want`.
    fn step(
        &mut self,
        action: &str,
        uuid: Uuid,
        answer: Answer,
        want: Want,
        f: impl FnOnce(&LibvirtHypervisor) -> Result<String, HypervisorError>,
    ) -> bool {
        let (_, _, snaps_before) = raw_view(&self.raw, uuid);
        let t = Instant::now();
        let got = f(&self.h);
        let ms = t.elapsed().as_millis();
        let (libvirt, raw_state, snaps_after) = raw_view(&self.raw, uuid);
        let driver = self.driver_view(uuid);
        let mut note = String::new();
        let answer_ok = match (answer, &got) {
            (Answer::Ok, Ok(_)) => true,
            (Answer::Err(code), Err(e)) => e.code() == code,
            (Answer::SnapshotOrUnsupported, Ok(id)) => {
                note = format!("snapshot {id:?} taken; libvirt lists {snaps_after}");
                snaps_after == snaps_before + 1
            }
            (Answer::SnapshotOrUnsupported, Err(HypervisorError::Unsupported(_))) => {
                note = format!("unsupported by libvirt; libvirt lists {snaps_after}");
                snaps_after == snaps_before
            }
            _ => false,
        };
        let state_ok = match want {
            Want::State(ps) => raw_state == Some(ps) && driver == Some(ps),
            Want::Gone => raw_state.is_none() && driver.is_none(),
        };
        let ok = answer_ok && state_ok;
        if let Err(e) = &got
            && note.is_empty()
        {
            note = e.to_string();
        }
        self.rows.push(Row {
            step: self.rows.len() + 1,
            action: action.into(),
            answer: match &got {
                Ok(_) => "ok".into(),
                Err(e) => e.code().into(),
            },
            want: match (answer, want) {
                (Answer::Err(c), Want::State(s)) => format!("{c}, {s}"),
                (Answer::Err(c), Want::Gone) => format!("{c}, gone"),
                (_, Want::State(s)) => s.to_string(),
                (_, Want::Gone) => "gone".into(),
            },
            libvirt,
            driver: driver.map_or("(absent)".into(), |s| s.to_string()),
            ms,
            ok,
            note,
        });
        ok
    }

    /// A check that is not a driver call (XML shape, node info, files).
    fn check(&mut self, action: &str, ok: bool, note: String) {
        self.rows.push(Row {
            step: self.rows.len() + 1,
            action: action.into(),
            answer: "-".into(),
            want: "-".into(),
            libvirt: "-".into(),
            driver: "-".into(),
            ms: 0,
            ok,
            note,
        });
    }

    fn print(&self) {
        println!(
            "{:>3}  {:<26} {:<14} {:<26} {:<17} {:<10} {:>6}  {:<4} note",
            "#", "action", "answer", "expected", "libvirt", "driver", "ms", "ok"
        );
        for r in &self.rows {
            println!(
                "{:>3}  {:<26} {:<14} {:<26} {:<17} {:<10} {:>6}  {:<4} {}",
                r.step,
                r.action,
                r.answer,
                r.want,
                r.libvirt,
                r.driver,
                r.ms,
                if r.ok { "ok" } else { "FAIL" },
                r.note
            );
        }
    }
}

fn spec(args: &Args, image: &str) -> InstanceSpec {
    let uuid = Uuid::new_v4();
    InstanceSpec {
        uuid,
        name: format!("{}-{}", args.name, &uuid.simple().to_string()[..8]),
        vcpus: 1,
        memory_mb: args.memory_mb,
        disk_gb: 0,
        image_id: image.into(),
        image_name: "none (diskless)".into(),
        flavor_name: "tiny".into(),
        metadata: BTreeMap::from([("purpose".into(), "kvm smoke".into())]),
    }
}

fn run(s: &mut Smoke, args: &Args) {
    use PowerState::{Paused, Running, Shutoff, Suspended};
    let a = |r: Result<(), HypervisorError>| r.map(|()| String::new());

    // Host.
    match s.h.node_info() {
        Ok(n) => {
            let qemu = s.uri.starts_with("qemu");
            let ok = n.vcpus > 0
                && n.memory_mb > 0
                && n.hypervisor_version > 0
                && (!qemu || (n.hypervisor_type == "QEMU" && n.arch == std::env::consts::ARCH));
            s.check(
                "node_info",
                ok,
                format!(
                    "vcpus={} memory_mb={} arch={} type={} version={}",
                    n.vcpus, n.memory_mb, n.arch, n.hypervisor_type, n.hypervisor_version
                ),
            );
        }
        Err(e) => s.check("node_info", false, e.to_string()),
    }
    let lm = s.h.live_migration_supported();
    s.check(
        "live_migration_supported",
        !lm,
        format!("{lm} (no migrate action implemented)"),
    );

    let sp = spec(args, "image-a");
    let u = sp.uuid;
    s.created.push(u);
    println!(
        "domain {} uuid {u} type {} arch {}",
        sp.name,
        s.h.domain_type().as_str(),
        s.h.arch().unwrap_or("(default)")
    );

    if !s.step("spawn", u, Answer::Ok, Want::State(Running), |h| {
        a(h.spawn(&sp))
    }) {
        return; // Nothing else can work.
    }
    // What libvirt made of the XML.
    if let Ok(dom) = s.raw.lookup_domain_by_uuid(u) {
        let xml = dom.xml_desc(0).unwrap_or_default();
        let want_type = format!("type='{}'", s.h.domain_type().as_str());
        let ok = xml.contains(&want_type)
            && !xml.contains("<disk")
            && !xml.contains("<interface")
            && s.h
                .arch()
                .is_none_or(|arch| xml.contains(&format!("arch='{arch}'")));
        let machine = xml
            .split("machine='")
            .nth(1)
            .and_then(|m| m.split('\'').next())
            .unwrap_or("-");
        s.check(
            "domain xml",
            ok,
            format!("{want_type}, machine {machine}, no disk/interface"),
        );
    }
    s.step(
        "spawn again",
        u,
        Answer::Err("ALREADY_EXISTS"),
        Want::State(Running),
        |h| a(h.spawn(&sp)),
    );
    s.step("pause", u, Answer::Ok, Want::State(Paused), |h| {
        a(h.pause(u))
    });
    s.step(
        "pause again (no-op)",
        u,
        Answer::Ok,
        Want::State(Paused),
        |h| a(h.pause(u)),
    );
    s.step(
        "start from paused",
        u,
        Answer::Err("INVALID_STATE"),
        Want::State(Paused),
        |h| a(h.start(u)),
    );
    s.step("unpause", u, Answer::Ok, Want::State(Running), |h| {
        a(h.unpause(u))
    });
    s.step("reboot soft", u, Answer::Ok, Want::State(Running), |h| {
        a(h.reboot(u, false))
    });
    s.step("reboot hard", u, Answer::Ok, Want::State(Running), |h| {
        a(h.reboot(u, true))
    });
    s.step(
        "snapshot (running)",
        u,
        Answer::SnapshotOrUnsupported,
        Want::State(Running),
        |h| h.snapshot(u, "smoke-running"),
    );
    s.step(
        "stop",
        u,
        Answer::Ok,
        Want::State(Shutoff),
        |h| a(h.stop(u)),
    );
    s.step(
        "stop again (no-op)",
        u,
        Answer::Ok,
        Want::State(Shutoff),
        |h| a(h.stop(u)),
    );
    s.step(
        "reboot soft from shutoff",
        u,
        Answer::Err("INVALID_STATE"),
        Want::State(Shutoff),
        |h| a(h.reboot(u, false)),
    );
    s.step(
        "snapshot (shutoff)",
        u,
        Answer::SnapshotOrUnsupported,
        Want::State(Shutoff),
        |h| h.snapshot(u, "smoke-shutoff"),
    );
    s.step("start", u, Answer::Ok, Want::State(Running), |h| {
        a(h.start(u))
    });
    s.step(
        "start again (no-op)",
        u,
        Answer::Ok,
        Want::State(Running),
        |h| a(h.start(u)),
    );
    s.step("suspend", u, Answer::Ok, Want::State(Suspended), |h| {
        a(h.suspend(u))
    });
    s.step(
        "suspend again (no-op)",
        u,
        Answer::Ok,
        Want::State(Suspended),
        |h| a(h.suspend(u)),
    );
    s.step(
        "stop from suspended",
        u,
        Answer::Err("INVALID_STATE"),
        Want::State(Suspended),
        |h| a(h.stop(u)),
    );
    s.step("resume", u, Answer::Ok, Want::State(Running), |h| {
        a(h.resume(u))
    });
    s.step("pause", u, Answer::Ok, Want::State(Paused), |h| {
        a(h.pause(u))
    });
    s.step(
        "suspend from paused",
        u,
        Answer::Ok,
        Want::State(Suspended),
        |h| a(h.suspend(u)),
    );
    s.step(
        "resume (paused -> running)",
        u,
        Answer::Ok,
        Want::State(Running),
        |h| a(h.resume(u)),
    );
    s.step("suspend", u, Answer::Ok, Want::State(Suspended), |h| {
        a(h.suspend(u))
    });
    s.step(
        "reboot hard from suspended",
        u,
        Answer::Ok,
        Want::State(Running),
        |h| a(h.reboot(u, true)),
    );

    // Rebuild: running stays running, shut off stays off; the new image lands in the XML.
    let mut sp_b = sp.clone();
    sp_b.image_id = "image-b".into();
    s.step(
        "rebuild (running)",
        u,
        Answer::Ok,
        Want::State(Running),
        |h| a(h.rebuild(&sp_b)),
    );
    let has_image = |s: &Smoke, img: &str| {
        s.raw
            .lookup_domain_by_uuid(u)
            .and_then(|d| d.xml_desc(0))
            .is_ok_and(|x| {
                x.contains(&format!("id=\"{img}\"")) || x.contains(&format!("id='{img}'"))
            })
    };
    let ok = has_image(s, "image-b");
    s.check("rebuild wrote image-b", ok, String::new());
    s.step(
        "stop",
        u,
        Answer::Ok,
        Want::State(Shutoff),
        |h| a(h.stop(u)),
    );
    let mut sp_c = sp.clone();
    sp_c.image_id = "image-c".into();
    s.step(
        "rebuild (shutoff)",
        u,
        Answer::Ok,
        Want::State(Shutoff),
        |h| a(h.rebuild(&sp_c)),
    );
    let ok = has_image(s, "image-c");
    s.check("rebuild wrote image-c", ok, String::new());
    let mut renamed = sp.clone();
    renamed.name.push_str("-renamed");
    s.step(
        "rebuild with a new name",
        u,
        Answer::Err("INVALID_SPEC"),
        Want::State(Shutoff),
        |h| a(h.rebuild(&renamed)),
    );
    s.step("start", u, Answer::Ok, Want::State(Running), |h| {
        a(h.start(u))
    });

    // Delete from Suspended: the managed-save image must go with the domain.
    s.step("suspend", u, Answer::Ok, Want::State(Suspended), |h| {
        a(h.suspend(u))
    });
    let save = Path::new("/var/lib/libvirt/qemu/save").join(format!("{}.save", sp.name));
    let local_system = s.uri == "qemu:///system";
    if local_system {
        let exists = save.exists();
        s.check(
            "managed save file exists",
            exists,
            save.display().to_string(),
        );
    }
    s.step("delete (suspended)", u, Answer::Ok, Want::Gone, |h| {
        a(h.delete(u))
    });
    if local_system {
        let gone = !save.exists();
        s.check(
            "managed save file removed",
            gone,
            save.display().to_string(),
        );
    }
    s.step("delete again (no-op)", u, Answer::Ok, Want::Gone, |h| {
        a(h.delete(u))
    });
    s.step(
        "pause unknown uuid",
        u,
        Answer::Err("NOT_FOUND"),
        Want::Gone,
        |h| a(h.pause(u)),
    );

    // Delete from Running, a second domain, and that it leaves no trace in list_domains.
    let sp2 = spec(args, "image-a");
    let u2 = sp2.uuid;
    s.created.push(u2);
    s.step("spawn #2", u2, Answer::Ok, Want::State(Running), |h| {
        a(h.spawn(&sp2))
    });
    s.step("delete #2 (running)", u2, Answer::Ok, Want::Gone, |h| {
        a(h.delete(u2))
    });
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let h = match LibvirtHypervisor::connect(LibvirtOptions {
        uri: args.uri.clone(),
        disk_gb: 0,
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
    }) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("kvm_smoke: {e}");
            return ExitCode::from(2);
        }
    };
    let h = match args.virt_type.as_deref() {
        None => Ok(h),
        Some("kvm") => h.with_domain_type(DomainType::Kvm),
        Some("qemu") => h.with_domain_type(DomainType::Qemu),
        Some(other) => {
            eprintln!("kvm_smoke: --virt-type must be kvm or qemu, not {other:?}");
            return ExitCode::from(2);
        }
    };
    let h = match h {
        Ok(h) => h,
        Err(e) => {
            eprintln!("kvm_smoke: {e}");
            return ExitCode::from(2);
        }
    };
    let raw = match Connect::open(Some(&args.uri)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kvm_smoke: raw connection: {}", e.message());
            return ExitCode::from(2);
        }
    };
    let mut s = Smoke {
        h,
        raw,
        uri: args.uri.clone(),
        rows: Vec::new(),
        created: Vec::new(),
    };
    run(&mut s, &args);
    // Leave nothing behind, whatever failed.
    for uuid in std::mem::take(&mut s.created) {
        if let Err(e) = s.h.delete(uuid) {
            eprintln!("kvm_smoke: cleanup of {uuid}: {e}");
        }
    }
    s.print();
    let failed = s.rows.iter().filter(|r| !r.ok).count();
    println!(
        "{} steps, {failed} failed ({} on {})",
        s.rows.len(),
        s.h.domain_type().as_str(),
        args.uri
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
