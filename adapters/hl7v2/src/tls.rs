//! MLLP over TLS (feature `tls`, on by default): a `tokio-rustls` acceptor from PEM files,
//! with optional client-certificate authentication (mutual TLS), for
//! [`MllpServer::serve_tls`](crate::mllp::MllpServer::serve_tls).
//!
//! The crypto provider is `ring`; TLS 1.2 and 1.3 are offered.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};

pub use tokio_rustls::TlsAcceptor;

/// Why a TLS acceptor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The certificate chain PEM holds no usable certificate.
    #[error("certificate chain: {0}")]
    Certificate(String),
    /// The private key PEM holds no usable key.
    #[error("private key: {0}")]
    Key(String),
    /// The client CA PEM holds no usable certificate.
    #[error("client CA: {0}")]
    ClientCa(String),
    /// rustls refused the configuration (a key that does not match the certificate …).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(certs)
}

/// An acceptor from PEM bytes: the server's certificate chain, its private key (PKCS#8,
/// SEC1 or PKCS#1), and, for mutual TLS, the CA certificates client certificates must
/// chain to (then a client without a valid certificate is refused).
pub fn acceptor(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<TlsAcceptor, TlsError> {
    let chain = certs(cert_chain_pem).map_err(TlsError::Certificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in certs(pem).map_err(TlsError::ClientCa)? {
                roots
                    .add(ca)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// An acceptor from PEM files (see [`acceptor`]).
pub fn acceptor_from_files(
    cert_chain: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let ca = client_ca.map(read).transpose()?;
    acceptor(&read(cert_chain)?, &read(key)?, ca.as_deref())
}
