//! TLS, with rustls and its ring provider (passed to each config, so no
//! process-wide default is installed):
//! - [`callback_connector`]: what `https://` callbacks go out with: the
//!   system's CA certificates (read once per process) plus those of
//!   `cpee.callback_ca_file`.
//!
//! Every file is read and checked when the broker starts; a bad one is a
//! startup error that names its key.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, CpeeConfig};

/// The only protocol the broker speaks (hyper's HTTP/1).
const ALPN_HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The connector `https://` callbacks use: certificates are verified
/// against the system's CA certificates and `cpee.callback_ca_file`'s.
pub fn callback_connector(cpee: &CpeeConfig) -> Result<TlsConnector, ConfigError> {
    let mut roots = system_roots().clone();
    let own = !cpee.callback_ca_file.as_os_str().is_empty();
    if own {
        let path = &cpee.callback_ca_file;
        for (i, cert) in certificates("cpee.callback_ca_file", path)?
            .into_iter()
            .enumerate()
        {
            roots.add(cert).map_err(|e| {
                ConfigError::new(format!(
                    "cpee.callback_ca_file: {}: certificate {} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates found on this system and cpee.callback_ca_file is not set: \
             every https callback will fail certificate verification"
        );
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The system's CA certificates, read once per process (every broker in
/// it trusts the same ones; tests start many).
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "a system CA certificate could not be read");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system CA certificates");
        roots
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let problem = |e: rustls::pki_types::pem::Error| {
        ConfigError::new(format!(
            "{key}: {}: {}",
            path.display(),
            pem_problem(&e, "certificate (BEGIN CERTIFICATE)")
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(problem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(problem)?;
    if certs.is_empty() {
        return Err(problem(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certs)
}

fn pem_problem(e: &rustls::pki_types::pem::Error, what: &str) -> String {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("no PEM {what} in the file")
        }
        rustls::pki_types::pem::Error::Io(e) => format!("cannot read the file: {e}"),
        e => format!("not a valid PEM file: {e}"),
    }
}
