//! The encoder: token embedding plus position embedding, `out[b, t] = wte[inp[b, t]] + wpe[t]`, and
//! its backward, which scatters `dout` rows into the rows of `dwte` named by the tokens and into the
//! rows of `dwpe` named by the positions.

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

/// Forward: `out[b, t, :] = wte[inp[b, t], :] + wpe[t, :]`.
pub fn encoder_forward(
    out: &mut [f32], // (B, T, C)
    inp: &[u32],     // (B, T)
    wte: &[f32],     // (Vp, C)
    wpe: &[f32],     // (maxT, C)
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(
        out.len(),
        b * t * c,
        "encoder_forward: out must be (B, T, C)"
    );
    assert_eq!(inp.len(), b * t, "encoder_forward: inp must be (B, T)");
    check_tokens("encoder_forward", inp, wte.len(), c);
    assert!(
        wpe.len() >= t * c,
        "encoder_forward: wpe has fewer than T rows"
    );
    out.par_chunks_mut(c)
        .zip(inp.par_iter())
        .enumerate()
        .for_each(|(bt, (out_bt, &tok))| {
            let pos = bt % t;
            let wte_row = &wte[tok as usize * c..][..c];
            let wpe_row = &wpe[pos * c..][..c];
            for ((o, &x), &p) in out_bt.iter_mut().zip(wte_row).zip(wpe_row) {
                *o = x + p;
            }
        });
}

/// Backward: `dwte[inp[b, t], :] += dout[b, t, :]` and `dwpe[t, :] += dout[b, t, :]`.
///
/// Deterministic: each row of `dwte` and of `dwpe` is owned by one job, which adds its `dout` rows
/// in increasing (b, t) order, so the result does not depend on the number of threads.
pub fn encoder_backward(
    dwte: &mut [f32], // (Vp, C)
    dwpe: &mut [f32], // (maxT, C)
    dout: &[f32],     // (B, T, C)
    inp: &[u32],      // (B, T)
    b: usize,
    t: usize,
    c: usize,
) {
    assert_eq!(
        dout.len(),
        b * t * c,
        "encoder_backward: dout must be (B, T, C)"
    );
    assert_eq!(inp.len(), b * t, "encoder_backward: inp must be (B, T)");
    check_tokens("encoder_backward", inp, dwte.len(), c);
    assert!(
        dwpe.len() >= t * c,
        "encoder_backward: dwpe has fewer than T rows"
    );
    // dwpe: row t gathers dout[0, t], dout[1, t], ... in order.
    dwpe[..t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(pos, dwpe_t)| {
            for bi in 0..b {
                let d = &dout[(bi * t + pos) * c..][..c];
                for (g, &x) in dwpe_t.iter_mut().zip(d) {
                    *g += x;
                }
            }
        });
    // dwte: a counting sort of the positions by token (stable, so each token's positions stay in
    // increasing order), then each vocabulary row gathers its positions' dout rows.
    let vp = dwte.len() / c;
    let mut start = vec![0usize; vp + 1];
    for &tok in inp {
        start[tok as usize + 1] += 1;
    }
    for i in 0..vp {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut positions = vec![0usize; inp.len()];
    for (bt, &tok) in inp.iter().enumerate() {
        positions[fill[tok as usize]] = bt;
        fill[tok as usize] += 1;
    }
    dwte.par_chunks_mut(c)
        .enumerate()
        .filter(|(tok, _)| start[*tok] < start[*tok + 1])
        .for_each(|(tok, dwte_row)| {
            for &bt in &positions[start[tok]..start[tok + 1]] {
                let d = &dout[bt * c..][..c];
                for (g, &x) in dwte_row.iter_mut().zip(d) {
                    *g += x;
                }
            }
        });
}

/// Token ids index rows of wte: each must be below Vp = wte.len() / C.
fn check_tokens(what: &str, inp: &[u32], wte_len: usize, c: usize) {
    assert!(
        c > 0 && wte_len.is_multiple_of(c),
        "{what}: wte/dwte must be (Vp, C) with C = {c}"
    );
    let vp = wte_len / c;
    if let Some(&bad) = inp.iter().find(|&&tok| tok as usize >= vp) {
        panic!("{what}: token id {bad} is out of range for a vocabulary of Vp = {vp} rows");
    }
}
