//! LayerNorm over the channels of each (b, t) row: `out = (x - mean) * rstd * weight + bias` with
//! `rstd = 1 / sqrt(var + 1e-5)` and the biased variance (divided by C), as PyTorch's LayerNorm.
//! The forward saves mean and rstd per row for the backward.
//!
//! Row statistics (mean, variance, and the two means in the backward) are accumulated in f64, which
//! costs nothing next to the matmuls and keeps the reference as exact as fp32 storage allows.

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

/// The epsilon added to the variance (PyTorch's and GPT-2's default).
pub const LAYERNORM_EPS: f64 = 1e-5;

/// Forward: normalises each row of `inp`, scales by `weight` and shifts by `bias`; saves the row
/// means and reciprocal standard deviations.
pub fn layernorm_forward(
    out: &mut [f32],  // (B, T, C)
    mean: &mut [f32], // (B, T)
    rstd: &mut [f32], // (B, T)
    inp: &[f32],      // (B, T, C)
    weight: &[f32],   // (C)
    bias: &[f32],     // (C)
    b: usize,
    t: usize,
    c: usize,
) {
    let bt = b * t;
    assert_eq!(
        out.len(),
        bt * c,
        "layernorm_forward: out must be (B, T, C)"
    );
    assert_eq!(
        inp.len(),
        bt * c,
        "layernorm_forward: inp must be (B, T, C)"
    );
    assert_eq!(mean.len(), bt, "layernorm_forward: mean must be (B, T)");
    assert_eq!(rstd.len(), bt, "layernorm_forward: rstd must be (B, T)");
    assert_eq!(weight.len(), c, "layernorm_forward: weight must be (C)");
    assert_eq!(bias.len(), c, "layernorm_forward: bias must be (C)");
    if c == 0 {
        return;
    }
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((out_bt, x), (mean_bt, rstd_bt))| {
            let m = x.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
            let var = x.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / c as f64;
            let s = 1.0 / (var + LAYERNORM_EPS).sqrt();
            let (m, s) = (m as f32, s as f32);
            for (((o, &xi), &w), &bi) in out_bt.iter_mut().zip(x).zip(weight).zip(bias) {
                let norm = (xi - m) * s;
                *o = norm * w + bi;
            }
            *mean_bt = m;
            *rstd_bt = s;
        });
}

/// Backward: accumulates into `dinp`, `dweight` and `dbias`.
///
/// With `norm = (x - mean) * rstd` and `dnorm = weight * dout`:
/// `dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm))`,
/// `dweight += sum over rows of dout * norm`, `dbias += sum over rows of dout`.
/// The weight and bias sums are split over channels (each job owns a run of channels and adds the
/// rows in order), so they do not depend on the number of threads.
pub fn layernorm_backward(
    dinp: &mut [f32],    // (B, T, C)
    dweight: &mut [f32], // (C)
    dbias: &mut [f32],   // (C)
    dout: &[f32],        // (B, T, C)
    inp: &[f32],         // (B, T, C)
    weight: &[f32],      // (C)
    mean: &[f32],        // (B, T)
    rstd: &[f32],        // (B, T)
    b: usize,
    t: usize,
    c: usize,
) {
    let bt = b * t;
    assert_eq!(
        dinp.len(),
        bt * c,
        "layernorm_backward: dinp must be (B, T, C)"
    );
    assert_eq!(
        dout.len(),
        bt * c,
        "layernorm_backward: dout must be (B, T, C)"
    );
    assert_eq!(
        inp.len(),
        bt * c,
        "layernorm_backward: inp must be (B, T, C)"
    );
    assert_eq!(mean.len(), bt, "layernorm_backward: mean must be (B, T)");
    assert_eq!(rstd.len(), bt, "layernorm_backward: rstd must be (B, T)");
    assert_eq!(weight.len(), c, "layernorm_backward: weight must be (C)");
    assert_eq!(dweight.len(), c, "layernorm_backward: dweight must be (C)");
    assert_eq!(dbias.len(), c, "layernorm_backward: dbias must be (C)");
    if c == 0 {
        return;
    }
    // dinp, one row per job.
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|((dinp_bt, (dout_bt, x)), (&m, &s))| {
            let mut dnorm_mean = 0.0f64;
            let mut dnorm_norm_mean = 0.0f64;
            for ((&xi, &w), &d) in x.iter().zip(weight).zip(dout_bt) {
                let norm = (xi - m) * s;
                let dnorm = w * d;
                dnorm_mean += dnorm as f64;
                dnorm_norm_mean += (dnorm * norm) as f64;
            }
            let dnorm_mean = (dnorm_mean / c as f64) as f32;
            let dnorm_norm_mean = (dnorm_norm_mean / c as f64) as f32;
            for (((di, &xi), &w), &d) in dinp_bt.iter_mut().zip(x).zip(weight).zip(dout_bt) {
                let norm = (xi - m) * s;
                let dnorm = w * d;
                *di += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
            }
        });
    // dweight and dbias, a run of channels per job.
    const CH: usize = 64;
    dweight
        .par_chunks_mut(CH)
        .zip(dbias.par_chunks_mut(CH))
        .enumerate()
        .for_each(|(ci, (dw, db))| {
            let c0 = ci * CH;
            let n = dw.len();
            let mut acc_w = [0.0f64; CH];
            let mut acc_b = [0.0f64; CH];
            for r in 0..bt {
                let (m, s) = (mean[r], rstd[r]);
                let x = &inp[r * c + c0..][..n];
                let d = &dout[r * c + c0..][..n];
                for j in 0..n {
                    let norm = (x[j] - m) * s;
                    acc_w[j] += (d[j] * norm) as f64;
                    acc_b[j] += d[j] as f64;
                }
            }
            for j in 0..n {
                dw[j] += acc_w[j] as f32;
                db[j] += acc_b[j] as f32;
            }
        });
}
