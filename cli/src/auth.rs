//! Who the CLI is to the engine, and how it reaches it securely.
//!
//! The token comes from `--token` / `BERTH_TOKEN`, or, when the engine is on this machine
//! (a loopback address), from `<data-dir>/admin.token`, which the engine writes at start:
//! so on the engine's host `berth host list` just works. The admin token is never sent to
//! an engine elsewhere. `https://` engines need the CA that signed their certificate
//! (`--ca-cert`). UNAUTHENTICATED and PERMISSION_DENIED answers get a hint saying what to do.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::CliError;

/// Where the token came from, for hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `BERTH_TOKEN`.
    Given,
    /// The engine's `admin.token` in the data directory.
    AdminFile(PathBuf),
    /// None: not given, and no admin token found (`looked` is where, if anywhere).
    Missing {
        /// The file looked for, when the engine is local.
        looked: Option<PathBuf>,
    },
}

/// The token to send, and where it came from.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `authorization: Bearer <token>`, if any.
    pub header: Option<AsciiMetadataValue>,
    /// Where it came from.
    pub source: TokenSource,
}

/// Whether `url`'s host is this machine (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_local(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Picks the token: `given` (flag or environment), else the admin token in `data_dir`
/// when `url` is local.
pub fn credentials(
    url: &str,
    given: Option<&str>,
    data_dir: &Path,
) -> Result<Credentials, CliError> {
    let (token, source) = match given.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => (Some(t.to_owned()), TokenSource::Given),
        None if is_local(url) => {
            let path = data_dir.join("admin.token");
            match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => {
                    (Some(t.trim().to_owned()), TokenSource::AdminFile(path))
                }
                _ => (None, TokenSource::Missing { looked: Some(path) }),
            }
        }
        None => (None, TokenSource::Missing { looked: None }),
    };
    let header = token
        .map(|t| {
            format!("Bearer {t}").parse().map_err(|_| {
                CliError::Usage("--token: not a token (characters a header cannot carry)".into())
            })
        })
        .transpose()?;
    Ok(Credentials { header, source })
}

/// Adds the bearer token, if any, to every call.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    /// The interceptor sending `header`.
    pub fn new(header: Option<AsciiMetadataValue>) -> Self {
        Self(header)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The channel type of the CLI's clients.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// What to do about an UNAUTHENTICATED or PERMISSION_DENIED answer; `None` for other codes.
pub fn hint(status: &Status, source: &TokenSource) -> Option<String> {
    match status.code() {
        Code::Unauthenticated => Some(match source {
            TokenSource::Missing { looked: Some(p) } => format!(
                "no token was sent: pass one with --token or BERTH_TOKEN (berth-engine token issue \
                 prints one), or point --data-dir at the engine's data directory ({} does not exist)",
                p.display()
            ),
            TokenSource::Missing { looked: None } => "no token was sent: pass one with --token or \
                 BERTH_TOKEN (berth-engine token issue prints one; the local admin token is only \
                 used for an engine on this machine)"
                .into(),
            TokenSource::Given if status.message().contains("expired") => {
                "the token expired: issue a new one (berth-engine token issue --ttl ...)".into()
            }
            TokenSource::Given => "the engine refused the token from --token/BERTH_TOKEN: was it \
                 issued by this engine (its token.key)?"
                .into(),
            TokenSource::AdminFile(p) => format!(
                "the engine refused the admin token in {}: is it this engine's data directory? \
                 (--data-dir, BERTH_DATA_DIR)",
                p.display()
            ),
        }),
        Code::PermissionDenied => Some(
            "the token's role or project does not allow this: use a token with the role the \
             message names (an admin's for hosts, inventories, flavors and images), or act in \
             your own project"
                .into(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_engines() {
        for url in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "https://[::1]:50051",
            "http://127.0.0.2:1",
        ] {
            assert!(is_local(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:50051",
            "https://engine.example:443",
            "nonsense",
        ] {
            assert!(!is_local(url), "{url}");
        }
    }

    #[test]
    fn the_admin_token_is_read_only_for_a_local_engine() {
        let dir = std::env::temp_dir().join(format!("berth-cli-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.token"), "abc.def.ghi\n").unwrap();
        let c = credentials("http://127.0.0.1:50051", None, &dir).unwrap();
        assert_eq!(c.header.unwrap(), "Bearer abc.def.ghi");
        assert_eq!(c.source, TokenSource::AdminFile(dir.join("admin.token")));
        let remote = credentials("http://10.0.0.1:50051", None, &dir).unwrap();
        assert!(remote.header.is_none(), "never sent elsewhere");
        let given = credentials("http://10.0.0.1:50051", Some("x.y.z"), &dir).unwrap();
        assert_eq!(given.header.unwrap(), "Bearer x.y.z");
        assert!(credentials("http://127.0.0.1:1", Some("bad\ntoken"), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        let none = credentials("http://127.0.0.1:50051", None, &dir).unwrap();
        assert!(matches!(
            none.source,
            TokenSource::Missing { looked: Some(_) }
        ));
    }

    #[test]
    fn hints_say_what_to_do() {
        let missing = TokenSource::Missing {
            looked: Some("/x/admin.token".into()),
        };
        let h = hint(&Status::unauthenticated("no token"), &missing).unwrap();
        assert!(h.contains("--token") && h.contains("/x/admin.token"), "{h}");
        let h = hint(
            &Status::unauthenticated("the token expired 5 s ago"),
            &TokenSource::Given,
        )
        .unwrap();
        assert!(h.contains("issue a new one"), "{h}");
        let h = hint(
            &Status::permission_denied("needs admin"),
            &TokenSource::Given,
        )
        .unwrap();
        assert!(h.contains("role"), "{h}");
        assert!(hint(&Status::not_found("x"), &TokenSource::Given).is_none());
    }
}
