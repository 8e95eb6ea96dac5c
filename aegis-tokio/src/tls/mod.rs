//! TLS on rustls with the ring provider: the proxy listener's certificates (chosen by SNI,
//! reloadable), and the client side for https upstreams and JWKS URLs.
//!
//! ```text
//!   pem      PEM files: certificate chains, private keys, CA bundles; notAfter of a cert
//!   client   ClientConfig: bundled roots (webpki-roots) + upstream_tls.ca, optional client cert
//!   server   the certificates of [server.tls] by SNI (reloadable), the acceptor
//! ```

pub mod client;
pub mod pem;
pub mod server;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider of the process: ring (see the workspace Cargo.toml for why).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
