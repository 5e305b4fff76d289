//! Server-assigned identifiers: UUID-shaped uids and operation ids, and the
//! five-character suffix of execution names.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Ensures two calls never hash the same input, even on one thread.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 unpredictable bits. The std hasher is keyed from OS randomness, which is
/// all an emulator needs; it saves a dependency on a random number crate.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A version-4 UUID string, the shape of Cloud Run's uids and operation ids.
pub(crate) fn uuid4() -> String {
    let hi = random_u64();
    let lo = random_u64();
    let hi = (hi & !0xF000) | 0x4000; // version 4
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// Five lowercase letters or digits, as in Cloud Run's `myjob-x7k2p`.
pub(crate) fn execution_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bits = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize];
            bits /= ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let id = uuid4();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(uuid4(), id);
    }

    #[test]
    fn suffix_shape() {
        let s = execution_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
