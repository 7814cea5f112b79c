//! The swap storm's per-page pattern: a function of (run seed, page number, word index) only, so a
//! page that comes back from swap with another page's bytes, stale bytes, zeroes or a shifted
//! copy fails the check, and the first word tells which page the bytes belonged to.
//!
//! Word 0 is `page ^ mix(seed)`; word `j > 0` is `base(seed, page) + j * ODD`. One addition per
//! word keeps the writer cheap under software emulation, where the guest's CPU is slow.

/// Bytes per page (x86-64 base pages).
pub const PAGE_SIZE: usize = 4096;
/// 64-bit words per page.
pub const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const ODD: u64 = 0xD1B5_4A32_D192_ED03;

/// SplitMix64's finaliser: a cheap bijective mix of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn base(seed: u64, page: u64) -> u64 {
    mix(seed ^ page.wrapping_mul(GOLDEN))
}

/// Writes the pattern of `page` into `words` (one page).
pub fn fill(words: &mut [u64], seed: u64, page: u64) {
    debug_assert_eq!(words.len(), WORDS_PER_PAGE);
    let b = base(seed, page);
    let mut v = b;
    if let Some((first, rest)) = words.split_first_mut() {
        *first = page ^ mix(seed);
        for w in rest {
            v = v.wrapping_add(ODD);
            *w = v;
        }
    }
}

/// Whether `words` hold the pattern of `page`.
pub fn check(words: &[u64], seed: u64, page: u64) -> bool {
    let Some((first, rest)) = words.split_first() else {
        return false;
    };
    if *first != page ^ mix(seed) {
        return false;
    }
    let mut v = base(seed, page);
    let mut bad = 0u64;
    for w in rest {
        v = v.wrapping_add(ODD);
        bad |= *w ^ v;
    }
    bad == 0
}

/// What a corrupt page seems to hold: the page number its first word names (when that page
/// exists in a storm of `nr_pages`), `zero` for an all-zero page, `other` for anything else.
pub fn describe(words: &[u64], seed: u64, nr_pages: u64) -> String {
    if words.iter().all(|&w| w == 0) {
        return "zero".to_string();
    }
    let owner = words.first().map(|w| w ^ mix(seed));
    match owner {
        Some(p) if p < nr_pages && check(words, seed, p) => format!("page{p}"),
        _ => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u64, p: u64) -> Vec<u64> {
        let mut w = vec![0u64; WORDS_PER_PAGE];
        fill(&mut w, seed, p);
        w
    }

    #[test]
    fn each_page_checks_only_as_itself() {
        let a = page(7, 3);
        assert!(check(&a, 7, 3));
        assert!(!check(&a, 7, 4), "another page's bytes");
        assert!(!check(&a, 8, 3), "another run's bytes");
        assert!(!check(&vec![0; WORDS_PER_PAGE], 7, 3));
        assert!(!check(&page(7, 4), 7, 3));
        assert_eq!(describe(&page(7, 4), 7, 10), "page4");
        assert_eq!(describe(&vec![0; WORDS_PER_PAGE], 7, 10), "zero");
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let good = page(1, 99);
        for word in [0, 1, 255, WORDS_PER_PAGE - 1] {
            for bit in [0, 17, 63] {
                let mut bad = good.clone();
                bad[word] ^= 1 << bit;
                assert!(!check(&bad, 1, 99), "word {word} bit {bit}");
            }
        }
        let mut shifted = good.clone();
        shifted.rotate_left(1);
        assert!(!check(&shifted, 1, 99));
        assert_eq!(describe(&shifted, 1, 1000), "other");
    }

    #[test]
    fn pages_differ() {
        assert_ne!(page(1, 0), page(1, 1));
        assert_ne!(page(1, 0)[1..], page(2, 0)[1..]);
    }
}
