//! Turns the `[server]` security settings into what the listener needs: the
//! [`Authenticator`] (with the key from the data directory, and the admin token written
//! next to it) and the TLS settings; refuses combinations that would expose the engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::files::{admin_token_path, ensure_admin_token, load_key};
use super::layer::Authenticator;
use super::tls::server_tls;

/// The security settings, as `[server]` in `berth.toml` has them.
#[derive(Debug, Clone, Copy)]
pub struct SecuritySettings<'a> {
    /// Where `token.key` and `admin.token` live.
    pub data_dir: &'a Path,
    /// No authentication and no TLS; loopback only.
    pub insecure: bool,
    /// The listener's certificate (PEM); empty for none.
    pub tls_cert: &'a str,
    /// The listener's key (PEM); empty for none.
    pub tls_key: &'a str,
    /// The CA that signs node certificates (PEM); empty: nodes use `node` tokens.
    pub tls_client_ca: &'a str,
}

/// What the listener runs with.
#[derive(Debug)]
pub struct Security {
    /// Decides each call.
    pub authenticator: Arc<Authenticator>,
    /// The listener's TLS, if any.
    pub tls: Option<super::tls::ServerTls>,
    /// Where the admin token was written (for the start-up log), when auth is on.
    pub admin_token: Option<PathBuf>,
    /// Whether the admin token was (re)written just now.
    pub admin_token_written: bool,
}

impl SecuritySettings<'_> {
    /// Refuses combinations that would expose the engine or contradict each other, reading
    /// no file: the binary calls it with the configured address before its start-up, which
    /// may be long, and [`Security::prepare`] again with the bound one.
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let tls_files = (!self.tls_cert.is_empty(), !self.tls_key.is_empty());
        if self.insecure {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "--insecure serves without authentication or TLS, so it only listens on a \
                     loopback address, not {addr}"
                ));
            }
            if tls_files != (false, false) || !self.tls_client_ca.is_empty() {
                return Err(
                    "--insecure disables TLS: leave tls_cert, tls_key and tls_client_ca unset"
                        .into(),
                );
            }
            return Ok(());
        }
        match tls_files {
            (true, true) => Ok(()),
            (true, false) => Err("tls_cert is set but tls_key is not: set both".into()),
            (false, true) => Err("tls_key is set but tls_cert is not: set both".into()),
            (false, false) if !self.tls_client_ca.is_empty() => Err(
                "tls_client_ca needs TLS: set tls_cert and tls_key too (berth-engine cert init)"
                    .into(),
            ),
            (false, false) if !addr.ip().is_loopback() => Err(format!(
                "refusing to serve {addr} without TLS: tokens would cross the network in clear \
                 text; set tls_cert and tls_key (--tls-cert/--tls-key; berth-engine cert init \
                 makes a development set), or listen on 127.0.0.1"
            )),
            (false, false) => Ok(()),
        }
    }
}

impl Security {
    /// Loads (or on first start creates) the signing key and the admin token, and the TLS
    /// files. `addr` is the bound listener's address: without TLS the engine only serves
    /// loopback, since tokens would otherwise cross the network in clear text.
    pub fn prepare(s: &SecuritySettings<'_>, addr: SocketAddr) -> Result<Self, String> {
        s.check(addr)?;
        if s.insecure {
            return Ok(Self {
                authenticator: Arc::new(Authenticator::insecure()),
                tls: None,
                admin_token: None,
                admin_token_written: false,
            });
        }
        let tls = if s.tls_cert.is_empty() {
            None
        } else {
            Some(server_tls(
                Path::new(s.tls_cert),
                Path::new(s.tls_key),
                (!s.tls_client_ca.is_empty()).then(|| Path::new(s.tls_client_ca)),
            )?)
        };
        let (key, _) = load_key(s.data_dir, true)?;
        let written = ensure_admin_token(s.data_dir, &key)?;
        Ok(Self {
            authenticator: Arc::new(Authenticator::new(key, !s.tls_client_ca.is_empty())),
            tls,
            admin_token: Some(admin_token_path(s.data_dir)),
            admin_token_written: written,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> SecuritySettings<'_> {
        SecuritySettings {
            data_dir: dir,
            insecure: false,
            tls_cert: "",
            tls_key: "",
            tls_client_ca: "",
        }
    }

    #[test]
    fn refuses_exposed_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        let e = Security::prepare(
            &SecuritySettings {
                insecure: true,
                ..settings(dir.path())
            },
            any,
        )
        .unwrap_err();
        assert!(e.contains("--insecure") && e.contains("loopback"), "{e}");
        let e = Security::prepare(&settings(dir.path()), any).unwrap_err();
        assert!(e.contains("without TLS"), "{e}");
        let e = Security::prepare(
            &SecuritySettings {
                tls_cert: "x.pem",
                ..settings(dir.path())
            },
            lo,
        )
        .unwrap_err();
        assert!(e.contains("tls_key"), "{e}");
        let e = Security::prepare(
            &SecuritySettings {
                tls_client_ca: "ca.pem",
                ..settings(dir.path())
            },
            lo,
        )
        .unwrap_err();
        assert!(e.contains("tls_client_ca"), "{e}");
        assert!(
            !dir.path().join("token.key").exists(),
            "nothing written on refusal"
        );
    }

    #[test]
    fn first_start_writes_the_key_and_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let s = Security::prepare(&settings(dir.path()), lo).unwrap();
        assert!(s.authenticator.enforced() && s.admin_token_written && s.tls.is_none());
        assert!(s.admin_token.as_ref().unwrap().is_file());
        let again = Security::prepare(&settings(dir.path()), lo).unwrap();
        assert!(!again.admin_token_written);
        let insecure = Security::prepare(
            &SecuritySettings {
                insecure: true,
                ..settings(dir.path())
            },
            lo,
        )
        .unwrap();
        assert!(!insecure.authenticator.enforced());
    }
}
