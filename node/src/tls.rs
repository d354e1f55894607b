//! The node's TLS identity for QUIC: a self-signed certificate made at start (its SHA-256
//! fingerprint is what clients pin) or a certificate chain and key read from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_client::pki::Identity;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// Where the node's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Make a fresh self-signed certificate for these DNS names and IP addresses.
    SelfSigned { names: Vec<String> },
    /// Read a PEM certificate chain and a PEM private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// Why the certificate could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not make a self-signed certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{0}; give PEM files with the CERTIFICATE chain and the PRIVATE KEY")]
    Pem(#[from] airlock_client::pki::PemError),
    #[error("the certificate and key were refused by TLS: {0}")]
    Rustls(#[source] rustls::Error),
}

/// A certificate chain, its key, and the fingerprint of the leaf.
#[derive(Debug)]
pub struct NodeCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Lowercase hex SHA-256 of the leaf certificate's DER bytes.
    pub fingerprint: String,
}

impl NodeCertificate {
    pub fn load(source: &TlsSource) -> Result<Self, TlsError> {
        match source {
            TlsSource::SelfSigned { names } => Self::self_signed(names),
            TlsSource::Files { cert, key } => Self::from_pem_files(cert, key),
        }
    }

    fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let certified =
            rcgen::generate_simple_self_signed(names.to_vec()).map_err(TlsError::Generate)?;
        let leaf = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        Ok(NodeCertificate {
            fingerprint: fingerprint(&leaf),
            chain: vec![leaf],
            key,
        })
    }

    fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let Identity { chain, key } = Identity::from_pem_files(cert, key)?;
        // `read_certs` returns at least one certificate: the leaf comes first.
        let fingerprint = chain
            .first()
            .map(|leaf| fingerprint(leaf))
            .unwrap_or_default();
        Ok(NodeCertificate {
            chain,
            key,
            fingerprint,
        })
    }

    /// A rustls server configuration offering `alpn`, TLS 1.3 only (QUIC requires it).
    pub fn server_config(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(TlsError::Rustls)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}
