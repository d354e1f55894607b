//! PEM in and out, the one place every part of Airlock reads and writes its TLS material: the
//! node's certificate, the tunnel's identities, the coordinators' cluster certificates and the
//! files the CLI writes.

use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM material could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read PEM from {what}: {source}")]
    Read {
        /// The file (or the text's name) that was read.
        what: String,
        #[source]
        source: pem::Error,
    },
    #[error("{what} holds no certificate")]
    NoCertificate { what: String },
}

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// The chain in `cert` and the key in `key`, both PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, PemError> {
        Ok(Identity {
            chain: read_certs(cert)?,
            key: read_key(key)?,
        })
    }
}

/// Every certificate of the PEM file at `path` (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certs_from_pem(&read(path)?, &path.display().to_string())
}

/// The private key of the PEM file at `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    key_from_pem(&read(path)?, &path.display().to_string())
}

/// Every certificate of the PEM text `pem` (at least one); `what` names it in errors.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Read {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key of the PEM text `pem`; `what` names it in errors.
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| PemError::Read {
        what: what.to_owned(),
        source,
    })
}

/// `der` as PEM text with `label` (`CERTIFICATE`, `PRIVATE KEY`), 64 characters a line.
pub fn encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // Base64 is ASCII, so every 64-byte chunk is a valid string.
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|error| PemError::Read {
        what: path.display().to_string(),
        source: pem::Error::Io(error),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn what_is_encoded_reads_back() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node.test".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_pem = encode("CERTIFICATE", cert.der());
        assert_eq!(
            certs_from_pem(cert_pem.as_bytes(), "cert").unwrap(),
            vec![cert.der().clone()]
        );
        let key_pem = encode("PRIVATE KEY", &key.serialize_der());
        assert_eq!(
            key_from_pem(key_pem.as_bytes(), "key")
                .unwrap()
                .secret_der(),
            key.serialize_der().as_slice()
        );
        assert!(matches!(
            certs_from_pem(key_pem.as_bytes(), "the key file"),
            Err(PemError::NoCertificate { .. })
        ));
        assert!(matches!(
            read_certs(Path::new("/nonexistent/cert.pem")),
            Err(PemError::Read { .. })
        ));
    }
}
