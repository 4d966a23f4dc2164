//! Who is calling and what they may do — Keystone's role in OpenStack, in one module.
//!
//! - [`token`]: signed bearer tokens (HS256 over a random 32-byte key kept in
//!   `<data-dir>/token.key`) carrying subject, project, roles and expiry; `ttl` parsing.
//! - [`cli`]: `serve`'s security flags, `berth-engine token issue` and `cert init`.
//! - [`files`]: the data directory's secrets (`token.key`, `admin.token`), written mode 0600.
//! - [`policy`]: the table mapping every gRPC method to the access it needs.
//! - [`layer`]: the tower layer in front of every service: reads `authorization: Bearer`,
//!   or the node's client certificate, answers UNAUTHENTICATED / PERMISSION_DENIED, and
//!   puts the [`Caller`] in the request's extensions for the handlers.
//! - [`setup`]: the `[server]` settings made into an [`Authenticator`] and TLS, refusing
//!   exposed combinations (no TLS off loopback; `--insecure` off loopback).
//! - [`tls`]: the listener's TLS settings, the node name in a client certificate, and
//!   `berth-engine cert init` (a development CA, a server certificate, node certificates).
//!
//! Roles: `admin` may do everything; `member` acts on its own project's servers, consumers,
//! allocations, server groups and usages and reads the catalog; `reader` only reads in its
//! project; `node` may only open `Nodes/Connect`, and only register as itself. Project scope
//! (another project's objects are NOT_FOUND) is applied by the services with [`Scope`],
//! since only they see the request's fields.

pub mod cli;
pub mod files;
pub mod layer;
pub mod policy;
pub mod setup;
pub mod tls;
pub mod token;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use layer::{AuthLayer, Authenticator};
pub use policy::Access;
pub use setup::{Security, SecuritySettings};
pub use token::{Claims, TokenError, TokenKey, TokenSpec};

/// A role a token (or a node certificate) grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, in every project.
    Admin,
    /// Its own project's servers, consumers, allocations, groups and usages; catalog reads.
    Member,
    /// Read-only in its own project; catalog reads.
    Reader,
    /// A compute node: only `Nodes/Connect`, as itself (the token's subject or the
    /// certificate's name).
    Node,
}

impl Role {
    /// Every role, in the order `--help` lists them.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Member, Role::Reader, Role::Node];

    /// The role's name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Reader => "reader",
            Role::Node => "node",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected admin, member, reader or node"))
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// A bearer token signed with the engine's key.
    Token,
    /// A client certificate signed by the configured node CA (compute nodes).
    Certificate,
    /// Nobody: the engine runs `--insecure` and treats every caller as admin.
    Insecure,
}

/// The authenticated caller of one request, in its extensions (see [`layer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject, or the node name of a certificate.
    pub subject: String,
    /// The project the caller acts in; empty for admins without one and for nodes.
    pub project: String,
    /// The roles granted; never empty.
    pub roles: Vec<Role>,
    /// How the identity was proven.
    pub proof: Proof,
}

impl Caller {
    /// The caller every request gets when the engine runs `--insecure`.
    pub fn insecure() -> Self {
        Self {
            subject: "insecure".into(),
            project: String::new(),
            roles: vec![Role::Admin],
            proof: Proof::Insecure,
        }
    }

    /// A compute node proven by its certificate.
    pub fn node_certificate(name: String) -> Self {
        Self {
            subject: name,
            project: String::new(),
            roles: vec![Role::Node],
            proof: Proof::Certificate,
        }
    }

    /// Whether the caller holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the caller is an admin (unrestricted).
    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin)
    }

    /// The node name this caller may register as: `None` for an admin (any name), the
    /// subject for a node.
    pub fn node_name(&self) -> Option<&str> {
        (!self.is_admin()).then_some(self.subject.as_str())
    }

    /// What the caller may see.
    pub fn scope(&self) -> Scope<'_> {
        if self.is_admin() {
            Scope::All
        } else {
            Scope::Project(&self.project)
        }
    }
}

/// What a request may see and touch: everything (admins, in-process callers) or one
/// project's objects. Services apply it; another project's object is NOT_FOUND, so that a
/// member cannot learn that it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every project.
    All,
    /// Only this project.
    Project(&'a str),
}

impl Scope<'_> {
    /// The scope of a request: its [`Caller`]'s, or [`Scope::All`] when it has none. Every
    /// call from the network has one (the auth layer adds it, `--insecure` included); a
    /// request without one was built in-process (tests, embedding), which is trusted.
    pub fn of<T>(req: &tonic::Request<T>) -> Scope<'_> {
        req.extensions()
            .get::<Caller>()
            .map_or(Scope::All, Caller::scope)
    }

    /// Whether an object of `project` is visible.
    pub fn sees(&self, project: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Project(p) => *p == project,
        }
    }

    /// Whether the scope is unrestricted (an admin).
    pub fn is_all(&self) -> bool {
        matches!(self, Scope::All)
    }

    /// For a request naming `project` in `field`: OK if visible, else PERMISSION_DENIED
    /// naming the field (the caller named the project itself, so nothing is revealed).
    pub fn require(&self, field: &str, project: &str) -> Result<(), tonic::Status> {
        match self {
            Scope::All => Ok(()),
            Scope::Project(p) if *p == project => Ok(()),
            Scope::Project(p) => Err(tonic::Status::permission_denied(format!(
                "{field} {project:?}: this token acts in project {p:?} only"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(project: &str) -> Caller {
        Caller {
            subject: "alice".into(),
            project: project.into(),
            roles: vec![Role::Member],
            proof: Proof::Token,
        }
    }

    #[test]
    fn roles_parse_and_print() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        let e = "root".parse::<Role>().unwrap_err();
        assert!(e.contains("root") && e.contains("member"), "{e}");
        assert_eq!(serde_json::to_string(&Role::Reader).unwrap(), "\"reader\"");
    }

    #[test]
    fn scopes() {
        let m = member("p1");
        assert_eq!(m.scope(), Scope::Project("p1"));
        assert!(m.scope().sees("p1") && !m.scope().sees("p2"));
        assert!(m.scope().require("project_id", "p1").is_ok());
        let e = m.scope().require("project_id", "p2").unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("project_id") && e.message().contains("p1"));
        assert_eq!(m.node_name(), Some("alice"));
        let admin = Caller::insecure();
        assert!(admin.scope().is_all() && admin.scope().sees("anything"));
        assert_eq!(admin.node_name(), None);
        assert_eq!(
            Scope::of(&tonic::Request::new(())),
            Scope::All,
            "in-process requests carry no caller"
        );
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(m.clone());
        assert_eq!(Scope::of(&req), Scope::Project("p1"));
    }
}
