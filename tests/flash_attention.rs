//! The CPU flash attention (`cpu::flash_attention`, the GPU kernels' twin) against independent
//! references, on awkward sizes (T = 1, 17, 100: not multiples of the 64-key tile; B = 2; NH 2 and
//! 3; HS 64 and 12):
//! - forward and backward against the plain attention (`cpu::attention`, which materialises the
//!   (B,NH,T,T) scores): both are fp32 with dot products summed the same way but the softmax and
//!   the weighted sums in another order (tiles with rescaling, exp2 of base-2 scores vs exp), so
//!   they agree to a few ulps of the O(1) values: tolerance 2e-6 absolute + 1e-5 relative
//!   elementwise (T up to 100 terms per sum, each rounded at ~6e-8 relative);
//! - lse against ln(sum exp(scale q.k)) computed by hand in f64: 1e-5 relative (the fp32 lse
//!   of values up to ~5 has ulps of ~5e-7; the exp2/log2 route adds a few);
//! - a finite-difference check of the backward: with L = sum(w * out) for a random w, the
//!   analytic gradient is the backward with dout = w, the numeric one a central difference with
//!   h = 1e-4 of an f64 re-implementation of the forward (truncation ~h^2/6 |f'''| ~ 1e-9,
//!   rounding ~1e-16/h ~ 1e-12, so exact to ~1e-8); the fp32 backward is held to 5e-6 of the
//!   largest gradient entry (its rounding is ~1e-7 per operation over short sums; a wrong term,
//!   sign or factor is off by far more);
//! - accumulation (dqkv +=) and bitwise determinism across thread counts.

use train_gpt2_cuda::cpu::attention::{attention_backward, attention_forward};
use train_gpt2_cuda::cpu::flash_attention::{flash_attention_backward, flash_attention_forward};
use train_gpt2_cuda::rng::Rng;

const B: usize = 2;
const TS: [usize; 3] = [1, 17, 100];
/// (C, NH): HS = 64 and HS = 12, and a single head of 20.
const SHAPES: [(usize, usize); 3] = [(128, 2), (36, 3), (20, 1)];

/// Uniform in [-scale, scale).
fn randv(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * scale)
        .collect()
}

/// |got - want| <= atol + rtol |want| elementwise; returns the largest |got - want|.
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: {g} vs {w} (|diff| {err})"
        );
        worst = worst.max(err);
    }
    worst
}

#[test]
fn forward_and_backward_match_the_plain_attention() {
    for t in TS {
        for (c, nh) in SHAPES {
            let mut rng = Rng::new(7 + t as u64 * 31 + c as u64);
            let qkv = randv(&mut rng, B * t * 3 * c, 1.5);
            let btt = B * nh * t * t;
            let (mut out, mut preatt, mut att) =
                (vec![0.0; B * t * c], vec![0.0; btt], vec![0.0; btt]);
            attention_forward(&mut out, &mut preatt, &mut att, &qkv, B, t, c, nh);
            // garbage in the outputs: the forward must overwrite them
            let mut fout = randv(&mut rng, B * t * c, 9.0);
            let mut lse = randv(&mut rng, B * nh * t, 9.0);
            flash_attention_forward(&mut fout, &mut lse, &qkv, B, t, c, nh);
            let e = assert_close("out", &fout, &out, 2e-6, 1e-5);
            eprintln!("T={t} C={c} NH={nh}: out max |diff| {e}");

            let dout = randv(&mut rng, B * t * c, 1.0);
            let dqkv0 = randv(&mut rng, B * t * 3 * c, 1.0);
            let mut dqkv = dqkv0.clone();
            let (mut dpreatt, mut datt) = (vec![0.0; btt], vec![0.0; btt]);
            attention_backward(
                &mut dqkv,
                &mut dpreatt,
                &mut datt,
                &dout,
                &qkv,
                &att,
                B,
                t,
                c,
                nh,
            );
            let mut fdqkv = dqkv0.clone();
            flash_attention_backward(&mut fdqkv, &dout, &qkv, &fout, &lse, B, t, c, nh);
            let e = assert_close("dqkv", &fdqkv, &dqkv, 2e-6, 1e-5);
            eprintln!("T={t} C={c} NH={nh}: dqkv max |diff| {e}");
            // accumulation: the gradient alone (from zeros) plus dqkv0 gives the same
            let mut g = vec![0.0; B * t * 3 * c];
            flash_attention_backward(&mut g, &dout, &qkv, &fout, &lse, B, t, c, nh);
            let summed: Vec<f32> = g.iter().zip(&dqkv0).map(|(a, b)| a + b).collect();
            assert_close("dqkv accumulated", &fdqkv, &summed, 1e-6, 1e-6);
            assert!(g.iter().any(|&x| x != 0.0), "the gradient is all zeros");
        }
    }
}

#[test]
fn lse_matches_an_f64_hand_computation() {
    for t in TS {
        for (c, nh) in SHAPES {
            let hs = c / nh;
            let mut rng = Rng::new(100 + t as u64 + c as u64);
            // larger scores than elsewhere, so that the max subtraction matters
            let qkv = randv(&mut rng, B * t * 3 * c, 3.0);
            let (mut out, mut lse) = (vec![0.0; B * t * c], vec![0.0; B * nh * t]);
            flash_attention_forward(&mut out, &mut lse, &qkv, B, t, c, nh);
            let scale = 1.0 / (hs as f64).sqrt();
            for b in 0..B {
                for h in 0..nh {
                    for ti in 0..t {
                        let q = &qkv[(b * t + ti) * 3 * c + h * hs..][..hs];
                        let sum: f64 = (0..=ti)
                            .map(|t2| {
                                let k = &qkv[(b * t + t2) * 3 * c + c + h * hs..][..hs];
                                let dot: f64 =
                                    q.iter().zip(k).map(|(&x, &y)| x as f64 * y as f64).sum();
                                (scale * dot).exp()
                            })
                            .sum();
                        let want = sum.ln();
                        let got = lse[(b * nh + h) * t + ti] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "lse[b={b}, h={h}, t={ti}] = {got}, f64 {want}"
                        );
                    }
                }
            }
        }
    }
}

/// sum(w * out) of the causal attention, in f64 (an independent re-implementation).
fn loss_f64(qkv: &[f64], w: &[f32], b: usize, t: usize, c: usize, nh: usize) -> f64 {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut loss = 0.0;
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let q = &qkv[(bi * t + ti) * 3 * c + h * hs..][..hs];
                let s: Vec<f64> = (0..=ti)
                    .map(|t2| {
                        let k = &qkv[(bi * t + t2) * 3 * c + c + h * hs..][..hs];
                        scale * q.iter().zip(k).map(|(x, y)| x * y).sum::<f64>()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for d in 0..hs {
                    let o: f64 = (0..=ti)
                        .map(|t2| {
                            (s[t2] - m).exp() / z * qkv[(bi * t + t2) * 3 * c + 2 * c + h * hs + d]
                        })
                        .sum();
                    loss += w[(bi * t + ti) * c + h * hs + d] as f64 * o;
                }
            }
        }
    }
    loss
}

#[test]
fn backward_matches_finite_differences() {
    let (b, t, c, nh) = (1, 5, 8, 2);
    let mut rng = Rng::new(4242);
    let qkv = randv(&mut rng, b * t * 3 * c, 1.5);
    let w = randv(&mut rng, b * t * c, 1.0);
    let (mut out, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    flash_attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);
    let mut grad = vec![0.0; qkv.len()];
    flash_attention_backward(&mut grad, &w, &qkv, &out, &lse, b, t, c, nh);
    let h = 1e-4;
    let x: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
    let numeric: Vec<f64> = (0..x.len())
        .map(|i| {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            (loss_f64(&xp, &w, b, t, c, nh) - loss_f64(&xm, &w, b, t, c, nh)) / (2.0 * h)
        })
        .collect();
    let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.1, "degenerate test: gradients all ~0");
    for (i, (&g, &n)) in grad.iter().zip(&numeric).enumerate() {
        assert!(
            (g as f64 - n).abs() <= 5e-6 * scale,
            "dqkv[{i}]: analytic {g} vs numeric {n} (largest entry {scale})"
        );
    }
    // Each third (dq, dk, dv) has nonzero entries somewhere (dq of position 0 is exactly zero:
    // its softmax has one term).
    for third in 0..3 {
        let nonzero = (0..b * t).any(|row| {
            grad[row * 3 * c + third * c..][..c]
                .iter()
                .any(|&v| v.abs() > 1e-3)
        });
        assert!(nonzero, "third {third} of the gradient is zero");
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (t, c, nh) = (100, 128, 2);
    let mut rng = Rng::new(99);
    let qkv = randv(&mut rng, B * t * 3 * c, 1.5);
    let dout = randv(&mut rng, B * t * c, 1.0);
    let dqkv0 = randv(&mut rng, B * t * 3 * c, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (mut out, mut lse) = (vec![0.0; B * t * c], vec![0.0; B * nh * t]);
            flash_attention_forward(&mut out, &mut lse, &qkv, B, t, c, nh);
            let mut dqkv = dqkv0.clone();
            flash_attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, B, t, c, nh);
            (out, lse, dqkv)
        })
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let (a, b) = (run(1), run(3));
    assert_eq!(bits(&a.0), bits(&b.0), "out differs");
    assert_eq!(bits(&a.1), bits(&b.1), "lse differs");
    assert_eq!(bits(&a.2), bits(&b.2), "dqkv differs");
}

#[test]
fn empty_batch_is_a_no_op() {
    let (mut out, mut lse) = (Vec::<f32>::new(), Vec::<f32>::new());
    flash_attention_forward(&mut out, &mut lse, &[], 0, 5, 8, 2);
    let mut dqkv = Vec::<f32>::new();
    flash_attention_backward(&mut dqkv, &[], &[], &[], &[], 0, 5, 8, 2);
}

/// Heads that do not divide C are named, as the GPU launcher names them, not split unevenly
/// (C = 8, NH = 3 would give heads of 2 and leave 2 channels of each row unread).
#[test]
#[should_panic(expected = "flash_attention_forward: C = 8 is not divisible by NH = 3")]
fn heads_that_do_not_divide_c_are_refused() {
    let (b, t, c, nh) = (1, 2, 8, 3);
    let (mut out, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    flash_attention_forward(&mut out, &mut lse, &vec![0.0; b * t * 3 * c], b, t, c, nh);
}
