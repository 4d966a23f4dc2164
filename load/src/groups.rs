//! The `groups-N` scenario: place `--count` instances and keep them — a quarter pinned to
//! an availability zone, a tenth in anti-affinity groups (5 members each), a twentieth in
//! soft-anti-affinity groups, a twentieth in affinity groups of 3 — then audit every
//! group's policy through the Catalog API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::Conn;
use berth_proto::v1 as pb;
use berth_proto::v1::catalog_client::CatalogClient;

use crate::{Args, FLAVORS, Report, Sched, Tally, report, spec, tally_claims};

/// Runs the placements.
pub async fn run(
    channels: &[Conn],
    scheds: &[Sched],
    args: &Args,
    run_id: &str,
) -> Result<Report, String> {
    let count = args.count.unwrap_or(10_000);
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut catalog = CatalogClient::new(channels[0].clone());
    // One group per 5 anti-affine, 3 affine, 20 soft members.
    let groups = [
        (pb::ServerGroupPolicy::AntiAffinity, 10u64, 5u64),
        (pb::ServerGroupPolicy::SoftAntiAffinity, 20, 20),
        (pb::ServerGroupPolicy::Affinity, 20, 3),
    ];
    let mut group_ids: Vec<Vec<String>> = Vec::new();
    for (g, (policy, every, size)) in groups.iter().enumerate() {
        let n = (count / every).div_ceil(*size).max(1);
        let mut ids = Vec::with_capacity(n as usize);
        for i in 0..n {
            let r = catalog
                .create_server_group(pb::CreateServerGroupRequest {
                    name: format!("load-{run_id}-g{g}-{i}"),
                    policy: *policy as i32,
                    project_id: format!("load-{run_id}"),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("creating group: {}", s.message()))?;
            ids.push(
                r.into_inner()
                    .server_group
                    .map(|g| g.id)
                    .unwrap_or_default(),
            );
        }
        group_ids.push(ids);
    }
    let group_ids = Arc::new(group_ids);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut sched = scheds[c % scheds.len()].clone();
        let (tally, next, stop, group_ids) =
            (tally.clone(), next.clone(), stop.clone(), group_ids.clone());
        let run_id = run_id.to_string();
        let seed = args.seed;
        tasks.push(tokio::spawn(async move {
            let mut h = report::histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut rng =
                    fastrand::Rng::with_seed(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut s = spec(FLAVORS[rng.usize(..FLAVORS.len())].0, &run_id);
                match i % 20 {
                    0 | 1 => {
                        s.group = group_ids[0][(i / 10 / 5) as usize % group_ids[0].len()].clone()
                    }
                    2 => {
                        s.group = group_ids[1][(i / 20 / 20) as usize % group_ids[1].len()].clone()
                    }
                    3 => s.group = group_ids[2][(i / 20 / 3) as usize % group_ids[2].len()].clone(),
                    4..=8 => s.availability_zone = format!("az{}", rng.usize(..4)),
                    _ => {}
                }
                let t = Instant::now();
                let r = sched.select(s).await;
                report::record(&mut h, t.elapsed());
                match r {
                    Ok(_) => {
                        tally.claims.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tally.record_error("SelectDestinations", &e),
                }
            }
            h
        }));
    }
    let progress = report::Progress::start(tally_claims(&tally), args.progress());
    let mut sel = report::histogram();
    for t in tasks {
        sel.add(&t.await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    progress.stop();
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    Ok(tally.report(elapsed, vec![report::summary("SelectDestinations", &sel)]))
}

/// Counts groups whose hard policy is broken: anti-affinity with two members on one host,
/// affinity spread over more than one host.
pub async fn audit(channel: &Conn, run_id: &str) -> Result<u64, String> {
    let mut catalog = CatalogClient::new(channel.clone());
    let mut token = String::new();
    let mut violations = 0;
    loop {
        let r = catalog
            .list_server_groups(pb::ListServerGroupsRequest {
                page_size: 1000,
                page_token: token.clone(),
            })
            .await
            .map_err(|s| format!("audit: listing groups: {}", s.message()))?
            .into_inner();
        for g in r
            .server_groups
            .iter()
            .filter(|g| g.name.starts_with(&format!("load-{run_id}-")))
        {
            let mut hosts = g.hosts.clone();
            hosts.sort();
            let distinct = {
                let mut d = hosts.clone();
                d.dedup();
                d.len()
            };
            let broken = match g.policy() {
                pb::ServerGroupPolicy::AntiAffinity => {
                    distinct < g.members.len() && g.max_server_per_host <= 1
                }
                pb::ServerGroupPolicy::Affinity => distinct > 1,
                _ => false,
            };
            violations += u64::from(broken);
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    Ok(violations)
}
