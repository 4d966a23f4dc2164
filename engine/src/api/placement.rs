//! `berth.v1.Placement`: providers, inventories, traits, aggregates, classes, allocations,
//! usages and allocation candidates. Converts, calls the engine, converts back.

use std::sync::Arc;

use berth_proto::v1 as pb;
use berth_proto::v1::placement_server::Placement;
use tonic::{Request, Response, Status};

use super::convert::{
    self, allocations, allocations_pb, amounts, btree, inventory, inventory_pb, opt_str,
    provider_pb, uuid,
};
use super::paging::page;
use super::status::{invalid, to_status};
use crate::Engine;
use crate::model::{ProviderSpec, ProviderUpdate, RequestSpec};
use crate::state::consumers::AllocationRequest;
use crate::state::providers::ProviderFilter;

/// The Placement service.
pub struct PlacementApi {
    pub(crate) engine: Arc<Engine>,
}

type R<T> = Result<Response<T>, Status>;

impl PlacementApi {
    fn provider(&self, u: &uuid::Uuid) -> Result<crate::model::ProviderInfo, Status> {
        self.engine.get_provider(u).map_err(to_status)
    }
}

#[tonic::async_trait]
impl Placement for PlacementApi {
    async fn create_resource_provider(
        &self,
        req: Request<pb::CreateResourceProviderRequest>,
    ) -> R<pb::CreateResourceProviderResponse> {
        let r = req.into_inner();
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
        let filter = ProviderFilter {
            name_contains: opt_str(r.name),
            availability_zone: opt_str(r.availability_zone),
            required_traits: r.required_traits,
            member_of: r.member_of,
            resources: amounts("resources", &r.resources)?,
        };
        let all = self.engine.list_providers(&filter).map_err(to_status)?;
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
        let update = ProviderUpdate {
            name: r.name,
            availability_zone: r.availability_zone,
            capabilities: r.capabilities.map(|c| btree(c.entries)),
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
            inventories: info
                .usages
                .iter()
                .map(|u| inventory_pb(&u.class, &u.inventory))
                .collect(),
        }))
    }

    async fn replace_inventories(
        &self,
        req: Request<pb::ReplaceInventoriesRequest>,
    ) -> R<pb::ReplaceInventoriesResponse> {
        let r = req.into_inner();
        let u = uuid("uuid", &r.uuid)?;
        let invs: Vec<_> = r.inventories.iter().map(inventory).collect();
        self.engine
            .set_inventories(&u, Some(r.generation), &invs)
            .map_err(to_status)?;
        let info = self.provider(&u)?;
        Ok(Response::new(pb::ReplaceInventoriesResponse {
            generation: info.generation,
            inventories: info
                .usages
                .iter()
                .map(|u| inventory_pb(&u.class, &u.inventory))
                .collect(),
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
        Ok(Response::new(pb::ListResourceClassesResponse {
            resource_classes: self.engine.list_resource_classes(),
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
        let mut all = a.allocations;
        all.extend(a.moving);
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
        let r = req.into_inner();
        let rep = self
            .engine
            .project_usages(&r.project_id, r.user_id.as_deref())
            .map_err(to_status)?;
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
        let resources = amounts("resources", &r.resources)?;
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
