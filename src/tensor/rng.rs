//! Seeded random numbers so runs are reproducible: xoshiro256** seeded through SplitMix64,
//! Box–Muller normals, and a per-thread default generator (`torch.manual_seed`).

use std::cell::RefCell;

/// A small, fast, seedable generator (xoshiro256**).
#[derive(Clone, Debug)]
pub struct Rng {
    state: [u64; 4],
    /// Second normal from the last Box–Muller pair.
    spare_normal: Option<f32>,
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            state: [next(), next(), next(), next()],
            spare_normal: None,
        }
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 random bits (every value exactly representable in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.next_f32()
    }

    /// Normal with the given mean and standard deviation (Box–Muller in f64).
    pub fn normal(&mut self, mean: f32, std: f32) -> f32 {
        if let Some(z) = self.spare_normal.take() {
            return mean + std * z;
        }
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some((radius * angle.sin()) as f32);
        mean + std * (radius * angle.cos()) as f32
    }

    /// 1.0 with probability `p`, else 0.0.
    pub fn bernoulli(&mut self, p: f32) -> f32 {
        if self.next_f32() < p {
            1.0
        } else {
            0.0
        }
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// An independent generator derived from this one (for parallel workers).
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

thread_local! {
    /// The default generator of this thread (seed 0 until [`manual_seed`]).
    static DEFAULT_RNG: RefCell<Rng> = RefCell::new(Rng::new(0));
}

/// Seeds the default generator used by dropout and by initialisers that are not given a
/// generator (`torch.manual_seed`). It is per thread: the thread that builds and trains a model
/// gets a reproducible stream whatever other threads (tests, data loaders) draw.
pub fn manual_seed(seed: u64) {
    DEFAULT_RNG.with(|rng| *rng.borrow_mut() = Rng::new(seed));
}

/// Runs `f` with this thread's default generator. (The generator is moved out while `f` runs,
/// so a nested call cannot fail a borrow; it would see a seed-0 stream, so don't nest.)
pub fn with_default_rng<R>(f: impl FnOnce(&mut Rng) -> R) -> R {
    DEFAULT_RNG.with(|cell| {
        let mut rng = cell.replace(Rng::new(0));
        let result = f(&mut rng);
        cell.replace(rng);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_sane_moments() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<f32> = (0..20000).map(|_| a.normal(1.0, 2.0)).collect();
        let ys: Vec<f32> = (0..20000).map(|_| b.normal(1.0, 2.0)).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "std {}", var.sqrt());
        let p = (0..20000).map(|_| a.bernoulli(0.3)).sum::<f32>() / 20000.0;
        assert!((p - 0.3).abs() < 0.02, "bernoulli rate {p}");
        let u: Vec<f32> = (0..1000).map(|_| a.uniform(-2.0, 3.0)).collect();
        assert!(u.iter().all(|&v| (-2.0..3.0).contains(&v)));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn manual_seed_makes_the_default_stream_reproducible_per_thread() {
        manual_seed(77);
        let first: Vec<u64> = (0..4).map(|_| with_default_rng(|r| r.next_u64())).collect();
        // Another thread drawing from its own default generator does not disturb this one.
        std::thread::spawn(|| with_default_rng(|r| r.next_u64()))
            .join()
            .unwrap();
        manual_seed(77);
        let again: Vec<u64> = (0..4).map(|_| with_default_rng(|r| r.next_u64())).collect();
        assert_eq!(first, again);
        assert_eq!(first[0], Rng::new(77).next_u64());
    }
}
