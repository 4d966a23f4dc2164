//! `berth.v1.Placement`: providers, inventories, traits, aggregates, classes, allocations,
//! usages, quotas and allocation candidates. Converts, calls the engine, converts back.

use std::sync::Arc;

use berth_proto::v1 as pb;
use berth_proto::v1::placement_server::Placement;
use tonic::{Request, Response, Status};

use super::convert::{
    self, allocations, allocations_pb, amounts, btree, inventory, opt_str, provider_pb, uuid,
};
use super::paging::page;
use super::scope;
use super::status::{invalid, to_status};
use crate::Engine;
use crate::auth::Scope;
use crate::model::{ProviderSpec, ProviderUpdate, RequestSpec};
use crate::state::consumers::AllocationRequest;
use crate::state::providers::ProviderFilter;

fn quota_pb(lines: Vec<crate::QuotaLine>) -> Vec<pb::QuotaLimit> {
    lines
        .into_iter()
        .map(|l| pb::QuotaLimit {
            resource: l.resource,
            limit: l.limit,
            used: l.used,
            source: l.source.as_str().to_string(),
        })
        .collect()
}

/// The Placement service.
pub struct PlacementApi {
    pub(crate) engine: Arc<Engine>,
}

type R<T> = Result<Response<T>, Status>;

/// The contract's limit on provider names, in characters (the engine's general rule for
/// names allows 255 bytes).
const MAX_PROVIDER_NAME_CHARS: usize = 200;

fn check_provider_name(name: &str) -> Result<(), Status> {
    let n = name.chars().count();
    if n > MAX_PROVIDER_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("is {n} characters long; at most {MAX_PROVIDER_NAME_CHARS}"),
        ));
    }
    Ok(())
}

/// Amounts a filter or a candidate request asks for: the contract wants each at least 1
/// and each class once (only `RequestSpec.resources` may say 0, meaning "remove"). Without
/// this, a 0 or a class given twice would come back inside candidate allocations that
/// ReplaceAllocations then refuses.
fn wanted_amounts(field: &str, v: &[pb::ResourceAmount]) -> Result<Vec<(String, u64)>, Status> {
    let out = amounts(field, v)?;
    for (i, (class, n)) in out.iter().enumerate() {
        if *n == 0 {
            return Err(invalid(
                &format!("{field}[{i}].amount"),
                "must be at least 1",
            ));
        }
        if out[..i].iter().any(|(c, _)| c == class) {
            return Err(invalid(
                &format!("{field}[{i}]"),
                format!("resource class {class} listed twice"),
            ));
        }
    }
    Ok(out)
}

impl PlacementApi {
    /// The service over `engine`, as [`serve`](super::serve) mounts it; fuzzers and
    /// in-process tests call its handlers directly.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    fn provider(&self, u: &uuid::Uuid) -> Result<crate::model::ProviderInfo, Status> {
        self.engine.get_provider(u).map_err(to_status)
    }
}

/// Read-only pre-checks that stop a request before the engine registers new names.
///
/// The engine interns new custom resource classes and traits while it validates a write
/// (`state/providers.rs`: `validated_inventories`, `validated_traits`), before its later
/// checks (other fields, a taken name or uuid, the provider generation, classes in use). A
/// request rejected by one of those would leave the names registered, visible in
/// ListResourceClasses / ListTraits and making CreateResourceClass answer ALREADY_EXISTS.
/// These run the same rules first, with the engine's field names; the engine still checks
/// everything atomically (a concurrent write between the two can still leak a name).
mod precheck {
    use std::collections::HashSet;

    use tonic::Status;

    use super::to_status;
    use crate::error::EngineError;
    use crate::model::{
        Inventory, ProviderInfo, ProviderSpec, validate_aggregate, validate_az,
        validate_class_name, validate_name, validate_trait,
    };

    pub(super) fn inventories(invs: &[(String, Inventory)]) -> Result<(), Status> {
        let mut seen = HashSet::new();
        for (i, (class, inv)) in invs.iter().enumerate() {
            validate_class_name(&format!("inventories[{i}].resource_class"), class)
                .map_err(to_status)?;
            inv.validate(&format!("inventories[{class}]"))
                .map_err(to_status)?;
            if !seen.insert(class.as_str()) {
                return Err(to_status(EngineError::invalid(
                    format!("inventories[{class}]"),
                    "resource class listed twice",
                )));
            }
        }
        Ok(())
    }

    pub(super) fn traits(traits: &[String]) -> Result<(), Status> {
        for (i, t) in traits.iter().enumerate() {
            validate_trait(&format!("traits[{i}]"), t).map_err(to_status)?;
        }
        Ok(())
    }

    pub(super) fn generation(info: &ProviderInfo, given: u64) -> Result<(), Status> {
        if info.generation != given {
            return Err(to_status(EngineError::GenerationConflict {
                kind: "resource provider",
                id: info.uuid.to_string(),
                given: given.to_string(),
                current: info.generation.to_string(),
            }));
        }
        Ok(())
    }

    /// Classes with usage that the new inventory list leaves out.
    pub(super) fn in_use(info: &ProviderInfo, invs: &[(String, Inventory)]) -> Result<(), Status> {
        for u in &info.usages {
            if u.used > 0 && !invs.iter().any(|(c, _)| *c == u.class) {
                return Err(to_status(EngineError::FailedPrecondition(format!(
                    "resource provider {} has allocations of {}; its inventory cannot be removed",
                    info.uuid, u.class
                ))));
            }
        }
        Ok(())
    }

    pub(super) fn create(engine: &crate::Engine, spec: &ProviderSpec) -> Result<(), Status> {
        let check = || -> crate::Result<()> {
            for (i, a) in spec.aggregates.iter().enumerate() {
                validate_aggregate(&format!("aggregates[{i}]"), a)?;
            }
            if let Some(az) = &spec.availability_zone {
                validate_az("availability_zone", az)?;
            }
            if let Some(a) = &spec.arch {
                validate_name("arch", a)?;
            }
            if let Some(h) = &spec.hypervisor_type {
                validate_name("hypervisor_type", h)?;
            }
            if let Some(v) = &spec.hypervisor_version
                && crate::scheduler::extra_specs_ops::parse_version(v).is_none()
            {
                return Err(EngineError::invalid(
                    "hypervisor_version",
                    format!("{v:?} is not a version like 8.2.0"),
                ));
            }
            if let Some(u) = &spec.uuid {
                if u.is_nil() {
                    return Err(EngineError::invalid(
                        "uuid",
                        "the nil uuid is not a provider id",
                    ));
                }
                if engine.index.contains_key(u) {
                    return Err(EngineError::exists("resource provider", u));
                }
            }
            if engine.names.contains_key(spec.name.as_str()) {
                return Err(EngineError::exists("resource provider named", &spec.name));
            }
            Ok(())
        };
        // The engine's order: the name, then inventories, traits and the rest.
        validate_name("name", &spec.name).map_err(to_status)?;
        inventories(&spec.inventories)?;
        traits(&spec.traits)?;
        check().map_err(to_status)
    }
}

#[tonic::async_trait]
impl Placement for PlacementApi {
    async fn create_resource_provider(
        &self,
        req: Request<pb::CreateResourceProviderRequest>,
    ) -> R<pb::CreateResourceProviderResponse> {
        let r = req.into_inner();
        check_provider_name(&r.name)?;
        let spec = ProviderSpec {
            uuid: convert::opt_uuid("uuid", &r.uuid)?,
            name: r.name,
            availability_zone: opt_str(r.availability_zone),
            traits: r.traits,
            aggregates: r.aggregates,
            inventories: r.inventories.iter().map(inventory).collect(),
            capabilities: btree(r.capabilities),
            arch: opt_str(r.arch),
            hypervisor_type: opt_str(r.hypervisor_type),
            hypervisor_version: opt_str(r.hypervisor_version),
        };
        precheck::create(&self.engine, &spec)?;
        let info = self.engine.create_provider(spec).map_err(to_status)?;
        tracing::info!(uuid = %info.uuid, name = %info.name, "resource provider created");
        Ok(Response::new(pb::CreateResourceProviderResponse {
            provider: Some(provider_pb(info)),
        }))
    }

    async fn get_resource_provider(
        &self,
        req: Request<pb::GetResourceProviderRequest>,
    ) -> R<pb::GetResourceProviderResponse> {
        let u = uuid("uuid", &req.get_ref().uuid)?;
        Ok(Response::new(pb::GetResourceProviderResponse {
            provider: Some(provider_pb(self.provider(&u)?)),
        }))
    }

    async fn list_resource_providers(
        &self,
        req: Request<pb::ListResourceProvidersRequest>,
    ) -> R<pb::ListResourceProvidersResponse> {
        let r = req.into_inner();
        let exact_name = opt_str(r.name);
        let filter = ProviderFilter {
            name_contains: exact_name.clone(),
            availability_zone: opt_str(r.availability_zone),
            required_traits: r.required_traits,
            member_of: r.member_of,
            resources: wanted_amounts("resources", &r.resources)?,
        };
        let mut all = self.engine.list_providers(&filter).map_err(to_status)?;
        // The contract's `name` is an exact match; the engine's filter is a substring.
        if let Some(n) = &exact_name {
            all.retain(|p| &p.name == n);
        }
        let (items, next) = page(all, r.page_size, &r.page_token, |p| p.uuid.to_string())?;
        Ok(Response::new(pb::ListResourceProvidersResponse {
            providers: items.into_iter().map(provider_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn update_resource_provider(
        &self,
        req: Request<pb::UpdateResourceProviderRequest>,
    ) -> R<pb::UpdateResourceProviderResponse> {
        let r = req.into_inner();
        let u = uuid("uuid", &r.uuid)?;
        if let Some(n) = &r.name {
            check_provider_name(n)?;
        }
        // An empty zone means the default zone.
        let availability_zone = r.availability_zone.map(|z| {
            if z.is_empty() {
                self.engine.config().default_availability_zone.clone()
            } else {
                z
            }
        });
        let update = ProviderUpdate {
            name: r.name,
            availability_zone,
            capabilities: r.capabilities.map(|c| btree(c.entries)),
            ..Default::default()
        };
        let info = self
            .engine
            .update_provider(&u, Some(r.generation), update)
            .map_err(to_status)?;
        Ok(Response::new(pb::UpdateResourceProviderResponse {
            provider: Some(provider_pb(info)),
        }))
    }

    async fn delete_resource_provider(
        &self,
        req: Request<pb::DeleteResourceProviderRequest>,
    ) -> R<pb::DeleteResourceProviderResponse> {
        let u = uuid("uuid", &req.get_ref().uuid)?;
        self.engine.delete_provider(&u).map_err(to_status)?;
        tracing::info!(uuid = %u, "resource provider deleted");
        Ok(Response::new(pb::DeleteResourceProviderResponse {}))
    }

    async fn get_inventories(
        &self,
        req: Request<pb::GetInventoriesRequest>,
    ) -> R<pb::GetInventoriesResponse> {
        let u = uuid("uuid", &req.get_ref().uuid)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::GetInventoriesResponse {
            generation: info.generation,
            inventories: convert::inventories_pb(&info),
        }))
    }

    async fn replace_inventories(
        &self,
        req: Request<pb::ReplaceInventoriesRequest>,
    ) -> R<pb::ReplaceInventoriesResponse> {
        let r = req.into_inner();
        let u = uuid("uuid", &r.uuid)?;
        let invs: Vec<_> = r.inventories.iter().map(inventory).collect();
        precheck::inventories(&invs)?;
        let current = self.provider(&u)?;
        precheck::generation(&current, r.generation)?;
        precheck::in_use(&current, &invs)?;
        self.engine
            .set_inventories(&u, Some(r.generation), &invs)
            .map_err(to_status)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::ReplaceInventoriesResponse {
            generation: info.generation,
            inventories: convert::inventories_pb(&info),
        }))
    }

    async fn get_traits(&self, req: Request<pb::GetTraitsRequest>) -> R<pb::GetTraitsResponse> {
        let u = uuid("uuid", &req.get_ref().uuid)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::GetTraitsResponse {
            generation: info.generation,
            traits: info.traits,
        }))
    }

    async fn replace_traits(
        &self,
        req: Request<pb::ReplaceTraitsRequest>,
    ) -> R<pb::ReplaceTraitsResponse> {
        let r = req.into_inner();
        let u = uuid("uuid", &r.uuid)?;
        precheck::traits(&r.traits)?;
        precheck::generation(&self.provider(&u)?, r.generation)?;
        self.engine
            .set_traits(&u, Some(r.generation), &r.traits)
            .map_err(to_status)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::ReplaceTraitsResponse {
            generation: info.generation,
            traits: info.traits,
        }))
    }

    async fn list_traits(&self, req: Request<pb::ListTraitsRequest>) -> R<pb::ListTraitsResponse> {
        let prefix = &req.get_ref().prefix;
        let traits = self
            .engine
            .list_traits()
            .into_iter()
            .filter(|t| t.starts_with(prefix.as_str()))
            .collect();
        Ok(Response::new(pb::ListTraitsResponse { traits }))
    }

    async fn get_aggregates(
        &self,
        req: Request<pb::GetAggregatesRequest>,
    ) -> R<pb::GetAggregatesResponse> {
        let u = uuid("uuid", &req.get_ref().uuid)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::GetAggregatesResponse {
            generation: info.generation,
            aggregates: info.aggregates,
        }))
    }

    async fn replace_aggregates(
        &self,
        req: Request<pb::ReplaceAggregatesRequest>,
    ) -> R<pb::ReplaceAggregatesResponse> {
        let r = req.into_inner();
        let u = uuid("uuid", &r.uuid)?;
        self.engine
            .set_aggregates(&u, Some(r.generation), &r.aggregates)
            .map_err(to_status)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::ReplaceAggregatesResponse {
            generation: info.generation,
            aggregates: info.aggregates,
        }))
    }

    async fn set_aggregate_metadata(
        &self,
        req: Request<pb::SetAggregateMetadataRequest>,
    ) -> R<pb::SetAggregateMetadataResponse> {
        let r = req.into_inner();
        self.engine
            .set_aggregate_metadata(&r.aggregate, btree(r.metadata))
            .map_err(to_status)?;
        let metadata = self
            .engine
            .aggregate_metadata(&r.aggregate)
            .into_iter()
            .collect();
        Ok(Response::new(pb::SetAggregateMetadataResponse { metadata }))
    }

    async fn get_aggregate_metadata(
        &self,
        req: Request<pb::GetAggregateMetadataRequest>,
    ) -> R<pb::GetAggregateMetadataResponse> {
        let a = &req.get_ref().aggregate;
        crate::model::validate_aggregate("aggregate", a).map_err(to_status)?;
        let metadata = self.engine.aggregate_metadata(a).into_iter().collect();
        Ok(Response::new(pb::GetAggregateMetadataResponse { metadata }))
    }

    async fn list_resource_classes(
        &self,
        _: Request<pb::ListResourceClassesRequest>,
    ) -> R<pb::ListResourceClassesResponse> {
        let mut resource_classes = self.engine.list_resource_classes();
        resource_classes.sort();
        Ok(Response::new(pb::ListResourceClassesResponse {
            resource_classes,
        }))
    }

    async fn create_resource_class(
        &self,
        req: Request<pb::CreateResourceClassRequest>,
    ) -> R<pb::CreateResourceClassResponse> {
        let name = req.into_inner().name;
        self.engine
            .create_resource_class(&name)
            .map_err(to_status)?;
        Ok(Response::new(pb::CreateResourceClassResponse { name }))
    }

    async fn get_allocations(
        &self,
        req: Request<pb::GetAllocationsRequest>,
    ) -> R<pb::GetAllocationsResponse> {
        let c = uuid("consumer_uuid", &req.get_ref().consumer_uuid)?;
        let a = self.engine.get_allocations(&c).map_err(to_status)?;
        if !Scope::of(&req).sees(&a.project_id) {
            return Err(to_status(crate::EngineError::not_found("consumer", c)));
        }
        // One entry per provider, sorted by provider: during a move the source and
        // destination allocations are merged (summed on a provider holding both).
        let mut merged: std::collections::BTreeMap<uuid::Uuid, Vec<(String, u64)>> =
            std::collections::BTreeMap::new();
        for alloc in a.allocations.into_iter().chain(a.moving) {
            let entry = merged.entry(alloc.provider).or_default();
            for (class, n) in alloc.resources {
                match entry.iter_mut().find(|(c, _)| *c == class) {
                    Some((_, m)) => *m += n,
                    None => entry.push((class, n)),
                }
            }
        }
        let all: Vec<crate::model::Allocation> = merged
            .into_iter()
            .map(|(provider, resources)| crate::model::Allocation {
                provider,
                resources,
            })
            .collect();
        Ok(Response::new(pb::GetAllocationsResponse {
            consumer_generation: a.generation,
            project_id: a.project_id,
            user_id: a.user_id,
            allocations: allocations_pb(&all),
        }))
    }

    async fn replace_allocations(
        &self,
        req: Request<pb::ReplaceAllocationsRequest>,
    ) -> R<pb::ReplaceAllocationsResponse> {
        let r = req.into_inner();
        let c = uuid("consumer_uuid", &r.consumer_uuid)?;
        let request = AllocationRequest {
            consumer_generation: r.consumer_generation,
            project_id: r.project_id,
            user_id: r.user_id,
            allocations: allocations("allocations", &r.allocations)?,
        };
        let generation = self
            .engine
            .replace_allocations(&c, request)
            .map_err(to_status)?;
        tracing::info!(consumer = %c, generation, "allocations replaced");
        Ok(Response::new(pb::ReplaceAllocationsResponse {
            consumer_generation: generation,
        }))
    }

    async fn delete_allocations(
        &self,
        req: Request<pb::DeleteAllocationsRequest>,
    ) -> R<pb::DeleteAllocationsResponse> {
        let c = uuid("consumer_uuid", &req.get_ref().consumer_uuid)?;
        scope::consumer(&self.engine, Scope::of(&req), &c)?;
        self.engine.release(&c).map_err(to_status)?;
        tracing::info!(consumer = %c, "allocations deleted");
        Ok(Response::new(pb::DeleteAllocationsResponse {}))
    }

    async fn get_provider_usages(
        &self,
        req: Request<pb::GetProviderUsagesRequest>,
    ) -> R<pb::GetProviderUsagesResponse> {
        let u = uuid("uuid", &req.get_ref().uuid)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::GetProviderUsagesResponse {
            generation: info.generation,
            usages: convert::usages_pb(&info),
        }))
    }

    async fn get_project_usages(
        &self,
        req: Request<pb::GetProjectUsagesRequest>,
    ) -> R<pb::GetProjectUsagesResponse> {
        Scope::of(&req).require("project_id", &req.get_ref().project_id)?;
        let r = req.into_inner();
        let mut rep = self
            .engine
            .project_usages(&r.project_id, r.user_id.as_deref())
            .map_err(to_status)?;
        // Sorted by class name (the engine orders by class id).
        rep.usages.sort();
        Ok(Response::new(pb::GetProjectUsagesResponse {
            usages: rep
                .usages
                .into_iter()
                .map(|(c, n)| pb::ResourceAmount {
                    resource_class: c,
                    amount: n,
                })
                .collect(),
            instances: u32::try_from(rep.consumers).unwrap_or(u32::MAX),
        }))
    }

    async fn get_quota(&self, req: Request<pb::GetQuotaRequest>) -> R<pb::GetQuotaResponse> {
        Scope::of(&req).require("project_id", &req.get_ref().project_id)?;
        let r = req.into_inner();
        let q = self.engine.quota(&r.project_id).map_err(to_status)?;
        Ok(Response::new(pb::GetQuotaResponse {
            project_id: q.project_id,
            limits: quota_pb(q.limits),
        }))
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> R<pb::SetQuotaResponse> {
        let r = req.into_inner();
        let set: Vec<(String, Option<u64>)> = r
            .limits
            .into_iter()
            .map(|l| (l.resource, l.limit))
            .collect();
        let q = self
            .engine
            .set_quota(&r.project_id, &set, &r.unset)
            .map_err(to_status)?;
        Ok(Response::new(pb::SetQuotaResponse {
            project_id: q.project_id,
            limits: quota_pb(q.limits),
        }))
    }

    async fn get_allocation_candidates(
        &self,
        req: Request<pb::GetAllocationCandidatesRequest>,
    ) -> R<pb::GetAllocationCandidatesResponse> {
        let r = req.into_inner();
        if r.limit > super::paging::MAX_PAGE_SIZE {
            return Err(invalid(
                "limit",
                format!(
                    "{} exceeds the maximum {}",
                    r.limit,
                    super::paging::MAX_PAGE_SIZE
                ),
            ));
        }
        let limit = if r.limit == 0 {
            super::paging::DEFAULT_PAGE_SIZE
        } else {
            r.limit
        } as usize;
        let resources = wanted_amounts("resources", &r.resources)?;
        if resources.is_empty() {
            return Err(invalid(
                "resources",
                "must name at least one resource class",
            ));
        }
        let spec = RequestSpec {
            resources: resources.clone(),
            required_traits: r.required_traits,
            forbidden_traits: r.forbidden_traits,
            member_of: r.member_of.into_iter().map(|m| m.aggregates).collect(),
            forbidden_aggregates: r.forbidden_aggregates,
            availability_zone: opt_str(r.availability_zone),
            num_instances: 1,
            project_id: "allocation-candidates".into(),
            user_id: "allocation-candidates".into(),
            ..RequestSpec::default()
        };
        let e = self.engine.explain(&spec, limit).map_err(to_status)?;
        let mut candidates = Vec::with_capacity(e.ranked.len());
        for h in e.ranked {
            // A provider deleted since the scan is simply left out.
            let Ok(info) = self.engine.get_provider(&h.host.uuid) else {
                continue;
            };
            candidates.push(pb::AllocationCandidate {
                provider_uuid: h.host.uuid.to_string(),
                provider_name: h.host.name,
                allocations: allocations_pb(&[crate::model::Allocation {
                    provider: h.host.uuid,
                    resources: resources.clone(),
                }]),
                usages: convert::usages_pb(&info),
            });
        }
        Ok(Response::new(pb::GetAllocationCandidatesResponse {
            candidates,
        }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::EngineConfig;
    use crate::model::Inventory;

    fn amount(class: &str, amount: u64) -> pb::ResourceAmount {
        pb::ResourceAmount {
            resource_class: class.into(),
            amount,
        }
    }

    /// Regression (found by tests/tests/hostile_input.rs): GetAllocationCandidates took a
    /// class twice or an amount of 0 and returned them inside the candidates' allocations,
    /// which ReplaceAllocations then refuses; ListResourceProviders took them too, against
    /// the contract ("at least 1").
    #[tokio::test]
    async fn candidates_and_filters_refuse_zero_amounts_and_repeated_classes() {
        let engine = Arc::new(Engine::new(EngineConfig::default()).unwrap());
        engine
            .create_provider(
                ProviderSpec::new("h1")
                    .inventory("VCPU", Inventory::new(8))
                    .inventory("MEMORY_MB", Inventory::new(4096)),
            )
            .unwrap();
        let api = PlacementApi::new(engine);
        for (resources, field) in [
            (
                vec![amount("VCPU", 1), amount("VCPU", 2)],
                "invalid resources[1]:",
            ),
            (
                vec![amount("VCPU", 1), amount("MEMORY_MB", 0)],
                "invalid resources[1].amount:",
            ),
            (vec![amount("VCPU", 0)], "invalid resources[0].amount:"),
        ] {
            let err = api
                .get_allocation_candidates(Request::new(pb::GetAllocationCandidatesRequest {
                    resources: resources.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().starts_with(field), "{err:?}");
            let err = api
                .list_resource_providers(Request::new(pb::ListResourceProvidersRequest {
                    resources,
                    ..Default::default()
                }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().starts_with(field), "{err:?}");
        }
        // What a candidate offers is accepted as it is.
        let found = api
            .get_allocation_candidates(Request::new(pb::GetAllocationCandidatesRequest {
                resources: vec![amount("VCPU", 2), amount("MEMORY_MB", 512)],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .candidates;
        assert_eq!(found.len(), 1);
        api.replace_allocations(Request::new(pb::ReplaceAllocationsRequest {
            consumer_uuid: uuid::Uuid::new_v4().to_string(),
            consumer_generation: None,
            project_id: "p".into(),
            user_id: "u".into(),
            allocations: found[0].allocations.clone(),
        }))
        .await
        .unwrap();
    }
}
