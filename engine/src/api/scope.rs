//! Project scope for the services: what a member or reader may see and name. The auth
//! layer has checked the caller's roles; these checks need the request's fields, so the
//! services call them. Admins (and in-process callers) see everything and skip every
//! lookup here, so the claim path of an admin token pays nothing.
//!
//! Rules (Keystone's and Nova's defaults):
//! - a request that names a project (`project_id`) must name the caller's own:
//!   PERMISSION_DENIED otherwise (the caller named it, so nothing is revealed);
//! - another project's consumer, server or server group is NOT_FOUND, with the very message
//!   a missing one gets, so a member cannot learn that it exists;
//! - forcing hosts and moving servers between hosts of one's choice are admin operations.

use berth_proto::v1 as pb;
use tonic::Status;
use uuid::Uuid;

use super::status::to_status;
use crate::Engine;
use crate::auth::Scope;
use crate::error::EngineError;

/// A consumer: NOT_FOUND unless it is in scope (or the caller is an admin).
pub fn consumer(engine: &Engine, scope: Scope<'_>, consumer: &Uuid) -> Result<(), Status> {
    let Scope::Project(p) = scope else {
        return Ok(());
    };
    match engine.get_allocations(consumer) {
        Ok(a) if a.project_id == p => Ok(()),
        Ok(_) => Err(to_status(EngineError::not_found("consumer", consumer))),
        Err(e) => Err(to_status(e)),
    }
}

/// A server group by id or name: NOT_FOUND unless it is in scope.
pub fn group(engine: &Engine, scope: Scope<'_>, id_or_name: &str) -> Result<(), Status> {
    let Scope::Project(p) = scope else {
        return Ok(());
    };
    match engine.get_group(id_or_name) {
        Ok(g) if g.project_id == p => Ok(()),
        Ok(_) => Err(to_status(EngineError::not_found(
            "server group",
            id_or_name,
        ))),
        Err(e) => Err(to_status(e)),
    }
}

/// A request spec from a member: its own project, no forced hosts, and only its own
/// group and instances in `group`, `same_host` and `different_host` (they would otherwise
/// tell where another project's instances run).
pub fn spec(
    engine: &Engine,
    scope: Scope<'_>,
    spec: Option<&pb::RequestSpec>,
) -> Result<(), Status> {
    let (Scope::Project(_), Some(s)) = (scope, spec) else {
        return Ok(());
    };
    scope.require("spec.project_id", &s.project_id)?;
    if !s.force_hosts.is_empty() {
        return Err(admin_only("spec.force_hosts"));
    }
    if !s.group.is_empty() {
        group(engine, scope, &s.group)?;
    }
    for u in s.same_host.iter().chain(&s.different_host) {
        // A malformed uuid is the spec validator's to report, with its field.
        if let Ok(u) = u.parse::<Uuid>() {
            consumer(engine, scope, &u)?;
        }
    }
    Ok(())
}

/// PERMISSION_DENIED for a field only admins may use.
pub fn admin_only(field: &str) -> Status {
    Status::permission_denied(format!("{field}: only admins may use it"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupPolicy, ServerGroupSpec};
    use tonic::Code;

    #[test]
    fn members_see_their_project_only() {
        let engine = Engine::new(crate::EngineConfig::default()).unwrap();
        let g = engine
            .create_group(ServerGroupSpec {
                id: None,
                name: "theirs".into(),
                policy: GroupPolicy::AntiAffinity,
                max_server_per_host: None,
                project_id: "p2".into(),
            })
            .unwrap();
        let mine = Scope::Project("p1");
        let e = group(&engine, mine, "theirs").unwrap_err();
        let missing = group(&engine, mine, "nope").unwrap_err();
        assert_eq!((e.code(), missing.code()), (Code::NotFound, Code::NotFound));
        assert_eq!(
            e.message().replace("theirs", "X"),
            missing.message().replace("nope", "X"),
            "the same answer as for a group that does not exist"
        );
        assert!(group(&engine, Scope::Project("p2"), &g.id.to_string()).is_ok());
        assert!(group(&engine, Scope::All, "theirs").is_ok());

        let spec_of = |project: &str| pb::RequestSpec {
            project_id: project.into(),
            ..Default::default()
        };
        assert!(spec(&engine, mine, Some(&spec_of("p1"))).is_ok());
        let e = spec(&engine, mine, Some(&spec_of("p2"))).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let forced = pb::RequestSpec {
            force_hosts: vec!["h1".into()],
            ..spec_of("p1")
        };
        assert_eq!(
            spec(&engine, mine, Some(&forced)).unwrap_err().code(),
            Code::PermissionDenied
        );
        assert!(spec(&engine, Scope::All, Some(&forced)).is_ok());
        let grouped = pb::RequestSpec {
            group: "theirs".into(),
            ..spec_of("p1")
        };
        assert_eq!(
            spec(&engine, mine, Some(&grouped)).unwrap_err().code(),
            Code::NotFound
        );
        let near = pb::RequestSpec {
            same_host: vec![Uuid::new_v4().to_string()],
            ..spec_of("p1")
        };
        assert_eq!(
            spec(&engine, mine, Some(&near)).unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            consumer(&engine, mine, &Uuid::new_v4()).unwrap_err().code(),
            Code::NotFound
        );
    }
}
