//! Capability tokens from a client's hello.
//!
//! Half the inputs are taken as a whole token, which almost never gets past the signature; the
//! other half are taken as claim bytes and signed with a fixed key first, so the claims parser
//! and the expiry check see hostile input too.
#![no_main]

use airlock_protocol::token::{self, MAX_TOKEN_LEN};
use airlock_protocol_fuzz::sign_raw_claims;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = 1_700_000_000;
    if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let got = token::verify(text, &key.verifying_key(), now);
        assert!(got.is_err(), "an unsigned input verified: {text:?}");
    } else {
        let text = sign_raw_claims(rest, &key);
        if let Ok(claims) = token::verify(&text, &key.verifying_key(), now) {
            assert!(text.len() <= MAX_TOKEN_LEN);
            assert!(claims.exp > now);
            // Whatever verified signs again into a token that verifies to the same claims.
            let again = token::sign(&claims, &key);
            assert_eq!(token::verify(&again, &key.verifying_key(), now), Ok(claims));
        }
    }
});
