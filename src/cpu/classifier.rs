//! The classifier's loss: softmax over the vocabulary, cross-entropy against the targets, and their
//! fused backward. Logits and probabilities are `(B, T, Vp)`: only the first V columns are real
//! tokens; the padding columns V..Vp take no part in the softmax, get probability exactly 0, and
//! receive no gradient.

// The signatures follow llm.c's (buffers, then dimensions), shared with the GPU launchers.
#![allow(clippy::too_many_arguments)]

use rayon::prelude::*;

/// Softmax over the first V entries of each row: `probs[i] = exp(logits[i] - max) / sum`, with the
/// sum accumulated in f64 and applied as a multiplication by its reciprocal (as PyTorch's CPU
/// softmax); `probs[V..Vp] = 0`.
pub fn softmax_forward(
    probs: &mut [f32], // (B, T, Vp)
    logits: &[f32],    // (B, T, Vp)
    b: usize,
    t: usize,
    v: usize,
    vp: usize,
) {
    assert!(
        v > 0 && v <= vp,
        "softmax_forward: need 0 < V <= Vp, got V = {v}, Vp = {vp}"
    );
    assert_eq!(
        probs.len(),
        b * t * vp,
        "softmax_forward: probs must be (B, T, Vp)"
    );
    assert_eq!(
        logits.len(),
        b * t * vp,
        "softmax_forward: logits must be (B, T, Vp)"
    );
    probs
        .par_chunks_mut(vp)
        .zip(logits.par_chunks(vp))
        .for_each(|(p, l)| {
            let maxval = l[..v].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            for (pi, &li) in p[..v].iter_mut().zip(&l[..v]) {
                *pi = (li - maxval).exp();
            }
            let inv = (1.0 / sum_f64(&p[..v])) as f32;
            for pi in &mut p[..v] {
                *pi *= inv;
            }
            p[v..].fill(0.0);
        });
}

/// Cross-entropy: `losses[b, t] = -ln(probs[b, t, targets[b, t]])`. Where that probability is
/// below f32's normal range (the target's logit 87 or more under the row's largest), the loss is
/// taken from the logits instead, as `ln(sum exp(logits - max)) - (logits[target] - max)` in f64,
/// as the GPU's fused classifier and PyTorch's cross_entropy compute it: a large finite loss, not
/// the inf of `-ln(0)`.
pub fn crossentropy_forward(
    losses: &mut [f32], // (B, T)
    probs: &[f32],      // (B, T, Vp)
    logits: &[f32],     // (B, T, Vp)
    targets: &[u32],    // (B, T)
    b: usize,
    t: usize,
    v: usize,
    vp: usize,
) {
    assert_eq!(
        losses.len(),
        b * t,
        "crossentropy_forward: losses must be (B, T)"
    );
    assert_eq!(
        probs.len(),
        b * t * vp,
        "crossentropy_forward: probs must be (B, T, Vp)"
    );
    assert_eq!(
        logits.len(),
        b * t * vp,
        "crossentropy_forward: logits must be (B, T, Vp)"
    );
    assert_eq!(
        targets.len(),
        b * t,
        "crossentropy_forward: targets must be (B, T)"
    );
    check_targets("crossentropy_forward", targets, v);
    losses
        .par_iter_mut()
        .zip(probs.par_chunks(vp).zip(logits.par_chunks(vp)))
        .zip(targets.par_iter())
        .for_each(|((loss, (p, l)), &tgt)| {
            let p_target = p[tgt as usize];
            *loss = if p_target >= f32::MIN_POSITIVE {
                -p_target.ln()
            } else {
                let l = &l[..v];
                let max = l.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let sum: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
                (sum.ln() - (l[tgt as usize] as f64 - max)) as f32
            };
        });
}

/// The backward of softmax followed by cross-entropy, fused:
/// `dlogits[b, t, i] += (probs[b, t, i] - [i == target]) * dlosses[b, t]` for i < V; the padding
/// columns V..Vp are left untouched.
pub fn crossentropy_softmax_backward(
    dlogits: &mut [f32], // (B, T, Vp)
    dlosses: &[f32],     // (B, T)
    probs: &[f32],       // (B, T, Vp)
    targets: &[u32],     // (B, T)
    b: usize,
    t: usize,
    v: usize,
    vp: usize,
) {
    assert!(
        v <= vp,
        "crossentropy_softmax_backward: V = {v} exceeds Vp = {vp}"
    );
    assert_eq!(
        dlogits.len(),
        b * t * vp,
        "crossentropy_softmax_backward: dlogits must be (B, T, Vp)"
    );
    assert_eq!(
        dlosses.len(),
        b * t,
        "crossentropy_softmax_backward: dlosses must be (B, T)"
    );
    assert_eq!(
        probs.len(),
        b * t * vp,
        "crossentropy_softmax_backward: probs must be (B, T, Vp)"
    );
    assert_eq!(
        targets.len(),
        b * t,
        "crossentropy_softmax_backward: targets must be (B, T)"
    );
    check_targets("crossentropy_softmax_backward", targets, v);
    dlogits
        .par_chunks_mut(vp)
        .zip(probs.par_chunks(vp))
        .zip(dlosses.par_iter().zip(targets.par_iter()))
        .for_each(|((dl, p), (&dloss, &tgt))| {
            let tgt = tgt as usize;
            for (i, (d, &pi)) in dl[..v].iter_mut().zip(&p[..v]).enumerate() {
                let indicator = if i == tgt { 1.0 } else { 0.0 };
                *d += (pi - indicator) * dloss;
            }
        });
}

/// The CPU twin of the GPU's fused classifier (`gpu::Gpu::fused_classifier`): softmax_forward,
/// crossentropy_forward and crossentropy_softmax_backward with the same `dloss` for every position,
/// returning (losses (B,T), dlogits (B,T,Vp), zero in the padding columns V..Vp).
pub fn fused_classifier(
    logits: &[f32],  // (B, T, Vp)
    dloss: f32,      // the gradient of the mean loss per position's loss, e.g. 1 / (B*T)
    targets: &[u32], // (B, T)
    b: usize,
    t: usize,
    v: usize,
    vp: usize,
) -> (Vec<f32>, Vec<f32>) {
    let n = b * t;
    let mut probs = vec![0.0; n * vp];
    softmax_forward(&mut probs, logits, b, t, v, vp);
    let mut losses = vec![0.0; n];
    crossentropy_forward(&mut losses, &probs, logits, targets, b, t, v, vp);
    let mut dlogits = vec![0.0; n * vp];
    crossentropy_softmax_backward(&mut dlogits, &vec![dloss; n], &probs, targets, b, t, v, vp);
    (losses, dlogits)
}

/// The f64 sum of `x` in eight interleaved partial sums (which vectorise and overlap, unlike one
/// running sum), combined in a fixed order.
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for xs in chunks {
        for j in 0..8 {
            acc[j] += xs[j] as f64;
        }
    }
    for (a, &x) in acc.iter_mut().zip(rest) {
        *a += x as f64;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

fn check_targets(what: &str, targets: &[u32], limit: usize) {
    if let Some(&bad) = targets.iter().find(|&&x| x as usize >= limit) {
        panic!("{what}: target id {bad} is out of range (must be below {limit})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss of a row whose target probability underflows f32 is the log-sum-exp of its
    /// logits, finite (hand-computed: logits [0, 200, 100] with target 0 give
    /// 200 + ln(1 + e^-100 + e^-200) = 200); other rows keep -ln(p).
    #[test]
    fn an_underflowing_target_probability_gives_a_finite_loss() {
        let (v, vp) = (3, 4);
        let logits = [0.0, 200.0, 100.0, 0.0, 1.0, 2.0, 3.0, 0.0];
        let mut probs = [0.0; 8];
        softmax_forward(&mut probs, &logits, 1, 2, v, vp);
        assert_eq!(probs[0], 0.0, "e^-200 underflows f32");
        let mut losses = [0.0; 2];
        crossentropy_forward(&mut losses, &probs, &logits, &[0, 2], 1, 2, v, vp);
        assert_eq!(losses[0], 200.0);
        // target 2 of [1, 2, 3]: ln(e^-2 + e^-1 + 1) = 0.40760596
        assert_eq!(losses[1], -probs[6].ln());
        assert!((losses[1] - 0.407_605_96).abs() < 1e-6, "{}", losses[1]);
    }
}
