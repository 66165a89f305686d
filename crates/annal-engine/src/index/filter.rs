//! Blocked Bloom filters over event id keys: the arithmetic that the runs' own filters and
//! the id filter share, and the filter a run is written with.
//!
//! A key sets seven bits inside one 512-bit block (one cache line), chosen by a second
//! hash, so a lookup touches one line of memory and makes no division.

/// Probes (bits) per key.
const PROBES: u64 = 7;
/// Filter bits per event id in a run. Fewer made the block reads of false positives show in
/// the writer's profile of batched appends; more cost memory for little (BENCHMARKS.md).
pub const RUN_BITS_PER_ID: u64 = 14;
/// 64-bit words per block: 512 bits, one cache line.
pub const BLOCK_WORDS: usize = 8;

/// The splitmix64 finalizer: every bit of the key moves every bit of the result.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The block of a filter of `blocks` blocks that a key sets its bits in, and the second
/// hash whose 9-bit pieces number the bits (0..512) within it.
fn block_and_hash(key: u64, blocks: usize) -> (usize, u64) {
    let block = ((u128::from(mix(key)) * blocks as u128) >> 64) as usize;
    (block, mix(key ^ 0x5851_F42D_4C95_7F2D))
}

/// Bit `i` (0..7) of a key's block, from its second hash: (word in the block, mask).
fn bit(h2: u64, i: u64) -> (usize, u64) {
    let bit = (h2 >> (9 * i)) & 511;
    ((bit / 64) as usize, 1 << (bit % 64))
}

/// The bits of a key in a filter of `blocks` blocks, as (word number, mask).
pub fn bits(key: u64, blocks: usize) -> impl Iterator<Item = (usize, u64)> {
    let (block, h2) = block_and_hash(key, blocks);
    (0..PROBES).map(move |i| {
        let (w, m) = bit(h2, i);
        (block * BLOCK_WORDS + w, m)
    })
}

/// The bits of a key as the first word of its block and one mask per word of the block:
/// the same bits as [`bits`], gathered so that each word is written once.
pub fn masks(key: u64, blocks: usize) -> (usize, [u64; BLOCK_WORDS]) {
    let (block, h2) = block_and_hash(key, blocks);
    let mut masks = [0u64; BLOCK_WORDS];
    for i in 0..PROBES {
        let (w, m) = bit(h2, i);
        masks[w] |= m;
    }
    (block * BLOCK_WORDS, masks)
}

/// The first word of the block a key's bits are in: read ahead of testing many keys, so
/// that their cache misses overlap instead of coming one after the other.
pub fn first_word(key: u64, blocks: usize) -> usize {
    block_and_hash(key, blocks).0 * BLOCK_WORDS
}

/// True when every bit of `key` is set in `words`.
pub fn holds(words: &[u64], key: u64) -> bool {
    bits(key, words.len() / BLOCK_WORDS).all(|(w, m)| words[w] & m != 0)
}

/// True when every bit of `key` is set in a filter of `words` words kept in `file` at
/// offset `at`: one read of the key's 64-byte block.
pub fn holds_on_disk(
    file: &crate::io::FileRef,
    at: u64,
    words: u64,
    key: u64,
) -> std::io::Result<bool> {
    let blocks = words as usize / BLOCK_WORDS;
    let first = first_word(key, blocks);
    let mut raw = [0u8; BLOCK_WORDS * 8];
    file.read_exact_at(&mut raw, at + first as u64 * 8)?;
    Ok(bits(key, blocks).all(|(w, m)| {
        let i = (w - first) * 8;
        u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes")) & m != 0
    }))
}

/// A run's filter, built as its id keys are written.
pub struct RunFilter {
    pub words: Vec<u64>,
    blocks: usize,
    pub added: u64,
}

impl RunFilter {
    /// An empty filter for `ids` ids.
    pub fn with_capacity(ids: u64) -> RunFilter {
        RunFilter::with_bits(ids, RUN_BITS_PER_ID)
    }

    /// An empty filter for `keys` keys at `bits` bits each.
    pub fn with_bits(keys: u64, bits: u64) -> RunFilter {
        let blocks = (keys * bits).div_ceil(64 * BLOCK_WORDS as u64).max(1) as usize;
        RunFilter {
            words: vec![0u64; blocks * BLOCK_WORDS],
            blocks,
            added: 0,
        }
    }

    pub fn add_all(&mut self, keys: &[u64]) {
        for &k in keys {
            let (first, masks) = masks(k, self.blocks);
            for (w, m) in self.words[first..first + BLOCK_WORDS].iter_mut().zip(masks) {
                *w |= m;
            }
        }
        self.added += keys.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_set_the_bits_that_bits_names() {
        for key in (0..1000u64).map(mix) {
            let (first, masks) = masks(key, 37);
            let mut want = [0u64; BLOCK_WORDS];
            for (w, m) in bits(key, 37) {
                assert_eq!(w / BLOCK_WORDS, first / BLOCK_WORDS);
                want[w - first] |= m;
            }
            assert_eq!(masks, want);
            assert_eq!(first_word(key, 37), first);
        }
    }

    #[test]
    fn a_run_filter_holds_every_key_added_and_few_others() {
        let mut f = RunFilter::with_capacity(5000);
        let keys: Vec<u64> = (0..5000u64).map(mix).collect();
        f.add_all(&keys);
        assert!(keys.iter().all(|&k| holds(&f.words, k)));
        let false_positives = (5000..25_000u64)
            .filter(|&i| holds(&f.words, mix(i)))
            .count();
        // About 0.2% at 14 bits per id in 512-bit blocks.
        assert!(false_positives < 100, "{false_positives} of 20000");
    }
}
