//! GELU, the tanh approximation GPT-2 uses (PyTorch's `gelu(x, approximate="tanh")`):
//! `gelu(x) = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`, elementwise.

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
                *o = 0.5 * x * (1.0 + u.tanh());
            }
        });
}

/// Backward: `dinp += gelu'(inp) * dout`, with
/// `gelu'(x) = 0.5 * (1 + tanh(u)) + 0.5 * x * (1 - tanh(u)^2) * sqrt(2/pi) * (1 + 3 * 0.044715 * x^2)`.
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
                let th = u.tanh();
                let dudx = GELU_SCALE * (1.0 + 3.0 * GELU_KAPPA * (x * x));
                let grad = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * dudx;
                *di += grad * d;
            }
        });
}
