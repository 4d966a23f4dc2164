//! The command-line side of security for `berth-engine`: the `serve` flags
//! ([`SecurityArgs`], flattened into it), `token issue` and `cert init`. Here rather than in
//! `main.rs` so the binary stays a dispatcher.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::files::load_key;
use super::tls::{CertInit, cert_init, names};
use super::token::{TokenSpec, parse_ttl};
use super::{Role, TokenKey};
use crate::api::ServerConfig;

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./berth-data";

/// `serve`'s security flags; each overrides its `[server]` key in `berth.toml`.
#[derive(Args, Debug, Default)]
pub struct SecurityArgs {
    /// Serve without authentication or TLS, every caller an admin. Refused unless the
    /// listen address is loopback. For tests and demos that are about something else.
    #[arg(long, env = "BERTH_INSECURE")]
    pub insecure: bool,
    /// TLS certificate of the listener (PEM) [default: [server] tls_cert]. Without one the
    /// engine serves plain text, and only on a loopback address.
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// TLS key of the listener (PEM) [default: [server] tls_key].
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<String>,
    /// CA of the compute nodes' client certificates (PEM) [default: [server] tls_client_ca].
    /// When set, a node must present a certificate it signed, and registers only under the
    /// certificate's name.
    #[arg(long, env = "BERTH_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<String>,
}

impl SecurityArgs {
    /// Applies the flags given over `server`.
    pub fn apply(self, server: &mut ServerConfig) {
        if self.insecure {
            server.insecure = true;
        }
        if let Some(v) = self.tls_cert {
            server.tls_cert = v;
        }
        if let Some(v) = self.tls_key {
            server.tls_key = v;
        }
        if let Some(v) = self.tls_client_ca {
            server.tls_client_ca = v;
        }
    }
}

/// `berth-engine token ...`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new token signed with the engine's key (read from --data-dir; the engine
    /// must have started once there). Callers send it as `authorization: Bearer <token>`
    /// (berth --token, BERTH_TOKEN).
    ///
    /// Roles: admin (everything), member (its project's servers, consumers, groups and
    /// usages; reads the catalog), reader (read-only in its project), node (only the
    /// compute-node stream, registering as --subject).
    ///
    /// Examples:
    ///   berth-engine token issue --project demo --role member --ttl 8h --subject alice
    ///   berth-engine token issue --role node --subject compute-1 --ttl 30d
    #[command(verbatim_doc_comment)]
    Issue {
        /// Project the token acts in; required for member and reader.
        #[arg(long, default_value = "")]
        project: String,
        /// Role to grant; repeat for several (admin, member, reader, node).
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<Role>,
        /// Lifetime: a number and a unit, s, m, h or d (at most 5 years).
        #[arg(long, default_value = "8h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// Who the token is for (logged with its calls); for a node token, the node name it
        /// may register as [default: the role and project, e.g. member@demo].
        #[arg(long)]
        subject: Option<String>,
        /// Data directory holding token.key [default: ./berth-data, or [store] data_dir
        /// of --config].
        #[arg(long, env = "BERTH_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Configuration file whose [store] data_dir to use.
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// `berth-engine cert ...`.
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Make a development PKI in --dir: a CA (ca.pem, ca.key), the engine's certificate
    /// (engine.pem, engine.key; names localhost, 127.0.0.1, ::1 and --hosts) and a client
    /// certificate per node (node-NAME.pem, node-NAME.key; its common name is the node
    /// name). Existing files are kept: run it again with new --nodes to add nodes under
    /// the same CA. Keys are written mode 0600.
    ///
    /// Example:
    ///   berth-engine cert init --dir pki --nodes a,b,c
    ///   berth-engine serve --tls-cert pki/engine.pem --tls-key pki/engine.key --tls-client-ca pki/ca.pem
    ///   berth-node --engine https://localhost:50051 --name a --ca-cert pki/ca.pem --tls-cert pki/node-a.pem --tls-key pki/node-a.key
    #[command(verbatim_doc_comment)]
    Init {
        /// Output directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node names, comma-separated.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Extra DNS names or IP addresses the engine is reached at, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Validity of the engine and node certificates, in days (the CA's is at least 10
        /// years).
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Runs `token ...`: prints the token on stdout, what it grants on stderr.
pub fn run_token(cmd: TokenCommand) -> Result<(), String> {
    let TokenCommand::Issue {
        project,
        roles,
        ttl,
        subject,
        data_dir,
        config,
    } = cmd;
    let data_dir = match (data_dir, config) {
        (Some(d), _) => d,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            crate::api::BerthConfig::from_toml(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .store
                .data_dir
        }
        (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let (key, _): (TokenKey, bool) = load_key(&data_dir, false)?;
    let subject = subject.unwrap_or_else(|| {
        let role = roles.first().map_or("user", |r| r.as_str());
        if project.is_empty() {
            role.to_string()
        } else {
            format!("{role}@{project}")
        }
    });
    let spec = TokenSpec {
        subject,
        project,
        roles,
        ttl,
    };
    let token = key.issue(&spec).map_err(|e| e.to_string())?;
    println!("{token}");
    let roles: Vec<&str> = spec.roles.iter().map(|r| r.as_str()).collect();
    eprintln!(
        "token for {} (roles {}{}), valid {} s",
        spec.subject,
        roles.join(","),
        if spec.project.is_empty() {
            String::new()
        } else {
            format!(", project {}", spec.project)
        },
        spec.ttl.as_secs()
    );
    Ok(())
}

/// Runs `cert ...`: lists the files written and how to use them.
pub fn run_cert(cmd: CertCommand) -> Result<(), String> {
    let CertCommand::Init {
        dir,
        nodes,
        hosts,
        days,
    } = cmd;
    let written = cert_init(&CertInit {
        dir: dir.clone(),
        nodes,
        hosts,
        days,
    })?;
    if written.is_empty() {
        println!(
            "{}: every file exists already; nothing written",
            dir.display()
        );
    }
    for f in &written {
        println!("wrote {}", f.display());
    }
    let d = dir.display();
    println!(
        "engine: berth-engine serve --tls-cert {d}/{} --tls-key {d}/{} --tls-client-ca {d}/{}",
        names::ENGINE_CERT,
        names::ENGINE_KEY,
        names::CA_CERT
    );
    println!(
        "node N: berth-node --engine https://localhost:50051 --name N --ca-cert {d}/{} --tls-cert {d}/node-N.pem --tls-key {d}/node-N.key",
        names::CA_CERT
    );
    println!(
        "CLI:    berth --engine https://localhost:50051 --ca-cert {d}/{} ...",
        names::CA_CERT
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config() {
        let mut s = ServerConfig::default();
        SecurityArgs {
            insecure: true,
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_client_ca: None,
        }
        .apply(&mut s);
        assert!(s.insecure);
        assert_eq!(
            (s.tls_cert.as_str(), s.tls_key.as_str()),
            ("c.pem", "k.pem")
        );
        assert_eq!(s.tls_client_ca, "");
    }

    #[test]
    fn token_issue_needs_the_engines_key() {
        let dir = tempfile::tempdir().unwrap();
        let issue = |roles: Vec<Role>, project: &str| {
            run_token(TokenCommand::Issue {
                project: project.into(),
                roles,
                ttl: std::time::Duration::from_secs(60),
                subject: None,
                data_dir: Some(dir.path().to_path_buf()),
                config: None,
            })
        };
        let e = issue(vec![Role::Admin], "").unwrap_err();
        assert!(e.contains("no signing key"), "{e}");
        load_key(dir.path(), true).unwrap();
        assert!(issue(vec![Role::Admin], "").is_ok());
        let e = issue(vec![Role::Member], "").unwrap_err();
        assert!(e.contains("project"), "{e}");
    }
}
