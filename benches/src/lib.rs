//! Shared synthetic-cloud builders for the benchmarks and the demo.
//!
//! [`CloudSpec::build`] makes a seeded, reproducible cloud: hosts of four sizes spread over
//! availability zones, aggregates and `CUSTOM_T*` traits, pre-filled to 30–60% of their
//! RAM (with CPU and disk following), a few flavors and some server groups that already
//! have members. [`RequestGen`] then draws a realistic request mix against it: half of the
//! requests carry required traits or `member_of`, a share name an availability zone, and
//! 10% belong to server groups of every policy.
//!
//! Everything random comes from one `fastrand` seed, so two builds with the same spec are
//! identical (host uuids included).

use berth_engine::model::{
    Allocation, FlavorSpec, GroupPolicy, Inventory, ProviderSpec, RequestSpec, ServerGroupSpec,
};
use berth_engine::{AllocationRequest, Engine, EngineConfig, EngineError, Result};
use uuid::Uuid;

/// A host size: the cloud mixes four.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostClass {
    /// Short name, also the host-name prefix.
    pub name: &'static str,
    /// Physical cores (VCPU inventory total; overcommitted 4×).
    pub vcpus: u64,
    /// RAM in GiB (4 GiB of it reserved for the host).
    pub ram_gib: u64,
    /// Local disk in GB.
    pub disk_gb: u64,
    /// Share of the hosts.
    pub share: f64,
}

/// The four host sizes and their shares of the fleet.
pub const HOST_CLASSES: [HostClass; 4] = [
    HostClass {
        name: "small",
        vcpus: 16,
        ram_gib: 64,
        disk_gb: 500,
        share: 0.30,
    },
    HostClass {
        name: "medium",
        vcpus: 32,
        ram_gib: 128,
        disk_gb: 1000,
        share: 0.35,
    },
    HostClass {
        name: "large",
        vcpus: 64,
        ram_gib: 256,
        disk_gb: 2000,
        share: 0.25,
    },
    HostClass {
        name: "xlarge",
        vcpus: 128,
        ram_gib: 512,
        disk_gb: 4000,
        share: 0.10,
    },
];

/// VCPU allocation ratio of every host.
pub const CPU_RATIO: f64 = 4.0;
/// RAM reserved for the hypervisor on every host, MiB.
pub const RAM_RESERVED_MB: u64 = 4096;

/// A flavor of the synthetic cloud: `(name, vcpus, ram_mb, disk_gb, share of requests)`.
pub const FLAVORS: [(&str, u64, u64, u64, f64); 5] = [
    ("m1.small", 1, 2048, 20, 0.35),
    ("m1.medium", 2, 4096, 40, 0.30),
    ("m1.large", 4, 8192, 80, 0.20),
    ("m1.xlarge", 8, 16384, 160, 0.10),
    ("m1.2xlarge", 16, 32768, 320, 0.05),
];

/// The project that owns the pre-filled load.
pub const PREFILL_PROJECT: &str = "prefill";

/// What to build.
#[derive(Debug, Clone)]
pub struct CloudSpec {
    /// Hosts.
    pub hosts: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Availability zones (`az-0`…).
    pub azs: usize,
    /// Aggregates (`agg-0`…); each host is in 1–3 of them.
    pub aggregates: usize,
    /// Traits (`CUSTOM_T0`…): the first 10 are on ~50% of hosts, the next 20 on ~20%, the
    /// rest on ~5%.
    pub traits: usize,
    /// Pre-filled share of each host's RAM, drawn uniformly from this range.
    pub fill: (f64, f64),
    /// Server groups, in equal numbers per policy (0 = `clamp(hosts / 100, 8, 64)`).
    pub groups: usize,
    /// Members each group gets while the cloud is built (so group filters and weighers
    /// have something to look at).
    pub seed_members: u32,
    /// Share of hosts carrying `COMPUTE_STATUS_DISABLED`.
    pub disabled: f64,
    /// Share of hosts marked down.
    pub down: f64,
    /// Engine configuration.
    pub config: EngineConfig,
}

impl Default for CloudSpec {
    fn default() -> Self {
        Self {
            hosts: 1000,
            seed: 42,
            azs: 4,
            aggregates: 20,
            traits: 50,
            fill: (0.3, 0.6),
            groups: 0,
            seed_members: 2,
            disabled: 0.01,
            down: 0.005,
            config: EngineConfig::default(),
        }
    }
}

/// A host as the builder made it.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// Provider uuid.
    pub uuid: Uuid,
    /// Name (`medium-000042`).
    pub name: String,
    /// Index into [`HOST_CLASSES`].
    pub class: usize,
    /// Zone name.
    pub az: String,
}

/// A server group as the builder made it.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Name (`anti-affinity-3`).
    pub name: String,
    /// Policy.
    pub policy: GroupPolicy,
    /// `max_server_per_host` (1 unless anti-affinity).
    pub max_per_host: u32,
    /// Zone every member goes to, if pinned.
    pub az: Option<String>,
    /// Flavor of every member.
    pub flavor: String,
    /// Most members [`RequestGen`] gives the group (`None` = no limit). Hard affinity puts
    /// every member on one host, so those groups stay small; anti-affinity groups stay
    /// well below the hosts they may use.
    pub member_cap: Option<u32>,
    /// Members placed while building.
    pub seeded: u32,
}

/// A built cloud.
pub struct Cloud {
    /// The engine, filled.
    pub engine: Engine,
    /// What was built.
    pub spec: CloudSpec,
    /// Every host, in creation order.
    pub hosts: Vec<HostInfo>,
    /// Flavor names, as in [`FLAVORS`].
    pub flavors: Vec<String>,
    /// Zone names.
    pub azs: Vec<String>,
    /// Aggregate names.
    pub aggregates: Vec<String>,
    /// Trait names.
    pub traits: Vec<String>,
    /// Server groups.
    pub groups: Vec<GroupInfo>,
    /// Consumers created by the pre-fill.
    pub prefill_consumers: usize,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("hosts", &self.hosts.len())
            .field("groups", &self.groups.len())
            .field("prefill_consumers", &self.prefill_consumers)
            .finish_non_exhaustive()
    }
}

/// A uuid (version 4 layout) drawn from `rng`, so seeded builds are reproducible.
pub fn seeded_uuid(rng: &mut fastrand::Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid()
}

/// Index drawn from `weights` (which need not sum to 1).
fn weighted(rng: &mut fastrand::Rng, weights: impl Iterator<Item = f64> + Clone) -> usize {
    let total: f64 = weights.clone().sum();
    let mut x = rng.f64() * total;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        if x < w {
            return i;
        }
        x -= w;
        last = i;
    }
    last
}

fn uniform(rng: &mut fastrand::Rng, (lo, hi): (f64, f64)) -> f64 {
    lo + rng.f64() * (hi - lo)
}

impl CloudSpec {
    /// A default spec of `hosts` hosts with `seed`.
    pub fn new(hosts: usize, seed: u64) -> Self {
        Self {
            hosts,
            seed,
            ..Self::default()
        }
    }

    fn group_count(&self) -> usize {
        if self.groups > 0 {
            self.groups
        } else {
            (self.hosts / 100).clamp(8, 64)
        }
    }

    /// Builds the cloud. Errors come from the engine (they would be bugs here).
    pub fn build(&self) -> Result<Cloud> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let engine = Engine::new(self.config.clone())?;
        let azs: Vec<String> = (0..self.azs.max(1)).map(|i| format!("az-{i}")).collect();
        let aggregates: Vec<String> = (0..self.aggregates).map(|i| format!("agg-{i}")).collect();
        let traits: Vec<String> = (0..self.traits).map(|i| format!("CUSTOM_T{i}")).collect();
        let trait_p = |k: usize| match k {
            0..10 => 0.5,
            10..30 => 0.2,
            _ => 0.05,
        };

        let mut hosts = Vec::with_capacity(self.hosts);
        let mut prefill_consumers = 0;
        for i in 0..self.hosts {
            let class = weighted(&mut rng, HOST_CLASSES.iter().map(|c| c.share));
            let hc = &HOST_CLASSES[class];
            let az = azs[rng.usize(..azs.len())].clone();
            let mut spec = ProviderSpec::new(format!("{}-{i:06}", hc.name))
                .uuid(seeded_uuid(&mut rng))
                .az(&az)
                .inventory("VCPU", Inventory::new(hc.vcpus).ratio(CPU_RATIO))
                .inventory(
                    "MEMORY_MB",
                    Inventory::new(hc.ram_gib * 1024).reserved(RAM_RESERVED_MB),
                )
                .inventory("DISK_GB", Inventory::new(hc.disk_gb));
            for (k, t) in traits.iter().enumerate() {
                if rng.f64() < trait_p(k) {
                    spec.traits.push(t.clone());
                }
            }
            if rng.f64() < self.disabled {
                spec.traits.push(berth_engine::DISABLED_TRAIT.to_string());
            }
            if !aggregates.is_empty() {
                for _ in 0..rng.usize(1..=3) {
                    let a = &aggregates[rng.usize(..aggregates.len())];
                    if !spec.aggregates.contains(a) {
                        spec.aggregates.push(a.clone());
                    }
                }
            }
            spec.arch = Some("x86_64".into());
            spec.hypervisor_type = Some("qemu".into());
            let name = spec.name.clone();
            let uuid = engine.create_provider(spec)?.uuid;
            if rng.f64() < self.down {
                engine.set_host_up(&uuid, false)?;
            }

            // Pre-fill: 1–4 consumers sharing a target usage (RAM leads, CPU and disk
            // follow with some jitter). Bulk consumers keep building 100k hosts fast.
            let fill = uniform(&mut rng, self.fill);
            let ram_cap = hc.ram_gib * 1024 - RAM_RESERVED_MB;
            let cpu_cap = (hc.vcpus as f64 * CPU_RATIO) as u64;
            let ram = (ram_cap as f64 * fill) as u64;
            let cpu = (cpu_cap as f64 * (fill * uniform(&mut rng, (0.6, 1.1))).min(0.95)) as u64;
            let disk =
                (hc.disk_gb as f64 * (fill * uniform(&mut rng, (0.5, 1.2))).min(0.95)) as u64;
            let parts = rng.u64(1..=4);
            for _ in 0..parts {
                let res: Vec<(String, u64)> =
                    [("VCPU", cpu), ("MEMORY_MB", ram), ("DISK_GB", disk)]
                        .iter()
                        .map(|(c, n)| (c.to_string(), n / parts))
                        .filter(|(_, n)| *n > 0)
                        .collect();
                if res.is_empty() {
                    continue;
                }
                engine.replace_allocations(
                    &seeded_uuid(&mut rng),
                    AllocationRequest {
                        consumer_generation: None,
                        project_id: PREFILL_PROJECT.into(),
                        user_id: "prefill".into(),
                        allocations: vec![Allocation {
                            provider: uuid,
                            resources: res,
                        }],
                    },
                )?;
                prefill_consumers += 1;
            }
            hosts.push(HostInfo {
                uuid,
                name,
                class,
                az,
            });
        }

        let mut flavors = Vec::new();
        for (name, vcpus, ram_mb, disk_gb, _) in FLAVORS {
            engine.create_flavor(FlavorSpec {
                id: None,
                name: name.into(),
                vcpus,
                ram_mb,
                disk_gb,
                extra_specs: Default::default(),
            })?;
            flavors.push(name.to_string());
        }
        let mut cloud = Cloud {
            engine,
            spec: self.clone(),
            hosts,
            flavors,
            azs,
            aggregates,
            traits,
            groups: Vec::new(),
            prefill_consumers,
        };
        cloud.make_groups(&mut rng)?;
        Ok(cloud)
    }
}

impl Cloud {
    /// Creates the server groups and places their seed members.
    fn make_groups(&mut self, rng: &mut fastrand::Rng) -> Result<()> {
        let policies = [
            GroupPolicy::AntiAffinity,
            GroupPolicy::SoftAntiAffinity,
            GroupPolicy::SoftAffinity,
            GroupPolicy::Affinity,
        ];
        let per_az = (self.hosts.len() / self.azs.len()).max(1) as u32;
        for g in 0..self.spec.group_count() {
            let policy = policies[g % policies.len()];
            let name = format!("{policy}-{}", g / policies.len());
            // Small flavors only: groups often hold many members.
            let flavor = self.flavors[rng.usize(..3.min(self.flavors.len()))].clone();
            let az = rng
                .bool()
                .then(|| self.azs[rng.usize(..self.azs.len())].clone());
            let (max_per_host, member_cap) = match policy {
                GroupPolicy::AntiAffinity => {
                    // Half the groups allow 2 per host; members stay far below the hosts
                    // of the zone, so the policy never fails for lack of hosts.
                    let m = 1 + (g / policies.len()) as u32 % 2;
                    (m, Some((per_az / 8).max(2) * m))
                }
                GroupPolicy::Affinity => (1, Some(4)),
                _ => (1, None),
            };
            self.engine.create_group(ServerGroupSpec {
                id: Some(seeded_uuid(rng)),
                name: name.clone(),
                policy,
                max_server_per_host: (policy == GroupPolicy::AntiAffinity).then_some(max_per_host),
                project_id: "groups".into(),
            })?;
            let mut info = GroupInfo {
                name,
                policy,
                max_per_host,
                az,
                flavor,
                member_cap,
                seeded: 0,
            };
            for _ in 0..self.spec.seed_members {
                let spec = group_request(&info, rng, "groups");
                match self.engine.select_destinations(&spec) {
                    Ok(_) => info.seeded += 1,
                    Err(EngineError::NoValidHost(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            self.groups.push(info);
        }
        Ok(())
    }

    /// A request generator over this cloud with `seed`.
    pub fn requests(&self, seed: u64) -> RequestGen {
        RequestGen::new(self, seed)
    }
}

fn group_request(g: &GroupInfo, rng: &mut fastrand::Rng, project: &str) -> RequestSpec {
    RequestSpec {
        flavor: Some(g.flavor.clone()),
        availability_zone: g.az.clone(),
        group: Some(g.name.clone()),
        num_instances: 1,
        instance_uuids: vec![seeded_uuid(rng)],
        project_id: project.into(),
        user_id: "user".into(),
        ..RequestSpec::default()
    }
}

/// Draws requests against a [`Cloud`]: flavors by [`FLAVORS`] share; half of the requests
/// carry 1–2 required traits or a `member_of` of 3 aggregates (a few both); `az_share`
/// name a zone; `group_share` (10%) join a server group (with the group's flavor and zone,
/// within its member cap). Every request has one instance with a seeded uuid.
#[derive(Debug, Clone)]
pub struct RequestGen {
    rng: fastrand::Rng,
    flavors: Vec<String>,
    azs: Vec<String>,
    aggregates: Vec<String>,
    traits: Vec<String>,
    groups: Vec<GroupInfo>,
    members: Vec<u32>,
    /// Share of requests with required traits or `member_of`.
    pub constrained_share: f64,
    /// Share of requests naming an availability zone.
    pub az_share: f64,
    /// Share of requests in a server group.
    pub group_share: f64,
    /// Projects requests are spread over.
    pub projects: usize,
}

impl RequestGen {
    /// A generator for `cloud`, seeded.
    pub fn new(cloud: &Cloud, seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            flavors: cloud.flavors.clone(),
            azs: cloud.azs.clone(),
            aggregates: cloud.aggregates.clone(),
            traits: cloud.traits.clone(),
            members: cloud.groups.iter().map(|g| g.seeded).collect(),
            groups: cloud.groups.clone(),
            constrained_share: 0.5,
            az_share: 0.3,
            group_share: 0.1,
            projects: 20,
        }
    }

    /// The group a request joins, if any is still open: a random one, else the first open
    /// one after it.
    fn pick_group(&mut self) -> Option<usize> {
        if self.groups.is_empty() {
            return None;
        }
        let start = self.rng.usize(..self.groups.len());
        (0..self.groups.len())
            .map(|k| (start + k) % self.groups.len())
            .find(|&g| {
                self.groups[g]
                    .member_cap
                    .is_none_or(|cap| self.members[g] < cap)
            })
    }

    /// The next request.
    pub fn next_request(&mut self) -> RequestSpec {
        let project = format!("project-{}", self.rng.usize(..self.projects.max(1)));
        if self.rng.f64() < self.group_share
            && let Some(g) = self.pick_group()
        {
            self.members[g] += 1;
            return group_request(&self.groups[g], &mut self.rng, &project);
        }
        let f = weighted(&mut self.rng, FLAVORS.iter().map(|f| f.4)).min(self.flavors.len() - 1);
        let mut spec = RequestSpec {
            flavor: Some(self.flavors[f].clone()),
            num_instances: 1,
            project_id: project,
            user_id: "user".into(),
            ..RequestSpec::default()
        };
        if self.rng.f64() < self.constrained_share {
            let kind = self.rng.u32(0..10);
            if kind < 6 && !self.traits.is_empty() {
                // Mostly common traits, sometimes a rarer one.
                let n = self.rng.usize(1..=2);
                for _ in 0..n {
                    let hi = if self.rng.f64() < 0.8 { 10 } else { 30 };
                    let t = &self.traits[self.rng.usize(..hi.min(self.traits.len()))];
                    if !spec.required_traits.contains(t) {
                        spec.required_traits.push(t.clone());
                    }
                }
            }
            if kind >= 4 && !self.aggregates.is_empty() {
                let set: Vec<String> = (0..3)
                    .map(|_| self.aggregates[self.rng.usize(..self.aggregates.len())].clone())
                    .collect();
                spec.member_of.push(set);
            }
        }
        if self.rng.f64() < self.az_share {
            spec.availability_zone = Some(self.azs[self.rng.usize(..self.azs.len())].clone());
        }
        spec.instance_uuids.push(seeded_uuid(&mut self.rng));
        spec
    }

    /// The next `n` requests.
    pub fn take(&mut self, n: usize) -> Vec<RequestSpec> {
        (0..n).map(|_| self.next_request()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_reproducibly_and_requests_place() {
        let a = CloudSpec::new(200, 7).build().unwrap();
        let b = CloudSpec::new(200, 7).build().unwrap();
        assert_eq!(a.hosts.len(), 200);
        assert!(
            a.hosts
                .iter()
                .zip(&b.hosts)
                .all(|(x, y)| x.uuid == y.uuid && x.name == y.name)
        );
        assert_eq!(a.engine.provider_count(), 200);
        assert!(a.groups.iter().all(|g| g.seeded > 0));
        let mut gen_ = a.requests(1);
        let reqs = gen_.take(400);
        let constrained = reqs
            .iter()
            .filter(|r| !r.required_traits.is_empty() || !r.member_of.is_empty())
            .count();
        let grouped = reqs.iter().filter(|r| r.group.is_some()).count();
        assert!((120..=260).contains(&constrained), "{constrained}");
        assert!((15..=70).contains(&grouped), "{grouped}");
        let placed = reqs
            .iter()
            .filter(|r| a.engine.select_destinations(r).is_ok())
            .count();
        assert!(placed > 300, "{placed} of 400 placed");
    }
}
