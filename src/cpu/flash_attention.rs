//! Causal multi-head self-attention, the flash way: the CPU twin of `gpu::flash_attention_*`
//! (`kernels/flash_attention.cu`), computing the same algorithm in fp32 on the same buffers,
//! never the (B, NH, T, T) scores.
//!
//! With q, k, v of head h side by side per token in `qkv` (B, T, 3C), hs = C / NH,
//! scale = 1/sqrt(hs) and scores in base-2 units s = (q . k) * scale * log2(e):
//! - forward, per (b, h, t) row: the keys t2 <= t in tiles of [`KEY_TILE`]; per tile
//!   m' = max(m, max s), p = exp2(s - m'), l = l exp2(m - m') + sum p, o = o exp2(m - m') + sum p v,
//!   m = m'; then out = o / l and lse = (m + log2 l) ln 2 (natural log of the softmax's
//!   denominator in the plain attention's terms: lse = ln sum over t2 <= t of exp(scale q.k)).
//! - backward, from lse alone: D_t = dout_t . out_t, p(t, t2) = exp2(s - lse log2(e)),
//!   dp = dout_t . v_t2, ds = p (dp - D_t); dq_t += scale sum over t2 <= t of ds k_t2,
//!   dk_t2 += scale sum over t >= t2 of ds q_t, dv_t2 += sum over t >= t2 of p dout_t.
//!   Gradients ACCUMULATE (+=) into `dqkv`, as everywhere in `cpu`.
//!
//! Every job owns the rows it writes and sums in a fixed order, so the results do not depend on
//! the number of threads. Any head size works here (the GPU compiles 64 and 128).

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use super::attention::dot;
use rayon::prelude::*;

/// Keys per tile of the forward's online softmax (the GPU's bf16 tile).
pub const KEY_TILE: usize = 64;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;

/// Forward; see the file comment. Writes `out` and `lse`.
pub fn flash_attention_forward(
    out: &mut [f32], // (B, T, C)
    lse: &mut [f32], // (B, NH, T)
    qkv: &[f32],     // (B, T, 3C)
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    check_shapes("flash_attention_forward", b, t, c, nh, qkv.len());
    assert_eq!(
        out.len(),
        b * t * c,
        "flash_attention_forward: out must be (B, T, C)"
    );
    assert_eq!(
        lse.len(),
        b * nh * t,
        "flash_attention_forward: lse must be (B, NH, T)"
    );
    if b * t * c == 0 {
        return;
    }
    let hs = c / nh;
    let c3 = 3 * c;
    let sl2 = LOG2E / (hs as f32).sqrt();
    // lse_bt (B, T, NH): each job writes one (b, t) row of out and of lse_bt.
    let mut lse_bt = vec![0.0f32; b * t * nh];
    out.par_chunks_mut(c)
        .zip(lse_bt.par_chunks_mut(nh))
        .enumerate()
        .for_each_init(
            || vec![0.0f32; KEY_TILE],
            |s, (row, (out_bt, lse_row))| {
                let (bi, ti) = (row / t, row % t);
                for (h, (out_h, lse_h)) in out_bt.chunks_exact_mut(hs).zip(lse_row).enumerate() {
                    let q = &qkv[(bi * t + ti) * c3 + h * hs..][..hs];
                    out_h.fill(0.0);
                    let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
                    for k0 in (0..=ti).step_by(KEY_TILE) {
                        let n = KEY_TILE.min(ti + 1 - k0);
                        let mut mx = m;
                        for (j, sj) in s[..n].iter_mut().enumerate() {
                            let k = &qkv[(bi * t + k0 + j) * c3 + c + h * hs..][..hs];
                            *sj = dot(q, k) * sl2;
                            mx = mx.max(*sj);
                        }
                        let alpha = (m - mx).exp2();
                        m = mx;
                        let mut sum = 0.0f32;
                        for sj in &mut s[..n] {
                            *sj = (*sj - mx).exp2();
                            sum += *sj;
                        }
                        l = l * alpha + sum;
                        for o in out_h.iter_mut() {
                            *o *= alpha;
                        }
                        for (j, &p) in s[..n].iter().enumerate() {
                            let v = &qkv[(bi * t + k0 + j) * c3 + 2 * c + h * hs..][..hs];
                            for (o, &vi) in out_h.iter_mut().zip(v) {
                                *o += p * vi;
                            }
                        }
                    }
                    let inv = 1.0 / l;
                    for o in out_h.iter_mut() {
                        *o *= inv;
                    }
                    *lse_h = (m + l.log2()) * LN2;
                }
            },
        );
    // (B, T, NH) -> (B, NH, T)
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..nh {
                lse[(bi * nh + h) * t + ti] = lse_bt[(bi * t + ti) * nh + h];
            }
        }
    }
}

/// Backward; see the file comment. Accumulates into `dqkv`.
pub fn flash_attention_backward(
    dqkv: &mut [f32], // (B, T, 3C)
    dout: &[f32],     // (B, T, C)
    qkv: &[f32],      // (B, T, 3C)
    out: &[f32],      // (B, T, C)
    lse: &[f32],      // (B, NH, T)
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    const K: &str = "flash_attention_backward";
    check_shapes(K, b, t, c, nh, qkv.len());
    assert_eq!(dqkv.len(), qkv.len(), "{K}: dqkv must be (B, T, 3C)");
    assert_eq!(dout.len(), b * t * c, "{K}: dout must be (B, T, C)");
    assert_eq!(out.len(), b * t * c, "{K}: out must be (B, T, C)");
    assert_eq!(lse.len(), b * nh * t, "{K}: lse must be (B, NH, T)");
    if b * t * c == 0 {
        return;
    }
    let hs = c / nh;
    let c3 = 3 * c;
    let sl2 = LOG2E / (hs as f32).sqrt();
    let scale = 1.0 / (hs as f32).sqrt();
    // D (B, NH, T) = rowsum(dout * out) and lse * log2(e), per (b, h, t).
    let dvec: Vec<f32> = (0..b * nh * t)
        .into_par_iter()
        .map(|i| {
            let (bi, h, ti) = (i / (nh * t), (i / t) % nh, i % t);
            let at = (bi * t + ti) * c + h * hs;
            dot(&dout[at..][..hs], &out[at..][..hs])
        })
        .collect();
    let lse2: Vec<f32> = lse.iter().map(|&x| x * LOG2E).collect();
    // ds(t, t2) and p(t, t2) for query t and key t2 <= t of head (bi, h).
    let grad = |bi: usize, h: usize, tq: usize, tk: usize| -> (f32, f32) {
        let q = &qkv[(bi * t + tq) * c3 + h * hs..][..hs];
        let k = &qkv[(bi * t + tk) * c3 + c + h * hs..][..hs];
        let v = &qkv[(bi * t + tk) * c3 + 2 * c + h * hs..][..hs];
        let d_o = &dout[(bi * t + tq) * c + h * hs..][..hs];
        let row = (bi * nh + h) * t + tq;
        let p = (dot(q, k) * sl2 - lse2[row]).exp2();
        let ds = p * (dot(d_o, v) - dvec[row]);
        (p, ds)
    };
    // One (b, t) row of dqkv per job: dq of query t, dk and dv of key t, every head.
    dqkv.par_chunks_mut(c3).enumerate().for_each_init(
        || vec![0.0f32; 3 * hs],
        |acc, (row, dqkv_bt)| {
            let (bi, ti) = (row / t, row % t);
            let (dq, rest) = dqkv_bt.split_at_mut(c);
            let (dk, dv) = rest.split_at_mut(c);
            for h in 0..nh {
                acc.fill(0.0);
                let (aq, rest) = acc.split_at_mut(hs);
                let (ak, av) = rest.split_at_mut(hs);
                // dq_t: the keys t2 <= t in order
                for t2 in 0..=ti {
                    let (_, ds) = grad(bi, h, ti, t2);
                    let k = &qkv[(bi * t + t2) * c3 + c + h * hs..][..hs];
                    for (a, &ki) in aq.iter_mut().zip(k) {
                        *a += ds * ki;
                    }
                }
                // dk_t, dv_t: the queries t1 >= t in order
                for t1 in ti..t {
                    let (p, ds) = grad(bi, h, t1, ti);
                    let q = &qkv[(bi * t + t1) * c3 + h * hs..][..hs];
                    let d_o = &dout[(bi * t + t1) * c + h * hs..][..hs];
                    for ((a, &qi), (w, &di)) in ak.iter_mut().zip(q).zip(av.iter_mut().zip(d_o)) {
                        *a += ds * qi;
                        *w += p * di;
                    }
                }
                let r = h * hs..(h + 1) * hs;
                for (g, &a) in dq[r.clone()].iter_mut().zip(aq.iter()) {
                    *g += scale * a;
                }
                for (g, &a) in dk[r.clone()].iter_mut().zip(ak.iter()) {
                    *g += scale * a;
                }
                for (g, &a) in dv[r].iter_mut().zip(av.iter()) {
                    *g += a;
                }
            }
        },
    );
}

fn check_shapes(what: &str, b: usize, t: usize, c: usize, nh: usize, qkv_len: usize) {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "{what}: C = {c} is not divisible by NH = {nh}"
    );
    assert_eq!(qkv_len, b * t * 3 * c, "{what}: qkv must be (B, T, 3C)");
}
