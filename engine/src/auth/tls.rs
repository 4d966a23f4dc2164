//! TLS for the engine's listener and node certificates.
//!
//! - [`server_tls`]: the listener's certificate and key, and optionally the node CA: with
//!   it, clients *may* present a certificate (the CLI and API clients use tokens; compute
//!   nodes present one), and one presented is verified against the CA, which must sign
//!   only node certificates, by rustls (chain, validity, the `clientAuth` purpose).
//! - [`node_name_from_cert`]: the node a verified client certificate names (its common
//!   name): the only name that stream may register as.
//! - [`cert_init`]: `berth-engine cert init`, a development CA and its certificates, so a
//!   test cloud with TLS is one command.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::files::{ensure_dir, write_secret};

/// The listener's TLS, for either transport (`[server] transport`): tonic's settings, and
/// the rustls configuration berth-wire's connections are accepted with — the same
/// certificate, key and client CA, and the same rules (a client certificate is optional,
/// verified against the CA when presented; ALPN `h2`).
#[derive(Clone)]
pub struct ServerTls {
    /// For tonic's server.
    pub tonic: ServerTlsConfig,
    /// For berth-wire.
    pub rustls: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// The TLS settings of the listener.
///
/// `cert` and `key` are PEM files; `client_ca`, if given, is the PEM CA that signs node
/// certificates. Errors name the file.
pub fn server_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, String> {
    let read =
        |what: &str, p: &Path| std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()));
    let cert_pem = read("tls_cert", cert)?;
    let key_pem = read("tls_key", key)?;
    check_pem("tls_cert", cert, &cert_pem, "CERTIFICATE")?;
    check_pem("tls_key", key, &key_pem, "PRIVATE KEY")?;
    let ca_pem = match client_ca {
        Some(ca) => {
            let pem = read("tls_client_ca", ca)?;
            check_pem("tls_client_ca", ca, &pem, "CERTIFICATE")?;
            Some((ca, pem))
        }
        None => None,
    };
    let rustls = rustls_config(
        (cert, &cert_pem),
        (key, &key_pem),
        ca_pem.as_ref().map(|(p, pem)| (*p, pem.as_slice())),
    )?;
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(Duration::from_secs(10));
    if let Some((_, ca_pem)) = ca_pem {
        tls = tls
            .client_ca_root(Certificate::from_pem(ca_pem))
            .client_auth_optional(true);
    }
    Ok(ServerTls { tonic: tls, rustls })
}

/// The rustls side of [`server_tls`].
fn rustls_config(
    (cert, cert_pem): (&Path, &[u8]),
    (key, key_pem): (&Path, &[u8]),
    client_ca: Option<(&Path, &[u8])>,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
    let certs = |what: &str, p: &Path, pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what} {}: {e}", p.display()))
    };
    let chain = certs("tls_cert", cert, cert_pem)?;
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((p, pem)) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs("tls_client_ca", p, pem)?);
            if added == 0 {
                return Err(format!(
                    "tls_client_ca {}: no usable certificate",
                    p.display()
                ));
            }
            let verifier = WebPkiClientVerifier::builder(roots.into())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls_client_ca {}: {e}", p.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        format!(
            "tls_cert {} / tls_key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A cheap check that a file holds the PEM block expected, so a swapped path fails at
/// start with its name rather than at the first handshake.
fn check_pem(field: &str, path: &Path, pem: &[u8], label: &str) -> Result<(), String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN ") && text.contains(label) {
        Ok(())
    } else {
        Err(format!(
            "{field} {}: not a PEM file with a {label} block",
            path.display()
        ))
    }
}

/// The node name in a client certificate (DER): its subject's common name.
pub fn node_name_from_cert(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the certificate's subject has no common name (CN), which names the node")?;
    let name = cn
        .as_str()
        .map_err(|e| format!("the certificate's common name is not text: {e}"))?;
    if name.is_empty() {
        return Err("the certificate's common name is empty".into());
    }
    Ok(name.to_string())
}

/// What `cert init` should make.
#[derive(Debug, Clone, Default)]
pub struct CertInit {
    /// Output directory (created mode 0700 if missing).
    pub dir: PathBuf,
    /// Node names: one client certificate each (`node-<name>.pem`, `node-<name>.key`).
    pub nodes: Vec<String>,
    /// Extra names or addresses for the engine's certificate, besides `localhost`,
    /// `127.0.0.1` and `::1`.
    pub hosts: Vec<String>,
    /// Lifetime of the certificates.
    pub days: u32,
}

/// File names `cert init` writes in its directory.
pub mod names {
    /// The CA certificate: `--ca-cert` of clients and nodes, `tls_client_ca` of the engine.
    pub const CA_CERT: &str = "ca.pem";
    /// The CA key; keep it offline in anything but a test cloud.
    pub const CA_KEY: &str = "ca.key";
    /// The engine's certificate (`tls_cert`).
    pub const ENGINE_CERT: &str = "engine.pem";
    /// The engine's key (`tls_key`).
    pub const ENGINE_KEY: &str = "engine.key";

    /// A node's certificate.
    pub fn node_cert(name: &str) -> String {
        format!("node-{name}.pem")
    }

    /// A node's key.
    pub fn node_key(name: &str) -> String {
        format!("node-{name}.key")
    }
}

fn rc(what: &str, e: rcgen::Error) -> String {
    format!("{what}: {e}")
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

/// Makes (or completes) a development PKI in `spec.dir`: a CA, the engine's server
/// certificate and one client certificate per node. Files that exist are kept, so running
/// it again with more `--nodes` adds their certificates under the same CA. Returns the
/// files written.
pub fn cert_init(spec: &CertInit) -> Result<Vec<PathBuf>, String> {
    for n in &spec.nodes {
        if n.is_empty()
            || n.len() > 200
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "invalid node name {n:?}: 1 to 200 characters of A-Z, a-z, 0-9, '-', '_', '.'"
            ));
        }
    }
    ensure_dir(&spec.dir)?;
    let path = |f: &str| spec.dir.join(f);
    let mut written = Vec::new();
    let days = if spec.days == 0 { 825 } else { spec.days };

    // The CA: reuse the one in the directory, or make one.
    let (ca_pem, ca_key) = if path(names::CA_CERT).exists() {
        let cert = std::fs::read_to_string(path(names::CA_CERT))
            .map_err(|e| format!("{}: {e}", path(names::CA_CERT).display()))?;
        let key = super::files::read_secret(&path(names::CA_KEY))?;
        (cert, key)
    } else {
        let key = KeyPair::generate().map_err(|e| rc("CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "berth development CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, days.max(3650));
        let cert = params
            .self_signed(&key)
            .map_err(|e| rc("CA certificate", e))?;
        write_secret(&path(names::CA_KEY), &key.serialize_pem())?;
        write_file(&path(names::CA_CERT), &cert.pem())?;
        written.push(path(names::CA_KEY));
        written.push(path(names::CA_CERT));
        (cert.pem(), key.serialize_pem())
    };
    let ca_key = KeyPair::from_pem(&ca_key).map_err(|e| rc("CA key", e))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| rc("CA certificate", e))?;

    if !path(names::ENGINE_CERT).exists() {
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        sans.extend(spec.hosts.iter().cloned());
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|h| match h.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| format!("--hosts {h:?}: {e}")),
            })
            .collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "berth-engine");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, days);
        let key = KeyPair::generate().map_err(|e| rc("engine key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| rc("engine certificate", e))?;
        write_secret(&path(names::ENGINE_KEY), &key.serialize_pem())?;
        write_file(&path(names::ENGINE_CERT), &cert.pem())?;
        written.push(path(names::ENGINE_KEY));
        written.push(path(names::ENGINE_CERT));
    }

    for node in &spec.nodes {
        let cert_path = path(&names::node_cert(node));
        if cert_path.exists() {
            continue;
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.as_str());
        params.distinguished_name = dn;
        if let Ok(dns) = node.clone().try_into() {
            params.subject_alt_names = vec![SanType::DnsName(dns)];
        }
        // Client authentication only: a node certificate cannot serve TLS, and the
        // engine's cannot open a node stream.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, days);
        let key = KeyPair::generate().map_err(|e| rc("node key", e))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| rc(&format!("certificate of node {node}"), e))?;
        let key_path = path(&names::node_key(node));
        write_secret(&key_path, &key.serialize_pem())?;
        write_file(&cert_path, &cert.pem())?;
        written.push(key_path);
        written.push(cert_path);
    }
    Ok(written)
}

/// Writes a public file (a certificate).
fn write_file(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn cert_init_makes_a_ca_engine_and_node_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let spec = CertInit {
            dir: dir.path().join("pki"),
            nodes: vec!["a".into(), "b".into()],
            hosts: vec!["engine.example".into(), "10.0.0.5".into()],
            days: 30,
        };
        let written = cert_init(&spec).unwrap();
        assert_eq!(written.len(), 8, "{written:?}");
        let read = |f: &str| std::fs::read_to_string(spec.dir.join(f)).unwrap();
        // The node's name is its common name; the engine's has the SANs asked for.
        assert_eq!(
            node_name_from_cert(&pem_der(&read(&names::node_cert("a")))).unwrap(),
            "a"
        );
        let engine = pem_der(&read(names::ENGINE_CERT));
        let (_, cert) = x509_parser::parse_x509_certificate(&engine).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string(),
                    _ => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string(),
                },
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            sans,
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "engine.example",
                "10.0.0.5"
            ]
        );
        // Keys are private.
        use std::os::unix::fs::PermissionsExt;
        for f in [names::CA_KEY, names::ENGINE_KEY, &names::node_key("b")] {
            let mode = std::fs::metadata(spec.dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // Again with one more node: only its files are written, under the same CA.
        let more = CertInit {
            nodes: vec!["a".into(), "c".into()],
            ..spec.clone()
        };
        let written = cert_init(&more).unwrap();
        assert_eq!(written.len(), 2, "{written:?}");
        let c_der = pem_der(&read(&names::node_cert("c")));
        let ca_der = pem_der(&read(names::CA_CERT));
        let (_, c) = x509_parser::parse_x509_certificate(&c_der).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(
            c.verify_signature(Some(ca.public_key())).is_ok(),
            "signed by the same CA"
        );
        assert!(
            cert_init(&CertInit {
                nodes: vec!["bad name".into()],
                ..spec
            })
            .unwrap_err()
            .contains("invalid node name")
        );
    }

    #[test]
    fn server_tls_names_the_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = CertInit {
            dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        cert_init(&spec).unwrap();
        let p = |f: &str| dir.path().join(f);
        assert!(
            server_tls(
                &p(names::ENGINE_CERT),
                &p(names::ENGINE_KEY),
                Some(&p(names::CA_CERT))
            )
            .is_ok()
        );
        let e = server_tls(&p(names::ENGINE_KEY), &p(names::ENGINE_KEY), None).unwrap_err();
        assert!(e.contains("tls_cert"), "{e}");
        let e = server_tls(&p(names::ENGINE_CERT), &p("missing.key"), None).unwrap_err();
        assert!(e.contains("tls_key") && e.contains("missing.key"), "{e}");
        // The right PEM labels around a key that is not one, and a CA block that is not a
        // certificate: rustls's side refuses them at start, naming the file.
        std::fs::write(
            p("bad.key"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = server_tls(&p(names::ENGINE_CERT), &p("bad.key"), None).unwrap_err();
        assert!(e.contains("bad.key"), "{e}");
        std::fs::write(
            p("bad-ca.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = server_tls(
            &p(names::ENGINE_CERT),
            &p(names::ENGINE_KEY),
            Some(&p("bad-ca.pem")),
        )
        .unwrap_err();
        assert!(
            e.contains("tls_client_ca") && e.contains("bad-ca.pem"),
            "{e}"
        );
        assert!(node_name_from_cert(b"junk").unwrap_err().contains("X.509"));
    }
}
