//! Causal multi-head self-attention, the plain (non-flash) way: for each batch row b, head h and
//! query position t, `preatt[t2] = q_t . k_t2 / sqrt(hs)` for t2 <= t, `att = softmax(preatt)` over
//! t2 <= t, and `out_t = sum over t2 of att[t2] * v_t2`. The input holds q, k and v side by side per
//! token, `(B, T, 3C)`, head h using channels h*hs..(h+1)*hs of each, hs = C / NH.
//!
//! The forward writes `preatt` and `att` (`(B, NH, T, T)`, zero above the diagonal); the backward
//! needs `att`. Every job owns the rows it writes (a (b, h, t) row of preatt/att, or a (b, t) row of
//! out/dinp) and sums in a fixed order, so results do not depend on the number of threads.

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

/// Forward; see the file comment. It is [`attention_forward_cached`] with nothing cached (P = 0).
pub fn attention_forward(
    out: &mut [f32],    // (B, T, C)
    preatt: &mut [f32], // (B, NH, T, T)
    att: &mut [f32],    // (B, NH, T, T)
    inp: &[f32],        // (B, T, 3C)
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    attention_forward_cached(out, preatt, att, inp, b, 0, t, c, nh);
}

/// The forward of the last T of P + T positions of B sequences, for generation with a cache
/// (`cpu::decode`, B = 1): `inp` holds the q, k and v of all P + T positions, the P cached ones
/// first; `out`, `preatt` and `att` are those of the T new positions, whose queries attend to
/// every position up to their own. Each row is computed as the full forward computes it, so
/// `out` is bit for bit the last T rows of [`attention_forward`] over all P + T positions, which
/// is this function with P = 0.
pub fn attention_forward_cached(
    out: &mut [f32],    // (B, T, C)
    preatt: &mut [f32], // (B, NH, T, P+T)
    att: &mut [f32],    // (B, NH, T, P+T)
    inp: &[f32],        // (B, P+T, 3C)
    b: usize,
    p: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    let s = p + t;
    check_shapes(
        "attention_forward",
        out.len(),
        preatt.len(),
        att.len(),
        inp.len(),
        (b, t, s),
        c,
        nh,
    );
    if b * t * c == 0 {
        return;
    }
    let hs = c / nh;
    let c3 = 3 * c;
    let scale = 1.0 / (hs as f32).sqrt();
    // head h's part of sequence bi's position t2's q (part 0), k (1) or v (2)
    let part = |bi: usize, t2: usize, which: usize, h: usize| {
        &inp[(bi * s + t2) * c3 + which * c + h * hs..][..hs]
    };
    // Scores and softmax, one (b, h, t) row per job: preatt[t2] = q_t . k_t2 * scale for t2 <= t,
    // att = their softmax (the sum in f64), both zero beyond t.
    preatt
        .par_chunks_mut(s)
        .zip(att.par_chunks_mut(s))
        .enumerate()
        .for_each(|(row, (preatt_row, att_row))| {
            let (bi, h, ti) = (row / (nh * t), (row / t) % nh, p + row % t);
            let q = part(bi, ti, 0, h);
            let mut maxval = f32::NEG_INFINITY;
            for (t2, x) in preatt_row.iter_mut().enumerate().take(ti + 1) {
                *x = dot(q, part(bi, t2, 1, h)) * scale;
                maxval = maxval.max(*x);
            }
            let mut sum = 0.0f64;
            for (a, &x) in att_row.iter_mut().zip(preatt_row.iter()).take(ti + 1) {
                *a = (x - maxval).exp();
                sum += *a as f64;
            }
            let inv = (1.0 / sum) as f32;
            for a in &mut att_row[..=ti] {
                *a *= inv;
            }
            preatt_row[ti + 1..].fill(0.0);
            att_row[ti + 1..].fill(0.0);
        });
    // Weighted sums of values, one row of out per job: out_t = sum over t2 <= t of att[t2] * v_t2.
    let att = &*att;
    out.par_chunks_mut(c).enumerate().for_each(|(row, out_t)| {
        let (bi, i) = (row / t, row % t);
        let ti = p + i;
        for (h, out_h) in out_t.chunks_exact_mut(hs).enumerate() {
            out_h.fill(0.0);
            let att_row = &att[((bi * nh + h) * t + i) * s..][..=ti];
            for (t2, &a) in att_row.iter().enumerate() {
                for (o, &vi) in out_h.iter_mut().zip(part(bi, t2, 2, h)) {
                    *o += a * vi;
                }
            }
        }
    });
}

/// Backward: accumulates into `dinp` (dq, dk, dv side by side, as `inp`). `datt` and `dpreatt` are
/// scratch and are OVERWRITTEN (not accumulated): `datt` with the gradient of the loss with
/// respect to `att`, `dpreatt` with that with respect to `preatt`, zero above the diagonal.
pub fn attention_backward(
    dinp: &mut [f32],    // (B, T, 3C)
    dpreatt: &mut [f32], // (B, NH, T, T)
    datt: &mut [f32],    // (B, NH, T, T)
    dout: &[f32],        // (B, T, C)
    inp: &[f32],         // (B, T, 3C)
    att: &[f32],         // (B, NH, T, T)
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) {
    check_shapes(
        "attention_backward",
        dout.len(),
        dpreatt.len(),
        datt.len(),
        inp.len(),
        (b, t, t),
        c,
        nh,
    );
    assert_eq!(
        dinp.len(),
        inp.len(),
        "attention_backward: dinp must be (B, T, 3C)"
    );
    assert_eq!(
        att.len(),
        datt.len(),
        "attention_backward: att must be (B, NH, T, T)"
    );
    if b * t * c == 0 {
        return;
    }
    let hs = c / nh;
    let c3 = 3 * c;
    let scale = 1.0 / (hs as f32).sqrt();
    // datt[t2] = dout_t . v_t2, then the softmax backward
    // dpreatt[t2] = att[t2] * (datt[t2] - sum over t3 of att[t3] * datt[t3]); one row per job.
    datt.par_chunks_mut(t)
        .zip(dpreatt.par_chunks_mut(t))
        .enumerate()
        .for_each(|(row, (datt_row, dpreatt_row))| {
            let (bi, ti) = (row / (nh * t), row % t);
            let h = (row / t) % nh;
            let att_row = &att[row * t..][..t];
            let dout_h = &dout[(bi * t + ti) * c + h * hs..][..hs];
            let mut s = 0.0f64;
            for (t2, da) in datt_row.iter_mut().enumerate().take(ti + 1) {
                let v = &inp[(bi * t + t2) * c3 + 2 * c + h * hs..][..hs];
                *da = dot(dout_h, v);
                s += (att_row[t2] * *da) as f64;
            }
            let s = s as f32;
            for ((dp, &da), &a) in dpreatt_row
                .iter_mut()
                .zip(datt_row.iter())
                .zip(att_row)
                .take(ti + 1)
            {
                *dp = a * (da - s);
            }
            datt_row[ti + 1..].fill(0.0);
            dpreatt_row[ti + 1..].fill(0.0);
        });
    // dq_t = scale * sum over t2 <= t of dpreatt[t, t2] * k_t2,
    // dk_t = scale * sum over t' >= t of dpreatt[t', t] * q_t',
    // dv_t = sum over t' >= t of att[t', t] * dout_t'; one (b, t) row of dinp per job.
    let dpreatt = &*dpreatt;
    dinp.par_chunks_mut(c3).enumerate().for_each_init(
        || vec![0.0f32; 3 * hs],
        |acc, (row, dinp_bt)| {
            let (bi, ti) = (row / t, row % t);
            let (dq, rest) = dinp_bt.split_at_mut(c);
            let (dk, dv) = rest.split_at_mut(c);
            for h in 0..nh {
                acc.fill(0.0);
                let (aq, rest) = acc.split_at_mut(hs);
                let (ak, av) = rest.split_at_mut(hs);
                let head = (bi * nh + h) * t;
                let dp_row = &dpreatt[(head + ti) * t..][..=ti];
                for (t2, &dp) in dp_row.iter().enumerate() {
                    let k = &inp[(bi * t + t2) * c3 + c + h * hs..][..hs];
                    for (a, &ki) in aq.iter_mut().zip(k) {
                        *a += dp * ki;
                    }
                }
                for t1 in ti..t {
                    let dp = dpreatt[(head + t1) * t + ti];
                    let a_w = att[(head + t1) * t + ti];
                    let q = &inp[(bi * t + t1) * c3 + h * hs..][..hs];
                    let d = &dout[(bi * t + t1) * c + h * hs..][..hs];
                    for ((a, &qi), (b_, &di)) in ak.iter_mut().zip(q).zip(av.iter_mut().zip(d)) {
                        *a += dp * qi;
                        *b_ += a_w * di;
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

/// A dot product in eight interleaved fp32 partial sums (so that it vectorises), combined pairwise;
/// shared with `cpu::flash_attention`, so that both compute the same scores.
pub(super) fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for j in 0..8 {
            acc[j] += xs[j] * ys[j];
        }
    }
    for (j, (&a, &b)) in xr.iter().zip(yr).enumerate() {
        acc[j] += a * b;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// The shapes of B sequences' T queries against S keys (S = T, but for generation's cache).
#[allow(clippy::too_many_arguments)]
fn check_shapes(
    what: &str,
    out_len: usize,
    preatt_len: usize,
    att_len: usize,
    inp_len: usize,
    (b, t, s): (usize, usize, usize),
    c: usize,
    nh: usize,
) {
    assert!(
        nh > 0 && c.is_multiple_of(nh),
        "{what}: C = {c} is not divisible by NH = {nh}"
    );
    assert_eq!(out_len, b * t * c, "{what}: out/dout must be (B, T, C)");
    assert_eq!(inp_len, b * s * 3 * c, "{what}: inp must be (B, S, 3C)");
    assert_eq!(
        preatt_len,
        b * nh * t * s,
        "{what}: preatt/dpreatt must be (B, NH, T, S)"
    );
    assert_eq!(
        att_len,
        b * nh * t * s,
        "{what}: att/datt must be (B, NH, T, S)"
    );
}
