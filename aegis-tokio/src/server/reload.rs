//! SIGHUP: read the config again and swap it in whole, or keep the old one and say why.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use aegis_policy::config::TlsConfig;

use crate::state::{ConfigSource, Runtime, Shared};
use crate::tls::server::CertStore;

/// The certificates of the new config, loaded and checked (a bad file refuses the reload,
/// naming it); `None` when the listener has no TLS. TLS turned on or off, and its other
/// settings, need a restart.
fn reload_certs(
    shared: &Shared,
    was: Option<&TlsConfig>,
    now: Option<&TlsConfig>,
) -> Result<Option<CertStore>, String> {
    let Some(t) = now else {
        if was.is_some() {
            tracing::warn!("[server.tls] removed: a restart turns TLS off");
        }
        return Ok(None);
    };
    if shared.tls.is_none() {
        tracing::warn!("[server.tls] added: a restart turns TLS on");
        return Ok(None);
    }
    if let Some(w) = was
        && (w.tls13_only != t.tls13_only
            || w.client_ca != t.client_ca
            || w.client_cert_optional != t.client_cert_optional
            || w.handshake_timeout != t.handshake_timeout
            || w.redirect_listen != t.redirect_listen)
    {
        tracing::warn!(
            "server.tls: min_version, handshake_timeout, redirect_listen and client_ca/client_auth \
             changes need a restart (certificates reload now)"
        );
    }
    CertStore::load(t, crate::time::wall().as_secs())
        .map(Some)
        .map_err(|e| format!("server.tls: {e}"))
}

/// SIGHUP: read the config again and swap it in whole, or keep the old one and say why.
pub(super) fn reload(shared: &Shared) {
    if let ConfigSource::Inline(_) = shared.source {
        tracing::info!("SIGHUP: this config is built in; nothing to reload");
        return;
    }
    let old = shared.runtime.load_full();
    let result = shared.source.load().and_then(|c| {
        let was = &old.policy.config().server;
        if c.server.listen != was.listen || c.server.admin_listen != was.admin_listen {
            tracing::warn!("listen addresses changed in the config: a restart applies them");
        }
        if c.server.header_read_timeout != was.header_read_timeout
            || c.server.idle_timeout != was.idle_timeout
        {
            tracing::warn!(
                "server.header_read_timeout / server.idle_timeout changed: a restart applies them"
            );
        }
        if c.server.max_header_bytes > was.max_header_bytes
            || c.server.max_uri_bytes > was.max_uri_bytes
        {
            tracing::warn!(
                "server.max_header_size / server.max_uri_length raised: a restart applies the \
                 larger read buffer (until then heads past the old size get 431/414)"
            );
        }
        for w in c.warnings() {
            tracing::warn!("{w}");
        }
        let certs = reload_certs(shared, was.tls.as_ref(), c.server.tls.as_ref())?;
        let rt = Runtime::build(c, Some(&old), &shared.metrics, shared.clock.now().mono)?;
        Ok((rt, certs))
    });
    match result {
        Ok((rt, certs)) => {
            let n = rt.policy.config().routes.len();
            rt.start_jwks(shared.clock);
            // Certificates and config swap together: both were checked first.
            if let (Some(tls), Some(certs)) = (&shared.tls, certs) {
                let names: Vec<&str> = certs.certs.iter().map(|c| c.cert_path.as_str()).collect();
                tracing::info!("TLS certificates reloaded: {}", names.join(", "));
                tls.store.store(Arc::new(certs));
            }
            shared.runtime.store(Arc::new(rt));
            shared.metrics.reloads.fetch_add(1, Relaxed);
            tracing::info!("config reloaded: {n} routes");
        }
        Err(e) => {
            shared.metrics.reload_failures.fetch_add(1, Relaxed);
            tracing::error!("config reload refused, the previous config keeps serving: {e}");
        }
    }
}
