//! Handshake authentication: the master sends a fresh nonce, the peer answers HMAC-SHA256(token,
//! nonce). The token itself never crosses the wire, and a recorded answer is useless for another nonce.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of the nonce the master sends in its `Greeting`.
pub const NONCE_LEN: usize = 32;

/// The answer a peer holding `token` gives to `nonce`. Empty when there is no token.
pub fn respond(token: Option<&[u8]>, nonce: &[u8]) -> Vec<u8> {
    let Some(token) = token else {
        return Vec::new();
    };
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(token).expect("HMAC takes any key length");
    mac.update(nonce);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `answer` proves knowledge of `token` for `nonce`, compared in constant time.
pub fn verify(token: &[u8], nonce: &[u8], answer: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(token).expect("HMAC takes any key length");
    mac.update(nonce);
    mac.verify_slice(answer).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_token_verifies_wrong_does_not() {
        let nonce = [7u8; NONCE_LEN];
        let answer = respond(Some(b"secret"), &nonce);
        assert_eq!(answer.len(), 32);
        assert!(verify(b"secret", &nonce, &answer));
        assert!(!verify(b"other", &nonce, &answer));
        assert!(!verify(b"secret", &[8u8; NONCE_LEN], &answer));
        assert!(!verify(b"secret", &nonce, &[]));
        assert!(respond(None, &nonce).is_empty());
    }
}
