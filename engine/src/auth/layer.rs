//! The authentication layer, in front of every service (inside the request-id layer, so a
//! refused call is logged and counted with its id and code).
//!
//! For each call it looks up the method in the [`policy`](super::policy) table, then:
//! - open methods (health, reflection) pass untouched;
//! - `Nodes/Connect` on an engine that requires node certificates takes the node's
//!   identity from its verified client certificate, and nothing else;
//! - every other call needs `authorization: Bearer <token>`: none or a bad one is
//!   UNAUTHENTICATED (an expired one says so), a role the method does not accept is
//!   PERMISSION_DENIED.
//!
//! An admitted call carries its [`Caller`] in the request's extensions for the services
//! (project scope, the node name a stream may register as). With `--insecure` every call is
//! admitted as an admin caller.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::HeaderMap;
use parking_lot::RwLock;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::policy::{self, Access, NODES_CONNECT};
use super::tls::node_name_from_cert;
use super::token::now_secs;
use super::{Caller, TokenKey};

/// Decides, for each call, who the caller is and whether it may make the call.
#[derive(Debug)]
pub struct Authenticator {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Insecure,
    Enforced {
        key: Box<TokenKey>,
        /// `Nodes/Connect` only with a client certificate (a node CA is configured).
        node_certs: bool,
        /// Tokens that verified, with their caller and expiry: a client sends the same
        /// token with every call, and a lookup costs far less than verifying a JWT again
        /// (base64, JSON, HMAC). Only verified tokens enter, keyed by the whole token, so a
        /// forged or altered one never matches; expiry is still checked on every hit.
        /// `parking_lot::RwLock`: lookups share it, inserts are rare and short, nothing
        /// awaits while it is held.
        verified: RwLock<HashMap<Box<str>, (Caller, u64)>>,
    },
}

/// Most tokens remembered; the cache starts over when full (each entry needed a valid
/// signature, so only the engine's own tokens can fill it).
const VERIFIED_CAPACITY: usize = 4096;

impl Authenticator {
    /// Admits every call as an admin (`--insecure`).
    pub fn insecure() -> Self {
        Self {
            mode: Mode::Insecure,
        }
    }

    /// Checks tokens against `key`; with `node_certs`, the node stream needs a verified
    /// client certificate.
    pub fn new(key: TokenKey, node_certs: bool) -> Self {
        Self {
            mode: Mode::Enforced {
                key: Box::new(key),
                node_certs,
                verified: RwLock::new(HashMap::new()),
            },
        }
    }

    /// Whether calls are checked at all.
    pub fn enforced(&self) -> bool {
        matches!(self.mode, Mode::Enforced { .. })
    }

    /// Decides one call to `path`: `Ok(None)` for an open method, `Ok(Some(caller))` for an
    /// admitted one, the status to answer otherwise. `peer_cert` is the leaf certificate
    /// the client presented (DER), already verified against the node CA by TLS.
    pub fn admit(
        &self,
        path: &str,
        headers: &HeaderMap,
        peer_cert: Option<&[u8]>,
    ) -> Result<Option<Caller>, Status> {
        let (key, node_certs, verified) = match &self.mode {
            Mode::Insecure => return Ok(Some(Caller::insecure())),
            Mode::Enforced {
                key,
                node_certs,
                verified,
            } => (key, *node_certs, verified),
        };
        let access = policy::access(path);
        if access == Some(Access::Open) {
            return Ok(None);
        }
        if node_certs && path == NODES_CONNECT {
            let der = peer_cert.ok_or_else(|| {
                Status::unauthenticated(
                    "the node stream needs a client certificate signed by the engine's node CA \
                     (berth-node --tls-cert/--tls-key; berth-engine cert init makes them)",
                )
            })?;
            let name = node_name_from_cert(der).map_err(|e| {
                Status::unauthenticated(format!("unusable client certificate: {e}"))
            })?;
            return Ok(Some(Caller::node_certificate(name)));
        }
        let token = bearer(headers)?;
        let caller = verify_cached(key, verified, token, now_secs())?;
        policy::allows(&caller, path).map_err(Status::permission_denied)?;
        Ok(Some(caller))
    }
}

/// The caller of `token`: from the cache of verified tokens while unexpired, else verified
/// (and remembered).
fn verify_cached(
    key: &TokenKey,
    verified: &RwLock<HashMap<Box<str>, (Caller, u64)>>,
    token: &str,
    now: u64,
) -> Result<Caller, Status> {
    if let Some((caller, exp)) = verified.read().get(token)
        && *exp > now
    {
        return Ok(caller.clone());
    }
    let claims = key
        .verify_at(token, now)
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let exp = claims.exp;
    let caller = claims.into_caller();
    let mut cache = verified.write();
    if cache.len() >= VERIFIED_CAPACITY {
        cache.clear();
    }
    cache.insert(token.into(), (caller.clone(), exp));
    Ok(caller)
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Result<&str, Status> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "no token: send `authorization: Bearer <token>` (berth --token or BERTH_TOKEN; \
             berth-engine token issue makes one)",
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("the authorization header must be `Bearer <token>`")
        })?;
    Ok(token.trim())
}

/// The tower layer: see the module doc.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer deciding with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service the layer wraps around each call.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for Auth<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqB>) -> Self::Future {
        let peer = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let leaf = peer.as_ref().and_then(|certs| certs.first());
        let decision = self
            .auth
            .admit(req.uri().path(), req.headers(), leaf.map(|c| c.as_ref()));
        match decision {
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Proof, Role, TokenSpec};
    use std::time::Duration;
    use tonic::Code;

    fn key() -> TokenKey {
        TokenKey::from_bytes(&[7; 32])
    }

    fn token(roles: &[Role], project: &str) -> String {
        key()
            .issue(&TokenSpec {
                subject: "alice".into(),
                project: project.into(),
                roles: roles.to_vec(),
                ttl: Duration::from_secs(60),
            })
            .unwrap()
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    const CREATE: &str = "/berth.v1.Servers/CreateServer";

    #[test]
    fn tokens_roles_and_open_methods() {
        let auth = Authenticator::new(key(), false);
        assert!(auth.enforced());
        let code = |r: Result<Option<Caller>, Status>| r.map(|_| ()).map_err(|s| s.code());
        // Open methods need nothing and get no caller.
        assert_eq!(
            auth.admit("/grpc.health.v1.Health/Check", &headers(None), None)
                .unwrap(),
            None
        );
        // No token, not Bearer, garbage, another key's token.
        let e = auth.admit(CREATE, &headers(None), None).unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("Bearer"), "{}", e.message());
        let t = token(&[Role::Member], "p1");
        assert_eq!(
            code(auth.admit(CREATE, &headers(Some(&format!("Basic {t}"))), None)),
            Err(Code::Unauthenticated)
        );
        assert_eq!(
            code(auth.admit(CREATE, &headers(Some("Bearer nope")), None)),
            Err(Code::Unauthenticated)
        );
        let other = TokenKey::from_bytes(&[8; 32])
            .issue(&TokenSpec {
                subject: "mallory".into(),
                project: String::new(),
                roles: vec![Role::Admin],
                ttl: Duration::from_secs(60),
            })
            .unwrap();
        let e = auth
            .admit(CREATE, &headers(Some(&format!("Bearer {other}"))), None)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("signature"), "{}", e.message());
        // Expired says so.
        let old = key()
            .issue_at(
                &TokenSpec {
                    subject: "alice".into(),
                    project: "p1".into(),
                    roles: vec![Role::Member],
                    ttl: Duration::from_secs(60),
                },
                1000,
            )
            .unwrap();
        let e = auth
            .admit(CREATE, &headers(Some(&format!("Bearer {old}"))), None)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("expired"), "{}", e.message());
        // A member may create servers; the caller is handed on.
        let c = auth
            .admit(CREATE, &headers(Some(&format!("Bearer {t}"))), None)
            .unwrap()
            .unwrap();
        assert_eq!((c.project.as_str(), c.proof), ("p1", Proof::Token));
        // A reader may not.
        let r = token(&[Role::Reader], "p1");
        let e = auth
            .admit(CREATE, &headers(Some(&format!("Bearer {r}"))), None)
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e.message().contains("admin or member"), "{}", e.message());
    }

    #[test]
    fn node_stream_needs_a_certificate_when_configured() {
        let with_certs = Authenticator::new(key(), true);
        let admin = format!("Bearer {}", token(&[Role::Admin], ""));
        // A token, even an admin's, does not open the stream: only a certificate does.
        let e = with_certs
            .admit(NODES_CONNECT, &headers(Some(&admin)), None)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("certificate"), "{}", e.message());
        let garbage = [1u8, 2, 3];
        let e = with_certs
            .admit(NODES_CONNECT, &headers(None), Some(&garbage))
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        // Without node certificates, a node token or an admin token opens it.
        let tokens = Authenticator::new(key(), false);
        let node = key()
            .issue(&TokenSpec {
                subject: "n1".into(),
                project: String::new(),
                roles: vec![Role::Node],
                ttl: Duration::from_secs(60),
            })
            .unwrap();
        let c = tokens
            .admit(
                NODES_CONNECT,
                &headers(Some(&format!("Bearer {node}"))),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(c.node_name(), Some("n1"));
        assert!(
            tokens
                .admit(NODES_CONNECT, &headers(Some(&admin)), None)
                .is_ok()
        );
        // A node token is good for nothing else.
        let e = tokens
            .admit(CREATE, &headers(Some(&format!("Bearer {node}"))), None)
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let k = key();
        let cache = RwLock::new(HashMap::new());
        let spec = TokenSpec {
            subject: "alice".into(),
            project: "p1".into(),
            roles: vec![Role::Member],
            ttl: Duration::from_secs(60),
        };
        let t = k.issue_at(&spec, 1000).unwrap();
        assert_eq!(verify_cached(&k, &cache, &t, 1001).unwrap().project, "p1");
        assert_eq!(cache.read().len(), 1);
        // A hit still checks the expiry.
        let e = verify_cached(&k, &cache, &t, 1060).unwrap_err();
        assert!(e.message().contains("expired"), "{}", e.message());
        // An altered token is verified, not looked up, and refused.
        // (A character well inside the signature: all of its bits count.)
        let i = t.len() - 5;
        let flipped = if &t[i..=i] == "A" { "B" } else { "A" };
        let forged = format!("{}{flipped}{}", &t[..i], &t[i + 1..]);
        assert_eq!(
            verify_cached(&k, &cache, &forged, 1001).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert_eq!(cache.read().len(), 1, "refused tokens are not remembered");
    }

    #[test]
    fn insecure_admits_everyone_as_admin() {
        let auth = Authenticator::insecure();
        assert!(!auth.enforced());
        let c = auth.admit(CREATE, &headers(None), None).unwrap().unwrap();
        assert!(c.is_admin());
        assert_eq!(c.proof, Proof::Insecure);
    }
}
