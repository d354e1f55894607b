//! Capability tokens: who may do what on which document, signed by the coordinator.
//!
//! A token is `v1.<claims>.<signature>`, both parts base64url without padding. The claims are a
//! JSON object ([`Claims`]); the signature is ed25519 over the ASCII bytes of `v1.<claims>`, so
//! the version prefix is signed too. Verification takes `now` as an argument: this module reads no
//! clock. Keys are PKCS#8 / SPKI PEM, the same files `openssl genpkey -algorithm ed25519` writes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The longest token accepted, in bytes; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

const PREFIX: &str = "v1.";

/// What a token may do on its document.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May only watch: receives outputs, cannot execute or edit.
    Viewer,
    /// May edit and execute.
    Editor,
    /// May edit, execute, and manage the document.
    Owner,
}

impl Role {
    /// Whether this role may run code.
    pub fn can_execute(self) -> bool {
        matches!(self, Role::Editor | Role::Owner)
    }

    /// Whether the role may change the document (edit cells, import, switch modes).
    pub fn can_edit(self) -> bool {
        matches!(self, Role::Editor | Role::Owner)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "owner" => Ok(Role::Owner),
            other => Err(format!(
                "unknown role {other:?}: use owner, editor or viewer"
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Owner => "owner",
        })
    }
}

/// What a token grants.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The document id.
    pub doc: String,
    /// The user, as the platform names them.
    pub user: String,
    pub role: Role,
    /// The allocation epoch the token was issued for; a node serving a newer epoch refuses it.
    pub epoch: u64,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token signature does not verify against this node's public key")]
    BadSignature,
    #[error("token expired {ago_secs} s ago; ask the coordinator for a new session")]
    Expired { ago_secs: u64 },
    #[error("token is for document {token_doc:?}, not {served_doc:?}")]
    WrongDocument {
        token_doc: String,
        served_doc: String,
    },
    #[error("token is for epoch {token_epoch}, but this node serves epoch {served_epoch}")]
    StaleEpoch { token_epoch: u64, served_epoch: u64 },
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an ed25519 private key in PKCS#8 PEM: {0}")]
    Private(#[source] ed25519_dalek::pkcs8::Error),
    #[error("not an ed25519 public key in SPKI PEM: {0}")]
    Public(#[source] ed25519_dalek::pkcs8::spki::Error),
}

/// Signs `claims` with `key`.
pub fn sign(claims: &Claims, key: &SigningKey) -> String {
    // Serialising a struct of strings and integers to JSON cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = String::with_capacity(PREFIX.len() + json.len() * 2 + 90);
    token.push_str(PREFIX);
    B64.encode_string(&json, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    B64.encode_string(signature.to_bytes(), &mut token);
    token
}

/// Checks the signature and the expiry of `token` at `now_unix` (seconds) and returns its claims.
/// Whether the claims fit the document is [`Claims::check_for`]'s job.
pub fn verify(token: &str, key: &VerifyingKey, now_unix: u64) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("longer than 4096 bytes"));
    }
    let rest = token
        .strip_prefix(PREFIX)
        .ok_or(TokenError::Malformed("does not start with v1."))?;
    let (claims_b64, sig_b64) = rest
        .split_once('.')
        .ok_or(TokenError::Malformed("missing signature part"))?;
    let signed = &token[..PREFIX.len() + claims_b64.len()];
    let sig_bytes: [u8; 64] = B64
        .decode(sig_b64)
        .map_err(|_| TokenError::Malformed("signature is not base64url"))?
        .try_into()
        .map_err(|_| TokenError::Malformed("signature is not 64 bytes"))?;
    key.verify(signed.as_bytes(), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| TokenError::BadSignature)?;
    let json = B64
        .decode(claims_b64)
        .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("claims are not valid"))?;
    if claims.exp <= now_unix {
        return Err(TokenError::Expired {
            ago_secs: now_unix - claims.exp,
        });
    }
    Ok(claims)
}

impl Claims {
    /// Checks that these claims are for `doc` at an epoch no older than `epoch`.
    pub fn check_for(&self, doc: &str, epoch: u64) -> Result<(), TokenError> {
        if self.doc != doc {
            return Err(TokenError::WrongDocument {
                token_doc: self.doc.clone(),
                served_doc: doc.to_owned(),
            });
        }
        if self.epoch < epoch {
            return Err(TokenError::StaleEpoch {
                token_epoch: self.epoch,
                served_epoch: epoch,
            });
        }
        Ok(())
    }
}

/// Reads a private key from PKCS#8 PEM.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(KeyError::Private)
}

/// Reads a public key from SPKI PEM.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_public_key_pem(pem).map_err(KeyError::Public)
}

/// Writes a private key as PKCS#8 PEM.
pub fn signing_key_to_pem(key: &SigningKey) -> Result<String, KeyError> {
    key.to_pkcs8_pem(Default::default())
        .map(|pem| pem.to_string())
        .map_err(KeyError::Private)
}

/// Writes a public key as SPKI PEM.
pub fn verifying_key_to_pem(key: &VerifyingKey) -> Result<String, KeyError> {
    key.to_public_key_pem(Default::default())
        .map_err(KeyError::Public)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn claims(exp: u64) -> Claims {
        Claims {
            doc: "doc-1".into(),
            user: "ada".into(),
            role: Role::Editor,
            epoch: 7,
            exp,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let key = SigningKey::generate(&mut OsRng);
        let other = SigningKey::generate(&mut OsRng);
        let token = sign(&claims(1_000), &key);
        let got = verify(&token, &key.verifying_key(), 999).unwrap();
        assert_eq!(got, claims(1_000));
        assert_eq!(
            verify(&token, &other.verifying_key(), 999),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify(&token, &key.verifying_key(), 1_010),
            Err(TokenError::Expired { ago_secs: 10 })
        );
        assert!(matches!(
            got.check_for("doc-2", 7),
            Err(TokenError::WrongDocument { .. })
        ));
        assert!(matches!(
            got.check_for("doc-1", 8),
            Err(TokenError::StaleEpoch { .. })
        ));
        assert!(got.check_for("doc-1", 7).is_ok());
    }

    #[test]
    fn tampered_claims_fail_the_signature() {
        let key = SigningKey::generate(&mut OsRng);
        let token = sign(&claims(1_000), &key);
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = B64.encode(
            serde_json::to_vec(&Claims {
                role: Role::Owner,
                ..claims(1_000)
            })
            .unwrap(),
        );
        parts[1] = &forged;
        assert_eq!(
            verify(&parts.join("."), &key.verifying_key(), 0),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn pem_round_trip() {
        let key = SigningKey::generate(&mut OsRng);
        let private = signing_key_to_pem(&key).unwrap();
        let public = verifying_key_to_pem(&key.verifying_key()).unwrap();
        assert_eq!(
            signing_key_from_pem(&private).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(
            verifying_key_from_pem(&public).unwrap(),
            key.verifying_key()
        );
        assert!(verifying_key_from_pem(&private).is_err());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let key = SigningKey::generate(&mut OsRng).verifying_key();
        for junk in ["", "v1.", "v1..", "v2.abc.def", "v1.@@@.@@@", "v1.YQ.YQ"] {
            assert!(
                matches!(verify(junk, &key, 0), Err(TokenError::Malformed(_))),
                "{junk}"
            );
        }
        let long = "v1.".to_string() + &"a".repeat(MAX_TOKEN_LEN);
        assert!(matches!(
            verify(&long, &key, 0),
            Err(TokenError::Malformed(_))
        ));
    }
}
