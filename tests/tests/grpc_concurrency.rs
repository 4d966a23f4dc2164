//! 64 concurrent clients, each on its own HTTP/2 connection, race to claim a tight cloud
//! through `SelectDestinations` (some in an anti-affinity group with
//! `max_server_per_host`, some asking for two instances at once, some releasing what they
//! got), and afterwards the books must balance: no provider over capacity, the usage of
//! every provider equal to what the successful claims still hold, every consumer's
//! allocations as claimed, and the group's policy intact. The server runs four serving
//! threads, so the connections are spread over threads that claim at the same time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth_proto::v1::placement_client::PlacementClient;
use berth_proto::v1::scheduler_client::SchedulerClient;
use berth_tests::v1 as pb;
use berth_tests::*;
use prost::Message as _;
use tonic::Code;

const HOSTS: usize = 10;
const CLIENTS: usize = 64;
const ATTEMPTS: usize = 5;
/// Per instance; a host fits exactly 8.
const INSTANCE: [(&str, u64); 3] = [("VCPU", 2), ("MEMORY_MB", 2048), ("DISK_GB", 20)];
const GROUP_MAX_PER_HOST: u32 = 2;

/// One instance a client holds at the end.
#[derive(Debug, Clone)]
struct Held {
    consumer: String,
    host: String,
    in_group: bool,
}

#[derive(Debug, Default)]
struct ClientReport {
    held: Vec<Held>,
    claimed: usize,
    released: usize,
    no_valid_host: usize,
}

async fn client(
    server_addr: std::net::SocketAddr,
    token: String,
    id: usize,
    group: String,
) -> Result<ClientReport, String> {
    let channel = connect(server_addr)
        .await
        .map_err(|e| format!("client {id}: connect: {e}"))?;
    let mut s = SchedulerClient::new(with_token(channel, &token));
    let mut report = ClientReport::default();
    let in_group = id.is_multiple_of(4);
    let count = if id % 8 == 1 { 2 } else { 1 };
    for attempt in 0..ATTEMPTS {
        let mut spec = spec(&INSTANCE, &format!("proj-{}", id % 3));
        spec.num_instances = count;
        if in_group {
            spec.group = group.clone();
        }
        match s
            .select_destinations(pb::SelectDestinationsRequest { spec: Some(spec) })
            .await
        {
            Ok(resp) => {
                let sels = resp.into_inner().selections;
                if sels.len() != count as usize {
                    return Err(format!(
                        "client {id}: {} selections for {count}",
                        sels.len()
                    ));
                }
                for sel in sels {
                    let want: Vec<pb::ResourceAmount> =
                        INSTANCE.iter().map(|(c, n)| amount(c, *n)).collect();
                    if sel.allocations.len() != 1
                        || sel.allocations[0].provider_uuid != sel.host_uuid
                        || sel.allocations[0].resources != want
                    {
                        return Err(format!("client {id}: odd selection {sel:?}"));
                    }
                    report.claimed += 1;
                    report.held.push(Held {
                        consumer: sel.consumer_uuid,
                        host: sel.host_uuid,
                        in_group,
                    });
                }
            }
            Err(st) if st.code() == Code::ResourceExhausted => {
                pb::NoValidHostDetail::decode(st.details())
                    .map_err(|e| format!("client {id}: undecodable NoValidHostDetail: {e}"))?;
                report.no_valid_host += 1;
            }
            Err(st) => return Err(format!("client {id}: unexpected {st:?}")),
        }
        // Churn: every third client gives back its oldest instance after odd attempts.
        if id.is_multiple_of(3) && attempt % 2 == 1 && !report.held.is_empty() {
            let h = report.held.remove(0);
            s.release(pb::ReleaseRequest {
                consumer_uuid: h.consumer.clone(),
            })
            .await
            .map_err(|e| format!("client {id}: release {}: {e:?}", h.consumer))?;
            report.released += 1;
        }
    }
    Ok(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_overcommit() {
    let server = TestServer::start_with(
        berth_engine::EngineConfig::default(),
        berth_engine::api::ServerConfig {
            threads: 4,
            ..Default::default()
        },
    )
    .await;
    let mut p: PlacementClient<_> = server.placement.clone();
    let mut c = server.catalog.clone();
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        hosts.push(
            create_provider(
                &mut p,
                provider_request(&format!("tight-{i}"), host_inventories(16, 16384, 160)),
            )
            .await
            .uuid,
        );
    }
    let group = c
        .create_server_group(pb::CreateServerGroupRequest {
            name: "spread".into(),
            policy: pb::ServerGroupPolicy::AntiAffinity as i32,
            max_server_per_host: GROUP_MAX_PER_HOST,
            project_id: "proj-0".into(),
            ..Default::default()
        })
        .await
        .expect("group")
        .into_inner()
        .server_group
        .expect("group")
        .id;

    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        tasks.spawn(client(
            server.addr,
            server.admin_token.clone(),
            id,
            group.clone(),
        ));
    }
    let reports = tokio::time::timeout(Duration::from_secs(60), async {
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.expect("client task did not panic"));
        }
        out
    })
    .await
    .expect("clients finish within 60 s");
    let mut held: Vec<Held> = Vec::new();
    let (mut claimed, mut released, mut nvh) = (0, 0, 0);
    for r in reports {
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        claimed += r.claimed;
        released += r.released;
        nvh += r.no_valid_host;
        held.extend(r.held);
    }
    println!(
        "{CLIENTS} clients: {claimed} instances claimed, {released} released, {nvh} no valid host, {} held",
        claimed - released
    );
    // The cloud is tight: there were more asks than room, so both outcomes happened.
    assert!(claimed >= HOSTS * 8 / 2, "only {claimed} claims succeeded");
    assert!(
        nvh > 0,
        "the cloud never ran out: the test is not tight enough"
    );
    assert!(released > 0);
    assert_eq!(claimed - released, held.len());
    let consumers: BTreeSet<&str> = held.iter().map(|h| h.consumer.as_str()).collect();
    assert_eq!(
        consumers.len(),
        held.len(),
        "every claim has its own consumer"
    );

    // Per provider: within capacity, and exactly the held claims' sum.
    let mut per_host: BTreeMap<&str, u64> = BTreeMap::new();
    for h in &held {
        *per_host.entry(h.host.as_str()).or_default() += 1;
    }
    let mut total_used: BTreeMap<String, u64> = BTreeMap::new();
    for host in &hosts {
        let u = provider_usages(&mut p, host).await;
        let n = per_host.get(host.as_str()).copied().unwrap_or(0);
        for usage in &u.usages {
            assert!(
                usage.used <= usage.capacity,
                "{host} over capacity: {usage:?}"
            );
            let per_instance = INSTANCE
                .iter()
                .find(|(c, _)| *c == usage.resource_class)
                .map_or(0, |(_, a)| *a);
            assert_eq!(
                usage.used,
                n * per_instance,
                "{host}: {} used, {n} instances held there",
                usage.resource_class
            );
            *total_used.entry(usage.resource_class.clone()).or_default() += usage.used;
        }
        assert_eq!(
            u64::from(get_provider(&mut p, host).await.instances),
            n,
            "{host} instance count"
        );
    }
    for (class, per_instance) in INSTANCE {
        assert_eq!(
            total_used[class],
            held.len() as u64 * per_instance,
            "sum of successful claims == total usage of {class}"
        );
    }
    // Each held consumer's allocations are what it was given; released ones are gone.
    for h in &held {
        let a = allocations(&mut p, &h.consumer).await;
        assert_eq!(a.allocations.len(), 1);
        assert_eq!(a.allocations[0].provider_uuid, h.host);
    }
    // Project usages add up to the same.
    let mut instances = 0;
    let mut vcpus = 0;
    for proj in 0..3 {
        let u = project_usages(&mut p, &format!("proj-{proj}")).await;
        instances += u64::from(u.instances);
        vcpus += u
            .usages
            .iter()
            .filter(|a| a.resource_class == "VCPU")
            .map(|a| a.amount)
            .sum::<u64>();
    }
    assert_eq!(instances, held.len() as u64);
    assert_eq!(vcpus, total_used["VCPU"]);

    // Anti-affinity: at most max_server_per_host members per host, and the group's view
    // (members, hosts) is exactly what the clients hold.
    let g = server
        .catalog
        .clone()
        .get_server_group(pb::GetServerGroupRequest { id: group.clone() })
        .await
        .expect("group")
        .into_inner()
        .server_group
        .expect("group");
    let members: Vec<&Held> = held.iter().filter(|h| h.in_group).collect();
    assert!(!members.is_empty(), "some group member was placed");
    let mut per_host_in_group: BTreeMap<&str, u32> = BTreeMap::new();
    for m in &members {
        *per_host_in_group.entry(m.host.as_str()).or_default() += 1;
    }
    for (host, n) in &per_host_in_group {
        assert!(
            *n <= GROUP_MAX_PER_HOST,
            "{n} members of an anti-affinity group (max {GROUP_MAX_PER_HOST}) on {host}"
        );
    }
    let want_members: BTreeSet<String> = members.iter().map(|m| m.consumer.clone()).collect();
    assert_eq!(
        g.members.iter().cloned().collect::<BTreeSet<_>>(),
        want_members
    );
    let want_hosts: BTreeSet<String> = per_host_in_group.keys().map(|h| h.to_string()).collect();
    assert_eq!(g.hosts.iter().cloned().collect::<BTreeSet<_>>(), want_hosts);
    assert_eq!(g.hosts.len(), want_hosts.len(), "each host once");
    server.shutdown().await;
}
