//! API key tokens: generated here, shown once, stored only as a hash.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

const TOKEN_PREFIX: &str = "bt_";
const PREFIX_LEN: usize = 8;
const SECRET_LEN: usize = 32;

/// A freshly generated token and what is stored of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedToken {
    /// `bt_<prefix>_<secret>`: shown once, never stored.
    pub token: String,
    /// The public part, stored and shown in listings.
    pub prefix: String,
    pub secret_hash: String,
}

fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub fn generate() -> GeneratedToken {
    let prefix = random_alphanumeric(PREFIX_LEN);
    let secret = random_alphanumeric(SECRET_LEN);
    let token = format!("{TOKEN_PREFIX}{prefix}_{secret}");
    let secret_hash = hash(&token);
    GeneratedToken {
        token,
        prefix,
        secret_hash,
    }
}

/// The stored form of a token. The token carries 190 bits of randomness, so a fast
/// hash is enough: there is nothing to brute-force.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_to_what_is_stored() {
        let a = generate();
        let b = generate();
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with(&format!("bt_{}_", a.prefix)));
        assert_eq!(hash(&a.token), a.secret_hash);
        assert_ne!(a.secret_hash, b.secret_hash);
        assert_eq!(a.secret_hash.len(), 64);
    }
}
