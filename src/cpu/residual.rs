//! The residual connection: `out = inp1 + inp2`, elementwise; its backward passes `dout` to both.

use rayon::prelude::*;

/// Elements per rayon job.
const CHUNK: usize = 8192;

/// Forward: `out = inp1 + inp2`; any shape.
pub fn residual_forward(out: &mut [f32], inp1: &[f32], inp2: &[f32]) {
    assert_eq!(
        out.len(),
        inp1.len(),
        "residual_forward: out and inp1 differ in length"
    );
    assert_eq!(
        out.len(),
        inp2.len(),
        "residual_forward: out and inp2 differ in length"
    );
    out.par_chunks_mut(CHUNK)
        .zip(inp1.par_chunks(CHUNK).zip(inp2.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

/// Backward: `dinp1 += dout`, `dinp2 += dout`.
pub fn residual_backward(dinp1: &mut [f32], dinp2: &mut [f32], dout: &[f32]) {
    assert_eq!(
        dinp1.len(),
        dout.len(),
        "residual_backward: dinp1 and dout differ in length"
    );
    assert_eq!(
        dinp2.len(),
        dout.len(),
        "residual_backward: dinp2 and dout differ in length"
    );
    dinp1
        .par_chunks_mut(CHUNK)
        .zip(dinp2.par_chunks_mut(CHUNK).zip(dout.par_chunks(CHUNK)))
        .for_each(|(d1, (d2, d))| {
            for ((d1, d2), &d) in d1.iter_mut().zip(d2.iter_mut()).zip(d) {
                *d1 += d;
                *d2 += d;
            }
        });
}
