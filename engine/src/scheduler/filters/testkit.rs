//! Small builders for table-driven filter and weigher tests (Kubernetes-style):
//! `cloud.host(host("a").with_trait("X"))`, then `cloud.run_filters(&spec)`.

use uuid::Uuid;

use crate::model::{Allocation, Inventory, ProviderSpec, RequestSpec};
use crate::state::consumers::AllocationRequest;
use crate::{Engine, EngineConfig, EngineError};

/// A provider spec named `name`; standard inventories are added by [`TestCloud::host`] for
/// classes it does not set.
pub fn host(name: &str) -> ProviderSpec {
    ProviderSpec::new(name)
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
