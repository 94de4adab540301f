//! The PRNG and the mutations that know nothing about the format.

/// splitmix64: tiny, deterministic, good enough to pick mutations. The same
/// seed gives the same run, so a fuzz run can be repeated exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING_BYTES: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x0f, 0x10];

/// Decimal numbers at the edges of the integer types (and past them), for
/// text formats where lengths and sizes are written out.
pub const INTERESTING_NUMBERS: [&str; 16] = [
    "0",
    "1",
    "-1",
    "255",
    "4096",
    "65536",
    "2147483647",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "1e999",
    "-0",
    "0.5",
];

/// One mutation of `data` that needs nothing but bytes: flips, overwrites,
/// cuts, inserts, splices with another pool input, dictionary tokens.
pub fn mutate_bytes(rng: &mut Rng, pool: &[Vec<u8>], dictionary: &[&[u8]], data: &mut Vec<u8>) {
    let len = data.len();
    match rng.below(12) {
        0 if len > 0 => {
            let bit = rng.below(len * 8);
            data[bit / 8] ^= 1 << (bit % 8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = if rng.chance(50) {
                *rng.pick(&INTERESTING_BYTES)
            } else {
                rng.next_u64() as u8
            };
        }
        2 => data.truncate(rng.below(len + 1)),
        3 => {
            let at = rng.below(len + 1);
            let junk: Vec<u8> = (0..1 + rng.below(16))
                .map(|_| rng.next_u64() as u8)
                .collect();
            data.splice(at..at, junk);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        5 if !pool.is_empty() => {
            let other = rng.pick(pool);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        6 if len > 1 => {
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(32));
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len);
            data.splice(at..at, chunk);
        }
        7 => data.extend((0..1 + rng.below(32)).map(|_| rng.next_u64() as u8)),
        8 | 9 if !dictionary.is_empty() => {
            let token = *rng.pick(dictionary);
            let at = rng.below(len + 1);
            if rng.chance(50) {
                data.splice(at..at, token.iter().copied());
            } else {
                let end = (at + token.len()).min(len);
                data.splice(at..end, token.iter().copied());
            }
        }
        10 => {
            // Replace a run of ASCII digits (or insert) with an edge number.
            let number = rng.pick(&INTERESTING_NUMBERS).as_bytes();
            let at = rng.below(len + 1);
            let end = at + data[at..].iter().take_while(|b| b.is_ascii_digit()).count();
            data.splice(at..end, number.iter().copied());
        }
        11 if len > 0 => {
            // A multi-byte integer at its limits, little-endian.
            let at = rng.below(len);
            let width = *rng.pick(&[2usize, 4, 8]);
            let value: u64 = match rng.below(4) {
                0 => u64::MAX,
                1 => 1 << (width * 8 - 1),
                2 => rng.next_u64(),
                _ => 0,
            };
            let end = (at + width).min(len);
            let bytes = value.to_le_bytes();
            data[at..end].copy_from_slice(&bytes[..end - at]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mutations() {
        let pool = vec![b"seed input".to_vec(), Vec::new()];
        let run = |seed| {
            let mut rng = Rng(seed);
            let mut data = pool[0].clone();
            for _ in 0..1000 {
                mutate_bytes(&mut rng, &pool, &[b"tok"], &mut data);
                data.truncate(4096);
            }
            data
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn every_mutation_copes_with_empty_and_tiny_inputs() {
        let mut rng = Rng(7);
        for len in 0..4 {
            for _ in 0..10_000 {
                let mut data = vec![0x41; len];
                mutate_bytes(&mut rng, &[], &[], &mut data);
                mutate_bytes(&mut rng, &[Vec::new()], &[b""], &mut data);
            }
        }
        assert_eq!(Rng(3).below(0), 0);
    }
}
