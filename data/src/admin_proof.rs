//! Proof of the cluster secret for the commands that change the cluster
//! (DESIGN §3a "Commands that change the cluster"). Pure: the LB draws the
//! challenge and checks the proof, the `store` command computes it.
//!
//! The LB hands a connection a fresh random challenge; the command that
//! follows carries a keyed hash, under a key derived from the cluster
//! secret, of that challenge and the command's own words. The secret never
//! crosses the network, a proof is good for one command on the connection
//! that asked for the challenge (the LB forgets the challenge at its first
//! use), and it covers the command's words, so it cannot be moved onto
//! another command either.
//!
//! The key is derived from the secret rather than the secret itself, so a
//! proof can never be taken for a datagram's MAC (which is keyed with the
//! secret directly) whatever bytes a challenge holds.

use crate::frame::SECRET_BYTES;

/// A challenge: random bytes the LB draws from the OS for each one.
pub const CHALLENGE_BYTES: usize = 32;
/// A proof: a whole BLAKE3 hash (the datagram MAC is cut to 16 bytes to
/// save room in every frame; a command line has room).
pub const PROOF_BYTES: usize = 32;

/// BLAKE3's key-derivation context: fixed, unique to this use.
const KEY_CONTEXT: &str = "store 2026-12-07 admin command proof v1";

/// The proof of `secret` for `command` (its words joined by single spaces,
/// without the proof and the line end) under `challenge`.
pub fn proof(
    secret: &[u8; SECRET_BYTES],
    challenge: &[u8; CHALLENGE_BYTES],
    command: &str,
) -> [u8; PROOF_BYTES] {
    let key = blake3::derive_key(KEY_CONTEXT, secret);
    let mut hasher = blake3::Hasher::new_keyed(&key);
    hasher.update(challenge);
    hasher.update(command.as_bytes());
    *hasher.finalize().as_bytes()
}

/// Whether `given` proves `secret` for `command` under `challenge`. The
/// comparison takes the same time wherever the bytes differ.
pub fn verify(
    secret: &[u8; SECRET_BYTES],
    challenge: &[u8; CHALLENGE_BYTES],
    command: &str,
    given: &[u8; PROOF_BYTES],
) -> bool {
    // blake3::Hash's equality is constant-time.
    blake3::Hash::from(proof(secret, challenge, command)) == blake3::Hash::from(*given)
}

/// Lowercase hex, as challenges and proofs travel.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from exactly `2 * N` hex digits (either case); `None` for
/// anything else.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; SECRET_BYTES] = [7; SECRET_BYTES];
    const CHALLENGE: [u8; CHALLENGE_BYTES] = [9; CHALLENGE_BYTES];

    #[test]
    fn a_proof_holds_for_its_secret_challenge_and_command_only() {
        let command = "remove-server 42";
        let good = proof(&SECRET, &CHALLENGE, command);
        assert!(verify(&SECRET, &CHALLENGE, command, &good));
        let mut other_secret = SECRET;
        other_secret[31] ^= 1;
        let mut other_challenge = CHALLENGE;
        other_challenge[0] ^= 1;
        assert!(!verify(&other_secret, &CHALLENGE, command, &good));
        assert!(!verify(&SECRET, &other_challenge, command, &good));
        assert!(!verify(&SECRET, &CHALLENGE, "remove-server 43", &good));
        for bit in 0..8 * PROOF_BYTES {
            let mut flipped = good;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify(&SECRET, &CHALLENGE, command, &flipped), "bit {bit}");
        }
    }

    #[test]
    fn the_proof_is_not_keyed_with_the_secret_itself() {
        // A datagram's MAC is keyed with the secret; a proof must not be a
        // MAC of the same bytes.
        let command = "remove-server 42";
        let mut covered = CHALLENGE.to_vec();
        covered.extend_from_slice(command.as_bytes());
        assert_ne!(
            *blake3::keyed_hash(&SECRET, &covered).as_bytes(),
            proof(&SECRET, &CHALLENGE, command)
        );
    }

    #[test]
    fn hex_round_trips_and_refuses_anything_else() {
        let bytes = [0x00, 0x9f, 0xa0, 0xff];
        assert_eq!(to_hex(&bytes), "009fa0ff");
        assert_eq!(from_hex::<4>("009fa0ff"), Some(bytes));
        assert_eq!(from_hex::<4>("009FA0FF"), Some(bytes));
        for bad in [
            "009fa0f",
            "009fa0ff0",
            "009fa0fg",
            "+09fa0ff",
            "",
            "009fa0f\u{e9}",
        ] {
            assert_eq!(from_hex::<4>(bad), None, "{bad:?}");
        }
    }
}
