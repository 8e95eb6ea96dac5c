//! PEM files: certificate chains, private keys and CA bundles, read with errors that name the
//! file, and the validity period of a certificate.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::Decode;

/// The certificates of a PEM file, in order (leaf first for a chain). Errors name the file.
pub fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{path}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| format!("{path}: holds no PEM private key (PKCS#8, RSA or EC): {e}"))
}

/// A certificate's `notBefore` and `notAfter`, in Unix seconds, and its subject (for logs and
/// stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub not_before: u64,
    pub not_after: u64,
    pub subject: String,
}

pub fn validity(cert: &CertificateDer<'_>) -> Result<Validity, String> {
    let c = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let v = &c.tbs_certificate().validity();
    Ok(Validity {
        not_before: v.not_before.to_unix_duration().as_secs(),
        not_after: v.not_after.to_unix_duration().as_secs(),
        subject: c.tbs_certificate().subject().to_string(),
    })
}
