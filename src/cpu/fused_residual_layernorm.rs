//! The residual add fused with the following LayerNorm, forward: the CPU twin of
//! `gpu::Gpu::residual_layernorm_forward`. It is exactly [`residual_forward`] followed by
//! [`layernorm_forward`] on the sum (same arguments, same order as the GPU launcher), so it is
//! bitwise what the two separate calls give; the GPU kernel does both in one pass over the inputs.

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use super::layernorm::layernorm_forward;
use super::residual::residual_forward;

/// `residual_out = inp1 + inp2`; then `ln_out = layernorm(residual_out) * weight + bias`, saving
/// the row means and reciprocal standard deviations (see `cpu::layernorm`).
pub fn residual_layernorm_forward(
    residual_out: &mut [f32], // (B, T, C)
    ln_out: &mut [f32],       // (B, T, C)
    mean: &mut [f32],         // (B, T)
    rstd: &mut [f32],         // (B, T)
    inp1: &[f32],             // (B, T, C)
    inp2: &[f32],             // (B, T, C)
    weight: &[f32],           // (C)
    bias: &[f32],             // (C)
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(
        residual_out.len(),
        b * t * c,
        "residual_layernorm_forward: residual_out must be (B, T, C)"
    );
    residual_forward(residual_out, inp1, inp2);
    layernorm_forward(ln_out, mean, rstd, residual_out, weight, bias, b, t, c);
}
