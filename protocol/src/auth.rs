//! Handshake authentication, both ways and bound to the role. The master's `Greeting` carries a
//! fresh nonce, the peer's `Hello` its own; each side then proves the token with an HMAC-SHA256
//! over both nonces, a direction label and the peer's role:
//!
//! ```text
//! key = SHA-256(token)
//! peer   -> master: HMAC(key, "ballast-v5 peer->master" || role tag || master nonce || peer nonce)
//! master -> peer:   HMAC(key, "ballast-v5 master->peer" || role tag || master nonce || peer nonce)
//! ```
//!
//! The key is the token's hash, not the token: HMAC pads a short key with zeros and hashes a long
//! one, so two tokens that differ only by trailing NUL bytes (a `--token-file` of random bytes),
//! or a long token and its own SHA-256, would be the same key. A hash of fixed length is never
//! padded or hashed again.
//!
//! The token never crosses the wire; a recorded answer is useless for another nonce; the labels
//! keep one direction's MAC from being reflected as the other's, and the role tag keeps a worker's
//! answer (relayed by a listener posing as the master) from opening a client session. Both nonces
//! have a fixed length ([`NONCE_LEN`]), so the concatenation is unambiguous.
//!
//! What this does not give: a secret or authenticated channel after the handshake. An active
//! man-in-the-middle that relays a whole conversation can still read and change it (TLS is on the
//! roadmap).

use crate::messages::Role;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Length of each nonce: the master's in `Greeting`, the peer's in `Hello`.
pub const NONCE_LEN: usize = 32;

const PEER_TO_MASTER: &[u8] = b"ballast-v5 peer->master";
const MASTER_TO_PEER: &[u8] = b"ballast-v5 master->peer";

/// Which kind of peer a MAC speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleTag {
    Worker,
    Client,
}

impl RoleTag {
    pub fn of(role: &Role) -> RoleTag {
        match role {
            Role::Worker(_) => RoleTag::Worker,
            Role::Client => RoleTag::Client,
        }
    }

    fn bytes(self) -> &'static [u8] {
        // NUL-terminated, so neither tag is a prefix of anything the other could be followed by.
        match self {
            RoleTag::Worker => b"worker\0",
            RoleTag::Client => b"client\0",
        }
    }
}

/// Which way a MAC goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    PeerToMaster,
    MasterToPeer,
}

fn mac(
    token: &[u8],
    direction: Direction,
    role: RoleTag,
    master_nonce: &[u8],
    peer_nonce: &[u8],
) -> HmacSha256 {
    let key = Sha256::digest(token);
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(match direction {
        Direction::PeerToMaster => PEER_TO_MASTER,
        Direction::MasterToPeer => MASTER_TO_PEER,
    });
    mac.update(role.bytes());
    mac.update(master_nonce);
    mac.update(peer_nonce);
    mac
}

/// Whether both nonces have the length the MAC layout assumes.
pub fn nonces_ok(master_nonce: &[u8], peer_nonce: &[u8]) -> bool {
    master_nonce.len() == NONCE_LEN && peer_nonce.len() == NONCE_LEN
}

/// The peer's answer (`Hello::auth`) for a peer holding `token`. Empty when there is no token.
pub fn peer_answer(
    token: Option<&[u8]>,
    role: RoleTag,
    master_nonce: &[u8],
    peer_nonce: &[u8],
) -> Vec<u8> {
    let Some(token) = token else {
        return Vec::new();
    };
    let mac = mac(
        token,
        Direction::PeerToMaster,
        role,
        master_nonce,
        peer_nonce,
    );
    mac.finalize().into_bytes().to_vec()
}

/// Whether `answer` proves the peer knows `token` for these nonces, compared in constant time.
pub fn verify_peer(
    token: &[u8],
    role: RoleTag,
    master_nonce: &[u8],
    peer_nonce: &[u8],
    answer: &[u8],
) -> bool {
    nonces_ok(master_nonce, peer_nonce)
        && mac(
            token,
            Direction::PeerToMaster,
            role,
            master_nonce,
            peer_nonce,
        )
        .verify_slice(answer)
        .is_ok()
}

/// The master's proof (`Welcome::proof`) for a master holding `token`. Empty when there is none.
pub fn master_proof(
    token: Option<&[u8]>,
    role: RoleTag,
    master_nonce: &[u8],
    peer_nonce: &[u8],
) -> Vec<u8> {
    let Some(token) = token else {
        return Vec::new();
    };
    let mac = mac(
        token,
        Direction::MasterToPeer,
        role,
        master_nonce,
        peer_nonce,
    );
    mac.finalize().into_bytes().to_vec()
}

/// Whether `proof` shows the master knows `token` for these nonces, compared in constant time.
pub fn verify_master(
    token: &[u8],
    role: RoleTag,
    master_nonce: &[u8],
    peer_nonce: &[u8],
    proof: &[u8],
) -> bool {
    nonces_ok(master_nonce, peer_nonce)
        && mac(
            token,
            Direction::MasterToPeer,
            role,
            master_nonce,
            peer_nonce,
        )
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: [u8; NONCE_LEN] = [7; NONCE_LEN];
    const P: [u8; NONCE_LEN] = [8; NONCE_LEN];
    const TOKEN: &[u8] = b"secret";

    #[test]
    fn right_token_verifies_wrong_does_not() {
        let answer = peer_answer(Some(TOKEN), RoleTag::Worker, &M, &P);
        assert_eq!(answer.len(), 32);
        assert!(verify_peer(TOKEN, RoleTag::Worker, &M, &P, &answer));
        assert!(!verify_peer(b"other", RoleTag::Worker, &M, &P, &answer));
        assert!(!verify_peer(
            TOKEN,
            RoleTag::Worker,
            &[9; NONCE_LEN],
            &P,
            &answer
        ));
        assert!(!verify_peer(
            TOKEN,
            RoleTag::Worker,
            &M,
            &[9; NONCE_LEN],
            &answer
        ));
        assert!(!verify_peer(TOKEN, RoleTag::Worker, &M, &P, &[]));
        assert!(peer_answer(None, RoleTag::Worker, &M, &P).is_empty());
        let proof = master_proof(Some(TOKEN), RoleTag::Client, &M, &P);
        assert!(verify_master(TOKEN, RoleTag::Client, &M, &P, &proof));
        assert!(!verify_master(b"other", RoleTag::Client, &M, &P, &proof));
        assert!(!verify_master(TOKEN, RoleTag::Client, &M, &P, &[]));
        assert!(master_proof(None, RoleTag::Client, &M, &P).is_empty());
    }

    /// A worker's answer relayed by a listener posing as the master does not open a client
    /// session on the real one, nor the other way round.
    #[test]
    fn an_answer_is_bound_to_its_role() {
        let worker = peer_answer(Some(TOKEN), RoleTag::Worker, &M, &P);
        assert!(!verify_peer(TOKEN, RoleTag::Client, &M, &P, &worker));
        let client = peer_answer(Some(TOKEN), RoleTag::Client, &M, &P);
        assert!(!verify_peer(TOKEN, RoleTag::Worker, &M, &P, &client));
        let proof = master_proof(Some(TOKEN), RoleTag::Worker, &M, &P);
        assert!(!verify_master(TOKEN, RoleTag::Client, &M, &P, &proof));
    }

    /// Neither side's MAC passes as the other's: a peer's answer reflected back as the master's
    /// proof, or a master's proof replayed as a peer's answer, fails.
    #[test]
    fn an_answer_is_bound_to_its_direction() {
        for role in [RoleTag::Worker, RoleTag::Client] {
            let answer = peer_answer(Some(TOKEN), role, &M, &P);
            let proof = master_proof(Some(TOKEN), role, &M, &P);
            assert_ne!(answer, proof);
            assert!(!verify_master(TOKEN, role, &M, &P, &answer));
            assert!(!verify_peer(TOKEN, role, &M, &P, &proof));
            // Swapping the nonces (a reflector that greets with the peer's own nonce) fails too.
            assert!(!verify_master(TOKEN, role, &P, &M, &answer));
        }
    }

    /// HMAC zero-pads short keys and hashes long ones; the token's hash as key keeps tokens
    /// apart that raw HMAC would confuse (found by the property below: `[0]` against `[]`).
    #[test]
    fn tokens_that_hmac_would_pad_or_hash_alike_stay_apart() {
        let long = [7u8; 100];
        let pairs: [(&[u8], Vec<u8>); 3] = [
            (b"", vec![0]),
            (b"secret", b"secret\0\0".to_vec()),
            (&long, Sha256::digest(long).to_vec()),
        ];
        for (token, twin) in pairs {
            let answer = peer_answer(Some(token), RoleTag::Worker, &M, &P);
            assert!(!verify_peer(&twin, RoleTag::Worker, &M, &P, &answer));
            let proof = master_proof(Some(token), RoleTag::Client, &M, &P);
            assert!(!verify_master(&twin, RoleTag::Client, &M, &P, &proof));
        }
    }

    /// A recorded answer is worth nothing on a connection with another master nonce.
    #[test]
    fn a_recorded_answer_does_not_replay() {
        let answer = peer_answer(Some(TOKEN), RoleTag::Client, &M, &P);
        let fresh = [1u8; NONCE_LEN];
        assert!(!verify_peer(TOKEN, RoleTag::Client, &fresh, &P, &answer));
    }

    proptest::proptest! {
        /// For any token and nonces, a MAC verifies only for its own token, role, direction
        /// and nonces.
        #[test]
        fn a_mac_verifies_only_where_it_was_made(
            token in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            other in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            m in proptest::prelude::any::<[u8; NONCE_LEN]>(),
            p in proptest::prelude::any::<[u8; NONCE_LEN]>(),
            worker in proptest::prelude::any::<bool>(),
        ) {
            let (role, wrong_role) = if worker {
                (RoleTag::Worker, RoleTag::Client)
            } else {
                (RoleTag::Client, RoleTag::Worker)
            };
            let answer = peer_answer(Some(&token), role, &m, &p);
            let proof = master_proof(Some(&token), role, &m, &p);
            proptest::prop_assert!(verify_peer(&token, role, &m, &p, &answer));
            proptest::prop_assert!(verify_master(&token, role, &m, &p, &proof));
            proptest::prop_assert!(!verify_peer(&token, wrong_role, &m, &p, &answer));
            proptest::prop_assert!(!verify_master(&token, wrong_role, &m, &p, &proof));
            proptest::prop_assert!(!verify_master(&token, role, &m, &p, &answer));
            proptest::prop_assert!(!verify_peer(&token, role, &m, &p, &proof));
            if other != token {
                proptest::prop_assert!(!verify_peer(&other, role, &m, &p, &answer));
            }
            if m != p {
                proptest::prop_assert!(!verify_peer(&token, role, &p, &m, &answer));
            }
        }
    }

    #[test]
    fn nonces_of_another_length_never_verify() {
        let short = [7u8; NONCE_LEN - 1];
        let answer = peer_answer(Some(TOKEN), RoleTag::Worker, &short, &P);
        assert!(!verify_peer(TOKEN, RoleTag::Worker, &short, &P, &answer));
        let proof = master_proof(Some(TOKEN), RoleTag::Worker, &M, &[]);
        assert!(!verify_master(TOKEN, RoleTag::Worker, &M, &[], &proof));
    }
}
