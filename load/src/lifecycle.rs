//! The `lifecycle-N` scenario: servers created and deleted through N simulated compute
//! nodes. Each client loops `CreateServer` (one server, a random flavor, the run's image,
//! the fleet's trait) and, once it holds more than `--window` servers, `DeleteServer` of
//! its oldest. Both calls return only when the node has spawned (deleted) the domain, so
//! each answer is checked against the host's `FakeHypervisor` right away: an ACTIVE
//! server's domain must run there, a deleted server's domain must be gone.
//!
//! The audit ([`audit`]) then lists every server of the run and, besides the usage audit
//! every scenario gets, recomputes each provider's usage from the allocations of every live
//! server, checks every ACTIVE server's domain once more and looks for domains no server
//! owns. Live servers are deleted afterwards, outside the measured phase.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Conn;
use berth_node::PowerState;
use berth_proto::v1 as pb;
use berth_proto::v1::catalog_client::CatalogClient;
use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::servers_client::ServersClient;
use uuid::Uuid;

use crate::fleet::Fleet;
use crate::{Args, FLAVORS, Report, Scope, Tally, report};

/// Counters of the clients, beside the shared [`Tally`] (whose claims are creates and
/// releases deletes).
#[derive(Default)]
struct Counters {
    error_servers: AtomicU64,
    build_retries: AtomicU64,
    domains_checked: AtomicU64,
    missing_domains: AtomicU64,
    leaked_domains: AtomicU64,
}

/// A server a client holds: uuid and host name.
type Held = (String, String);

/// Runs the clients for `--duration` [10 s] or until `--count` creates.
pub(crate) async fn run(
    channels: &[Conn],
    args: &Args,
    run_id: &str,
    fleet: &Arc<Fleet>,
) -> Result<Report, String> {
    let image = format!("load-{run_id}");
    CatalogClient::new(channels[0].clone())
        .create_image(pb::CreateImageRequest {
            name: image.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("creating image {image}: {}", s.message()))?;
    let trait_name = match fleet.scope() {
        Scope::Trait(t) => t,
        Scope::Aggregate(_) => unreachable!("a fleet's scope is its trait"),
    };
    let tally = Arc::new(Tally::default());
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let limit = args.count.unwrap_or(u64::MAX);
    let deadline = args.deadline(10.0);
    let window = args.window;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut servers = ServersClient::new(channels[c % channels.len()].clone());
        let (tally, counters, stop, next, fleet) = (
            tally.clone(),
            counters.clone(),
            stop.clone(),
            next.clone(),
            fleet.clone(),
        );
        let (run_id, image, trait_name) = (run_id.to_string(), image.clone(), trait_name.clone());
        let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_add(c as u64));
        tasks.push(tokio::spawn(async move {
            let mut create_h = report::histogram();
            let mut delete_h = report::histogram();
            let mut held: VecDeque<Held> = VecDeque::new();
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit {
                    break;
                }
                let req = pb::CreateServerRequest {
                    name: format!("load-{run_id}-{i}"),
                    flavor: FLAVORS[rng.usize(..FLAVORS.len())].0.to_string(),
                    image: image.clone(),
                    count: 1,
                    project_id: format!("load-{run_id}"),
                    user_id: "berth-load".into(),
                    request_id: Uuid::from_u128(rng.u128(..)).to_string(),
                    required_traits: vec![trait_name.clone()],
                    ..Default::default()
                };
                let t = Instant::now();
                let r = servers.create_server(req).await;
                report::record(&mut create_h, t.elapsed());
                match r {
                    Ok(resp) => {
                        for s in resp.into_inner().servers {
                            tally.claims.fetch_add(1, Ordering::Relaxed);
                            counters
                                .build_retries
                                .fetch_add(build_retries(&s), Ordering::Relaxed);
                            if s.vm_state() == pb::VmState::Active {
                                counters.domains_checked.fetch_add(1, Ordering::Relaxed);
                                if !domain_runs(&fleet, &s.host_name, &s.uuid) {
                                    counters.missing_domains.fetch_add(1, Ordering::Relaxed);
                                }
                            } else {
                                counters.error_servers.fetch_add(1, Ordering::Relaxed);
                                tally.count(&format!("CreateServer vm_state={:?}", s.vm_state()));
                            }
                            held.push_back((s.uuid, s.host_name));
                        }
                    }
                    Err(e) => tally.record_error("CreateServer", &e),
                }
                while held.len() > window {
                    let Some(server) = held.pop_front() else {
                        break;
                    };
                    delete(
                        &mut servers,
                        &server,
                        &fleet,
                        &tally,
                        &counters,
                        &mut delete_h,
                    )
                    .await;
                }
            }
            (create_h, delete_h, held)
        }));
    }
    let progress = report::Progress::start_labelled(
        "servers",
        crate::tally_claims(&tally),
        args.progress() && (args.count.is_some() || args.duration_or(10.0) > 3.0),
    );
    while start.elapsed() < deadline && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut create = report::histogram();
    let mut delete = report::histogram();
    for t in tasks {
        let (c, d, _held) = t.await.map_err(|e| e.to_string())?;
        create.add(&c).map_err(|e| e.to_string())?;
        delete.add(&d).map_err(|e| e.to_string())?;
    }
    progress.stop();
    let elapsed = start.elapsed().as_secs_f64();
    let mut report = tally.report(
        elapsed,
        vec![
            report::summary("CreateServer", &create),
            report::summary("DeleteServer", &delete),
        ],
    );
    report.servers = Some(report::ServerStats {
        created: report.claims,
        error_servers: counters.error_servers.load(Ordering::Relaxed),
        build_retries: counters.build_retries.load(Ordering::Relaxed),
        deleted: report.releases,
        window,
        domains_checked: counters.domains_checked.load(Ordering::Relaxed),
        missing_domains: counters.missing_domains.load(Ordering::Relaxed),
        leaked_domains: counters.leaked_domains.load(Ordering::Relaxed),
        live_servers: 0,
    });
    Ok(report)
}

/// Deletes one server and checks that its host no longer has the domain.
async fn delete(
    servers: &mut ServersClient<Conn>,
    (uuid, host): &Held,
    fleet: &Fleet,
    tally: &Tally,
    counters: &Counters,
    h: &mut hdrhistogram::Histogram<u64>,
) {
    let t = Instant::now();
    let r = servers
        .delete_server(pb::DeleteServerRequest {
            uuid: uuid.clone(),
            request_id: Uuid::new_v4().to_string(),
        })
        .await;
    report::record(h, t.elapsed());
    match r {
        Ok(_) => {
            tally.releases.fetch_add(1, Ordering::Relaxed);
            let gone = Uuid::parse_str(uuid)
                .map(|u| fleet.domain_state(host, u).is_none())
                .unwrap_or(true);
            if !gone {
                counters.leaked_domains.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => tally.record_error("DeleteServer", &e),
    }
}

/// Whether host `host` of the fleet runs a domain for server `uuid`.
fn domain_runs(fleet: &Fleet, host: &str, uuid: &str) -> bool {
    Uuid::parse_str(uuid)
        .ok()
        .and_then(|u| fleet.domain_state(host, u))
        == Some(PowerState::Running)
}

/// Build attempts beyond the first, from the create record: the engine ends a successful
/// create's message with `(attempt N of M)`.
fn build_retries(s: &pb::Server) -> u64 {
    let Some(create) = s.actions.iter().find(|a| a.action == "create") else {
        return 0;
    };
    let Some(rest) = create.message.rsplit("(attempt ").next() else {
        return 0;
    };
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok())
        .map_or(0, |n| n.saturating_sub(1))
}

/// The lifecycle audit, after the usage audit and before the fleet stops: every server of
/// the run, its domain and its allocations against the providers' usage; then deletes the
/// servers still alive.
pub(crate) async fn audit(
    channels: &[Conn],
    run_id: &str,
    fleet: &Fleet,
    scope: &Scope,
    report: &mut Report,
) -> Result<(), String> {
    let mut servers = ServersClient::new(channels[0].clone());
    let mut placement = PlacementClient::new(channels[0].clone());
    let mut live = Vec::new();
    let mut token = String::new();
    loop {
        let r = servers
            .list_servers(pb::ListServersRequest {
                project_id: format!("load-{run_id}"),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("audit: listing servers: {}", s.message()))?
            .into_inner();
        live.extend(r.servers);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let stats = report.servers.get_or_insert_with(Default::default);
    stats.live_servers = live.len() as u64;
    // Every ACTIVE server runs on its host.
    for s in live.iter().filter(|s| s.vm_state() == pb::VmState::Active) {
        stats.domains_checked += 1;
        if !domain_runs(fleet, &s.host_name, &s.uuid) {
            stats.missing_domains += 1;
        }
    }
    // No host runs a domain that no live server owns.
    let owned: HashSet<&str> = live.iter().map(|s| s.uuid.as_str()).collect();
    for (_, hypervisor) in fleet.hypervisors() {
        let domains = berth_node::Hypervisor::list_domains(&*hypervisor)
            .map_err(|e| format!("audit: listing a fake host's domains: {e}"))?;
        stats.leaked_domains += domains
            .iter()
            .filter(|d| !owned.contains(d.uuid.to_string().as_str()))
            .count() as u64;
    }
    // Each provider's usage is the sum of the live servers' allocations on it.
    let mut recomputed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in &live {
        let allocations = match placement
            .get_allocations(pb::GetAllocationsRequest {
                consumer_uuid: s.uuid.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner().allocations,
            // A server in ERROR holds nothing and may be no consumer at all.
            Err(e) if e.code() == tonic::Code::NotFound => Vec::new(),
            Err(e) => return Err(format!("audit: allocations of {}: {}", s.uuid, e.message())),
        };
        for a in allocations {
            for r in a.resources {
                *recomputed
                    .entry((a.provider_uuid.clone(), r.resource_class))
                    .or_default() += r.amount;
            }
        }
    }
    let mut mismatches = 0;
    for p in crate::list_providers(&channels[0], scope).await? {
        for u in &p.usages {
            let key = (p.uuid.clone(), u.resource_class.clone());
            if recomputed.remove(&key).unwrap_or(0) != u.used {
                mismatches += 1;
            }
        }
    }
    // Allocations on providers outside the fleet, or of classes they do not report.
    mismatches += recomputed.len() as u64;
    report.audit.allocation_mismatches = Some(mismatches);
    // Clean up, so a shared engine (--engine) is left as it was found.
    for s in &live {
        let _ = servers
            .delete_server(pb::DeleteServerRequest {
                uuid: s.uuid.clone(),
                request_id: Uuid::new_v4().to_string(),
            })
            .await;
    }
    Ok(())
}
