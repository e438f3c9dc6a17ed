//! The AdamW optimizer (decoupled weight decay, bias-corrected moments) and the global gradient
//! norm used for gradient clipping.
//!
//! The update performs PyTorch's single-tensor `torch.optim.AdamW` step (what it runs for CPU
//! tensors), operation for operation in fp32, with the scalar coefficients computed in f64 as
//! Python computes them and rounded once:
//! ```text
//! g = grad * grad_scale
//! param = param * (1 - lr * wd)                      # decay first, as PyTorch
//! m = m + (1 - beta1) * (g - m)                      # lerp
//! v = v * beta2 + ((1 - beta2) * g) * g              # mul_, addcmul_
//! denom = sqrt(v) / sqrt(1 - beta2^step) + eps
//! param = param + (-lr / (1 - beta1^step)) * m / denom   # addcdiv_
//! ```
//! In real arithmetic this is `param -= lr * (mhat / (sqrt(vhat) + eps) + wd * param)` with
//! `mhat = m / (1 - beta1^step)`, `vhat = v / (1 - beta2^step)`. Two fp32 details can still differ
//! from a given PyTorch build in the last bit: its vectorised lerp fuses the multiply-add, and the
//! order of the decay against the moments does not matter in exact arithmetic only.
//!
//! Hyperparameters arrive as f32; each is widened to f64 through its shortest decimal form
//! ("0.9", not 0.899999976...), which is the Python float a user of PyTorch would have written.

use crate::config::GPT2Config;
use crate::params::{param_sizes, IS_MATRIX};
use crate::text::decimal_f64;
use rayon::prelude::*;
use std::ops::Range;

/// Which parameter tensors the weight decay applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecayOn {
    /// Every tensor: PyTorch's AdamW given all parameters in one group, as the reference
    /// fixtures are made (`verify --steps`).
    All,
    /// The matrices and embeddings (wte, wpe, qkvw, attprojw, fcw, fcprojw), not the biases and
    /// LayerNorm parameters: GPT-2's recipe, as llm.c and nanoGPT train (and `train`).
    Matrices,
}

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decay_on: DecayOn,
}

/// The parameter buffer (`num_parameters`, checkpoint order) cut into contiguous ranges that
/// cover it in order, each with the hyperparameters that apply there: `hp`, with the weight
/// decay 0 on the tensors `hp.decay_on` leaves out. Neighbouring tensors alike share a range: one
/// range when the decay is 0 or on every tensor, 11 for GPT-2's recipe.
pub fn update_ranges(cfg: &GPT2Config, hp: &AdamW) -> Vec<(Range<usize>, AdamW)> {
    let no_decay = AdamW {
        weight_decay: 0.0,
        ..*hp
    };
    let mut ranges: Vec<(Range<usize>, AdamW)> = Vec::new();
    let mut start = 0;
    for (size, is_matrix) in param_sizes(cfg).into_array().into_iter().zip(IS_MATRIX) {
        let decays = hp.decay_on == DecayOn::All || is_matrix;
        let this = if decays { *hp } else { no_decay };
        let end = start + size;
        match ranges.last_mut() {
            Some((r, last)) if last.weight_decay == this.weight_decay => r.end = end,
            _ => ranges.push((start..end, this)),
        }
        start = end;
    }
    ranges
}

/// Elements per rayon job.
const CHUNK: usize = 16384;

/// One AdamW step, in place, on `params` with moments `m` and `v` (same length, any shape);
/// `grads` are multiplied by `grad_scale` first (gradient clipping). `step` counts from 1.
pub fn adamw_update(
    params: &mut [f32], // (N)
    grads: &[f32],      // (N)
    m: &mut [f32],      // (N)
    v: &mut [f32],      // (N)
    hp: &AdamW,
    step: usize,
    grad_scale: f32,
) {
    let n = params.len();
    assert_eq!(
        grads.len(),
        n,
        "adamw_update: grads and params differ in length"
    );
    assert_eq!(m.len(), n, "adamw_update: m and params differ in length");
    assert_eq!(v.len(), n, "adamw_update: v and params differ in length");
    assert!(step >= 1, "adamw_update: step counts from 1");
    let lr = decimal_f64(hp.lr);
    let beta1 = decimal_f64(hp.beta1);
    let beta2 = decimal_f64(hp.beta2);
    let wd = decimal_f64(hp.weight_decay);
    let decay = (1.0 - lr * wd) as f32;
    let w1 = (1.0 - beta1) as f32;
    let b2 = beta2 as f32;
    let w2 = (1.0 - beta2) as f32;
    let neg_step_size = (-(lr / (1.0 - beta1.powf(step as f64)))) as f32;
    let bc2_sqrt = (1.0 - beta2.powf(step as f64)).sqrt() as f32;
    let eps = hp.eps;
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g * grad_scale;
                *p *= decay;
                *m += w1 * (g - *m);
                *v = *v * b2 + (w2 * g) * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p += neg_step_size * *m / denom;
            }
        });
}

/// `sqrt(sum of grads^2)`, accumulated in f64. Deterministic: fixed chunks summed in parallel,
/// sixteen interleaved partial sums per chunk, the chunk sums added in order.
pub fn global_norm(grads: &[f32]) -> f32 {
    const NORM_CHUNK: usize = 1 << 16;
    let partial: Vec<f64> = grads
        .par_chunks(NORM_CHUNK)
        .map(|chunk| {
            let mut acc = [0.0f64; 16];
            let it = chunk.chunks_exact(16);
            let rest = it.remainder();
            for xs in it {
                for j in 0..16 {
                    acc[j] += xs[j] as f64 * xs[j] as f64;
                }
            }
            for (j, &x) in rest.iter().enumerate() {
                acc[j] += x as f64 * x as f64;
            }
            acc.iter().sum::<f64>()
        })
        .collect();
    partial.iter().sum::<f64>().sqrt() as f32
}

/// `--grad-clip`'s bound (`train`'s and `verify`'s): a number of at least 0, 0 for no clipping.
pub fn check_grad_clip(grad_clip: f32) -> anyhow::Result<()> {
    if !(grad_clip >= 0.0 && grad_clip.is_finite()) {
        anyhow::bail!(
            "--grad-clip must be a number of at least 0 (0: no clipping), got {}",
            crate::text::typed(grad_clip)
        );
    }
    Ok(())
}

/// The factor that clips a gradient of global norm `norm` to `grad_clip` (0: no clipping): 1
/// unless the norm is larger (llm.c's rule; PyTorch's `clip_grad_norm_` divides by `norm + 1e-6`,
/// a relative difference of 1e-6 / norm).
pub fn clip_scale(grad_clip: f32, norm: f32) -> f32 {
    if grad_clip > 0.0 && norm > grad_clip {
        grad_clip / norm
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::{check_grad_clip, clip_scale, update_ranges, AdamW, DecayOn};
    use crate::config::GPT2Config;
    use crate::params::{num_parameters, param_sizes};
    use crate::text::decimal_f64;

    #[test]
    fn clipping_scales_a_larger_norm_down_to_the_limit() {
        assert_eq!(clip_scale(1.0, 4.0), 0.25);
        assert_eq!(clip_scale(2.0, 2.5), 0.8);
        // at or under the limit, or no limit: unchanged
        assert_eq!(clip_scale(1.0, 1.0), 1.0);
        assert_eq!(clip_scale(1.0, 0.5), 1.0);
        assert_eq!(clip_scale(0.0, 100.0), 1.0);
    }

    #[test]
    fn grad_clip_is_a_number_of_at_least_0() {
        for ok in [0.0, 1e-30, 1.0, 1e30] {
            assert!(check_grad_clip(ok).is_ok(), "{ok}");
        }
        for bad in [-1e-30, -1.0, f32::INFINITY, f32::NAN] {
            let e = check_grad_clip(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("--grad-clip must be a number of at least 0"),
                "{e}"
            );
        }
    }

    #[test]
    fn weight_decay_ranges_follow_gpt2s_recipe() {
        // maxT=8, V=10 (Vp=16), L=2, NH=2, C=4
        let cfg = GPT2Config::new(8, 10, 16, 2, 2, 4).unwrap();
        let s = param_sizes(&cfg);
        let hp = |weight_decay, decay_on| AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay,
            decay_on,
        };
        let summary = |hp: AdamW| -> Vec<(usize, usize, f32)> {
            let ranges = update_ranges(&cfg, &hp);
            ranges
                .iter()
                .map(|(r, h)| {
                    assert_eq!((h.lr, h.beta2, h.decay_on), (hp.lr, hp.beta2, hp.decay_on));
                    (r.start, r.end, h.weight_decay)
                })
                .collect()
        };
        let n = num_parameters(&cfg);
        // one range where the decay is the same everywhere
        assert_eq!(summary(hp(0.1, DecayOn::All)), vec![(0, n, 0.1)]);
        assert_eq!(summary(hp(0.0, DecayOn::Matrices)), vec![(0, n, 0.0)]);
        // GPT-2's: wte+wpe | ln1w+ln1b | qkvw | qkvb | attprojw | attprojb+ln2w+ln2b | fcw | fcb
        // | fcprojw | fcprojb+lnfw+lnfb
        let lens = [
            (s.wte + s.wpe, 0.1),
            (s.ln1w + s.ln1b, 0.0),
            (s.qkvw, 0.1),
            (s.qkvb, 0.0),
            (s.attprojw, 0.1),
            (s.attprojb + s.ln2w + s.ln2b, 0.0),
            (s.fcw, 0.1),
            (s.fcb, 0.0),
            (s.fcprojw, 0.1),
            (s.fcprojb + s.lnfw + s.lnfb, 0.0),
        ];
        let mut want = Vec::new();
        let mut start = 0;
        for (len, wd) in lens {
            want.push((start, start + len, wd));
            start += len;
        }
        assert_eq!(start, n);
        // by hand: wte 16*4 + wpe 8*4 = 96 decayed, then ln1 2*2*4 = 16 not
        assert_eq!((want[0].1, want[1].1), (96, 112));
        assert_eq!(summary(hp(0.1, DecayOn::Matrices)), want);
    }

    #[test]
    fn hyperparameters_widen_through_their_decimal() {
        assert_eq!(decimal_f64(0.9), 0.9f64);
        assert_eq!(decimal_f64(0.95), 0.95f64);
        assert_eq!(decimal_f64(3e-4), 3e-4f64);
        assert_eq!(decimal_f64(1e-8), 1e-8f64);
        assert_eq!(decimal_f64(0.0), 0.0);
    }
}
