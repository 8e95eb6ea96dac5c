//! TLS termination on the proxy listener: the certificates of `[server.tls]` (each checked: the
//! files readable, the key matching the certificate, not expired), chosen per handshake by SNI
//! (exact names, then `*.` wildcards of one label, else the default), swapped whole on
//! SIGHUP; and the rustls server config (ALPN h2 and http/1.1, TLS 1.2 and 1.3).

use std::fmt;
use std::sync::Arc;

use aegis_policy::config::{CertConfig, TlsConfig};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::pem::{self, Validity};

/// One loaded certificate: its chain and key, the names it is served for, its validity.
pub struct Loaded {
    pub cert_path: String,
    /// Lower-case SNI names: exact, or `*.suffix`.
    pub names: Vec<String>,
    pub validity: Validity,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("cert_path", &self.cert_path)
            .field("names", &self.names)
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

/// The certificates of one `[server.tls]`, the default first.
#[derive(Debug)]
pub struct CertStore {
    pub certs: Vec<Loaded>,
}

impl CertStore {
    /// Loads and checks every certificate; `now_unix`: wall time, for the expiry check. The
    /// error names the file and what is wrong with it.
    pub fn load(cfg: &TlsConfig, now_unix: u64) -> Result<CertStore, String> {
        let certs = cfg
            .certificates
            .iter()
            .map(|c| load_one(c, now_unix))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore { certs })
    }

    /// The certificate for a client that sent `sni` (or none).
    fn pick(&self, sni: Option<&str>) -> &Loaded {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.certs.iter().find(|c| c.names.contains(&name)) {
                return c;
            }
            if let Some((_, parent)) = name.split_once('.') {
                let wild = format!("*.{parent}");
                if let Some(c) = self.certs.iter().find(|c| c.names.contains(&wild)) {
                    return c;
                }
            }
        }
        &self.certs[0]
    }
}

fn load_one(c: &CertConfig, now_unix: u64) -> Result<Loaded, String> {
    let chain = pem::certs(&c.cert)?;
    let key = pem::key(&c.key)?;
    let validity = pem::validity(&chain[0]).map_err(|e| format!("{}: {e}", c.cert))?;
    if validity.not_after <= now_unix {
        return Err(format!(
            "{}: the certificate expired at {} (Unix time {})",
            c.cert,
            httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(validity.not_after)
            ),
            validity.not_after
        ));
    }
    let provider = super::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", c.key))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|_| {
        format!(
            "{}: the private key does not match the certificate {}",
            c.key, c.cert
        )
    })?;
    let names = if c.names.is_empty() {
        dns_names(&chain[0]).map_err(|e| format!("{}: {e}", c.cert))?
    } else {
        c.names.clone()
    };
    Ok(Loaded {
        cert_path: c.cert.clone(),
        names,
        validity,
        key: Arc::new(certified),
    })
}

/// The DNS names of a certificate's subjectAltName, lower-cased.
fn dns_names(cert: &rustls::pki_types::CertificateDer<'_>) -> Result<Vec<String>, String> {
    let c = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut out = Vec::new();
    for ext in c.tbs_certificate().extensions().into_iter().flatten() {
        if ext.extn_id != const_oid_san() {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|e| format!("bad subjectAltName: {e}"))?;
        for n in san.0 {
            if let GeneralName::DnsName(d) = n {
                out.push(d.as_str().to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

fn const_oid_san() -> x509_cert::der::asn1::ObjectIdentifier {
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17")
}

/// Picks the certificate per handshake from the current store.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertStore>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(hello.server_name()).key.clone())
    }
}

/// The TLS side of the proxy listener: the acceptor, and its certificates (reloadable).
#[derive(Clone)]
pub struct TlsServer {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub store: Arc<ArcSwap<CertStore>>,
    pub handshake_timeout: std::time::Duration,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("store", &self.store)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    pub fn new(cfg: &TlsConfig, store: CertStore) -> Result<TlsServer, String> {
        let store = Arc::new(ArcSwap::from_pointee(store));
        let versions: &[&rustls::SupportedProtocolVersion] = if cfg.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS12, &rustls::version::TLS13]
        };
        let builder = ServerConfig::builder_with_provider(super::provider())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let builder = match &cfg.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for c in pem::certs(path)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
                }
                let v =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider());
                let v = if cfg.client_cert_optional {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| format!("{path}: {e}"))?)
            }
        };
        let mut sc = builder.with_cert_resolver(Arc::new(Resolver(store.clone())));
        sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(sc)),
            store,
            handshake_timeout: cfg.handshake_timeout,
        })
    }
}
