//! ZooKeeper's digest scheme: an id is `user:base64(sha1("user:password"))`.

use base64::Engine;
use sha1::{Digest, Sha1};

/// The digest id for `user:password` credentials, as `DigestAuthenticationProvider`
/// computes it. `credentials` is everything the client sends to addAuth("digest").
pub fn digest_id(credentials: &str) -> String {
    let user = credentials.split(':').next().unwrap_or("");
    let hash = Sha1::digest(credentials.as_bytes());
    format!(
        "{user}:{}",
        base64::engine::general_purpose::STANDARD.encode(hash)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        // ZooKeeper's documentation example: super:test -> super:D/InIHSb7yEEbrWz8b9l71RjZJU=
        assert_eq!(
            digest_id("super:test"),
            "super:D/InIHSb7yEEbrWz8b9l71RjZJU="
        );
    }
}
