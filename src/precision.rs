//! Numeric precision of the engine (`--precision fp32|bf16`) and the host twin of the GPU's
//! stochastic rounding to bf16.
//!
//! In bf16 the GPU keeps parameters, activations and gradients in bf16 and accumulates in fp32;
//! fp32 master weights and the AdamW moments stay fp32, and AdamW writes the bf16 weights with
//! stochastic rounding: x is rounded up (away from zero) with probability equal to the fraction of
//! the bf16 step it has passed, so the rounding is unbiased on average and small updates are not
//! lost. The random bits are a counter-based hash of (seed, element index), independent of the
//! launch configuration, so a run is reproducible and the kernel can be checked bit for bit
//! against [`round_bf16_stochastic`] (the same arithmetic, here on the host).

use std::fmt;

use half::bf16;

/// The precision the engine computes in. (Its values' help is training's; the commands that
/// mean another thing by them describe them with [`values`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats (the reference, and the only precision the CPU engine computes in).
    Fp32,
    /// bfloat16 parameters, activations and gradients, with fp32 sums, master weights and AdamW
    /// moments (GPU only).
    Bf16,
}

/// A parser of `--precision` whose help describes fp32 and bf16 as `fp32` and `bf16` say: what
/// they mean depends on the command (`eval` and `sample` keep no gradients or AdamW moments;
/// `convert` stores a file).
pub fn values(
    fp32: &'static str,
    bf16: &'static str,
) -> impl clap::builder::TypedValueParser<Value = Precision> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new(Precision::Fp32.name()).help(fp32),
        PossibleValue::new(Precision::Bf16.name()).help(bf16),
    ])
    .map(|name| {
        if name == Precision::Bf16.name() {
            Precision::Bf16
        } else {
            Precision::Fp32
        }
    })
}

impl Precision {
    /// "fp32" or "bf16".
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Chris Wellons' "lowbias32" integer hash (a bijection of u32 with low bias). The GPU twin is
/// `lowbias32` in `kernels/common.h`: same constants, same operations.
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The 32 random bits that round element `index` in the update seeded by `seed`:
/// `lowbias32(index ^ lowbias32(seed))`. Indexes are 32-bit (the launchers check n < 2^32).
pub fn rounding_bits(seed: u32, index: u32) -> u32 {
    lowbias32(index ^ lowbias32(seed))
}

/// `x` rounded to bf16 stochastically with the random bits `random`: the low 16 bits of `random`
/// are added to the low 16 bits of x's pattern and the sum truncated, so x rounds away from zero
/// with probability (dropped bits) / 2^16. Infinities and NaN round to nearest (unchanged class);
/// a finite x within one bf16 step of the largest finite bf16 may round to infinity, as rounding up
/// would. The GPU twin is `round_bf16_stochastic` in `kernels/common.h`.
pub fn round_bf16_stochastic(x: f32, random: u32) -> bf16 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0x7f80_0000 {
        return bf16::from_f32(x);
    }
    bf16::from_bits((bits.wrapping_add(random & 0xffff) >> 16) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowbias32_known_values() {
        // by hand from the definition: lowbias32(0) = 0 (every step maps 0 to 0)
        assert_eq!(lowbias32(0), 0);
        // lowbias32(1): 1 ^ 0 = 1; *0x7feb352d = 0x7feb352d; ^ (>>15 = 0xffd6) = 0x7feb_cafb;
        // the rest checked against the same steps written out in u64 arithmetic
        // (and inputs whose high bits every shift moves)
        for input in [1u32, 0x0001_0000, 0x8000_0000, 0xdead_beef, u32::MAX] {
            let mut x = input as u64;
            x ^= x >> 16;
            x = (x * 0x7feb_352d) & 0xffff_ffff;
            x ^= x >> 15;
            x = (x * 0x846c_a68b) & 0xffff_ffff;
            x ^= x >> 16;
            assert_eq!(lowbias32(input) as u64, x, "{input:#x}");
        }
        assert_ne!(lowbias32(1), lowbias32(2));
    }

    #[test]
    fn exact_values_are_kept() {
        for &x in &[
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65280.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            for r in [0u32, 1, 0x7fff, 0xffff, 0xdead_ffff] {
                assert_eq!(round_bf16_stochastic(x, r).to_f32().to_bits(), x.to_bits());
            }
        }
        assert!(round_bf16_stochastic(f32::NAN, 0xffff).is_nan());
    }

    #[test]
    fn rounds_to_one_of_the_two_neighbours_by_the_dropped_fraction() {
        // 1 + 2^-9: bf16 neighbours 1 and 1 + 2^-7 (the bf16 step at 1 is 2^-7); the dropped low
        // 16 bits are 0x4000, a quarter of the step, so it rounds up iff random & 0xffff >= 0xc000
        let x = 1.0f32 + 2f32.powi(-9);
        assert_eq!(x.to_bits() & 0xffff, 0x4000);
        assert_eq!(round_bf16_stochastic(x, 0xbfff).to_f32(), 1.0);
        assert_eq!(
            round_bf16_stochastic(x, 0xc000).to_f32(),
            1.0 + 2f32.powi(-7)
        );
        // negative numbers round away from zero in the same way
        assert_eq!(round_bf16_stochastic(-x, 0xbfff).to_f32(), -1.0);
        assert_eq!(
            round_bf16_stochastic(-x, 0xc000).to_f32(),
            -1.0 - 2f32.powi(-7)
        );
        // carry into the exponent: just below 2 rounds up to exactly 2
        let y = f32::from_bits(0x3fff_ffff);
        assert_eq!(round_bf16_stochastic(y, 0x0001).to_f32(), 2.0);
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // the mean of many roundings of x approaches x; round-to-nearest would stay at 1.0
        let x = 1.0f32 + 0.3 * 2f32.powi(-7);
        let n = 200_000u32;
        let sum: f64 = (0..n)
            .map(|i| round_bf16_stochastic(x, rounding_bits(7, i)).to_f32() as f64)
            .sum();
        let mean = sum / n as f64;
        let step = 2f64.powi(-7);
        // ups ~ Binomial(n, 0.3): sd of the mean = step * sqrt(0.3 * 0.7 / n) ~ 8e-6; allow 5 sd
        let sd = step * (0.3f64 * 0.7 / n as f64).sqrt();
        assert!(
            (mean - x as f64).abs() < 5.0 * sd,
            "mean {mean} vs {x}, 5 sd = {}",
            5.0 * sd
        );
        assert_eq!(bf16::from_f32(x).to_f32(), 1.0);
    }
}
