//! The token format: `mb_<id>_<secret>`.
//!
//! The id (64 random bits, hex) is public: it names the token in the file
//! and finds its record in one hash lookup. The secret (256 random bits,
//! base64url) is shown once, at creation; the server keeps only its
//! SHA-256. A plain hash is right for a secret this long: nobody can
//! search 2^256 values, so a slow password hash would only cost every
//! request time. Hashes are compared in constant time.

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every token starts with this, so a leaked one is easy to recognise
/// (secret scanners match on it).
pub const PREFIX: &str = "mb_";
/// Random bytes in a token's id.
const ID_BYTES: usize = 8;
/// Random bytes in a token's secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// A newly made token: what is stored and what is shown once.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The public id.
    pub id: String,
    /// The whole token, `mb_<id>_<secret>`: shown once, never stored.
    pub token: String,
    /// The SHA-256 of the secret, hex: what is stored.
    pub hash: String,
}

/// The random source failed (the OS could not supply randomness).
#[derive(Debug, thiserror::Error)]
#[error("no randomness from the operating system: {0}")]
pub struct NoRandomness(String);

/// Makes a token from the operating system's random source.
pub fn generate() -> Result<NewToken, NoRandomness> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::fill(&mut id).map_err(|e| NoRandomness(e.to_string()))?;
    getrandom::fill(&mut secret).map_err(|e| NoRandomness(e.to_string()))?;
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(NewToken {
        hash: hash_secret(&secret),
        token: format!("{PREFIX}{id}_{secret}"),
        id,
    })
}

/// A presented token split into its id and secret; `None` when it does
/// not have the token's shape.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// SHA-256 of `secret` as raw bytes (for comparing with a stored hash).
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// True when `secret` hashes to `stored` (hex), compared in constant time.
pub fn secret_matches(secret: &str, stored: &[u8; 32]) -> bool {
    digest(secret).ct_eq(stored).into()
}

/// A stored hex hash as bytes; `None` when it is not 64 hex digits.
pub fn parse_hash(hex_hash: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_splits_into_its_id_and_a_secret_that_matches_its_hash() {
        let t = generate().unwrap();
        let (id, secret) = split(&t.token).unwrap();
        assert_eq!(id, t.id);
        // 256 bits in unpadded base64: 43 characters.
        assert_eq!(secret.len(), 43);
        let stored = parse_hash(&t.hash).unwrap();
        assert!(secret_matches(secret, &stored));
        assert!(!secret_matches(&format!("{secret}x"), &stored));
        assert!(!t.token.contains(&t.hash));
    }

    #[test]
    fn two_tokens_differ() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_ne!(a.id, b.id);
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn malformed_tokens_do_not_split() {
        for bad in [
            "",
            "mb_",
            "mb_abc_secret",
            "xx_0123456789abcdef_secret",
            "mb_0123456789abcdef_",
            "mb_0123456789abcdeg_secret",
            "mb_0123456789abcdef",
        ] {
            assert!(split(bad).is_none(), "{bad:?}");
        }
        // A secret may itself contain '_' (base64url).
        assert_eq!(
            split("mb_0123456789abcdef_a_b"),
            Some(("0123456789abcdef", "a_b"))
        );
    }
}
