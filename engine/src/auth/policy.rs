//! The policy table: what each gRPC method needs. One row per method of `berth.v1`, so a
//! reviewer reads every decision in one place; a test checks that the table covers exactly
//! the methods of the compiled contract, so a new RPC cannot ship without a row. A method
//! not in the table is refused to everyone but admins (deny by default).
//!
//! The roles check happens here, in the layer, before the request is decoded; the project
//! check (a member's own project only) needs the request's fields and happens in the
//! services (see [`super::Scope`]).

use super::{Caller, Role};

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token: health and reflection, so standard tools work.
    Open,
    /// Any user (admin, member, reader): the shared catalog — flavors, images, trait and
    /// resource-class names.
    Catalog,
    /// Admin, member or reader; the service limits non-admins to their project.
    ProjectRead,
    /// Admin or member; the service limits members to their project.
    ProjectWrite,
    /// Admin only: hosts, inventories, traits, aggregates, flavors, images, host
    /// enable/disable/evacuate, explanations (they show every host).
    Admin,
    /// A compute node (certificate or `node` token), for its own stream; or an admin, as
    /// any node (the load harness's simulated nodes). When the engine requires node
    /// certificates, only a certificate is accepted (see [`super::layer`]).
    Node,
}

impl Access {
    /// The roles that satisfy it, for messages.
    pub fn needs(self) -> &'static str {
        match self {
            Access::Open => "nothing",
            Access::Catalog | Access::ProjectRead => "admin, member or reader",
            Access::ProjectWrite => "admin or member",
            Access::Admin => "admin",
            Access::Node => "a node identity or admin",
        }
    }

    /// Whether `caller`'s roles satisfy it.
    pub fn allows(self, caller: &Caller) -> bool {
        let any = |roles: &[Role]| roles.iter().any(|r| caller.has(*r));
        match self {
            Access::Open => true,
            Access::Catalog | Access::ProjectRead => {
                any(&[Role::Admin, Role::Member, Role::Reader])
            }
            Access::ProjectWrite => any(&[Role::Admin, Role::Member]),
            Access::Admin => caller.has(Role::Admin),
            Access::Node => caller.has(Role::Node) || caller.has(Role::Admin),
        }
    }
}

/// Services open to everyone (path prefixes).
pub const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// The path of the compute nodes' stream.
pub const NODES_CONNECT: &str = "/berth.v1.Nodes/Connect";

use Access::{Admin, Catalog, Node, ProjectRead, ProjectWrite};

/// Every `berth.v1` method and what it needs, sorted by path (binary search).
pub const METHODS: &[(&str, Access)] = &[
    ("/berth.v1.Catalog/CreateFlavor", Admin),
    ("/berth.v1.Catalog/CreateImage", Admin),
    ("/berth.v1.Catalog/CreateServerGroup", ProjectWrite),
    ("/berth.v1.Catalog/DeleteFlavor", Admin),
    ("/berth.v1.Catalog/DeleteImage", Admin),
    ("/berth.v1.Catalog/DeleteServerGroup", ProjectWrite),
    ("/berth.v1.Catalog/GetFlavor", Catalog),
    ("/berth.v1.Catalog/GetImage", Catalog),
    ("/berth.v1.Catalog/GetServerGroup", ProjectRead),
    ("/berth.v1.Catalog/ListFlavors", Catalog),
    ("/berth.v1.Catalog/ListImages", Catalog),
    ("/berth.v1.Catalog/ListServerGroups", ProjectRead),
    ("/berth.v1.Nodes/Connect", Node),
    ("/berth.v1.Placement/CreateResourceClass", Admin),
    ("/berth.v1.Placement/CreateResourceProvider", Admin),
    ("/berth.v1.Placement/DeleteAllocations", ProjectWrite),
    ("/berth.v1.Placement/DeleteResourceProvider", Admin),
    ("/berth.v1.Placement/GetAggregateMetadata", Admin),
    ("/berth.v1.Placement/GetAggregates", Admin),
    ("/berth.v1.Placement/GetAllocationCandidates", Admin),
    ("/berth.v1.Placement/GetAllocations", ProjectRead),
    ("/berth.v1.Placement/GetInventories", Admin),
    ("/berth.v1.Placement/GetProjectUsages", ProjectRead),
    ("/berth.v1.Placement/GetProviderUsages", Admin),
    // A member or reader reads its own project's quota (the service checks the project).
    ("/berth.v1.Placement/GetQuota", ProjectRead),
    ("/berth.v1.Placement/GetResourceProvider", Admin),
    ("/berth.v1.Placement/GetTraits", Admin),
    ("/berth.v1.Placement/ListResourceClasses", Catalog),
    ("/berth.v1.Placement/ListResourceProviders", Admin),
    ("/berth.v1.Placement/ListTraits", Catalog),
    ("/berth.v1.Placement/ReplaceAggregates", Admin),
    // Writing allocations directly bypasses the scheduler's filters (zones, disabled hosts,
    // groups): Placement keeps it to services, and so does Berth. Members claim through
    // SelectDestinations or CreateServer.
    ("/berth.v1.Placement/ReplaceAllocations", Admin),
    ("/berth.v1.Placement/ReplaceInventories", Admin),
    ("/berth.v1.Placement/ReplaceTraits", Admin),
    ("/berth.v1.Placement/SetAggregateMetadata", Admin),
    ("/berth.v1.Placement/SetQuota", Admin),
    ("/berth.v1.Placement/UpdateResourceProvider", Admin),
    ("/berth.v1.Scheduler/ConfirmMove", ProjectWrite),
    ("/berth.v1.Scheduler/Explain", Admin),
    ("/berth.v1.Scheduler/MoveClaim", ProjectWrite),
    ("/berth.v1.Scheduler/Release", ProjectWrite),
    ("/berth.v1.Scheduler/RevertMove", ProjectWrite),
    ("/berth.v1.Scheduler/SelectDestinations", ProjectWrite),
    ("/berth.v1.Servers/CreateServer", ProjectWrite),
    ("/berth.v1.Servers/DeleteServer", ProjectWrite),
    ("/berth.v1.Servers/EvacuateHost", Admin),
    ("/berth.v1.Servers/GetServer", ProjectRead),
    ("/berth.v1.Servers/ListServers", ProjectRead),
    ("/berth.v1.Servers/ServerAction", ProjectWrite),
    ("/berth.v1.Servers/SetHostEnabled", Admin),
];

/// What `path` requires; `None` for a method the table does not know.
pub fn access(path: &str) -> Option<Access> {
    if OPEN_SERVICES.iter().any(|p| path.starts_with(p)) {
        return Some(Access::Open);
    }
    METHODS
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| METHODS[i].1)
}

/// Why a caller may not call a method: the PERMISSION_DENIED message.
pub fn denial(caller: &Caller, path: &str, access: Option<Access>) -> String {
    let roles: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
    match access {
        Some(a) => format!(
            "{} (roles {}) may not call {path}: it needs {}",
            caller.subject,
            roles.join(","),
            a.needs()
        ),
        None => format!("{path} is not in the engine's policy: only admins may call it"),
    }
}

/// Whether `caller` may call `path`: the table's rule, or admin for an unknown method.
pub fn allows(caller: &Caller, path: &str) -> Result<(), String> {
    let access = access(path);
    let ok = match access {
        Some(a) => a.allows(caller),
        None => caller.is_admin(),
    };
    if ok {
        Ok(())
    } else {
        Err(denial(caller, path, access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Proof;
    use prost::Message;

    fn caller(roles: &[Role]) -> Caller {
        Caller {
            subject: "u".into(),
            project: "p".into(),
            roles: roles.to_vec(),
            proof: Proof::Token,
        }
    }

    #[test]
    fn table_is_sorted_and_covers_exactly_the_contract() {
        assert!(
            METHODS.windows(2).all(|w| w[0].0 < w[1].0),
            "METHODS must be sorted and without duplicates"
        );
        let set = prost_types::FileDescriptorSet::decode(berth_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut contract = Vec::new();
        for file in &set.file {
            for svc in &file.service {
                for m in &svc.method {
                    contract.push(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
                }
            }
        }
        contract.sort();
        let table: Vec<String> = METHODS.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(table, contract, "one policy row per RPC of berth.v1");
    }

    #[test]
    fn roles_get_what_the_issue_says() {
        let admin = caller(&[Role::Admin]);
        let member = caller(&[Role::Member]);
        let reader = caller(&[Role::Reader]);
        let node = caller(&[Role::Node]);
        let p = |m: &str| format!("/berth.v1.{m}");
        for (path, _) in METHODS {
            assert!(allows(&admin, path).is_ok(), "admin may call {path}");
        }
        // Nodes: only their stream.
        for (path, _) in METHODS {
            assert_eq!(
                allows(&node, path).is_ok(),
                *path == NODES_CONNECT,
                "{path}"
            );
        }
        for ok in [
            "Servers/CreateServer",
            "Scheduler/SelectDestinations",
            "Catalog/ListFlavors",
            "Placement/GetProjectUsages",
            "Placement/DeleteAllocations",
        ] {
            assert!(allows(&member, &p(ok)).is_ok(), "member {ok}");
        }
        for denied in [
            "Placement/CreateResourceProvider",
            "Placement/ReplaceInventories",
            "Placement/ReplaceTraits",
            "Placement/ReplaceAggregates",
            "Catalog/CreateFlavor",
            "Catalog/CreateImage",
            "Servers/SetHostEnabled",
            "Servers/EvacuateHost",
            "Scheduler/Explain",
            "Nodes/Connect",
        ] {
            let e = allows(&member, &p(denied)).unwrap_err();
            assert!(e.contains("needs") && e.contains(denied), "{e}");
        }
        for ok in [
            "Servers/GetServer",
            "Servers/ListServers",
            "Catalog/GetImage",
            "Placement/GetAllocations",
        ] {
            assert!(allows(&reader, &p(ok)).is_ok(), "reader {ok}");
        }
        for denied in [
            "Servers/CreateServer",
            "Servers/DeleteServer",
            "Servers/ServerAction",
            "Scheduler/Release",
            "Catalog/CreateServerGroup",
        ] {
            assert!(allows(&reader, &p(denied)).is_err(), "reader {denied}");
        }
        // Open services need nothing; unknown methods are for admins only.
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(access(path), Some(Access::Open));
            assert!(allows(&node, path).is_ok());
        }
        assert_eq!(access("/berth.v1.Placement/Nope"), None);
        assert!(
            allows(&member, "/berth.v1.Placement/Nope")
                .unwrap_err()
                .contains("only admins")
        );
        assert!(allows(&admin, "/berth.v1.Placement/Nope").is_ok());
        assert_eq!(
            access("/grpc.health.v1.HealthX/Check"),
            None,
            "prefixes end at the slash"
        );
    }
}
