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

use rayon::prelude::*;

/// AdamW hyperparameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
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

/// The f64 with the same shortest decimal representation as `x` (0.9f32 -> 0.9f64).
fn decimal_f64(x: f32) -> f64 {
    // Display prints the shortest decimal that reads back as the same f32; parsing it as f64
    // cannot fail for a finite value, and non-finite values fall back to the plain widening.
    format!("{x}").parse::<f64>().unwrap_or(x as f64)
}

#[cfg(test)]
mod tests {
    use super::decimal_f64;

    #[test]
    fn hyperparameters_widen_through_their_decimal() {
        assert_eq!(decimal_f64(0.9), 0.9f64);
        assert_eq!(decimal_f64(0.95), 0.95f64);
        assert_eq!(decimal_f64(3e-4), 3e-4f64);
        assert_eq!(decimal_f64(1e-8), 1e-8f64);
        assert_eq!(decimal_f64(0.0), 0.0);
    }
}
