//! TLS in both directions, with rustls and its ring provider (passed to
//! each config, so no process-wide default is installed):
//! - [`acceptor`]: the listener's, from `http.tls_cert_file` and
//!   `http.tls_key_file`, offering ALPN `http/1.1`;
//! - [`callback_connector`]: what `https://` callbacks go out with: the
//!   system's CA certificates (read once per process) plus those of
//!   `cpee.callback_ca_file`;
//! - [`node_client_config`]: what a cluster node forwards to an `https://`
//!   leader with: the system's CA certificates plus `cluster.ca_file`'s.
//!
//! Every file is read and checked when the broker starts; a bad one is a
//! startup error that names its key.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClusterConfig, ConfigError, CpeeConfig, HttpConfig};

/// The only protocol either side speaks (hyper's HTTP/1 is all the broker has).
const ALPN_HTTP11: &[u8] = b"http/1.1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks every TLS file the config names, as the server does
/// when it starts (for the binary to refuse a bad file as a config error).
pub fn check(config: &crate::Config) -> Result<(), ConfigError> {
    acceptor(&config.http)?;
    callback_connector(&config.cpee)?;
    if config.cluster.enabled() {
        node_client_config(&config.cluster)?;
    }
    Ok(())
}

/// The acceptor the listener serves https with, if `http.tls_cert_file`
/// is set (`Config::validate` made sure the key is set with it).
pub fn acceptor(http: &HttpConfig) -> Result<Option<TlsAcceptor>, ConfigError> {
    if !http.serves_https() {
        return Ok(None);
    }
    let chain = certificates("http.tls_cert_file", &http.tls_cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&http.tls_key_file).map_err(|e| {
        ConfigError::new(format!(
            "http.tls_key_file: {}: {}",
            http.tls_key_file.display(),
            pem_problem(
                &e,
                "private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            )
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            ConfigError::new(format!(
                "http.tls_cert_file / http.tls_key_file ({} / {}): {e}",
                http.tls_cert_file.display(),
                http.tls_key_file.display()
            ))
        })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The connector `https://` callbacks use: certificates are verified
/// against the system's CA certificates and `cpee.callback_ca_file`'s.
pub fn callback_connector(cpee: &CpeeConfig) -> Result<TlsConnector, ConfigError> {
    let config = client_config("cpee.callback_ca_file", &cpee.callback_ca_file)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What a cluster node forwards writes to an `https://` leader with: the
/// system's CA certificates and those of `cluster.ca_file` (the CA of the
/// NATS servers and of the nodes, when it is a private one).
pub fn node_client_config(cluster: &ClusterConfig) -> Result<ClientConfig, ConfigError> {
    let mut config = client_config("cluster.ca_file", Path::new(&cluster.ca_file))?;
    // hyper-rustls refuses a config that names protocols; with HTTP/1
    // only, it offers none (servers then speak HTTP/1.1).
    config.alpn_protocols.clear();
    Ok(config)
}

/// A client config that trusts the system's CA certificates and those in
/// `path` (the config key `key` names it; empty: none).
fn client_config(key: &str, path: &Path) -> Result<ClientConfig, ConfigError> {
    let mut roots = system_roots().clone();
    let own = !path.as_os_str().is_empty();
    if own {
        for (i, cert) in certificates(key, path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                ConfigError::new(format!(
                    "{key}: {}: certificate {} is not a usable CA certificate: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
        }
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates found on this system and {key} is not set: \
             every https connection it is for will fail certificate verification"
        );
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
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
