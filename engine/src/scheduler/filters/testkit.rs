//! Small builders for table-driven filter and weigher tests (Kubernetes-style):
//! `cloud.host(host("a").with_trait("X"))`, then `cloud.run_filters(&spec)`.

use uuid::Uuid;

use crate::config::Multipliers;
use crate::model::{
    Allocation, FlavorSpec, GroupPolicy, ImageSpec, Inventory, ProviderSpec, RequestSpec,
    ServerGroupSpec,
};
use crate::state::consumers::AllocationRequest;
use crate::{Engine, EngineConfig, EngineError, Explanation, SchedulerConfig, Selection};

/// A provider spec named `name`; standard inventories are added by [`TestCloud::host`] for
/// classes it does not set.
pub fn host(name: &str) -> ProviderSpec {
    ProviderSpec::new(name)
}

/// A one-instance request for 1 VCPU in project `demo`.
pub fn spec() -> RequestSpec {
    RequestSpec::resources(&[("VCPU", 1)])
}

/// Weigher multipliers: all 0 except the named ones (`ram`, `cpu`, `disk`,
/// `instance_count`, `io_ops`, `soft_affinity`, `soft_anti_affinity`, `build_failure`).
pub fn multipliers(set: &[(&str, f64)]) -> Multipliers {
    let mut m = Multipliers {
        ram: 0.0,
        cpu: 0.0,
        disk: 0.0,
        instance_count: 0.0,
        io_ops: 0.0,
        soft_affinity: 0.0,
        soft_anti_affinity: 0.0,
        build_failure: 0.0,
    };
    for &(k, v) in set {
        let f = match k {
            "ram" => &mut m.ram,
            "cpu" => &mut m.cpu,
            "disk" => &mut m.disk,
            "instance_count" => &mut m.instance_count,
            "io_ops" => &mut m.io_ops,
            "soft_affinity" => &mut m.soft_affinity,
            "soft_anti_affinity" => &mut m.soft_anti_affinity,
            "build_failure" => &mut m.build_failure,
            other => panic!("unknown multiplier {other}"),
        };
        *f = v;
    }
    m
}

/// Key-value pairs (extra specs, image properties, metadata) in a test table.
pub type Pairs<'a> = &'a [(&'a str, &'a str)];

/// Owned strings from string slices.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An engine plus helpers.
pub struct TestCloud {
    pub engine: Engine,
}

/// What the filters let through, and why the rest were dropped.
#[derive(Debug)]
pub struct FilterOutcome {
    /// Host names that passed, sorted.
    pub passed: Vec<String>,
    /// Rejections in filter order.
    pub rejections: Vec<(String, u32)>,
}

impl TestCloud {
    pub fn new() -> Self {
        Self::with_config(EngineConfig::default())
    }

    pub fn with_config(config: EngineConfig) -> Self {
        Self {
            engine: Engine::new(config).expect("valid test config"),
        }
    }

    /// Adds a host with 16 VCPU, 32 GiB and 1 TB unless the spec sets those classes.
    pub fn host(&mut self, mut spec: ProviderSpec) -> Uuid {
        for (class, total) in [("VCPU", 16), ("MEMORY_MB", 32768), ("DISK_GB", 1000)] {
            if !spec.inventories.iter().any(|(c, _)| c == class) {
                spec.inventories.push((class.into(), Inventory::new(total)));
            }
        }
        self.engine
            .create_provider(spec)
            .expect("valid test host")
            .uuid
    }

    /// Allocates `resources` on `host` to a fresh consumer.
    pub fn use_resources(&self, host: Uuid, resources: &[(&str, u64)]) -> Uuid {
        let consumer = Uuid::new_v4();
        self.engine
            .replace_allocations(
                &consumer,
                AllocationRequest {
                    consumer_generation: None,
                    project_id: "p".into(),
                    user_id: "u".into(),
                    allocations: vec![Allocation {
                        provider: host,
                        resources: resources.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
                    }],
                },
            )
            .expect("test allocation fits");
        consumer
    }

    /// Runs the filters (a dry run) and reports who passed.
    pub fn run_filters(&self, spec: &RequestSpec) -> FilterOutcome {
        self.try_filters(spec).expect("valid request")
    }

    /// Like `run_filters`, but returns request errors.
    pub fn try_filters(&self, spec: &RequestSpec) -> Result<FilterOutcome, EngineError> {
        let e = self.engine.explain(spec, usize::MAX)?;
        let mut passed: Vec<String> = e.ranked.into_iter().map(|r| r.host.name).collect();
        passed.sort();
        assert_eq!(passed.len() as u32, e.passed);
        assert_eq!(
            e.hosts,
            e.passed + e.rejections.iter().map(|(_, n)| n).sum::<u32>(),
            "every host accounted for"
        );
        Ok(FilterOutcome {
            passed,
            rejections: e.rejections,
        })
    }
}

impl TestCloud {
    /// An engine with the default config changed by `f`.
    pub fn with_scheduler(f: impl FnOnce(&mut SchedulerConfig)) -> Self {
        let mut config = EngineConfig::default();
        f(&mut config.scheduler);
        Self::with_config(config)
    }

    /// A host's uuid by name.
    pub fn uuid(&self, name: &str) -> Uuid {
        self.engine
            .resolve_host(name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Creates a flavor of 1 VCPU, 512 MiB and no disk with `extra_specs`; returns its name.
    pub fn flavor(&self, name: &str, extra_specs: &[(&str, &str)]) -> String {
        self.engine
            .create_flavor(FlavorSpec {
                id: None,
                name: name.into(),
                vcpus: 1,
                ram_mb: 512,
                disk_gb: 0,
                extra_specs: extra_specs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .expect("valid test flavor");
        name.to_string()
    }

    /// Creates an image with `properties`; returns its id.
    pub fn image(&self, name: &str, properties: &[(&str, &str)]) -> Uuid {
        self.engine
            .create_image(ImageSpec {
                id: None,
                name: name.into(),
                properties: properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .expect("valid test image")
            .id
    }

    /// Creates a server group; returns its id.
    pub fn group(&self, name: &str, policy: GroupPolicy, max_server_per_host: Option<u32>) -> Uuid {
        self.engine
            .create_group(ServerGroupSpec {
                id: None,
                name: name.into(),
                policy,
                max_server_per_host,
                project_id: "demo".into(),
            })
            .expect("valid test group")
            .id
    }

    /// Places `spec` and claims (panics on failure).
    pub fn place(&self, spec: &RequestSpec) -> Vec<Selection> {
        self.engine
            .select_destinations(spec)
            .unwrap_or_else(|e| panic!("placement of {spec:?} failed: {e}"))
    }

    /// Places one instance of `spec` on the host named `host` (via `force_hosts`); returns
    /// the consumer.
    pub fn place_on(&self, host: &str, spec: &RequestSpec) -> Uuid {
        let mut s = spec.clone();
        s.num_instances = 1;
        s.force_hosts = vec![host.to_string()];
        let sel = self.place(&s);
        assert_eq!(sel[0].host.name, host);
        sel[0].consumer
    }

    /// A dry run over every host, with its weights checked by [`Self::check_weights`].
    pub fn explain(&self, spec: &RequestSpec) -> Explanation {
        let e = self
            .engine
            .explain(spec, usize::MAX)
            .expect("valid request");
        self.check_weights(&e);
        e
    }

    /// Host names, best first.
    pub fn ranking(&self, spec: &RequestSpec) -> Vec<String> {
        self.explain(spec)
            .ranked
            .into_iter()
            .map(|r| r.host.name)
            .collect()
    }

    /// Used amount of `class` on `host`.
    pub fn used(&self, host: Uuid, class: &str) -> u64 {
        self.engine
            .get_provider(&host)
            .expect("host exists")
            .usages
            .iter()
            .find(|u| u.class == class)
            .map_or(0, |u| u.used)
    }

    /// Checks Nova's weighing rule on a full ranking: per weigher, `normalized` is
    /// `(raw − min) / (max − min)` over the candidates (0 when all are equal), so it lies in
    /// [0, 1]; `weighted = normalized × multiplier`; a host's weight is the sum; the ranking
    /// is best first.
    pub fn check_weights(&self, e: &Explanation) {
        let mult = |name: &str| {
            self.engine
                .weighers
                .iter()
                .find(|w| w.name() == name)
                .map(|w| w.multiplier())
                .unwrap_or_else(|| panic!("unknown weigher {name}"))
        };
        for pair in e.ranked.windows(2) {
            assert!(pair[0].weight >= pair[1].weight, "ranked best first: {e:?}");
        }
        let all = e.ranked.len() as u32 == e.passed;
        for r in &e.ranked {
            let mut sum = 0.0;
            for (w, c) in r.contributions.iter().enumerate() {
                assert!(
                    (0.0..=1.0).contains(&c.normalized),
                    "{}: {c:?} not normalised",
                    r.host.name
                );
                assert_eq!(c.weighted, c.normalized * mult(c.weigher), "{c:?}");
                sum += c.weighted;
                if all {
                    let raws = e.ranked.iter().map(|o| {
                        assert_eq!(
                            o.contributions[w].weigher, c.weigher,
                            "same weighers per host"
                        );
                        o.contributions[w].raw
                    });
                    let (lo, hi) = raws.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                        (lo.min(x), hi.max(x))
                    });
                    let want = if hi > lo {
                        (c.raw - lo) / (hi - lo)
                    } else {
                        0.0
                    };
                    assert!((c.normalized - want).abs() < 1e-12, "{c:?} vs {want}");
                }
            }
            assert!(
                (r.weight - sum).abs() < 1e-9,
                "{}: weight {} is not the sum {sum}",
                r.host.name,
                r.weight
            );
        }
    }
}
