//! SIGHUP: read the config again and swap it in whole, or keep the old one and say why.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::state::{ConfigSource, Runtime, Shared};

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
        Runtime::build(c, Some(&old), &shared.metrics, shared.clock.now().mono)
    });
    match result {
        Ok(rt) => {
            let n = rt.policy.config().routes.len();
            rt.start_jwks(shared.clock);
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
