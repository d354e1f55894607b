//! Mutual TLS between coordinators: each coordinator holds a certificate signed by the
//! cluster's CA, serves its Raft RPC only to clients with such a certificate, and talks only to
//! servers with one that names the address it dialled.
//!
//! [`TlsMaterial`] is what one coordinator needs (from PEM files in production);
//! [`ClusterCa`] mints a CA and coordinator certificates, for tests and for clusters on one
//! machine. Everything uses rustls with the ring provider explicitly (the workspace also links
//! aws-lc-rs, so relying on a process-wide default provider would be ambiguous).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use airlock_client::pki::{self, PemError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS material could not be read, made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("the CA certificate is not usable as a trust anchor")]
    TrustAnchor(#[source] rustls::Error),
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("cannot build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("cannot make a certificate")]
    Generate(#[source] rcgen::Error),
}

/// One coordinator's TLS identity and the cluster CA it trusts.
pub struct TlsMaterial {
    /// Certificates of the cluster CA(s): a peer must present a certificate one of them signed.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// This coordinator's certificate (leaf first). It must name the host peers dial, and
    /// allow both server and client authentication.
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> TlsMaterial {
        TlsMaterial {
            ca_certs: self.ca_certs.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for TlsMaterial {
    /// Leaves the private key out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_certs", &self.ca_certs.len())
            .field("cert_chain", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// From PEM text: the CA certificate(s), this coordinator's chain, and its private key.
    pub fn from_pem(ca: &[u8], cert_chain: &[u8], key: &[u8]) -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            ca_certs: pki::certs_from_pem(ca, "the CA PEM")?,
            cert_chain: pki::certs_from_pem(cert_chain, "the certificate PEM")?,
            key: pki::key_from_pem(key, "the key PEM")?,
        })
    }

    /// From PEM files (what an operator configures).
    pub fn from_pem_files(
        ca: &Path,
        cert_chain: &Path,
        key: &Path,
    ) -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            ca_certs: pki::read_certs(ca)?,
            cert_chain: pki::read_certs(cert_chain)?,
            key: pki::read_key(key)?,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca_certs {
            roots.add(ca.clone()).map_err(TlsError::TrustAnchor)?;
        }
        Ok(Arc::new(roots))
    }

    /// The listener's side: requires a client certificate signed by the cluster CA.
    pub(crate) fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(TlsError::Verifier)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The dialling side: presents this coordinator's certificate, trusts only the cluster CA.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A cluster CA held in memory: issues coordinator certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA with a fresh ECDSA P-256 key; `name` goes in its common name.
    pub fn generate(name: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        Ok(ClusterCa {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM, for operators to distribute.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A coordinator certificate naming `hosts` (DNS names or IP addresses), valid for both
    /// ends of the Raft RPC, with this CA as the trust anchor.
    pub fn issue(&self, common_name: &str, hosts: &[&str]) -> Result<TlsMaterial, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(TlsError::Generate)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::Generate)?;
        Ok(TlsMaterial {
            ca_certs: vec![self.cert.clone()],
            cert_chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }
}
