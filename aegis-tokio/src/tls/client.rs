//! The client side of TLS: whom an https upstream or a JWKS URL is trusted to be (the bundled
//! Mozilla roots of webpki-roots, plus the CAs of `upstream_tls.ca`), and the optional client
//! certificate for upstream mTLS.

use std::sync::Arc;

use aegis_policy::config::UpstreamTlsConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The client config of `[upstream_tls]`: the files read (errors name them).
pub fn from_config(cfg: &UpstreamTlsConfig) -> Result<Arc<ClientConfig>, String> {
    let extra = match &cfg.ca {
        Some(path) => super::pem::certs(path)?,
        None => Vec::new(),
    };
    let identity = match (&cfg.client_cert, &cfg.client_key) {
        (Some(c), Some(k)) => Some((super::pem::certs(c)?, super::pem::key(k)?)),
        _ => None,
    };
    config(&extra, !cfg.ca_only, identity).map_err(|e| match &cfg.ca {
        Some(p) if e.starts_with("CA") => format!("{p}: {e}"),
        _ => e,
    })
}

/// A client config trusting the bundled roots (when `bundled`) and `extra` CAs, presenting
/// `identity` when a server asks for a client certificate. ALPN: http/1.1 (the upstream
/// client speaks it).
pub fn config(
    extra: &[CertificateDer<'static>],
    bundled: bool,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if bundled {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for (i, ca) in extra.iter().enumerate() {
        roots
            .add(ca.clone())
            .map_err(|e| format!("CA certificate {} is not usable: {e}", i + 1))?;
    }
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate: {e}"))?,
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
