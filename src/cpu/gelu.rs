//! GELU, the tanh approximation GPT-2 uses (PyTorch's `gelu(x, approximate="tanh")`):
//! `gelu(x) = 0.5 * x * (1 + tanh(u))` with `u = sqrt(2/pi) * (x + 0.044715 * x^3)`, elementwise.
//!
//! Computed through the identity `0.5 * (1 + tanh(u)) = 1 / (1 + exp(-2u))`, i.e.
//! `gelu(x) = x / (1 + exp(-2u))`, equal in exact arithmetic and better in fp32: for x << 0 the
//! `1 + tanh(u)` form cancels (it keeps only ~|x| * 1e-7 of absolute accuracy, as PyTorch's does),
//! the quotient does not. The exponential is a short polynomial (`exp_f32`) rather than a libm
//! call, so that the loops vectorise: libm's `tanhf` made this layer cost a third of the matmuls.

use rayon::prelude::*;

/// sqrt(2 / pi), rounded once from f64 (as PyTorch's kBeta).
const GELU_SCALE: f32 = (std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2) as f32;
/// The cubic coefficient (PyTorch's kKappa).
const GELU_KAPPA: f32 = 0.044715;
/// Elements per rayon job.
const CHUNK: usize = 4096;

/// Forward: `out = gelu(inp)`, elementwise; any shape.
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    assert_eq!(
        out.len(),
        inp.len(),
        "gelu_forward: out and inp differ in length"
    );
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                let u = GELU_SCALE * (x + GELU_KAPPA * (x * x * x));
                *o = x / (1.0 + exp_f32(-2.0 * u));
            }
        });
}

/// Backward: `dinp += gelu'(inp) * dout`. With `s = 0.5 * (1 + tanh(u)) = 1 / (1 + e)`,
/// `e = exp(-2u)`: `gelu'(x) = s + 0.5 * x * (1 - tanh(u)^2) * du/dx` and `1 - tanh(u)^2 =
/// 4 * e * s^2` (again free of cancellation), `du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 * x^2)`.
pub fn gelu_backward(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    assert_eq!(
        dinp.len(),
        inp.len(),
        "gelu_backward: dinp and inp differ in length"
    );
    assert_eq!(
        dout.len(),
        inp.len(),
        "gelu_backward: dout and inp differ in length"
    );
    dinp.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(di, (x, d))| {
            for ((di, &x), &d) in di.iter_mut().zip(x).zip(d) {
                let u = GELU_SCALE * (x + GELU_KAPPA * (x * x * x));
                let e = exp_f32(-2.0 * u);
                let s = 1.0 / (1.0 + e);
                // e * s = e / (1 + e) <= 1 first: 4 * e alone overflows once e nears f32's max
                let sech2 = 4.0 * (e * s) * s;
                let dudx = GELU_SCALE * (1.0 + 3.0 * GELU_KAPPA * (x * x));
                // Beyond |u| = 40, gelu' is 0 or 1 within f32 (sech^2(40) = 7e-35); the formula
                // is not, where exp_f32 clamps and x^3 or x^2 overflow (|x| above ~1e12).
                let grad = if u.abs() > 40.0 {
                    if u > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    s + 0.5 * x * sech2 * dudx
                };
                *di += grad * d;
            }
        });
}

/// `e^x` in fp32 with branch-free arithmetic that vectorises: x = n ln2 + r, |r| <= ln2 / 2, then
/// `e^r` by a degree-6 polynomial (Cephes' `expf` coefficients, error within about 2 ulp) scaled
/// by `2^n` built in the exponent bits. Arguments are clamped to [-87.33, 88]: below, the result
/// is 2^-126 instead of a denormal or 0; above, about 1.65e38 instead of up to 3.4e38 or inf
/// (GELU only needs the result to be huge there: x / (1 + e) is then ~0 either way).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // ln 2 split in two, so that n * LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: (t + ROUND) - ROUND rounds t to an integer
    let x = x.clamp(-87.336_54, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // n is an integer in [-126, 127], so n + 127 is a valid biased exponent.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::exp_f32;

    #[test]
    fn exp_f32_is_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001_37;
        }
        assert!(
            worst < 3.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) <= 1.2e-38 && exp_f32(1000.0) > 1e38);
    }
}
