//! A SHA-256 whose state can be saved and taken up again, for resumable uploads: the hash
//! of a paused upload is stored with its offset (`SavedSha256`) and continued by whichever
//! replica receives its next bytes, so the object is never read back to hash it.
//!
//! sha2 0.10 keeps its state private and offers only the block function (`compress256`);
//! this type keeps what the block function needs: the eight words of the state, the bytes
//! hashed so far, and the bytes of a block not yet full. The padding at the end is FIPS
//! 180-4's (a `1` bit, zeros, the length in bits as 64 bits big-endian).

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::typenum::U64;
use sha2::digest::generic_array::GenericArray;

const BLOCK: usize = 64;

/// Blocks copied together for the block function: 2 KiB.
const BATCH_BLOCKS: usize = 32;

/// FIPS 180-4, 5.3.3: the initial hash value of SHA-256.
const INITIAL: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A SHA-256 in progress.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed, the partial block included.
    length: u64,
    /// The bytes of the block being filled (`length % 64` of them).
    partial: [u8; BLOCK],
}

impl std::fmt::Debug for ResumableSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumableSha256")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        Self {
            state: INITIAL,
            length: 0,
            partial: [0; BLOCK],
        }
    }

    /// Bytes hashed so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    fn filled(&self) -> usize {
        (self.length % BLOCK as u64) as usize
    }

    pub fn update(&mut self, mut data: &[u8]) {
        let filled = self.filled();
        self.length += data.len() as u64;
        if filled > 0 {
            let take = (BLOCK - filled).min(data.len());
            self.partial[filled..filled + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if filled + take < BLOCK {
                return;
            }
            sha2::compress256(
                &mut self.state,
                &[GenericArray::clone_from_slice(&self.partial)],
            );
        }
        let whole = data.len() / BLOCK * BLOCK;
        // The block function takes blocks as its own array type: they are copied in
        // batches into a buffer on the stack, never into one as large as the data.
        let mut batch = [GenericArray::<u8, U64>::default(); BATCH_BLOCKS];
        for run in data[..whole].chunks(BATCH_BLOCKS * BLOCK) {
            let n = run.len() / BLOCK;
            for (block, bytes) in batch.iter_mut().zip(run.chunks_exact(BLOCK)) {
                block.copy_from_slice(bytes);
            }
            sha2::compress256(&mut self.state, &batch[..n]);
        }
        let rest = &data[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
    }

    /// The digest of everything hashed; the state itself is left as it was, so more bytes
    /// may follow (a checksum of what arrived so far costs nothing of the upload's hash).
    pub fn digest(&self) -> [u8; 32] {
        let mut state = self.state;
        let filled = self.filled();
        let mut tail = [0u8; 2 * BLOCK];
        tail[..filled].copy_from_slice(&self.partial[..filled]);
        tail[filled] = 0x80;
        // The length goes in the last 8 bytes of the block that has room for it.
        let end = if filled < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        tail[end - 8..end].copy_from_slice(&(self.length.wrapping_mul(8)).to_be_bytes());
        let mut blocks = [GenericArray::<u8, U64>::default(); 2];
        for (block, bytes) in blocks.iter_mut().zip(tail.chunks_exact(BLOCK)) {
            block.copy_from_slice(bytes);
        }
        sha2::compress256(&mut state, &blocks[..end / BLOCK]);
        let mut out = [0u8; 32];
        for (word, bytes) in state.iter().zip(out.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The state to store with an upload's offset.
    pub fn save(&self) -> SavedSha256 {
        let filled = self.filled();
        SavedSha256 {
            state: self.state,
            length: self.length,
            partial: base64::engine::general_purpose::STANDARD.encode(&self.partial[..filled]),
        }
    }

    /// The hash a saved state stands for; `None` when the state is not one this type saved
    /// (its partial block disagrees with its length).
    pub fn restore(saved: &SavedSha256) -> Option<Self> {
        let partial = base64::engine::general_purpose::STANDARD
            .decode(&saved.partial)
            .ok()?;
        if partial.len() as u64 != saved.length % BLOCK as u64 {
            return None;
        }
        let mut hash = Self {
            state: saved.state,
            length: saved.length,
            partial: [0; BLOCK],
        };
        hash.partial[..partial.len()].copy_from_slice(&partial);
        Some(hash)
    }
}

/// A `ResumableSha256` as it is stored (JSON in the upload's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSha256 {
    state: [u32; 8],
    length: u64,
    /// Base64 of the bytes of the block not yet full.
    partial: String,
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn reference(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// Deterministic bytes of every value, not a short repeating pattern.
    fn bytes(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    #[test]
    fn known_answers_of_fips_180_2() {
        let hash = |data: &[u8]| {
            let mut h = ResumableSha256::new();
            h.update(data);
            hex::encode(h.digest())
        };
        assert_eq!(
            hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hash(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn every_length_around_the_padding_edges_matches_sha2() {
        let data = bytes(3 * BLOCK + 1);
        for len in 0..data.len() {
            let mut h = ResumableSha256::new();
            h.update(&data[..len]);
            assert_eq!(h.digest(), reference(&data[..len]), "length {len}");
            assert_eq!(h.length(), len as u64);
        }
    }

    #[test]
    fn any_split_saved_and_restored_in_between_matches_sha2() {
        let data = bytes(10_010);
        // Splits at odd places, 1-byte pieces and block edges among them.
        let cuts = [0, 1, 2, 63, 64, 65, 127, 128, 1000, 4095, 4096, 4097, 9999];
        for (i, &first) in cuts.iter().enumerate() {
            for &second in &cuts[i..] {
                let mut h = ResumableSha256::new();
                h.update(&data[..first]);
                let saved = serde_json::to_string(&h.save()).unwrap();
                let mut h =
                    ResumableSha256::restore(&serde_json::from_str(&saved).unwrap()).unwrap();
                h.update(&data[first..second]);
                // A digest on the way leaves the state as it was.
                assert_eq!(h.digest(), reference(&data[..second]));
                let mut h = ResumableSha256::restore(&h.save()).unwrap();
                for byte in &data[second..second + 3] {
                    h.update(std::slice::from_ref(byte));
                }
                h.update(&data[second + 3..]);
                assert_eq!(h.digest(), reference(&data), "cuts {first}, {second}");
            }
        }
    }

    #[test]
    fn a_saved_state_whose_partial_block_disagrees_with_its_length_is_refused() {
        let mut h = ResumableSha256::new();
        h.update(b"hello");
        let mut saved = h.save();
        saved.length += 1;
        assert!(ResumableSha256::restore(&saved).is_none());
        saved.partial = "not base64!".to_owned();
        assert!(ResumableSha256::restore(&saved).is_none());
    }
}
