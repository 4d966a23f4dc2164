//! `berth.v1.Catalog`: flavors, images and server groups.

use std::sync::Arc;

use berth_proto::v1 as pb;
use berth_proto::v1::catalog_server::Catalog;
use tonic::{Request, Response, Status};

use super::convert::{btree, opt_str, opt_uuid};
use super::paging::page;
use super::scope;
use super::status::{invalid, to_status};
use crate::Engine;
use crate::auth::Scope;
use crate::model::{
    Flavor, FlavorSpec, GroupPolicy, Image, ImageSpec, ServerGroup, ServerGroupSpec,
};

/// The Catalog service.
pub struct CatalogApi {
    pub(crate) engine: Arc<Engine>,
}

impl CatalogApi {
    /// The service over `engine`, as [`serve`](super::serve) mounts it; fuzzers and
    /// in-process tests call its handlers directly.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

type R<T> = Result<Response<T>, Status>;

/// The id-or-name of a Get or Delete: an empty one names nothing, so it is an invalid
/// argument rather than a lookup that cannot succeed ("flavor  not found").
fn id_or_name(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        Err(invalid("id", "is required: an id or a name"))
    } else {
        Ok(id)
    }
}

fn flavor_pb(f: &Flavor) -> pb::Flavor {
    pb::Flavor {
        id: f.id.clone(),
        name: f.name.clone(),
        vcpus: u32::try_from(f.vcpus).unwrap_or(u32::MAX),
        ram_mb: f.ram_mb,
        disk_gb: f.disk_gb,
        extra_specs: f.extra_specs.clone().into_iter().collect(),
    }
}

fn image_pb(i: &Image) -> pb::Image {
    pb::Image {
        id: i.id.to_string(),
        name: i.name.clone(),
        properties: i.properties.clone().into_iter().collect(),
    }
}

fn policy_pb(p: GroupPolicy) -> pb::ServerGroupPolicy {
    match p {
        GroupPolicy::Affinity => pb::ServerGroupPolicy::Affinity,
        GroupPolicy::AntiAffinity => pb::ServerGroupPolicy::AntiAffinity,
        GroupPolicy::SoftAffinity => pb::ServerGroupPolicy::SoftAffinity,
        GroupPolicy::SoftAntiAffinity => pb::ServerGroupPolicy::SoftAntiAffinity,
    }
}

fn group_pb(engine: &Engine, g: ServerGroup) -> pb::ServerGroup {
    // Host uuids, sorted (the engine sorts by host name).
    let mut hosts: Vec<String> = g
        .hosts
        .iter()
        .map(|(name, _)| {
            engine
                .resolve_host(name)
                .map_or_else(|| name.clone(), |u| u.to_string())
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    pb::ServerGroup {
        id: g.id.to_string(),
        name: g.name,
        policy: policy_pb(g.policy) as i32,
        // The contract: the effective limit for anti-affinity, 0 for every other policy.
        max_server_per_host: if g.policy == GroupPolicy::AntiAffinity {
            g.max_server_per_host
        } else {
            0
        },
        project_id: g.project_id,
        members: g.members.iter().map(|m| m.to_string()).collect(),
        hosts,
    }
}

#[tonic::async_trait]
impl Catalog for CatalogApi {
    async fn create_flavor(
        &self,
        req: Request<pb::CreateFlavorRequest>,
    ) -> R<pb::CreateFlavorResponse> {
        let r = req.into_inner();
        let f = self
            .engine
            .create_flavor(FlavorSpec {
                // The contract: an empty id means the server generates a UUID.
                id: Some(opt_str(r.id).unwrap_or_else(|| uuid::Uuid::new_v4().to_string())),
                name: r.name,
                vcpus: u64::from(r.vcpus),
                ram_mb: r.ram_mb,
                disk_gb: r.disk_gb,
                extra_specs: btree(r.extra_specs),
            })
            .map_err(to_status)?;
        tracing::info!(flavor = %f.name, "flavor created");
        Ok(Response::new(pb::CreateFlavorResponse {
            flavor: Some(flavor_pb(&f)),
        }))
    }

    async fn get_flavor(&self, req: Request<pb::GetFlavorRequest>) -> R<pb::GetFlavorResponse> {
        let f = self
            .engine
            .get_flavor(id_or_name(&req.get_ref().id)?)
            .map_err(to_status)?;
        Ok(Response::new(pb::GetFlavorResponse {
            flavor: Some(flavor_pb(&f)),
        }))
    }

    async fn list_flavors(
        &self,
        req: Request<pb::ListFlavorsRequest>,
    ) -> R<pb::ListFlavorsResponse> {
        let r = req.into_inner();
        let (items, next) = page(
            self.engine.list_flavors(),
            r.page_size,
            &r.page_token,
            |f| f.id.clone(),
        )?;
        Ok(Response::new(pb::ListFlavorsResponse {
            flavors: items.iter().map(|f| flavor_pb(f)).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_flavor(
        &self,
        req: Request<pb::DeleteFlavorRequest>,
    ) -> R<pb::DeleteFlavorResponse> {
        self.engine
            .delete_flavor(id_or_name(&req.get_ref().id)?)
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteFlavorResponse {}))
    }

    async fn create_image(
        &self,
        req: Request<pb::CreateImageRequest>,
    ) -> R<pb::CreateImageResponse> {
        let r = req.into_inner();
        let img = self
            .engine
            .create_image(ImageSpec {
                id: opt_uuid("id", &r.id)?,
                name: r.name,
                properties: btree(r.properties),
            })
            .map_err(to_status)?;
        tracing::info!(image = %img.name, id = %img.id, "image created");
        Ok(Response::new(pb::CreateImageResponse {
            image: Some(image_pb(&img)),
        }))
    }

    async fn get_image(&self, req: Request<pb::GetImageRequest>) -> R<pb::GetImageResponse> {
        let img = self
            .engine
            .get_image(id_or_name(&req.get_ref().id)?)
            .map_err(to_status)?;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(image_pb(&img)),
        }))
    }

    async fn list_images(&self, req: Request<pb::ListImagesRequest>) -> R<pb::ListImagesResponse> {
        let r = req.into_inner();
        let (items, next) = page(self.engine.list_images(), r.page_size, &r.page_token, |i| {
            i.id.to_string()
        })?;
        Ok(Response::new(pb::ListImagesResponse {
            images: items.iter().map(|i| image_pb(i)).collect(),
            next_page_token: next,
        }))
    }

    async fn delete_image(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> R<pb::DeleteImageResponse> {
        self.engine
            .delete_image(id_or_name(&req.get_ref().id)?)
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteImageResponse {}))
    }

    async fn create_server_group(
        &self,
        req: Request<pb::CreateServerGroupRequest>,
    ) -> R<pb::CreateServerGroupResponse> {
        Scope::of(&req).require("project_id", &req.get_ref().project_id)?;
        let r = req.into_inner();
        let policy = match pb::ServerGroupPolicy::try_from(r.policy) {
            Ok(pb::ServerGroupPolicy::Affinity) => GroupPolicy::Affinity,
            Ok(pb::ServerGroupPolicy::AntiAffinity) => GroupPolicy::AntiAffinity,
            Ok(pb::ServerGroupPolicy::SoftAffinity) => GroupPolicy::SoftAffinity,
            Ok(pb::ServerGroupPolicy::SoftAntiAffinity) => GroupPolicy::SoftAntiAffinity,
            _ => {
                return Err(invalid(
                    "policy",
                    format!("{} is not a server group policy", r.policy),
                ));
            }
        };
        let g = self
            .engine
            .create_group(ServerGroupSpec {
                id: opt_uuid("id", &r.id)?,
                name: r.name,
                policy,
                max_server_per_host: (r.max_server_per_host > 0).then_some(r.max_server_per_host),
                project_id: r.project_id,
            })
            .map_err(to_status)?;
        tracing::info!(group = %g.name, policy = %g.policy, "server group created");
        Ok(Response::new(pb::CreateServerGroupResponse {
            server_group: Some(group_pb(&self.engine, g)),
        }))
    }

    async fn get_server_group(
        &self,
        req: Request<pb::GetServerGroupRequest>,
    ) -> R<pb::GetServerGroupResponse> {
        scope::group(&self.engine, Scope::of(&req), &req.get_ref().id)?;
        let g = self
            .engine
            .get_group(id_or_name(&req.get_ref().id)?)
            .map_err(to_status)?;
        Ok(Response::new(pb::GetServerGroupResponse {
            server_group: Some(group_pb(&self.engine, g)),
        }))
    }

    async fn list_server_groups(
        &self,
        req: Request<pb::ListServerGroupsRequest>,
    ) -> R<pb::ListServerGroupsResponse> {
        let mut groups = self.engine.list_groups();
        let scope = Scope::of(&req);
        groups.retain(|g| scope.sees(&g.project_id));
        let r = req.into_inner();
        let (items, next) = page(groups, r.page_size, &r.page_token, |g| g.id.to_string())?;
        Ok(Response::new(pb::ListServerGroupsResponse {
            server_groups: items
                .into_iter()
                .map(|g| group_pb(&self.engine, g))
                .collect(),
            next_page_token: next,
        }))
    }

    async fn delete_server_group(
        &self,
        req: Request<pb::DeleteServerGroupRequest>,
    ) -> R<pb::DeleteServerGroupResponse> {
        scope::group(&self.engine, Scope::of(&req), &req.get_ref().id)?;
        self.engine
            .delete_group(id_or_name(&req.get_ref().id)?)
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteServerGroupResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::EngineConfig;

    /// Regression (found by tests/tests/hostile_input.rs): an empty id answered NOT_FOUND
    /// ("flavor  not found") instead of naming the missing field.
    #[tokio::test]
    async fn get_and_delete_require_an_id() {
        let api = CatalogApi::new(Arc::new(Engine::new(EngineConfig::default()).unwrap()));
        let results = [
            api.get_flavor(Request::new(pb::GetFlavorRequest::default()))
                .await
                .map(|_| ()),
            api.delete_flavor(Request::new(pb::DeleteFlavorRequest::default()))
                .await
                .map(|_| ()),
            api.get_image(Request::new(pb::GetImageRequest::default()))
                .await
                .map(|_| ()),
            api.delete_image(Request::new(pb::DeleteImageRequest::default()))
                .await
                .map(|_| ()),
            api.get_server_group(Request::new(pb::GetServerGroupRequest::default()))
                .await
                .map(|_| ()),
            api.delete_server_group(Request::new(pb::DeleteServerGroupRequest::default()))
                .await
                .map(|_| ()),
        ];
        for r in results {
            let err = r.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().starts_with("invalid id:"), "{err:?}");
        }
        // A name that is not empty is still looked up.
        let err = api
            .get_flavor(Request::new(pb::GetFlavorRequest { id: "nope".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}
