//! Tests of the CPU reference layers against independent references:
//! - hand-computed values for small cases (layernorm of [1, 2, 3], gelu(1), a 3-way softmax, ...);
//! - forwards re-implemented naively in f64 here, compared with the fp32 layers;
//! - finite-difference gradient checks: with `L = sum(out * w)` for a random `w`, the analytic
//!   gradients come from the fp32 backward with `dout = w`, and the numeric ones from central
//!   differences of the f64 re-implementation;
//! - AdamW against its formula evaluated in f64; accumulation (`+=`) and thread-count determinism.
//!
//! Tolerances. The numeric gradients use h = 1e-4 in f64: the truncation error of a central
//! difference is about h^2/6 * |f'''| ~ 1e-9 for these smooth O(1) functions and the rounding error
//! about 1e-16 / h ~ 1e-12, so they are exact to ~1e-8 and the comparison measures the fp32
//! backward alone. Its rounding is ~1e-7 per operation and its sums are short, so we allow
//! [`GRAD_TOL`] = 5e-6 of the largest gradient entry: a wrong term, sign or factor is off by far
//! more. The fp32 forwards against f64 are held to 1e-5 relative (or of the sum of |terms| for the
//! matmul's dot products).

use train_gpt2_cuda::cpu::adamw::{adamw_update, global_norm, AdamW};
use train_gpt2_cuda::cpu::attention::{attention_backward, attention_forward};
use train_gpt2_cuda::cpu::classifier::{
    crossentropy_forward, crossentropy_softmax_backward, softmax_forward,
};
use train_gpt2_cuda::cpu::encoder::{encoder_backward, encoder_forward};
use train_gpt2_cuda::cpu::gelu::{gelu_backward, gelu_forward};
use train_gpt2_cuda::cpu::layernorm::{layernorm_backward, layernorm_forward};
use train_gpt2_cuda::cpu::matmul::{matmul_backward, matmul_forward};
use train_gpt2_cuda::cpu::residual::{residual_backward, residual_forward};
use train_gpt2_cuda::rng::Rng;

/// Largest error of an fp32 analytic gradient, relative to the gradient's largest entry.
const GRAD_TOL: f64 = 5e-6;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Uniform in [-scale, scale).
fn randv(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * scale)
        .collect()
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn dot64(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x * y as f64).sum()
}

/// Central differences of `f` at `x` (in f64, h = 1e-4).
fn numeric_grad(x: &[f32], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-4;
    let mut xs = to64(x);
    (0..xs.len())
        .map(|i| {
            let x0 = xs[i];
            xs[i] = x0 + h;
            let fp = f(&xs);
            xs[i] = x0 - h;
            let fm = f(&xs);
            xs[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Asserts |analytic - numeric| <= GRAD_TOL * max|numeric| elementwise.
fn assert_grad(what: &str, analytic: &[f32], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
    let scale = numeric.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
    assert!(
        scale > 1e-3,
        "{what}: the gradient is (almost) zero, the check would be vacuous"
    );
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let err = (a as f64 - n).abs();
        assert!(
            err <= GRAD_TOL * scale,
            "{what}[{i}]: analytic {a} vs numeric {n} (error {err:.3e}, scale {scale:.3e})"
        );
    }
}

/// Asserts |got - want| <= rtol * max(|want|, floor) elementwise.
fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= rtol * w.abs().max(floor),
            "{what}[{i}]: got {g}, want {w} (error {err:.3e})"
        );
    }
}

/// Asserts that `twice` is 2 * `once` (to fp32 rounding), for the accumulation checks.
fn assert_doubled(what: &str, once: &[f32], twice: &[f32]) {
    let scale = once.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    assert!(
        scale > 0.0,
        "{what}: zero gradient, the check would be vacuous"
    );
    for (i, (&a, &b)) in once.iter().zip(twice).enumerate() {
        assert!(
            (b - 2.0 * a).abs() <= 1e-6 * scale,
            "{what}[{i}]: after two calls {b}, after one {a}: backward must accumulate"
        );
    }
}

/// Runs `f` on a rayon pool of `n` threads.
fn with_threads<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("building a rayon pool")
        .install(f)
}

// ---------------------------------------------------------------------------------------------
// f64 reference forwards, written naively from the math.

fn encoder64(wte: &[f64], wpe: &[f64], inp: &[u32], t: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; inp.len() * c];
    for (bt, &tok) in inp.iter().enumerate() {
        for i in 0..c {
            out[bt * c + i] = wte[tok as usize * c + i] + wpe[(bt % t) * c + i];
        }
    }
    out
}

fn layernorm64(x: &[f64], w: &[f64], bias: &[f64], c: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(c).zip(out.chunks_mut(c)) {
        let m = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
        let s = 1.0 / (var + 1e-5).sqrt();
        for i in 0..c {
            o[i] = (row[i] - m) * s * w[i] + bias[i];
        }
    }
    out
}

fn matmul64(
    inp: &[f64],
    w: &[f64],
    bias: Option<&[f64]>,
    bt: usize,
    c: usize,
    oc: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; bt * oc];
    for r in 0..bt {
        for o in 0..oc {
            let mut s = bias.map_or(0.0, |b| b[o]);
            for i in 0..c {
                s += inp[r * c + i] * w[o * c + i];
            }
            out[r * oc + o] = s;
        }
    }
    out
}

fn attention64(inp: &[f64], b: usize, t: usize, c: usize, nh: usize) -> Vec<f64> {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let at = |bi: usize, ti: usize, part: usize, h: usize, i: usize| {
        inp[(bi * t + ti) * 3 * c + part * c + h * hs + i]
    };
    let mut out = vec![0.0; b * t * c];
    for bi in 0..b {
        for h in 0..nh {
            for ti in 0..t {
                let scores: Vec<f64> = (0..=ti)
                    .map(|t2| {
                        (0..hs)
                            .map(|i| at(bi, ti, 0, h, i) * at(bi, t2, 1, h, i))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let mx = scores.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hs {
                    out[(bi * t + ti) * c + h * hs + i] =
                        (0..=ti).map(|t2| e[t2] / z * at(bi, t2, 2, h, i)).sum();
                }
            }
        }
    }
    out
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// Cross-entropy losses through log-softmax over the first V logits of each row.
fn crossentropy64(logits: &[f64], targets: &[u32], v: usize, vp: usize) -> Vec<f64> {
    logits
        .chunks(vp)
        .zip(targets)
        .map(|(row, &tgt)| {
            let row = &row[..v];
            let mx = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
            let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
            lse - row[tgt as usize]
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Encoder

#[test]
fn encoder_hand_case() {
    // Vp = 3, C = 2, maxT = 3, B = 2, T = 2.
    let wte = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
    let wpe = [0.5, 0.25, 0.125, 0.0625, 9.0, 9.0];
    let inp = [2u32, 0, 1, 1];
    let mut out = vec![0.0f32; 8];
    encoder_forward(&mut out, &inp, &wte, &wpe, 2, 2, 2);
    assert_eq!(
        out,
        [100.5, 200.25, 1.125, 2.0625, 10.5, 20.25, 10.125, 20.0625]
    );
    // Backward: token 1 appears twice, position 0 and 1 twice each.
    let dout = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    let mut dwte = vec![0.0f32; 6];
    let mut dwpe = vec![0.0f32; 6];
    encoder_backward(&mut dwte, &mut dwpe, &dout, &inp, 2, 2, 2);
    assert_eq!(dwte, [3.0, 4.0, 12.0, 14.0, 1.0, 2.0]);
    assert_eq!(dwpe, [6.0, 8.0, 10.0, 12.0, 0.0, 0.0]);
}

#[test]
fn encoder_gradients_by_finite_differences() {
    let (b, t, c, vp, maxt) = (2, 3, 5, 16, 4);
    let mut rng = Rng::new(1);
    let wte = randv(&mut rng, vp * c, 1.0);
    let wpe = randv(&mut rng, maxt * c, 1.0);
    let inp: Vec<u32> = vec![3, 7, 3, 15, 0, 7];
    let w = randv(&mut rng, b * t * c, 1.0);
    let mut out = vec![0.0f32; b * t * c];
    encoder_forward(&mut out, &inp, &wte, &wpe, b, t, c);
    assert_close(
        "encoder out",
        &out,
        &encoder64(&to64(&wte), &to64(&wpe), &inp, t, c),
        1e-6,
        1.0,
    );
    let mut dwte = vec![0.0f32; vp * c];
    let mut dwpe = vec![0.0f32; maxt * c];
    encoder_backward(&mut dwte, &mut dwpe, &w, &inp, b, t, c);
    let ndwte = numeric_grad(&wte, |x| dot64(&encoder64(x, &to64(&wpe), &inp, t, c), &w));
    let ndwpe = numeric_grad(&wpe, |x| dot64(&encoder64(&to64(&wte), x, &inp, t, c), &w));
    assert_grad("dwte", &dwte, &ndwte);
    assert_grad("dwpe", &dwpe, &ndwpe);
    // Rows of unused tokens and positions stay exactly zero.
    assert!(dwte[c..2 * c].iter().all(|&x| x == 0.0));
    assert!(dwpe[t * c..].iter().all(|&x| x == 0.0));
}

/// A position embedding of fewer than T rows is named, not an index out of bounds.
#[test]
#[should_panic(expected = "encoder_forward: wpe has fewer than T rows")]
fn encoder_rejects_a_short_position_embedding() {
    let (b, t, c) = (1, 4, 3);
    let (wte, wpe) = (vec![0.0f32; 8 * c], vec![0.0f32; 3 * c]);
    let mut out = vec![0.0f32; b * t * c];
    encoder_forward(&mut out, &[1, 2, 3, 4], &wte, &wpe, b, t, c);
}

#[test]
#[should_panic(expected = "token id 16 is out of range")]
fn encoder_rejects_out_of_range_tokens() {
    let (c, vp) = (2, 16);
    let mut out = vec![0.0f32; 2 * c];
    encoder_forward(
        &mut out,
        &[1, 16],
        &vec![0.0; vp * c],
        &vec![0.0; 2 * c],
        1,
        2,
        c,
    );
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

#[test]
fn layernorm_hand_case() {
    // mean 2, biased variance 2/3: out = (x - 2) / sqrt(2/3 + 1e-5) = [-1.2247357, 0, 1.2247357].
    let mut out = vec![0.0f32; 3];
    let (mut mean, mut rstd) = (vec![0.0f32; 1], vec![0.0f32; 1]);
    layernorm_forward(
        &mut out,
        &mut mean,
        &mut rstd,
        &[1.0, 2.0, 3.0],
        &[1.0, 1.0, 1.0],
        &[0.0, 0.0, 0.0],
        1,
        1,
        3,
    );
    let r = 1.224_735_685_908_390_2;
    assert_close("ln out", &out, &[-r, 0.0, r], 1e-6, 1e-6);
    assert_close("ln mean", &mean, &[2.0], 1e-7, 1.0);
    assert_close("ln rstd", &rstd, &[r], 1e-6, 1.0);
    // Weight and bias apply after normalising.
    layernorm_forward(
        &mut out,
        &mut mean,
        &mut rstd,
        &[1.0, 2.0, 3.0],
        &[2.0, 3.0, 4.0],
        &[0.5, -1.0, 0.25],
        1,
        1,
        3,
    );
    assert_close(
        "ln out affine",
        &out,
        &[0.5 - 2.0 * r, -1.0, 0.25 + 4.0 * r],
        1e-6,
        1e-6,
    );
}

/// One channel: every row normalises to 0, so the output is the bias, and in the backward only
/// the bias has a gradient (the sum of dout); dinp and dweight get exactly 0 added. No channel at
/// all: nothing to do, and no panic.
#[test]
fn layernorm_of_one_channel_and_of_none() {
    let (x, w, bias) = ([1.0f32, 5.0, -2.0], [3.0f32], [0.25f32]);
    let (mut out, mut mean, mut rstd) = (vec![9.0f32; 3], vec![0.0f32; 3], vec![0.0f32; 3]);
    layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &w, &bias, 1, 3, 1);
    assert_eq!(out, [0.25; 3]);
    assert_eq!(mean, x);
    let r = (1.0f64 / 1e-5f64.sqrt()) as f32;
    assert_close("ln rstd", &rstd, &[r as f64; 3], 1e-6, 1.0);
    let (mut dinp, mut dw, mut db) = (vec![0.1f32, 0.2, 0.3], vec![0.5f32], vec![-1.0f32]);
    let dout = [0.5f32, -1.0, 2.0];
    layernorm_backward(
        &mut dinp, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, 1, 3, 1,
    );
    assert_eq!((dinp, dw, db), (vec![0.1, 0.2, 0.3], vec![0.5], vec![0.5]));
    let (mut mean0, mut rstd0) = (vec![0.0f32; 2], vec![0.0f32; 2]);
    layernorm_forward(&mut [], &mut mean0, &mut rstd0, &[], &[], &[], 2, 1, 0);
    layernorm_backward(
        &mut [],
        &mut [],
        &mut [],
        &[],
        &[],
        &[],
        &[0.0; 2],
        &[0.0; 2],
        2,
        1,
        0,
    );
}

#[test]
fn layernorm_matches_f64_and_finite_differences() {
    for &(b, t, c) in &[(2, 3, 5), (1, 2, 12)] {
        let mut rng = Rng::new(2 + c as u64);
        let inp = randv(&mut rng, b * t * c, 2.0);
        let weight = randv(&mut rng, c, 1.5);
        let bias = randv(&mut rng, c, 1.0);
        let w = randv(&mut rng, b * t * c, 1.0);
        let mut out = vec![0.0f32; b * t * c];
        let (mut mean, mut rstd) = (vec![0.0f32; b * t], vec![0.0f32; b * t]);
        layernorm_forward(
            &mut out, &mut mean, &mut rstd, &inp, &weight, &bias, b, t, c,
        );
        let want = layernorm64(&to64(&inp), &to64(&weight), &to64(&bias), c);
        assert_close("layernorm out", &out, &want, 1e-5, 1.0);

        let mut dinp = vec![0.0f32; b * t * c];
        let (mut dweight, mut dbias) = (vec![0.0f32; c], vec![0.0f32; c]);
        layernorm_backward(
            &mut dinp,
            &mut dweight,
            &mut dbias,
            &w,
            &inp,
            &weight,
            &mean,
            &rstd,
            b,
            t,
            c,
        );
        let (i64_, w64, b64) = (to64(&inp), to64(&weight), to64(&bias));
        let n_inp = numeric_grad(&inp, |x| dot64(&layernorm64(x, &w64, &b64, c), &w));
        let n_w = numeric_grad(&weight, |x| dot64(&layernorm64(&i64_, x, &b64, c), &w));
        let n_b = numeric_grad(&bias, |x| dot64(&layernorm64(&i64_, &w64, x, c), &w));
        assert_grad("layernorm dinp", &dinp, &n_inp);
        assert_grad("layernorm dweight", &dweight, &n_w);
        assert_grad("layernorm dbias", &dbias, &n_b);
    }
}

// ---------------------------------------------------------------------------------------------
// Matmul

/// Checks the forward and the three backward products against naive f64 loops: each entry to 1e-5
/// of the sum of the absolute values of its terms (the natural scale of a dot product's rounding).
fn check_matmul_against_naive(bt: usize, c: usize, oc: usize, with_bias: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    let inp = randv(&mut rng, bt * c, 1.0);
    let weight = randv(&mut rng, oc * c, 1.0);
    let bias = randv(&mut rng, oc, 1.0);
    let dout = randv(&mut rng, bt * oc, 1.0);
    let bias_opt = with_bias.then_some(&bias[..]);
    let mut out = vec![f32::NAN; bt * oc];
    matmul_forward(&mut out, &inp, &weight, bias_opt, 1, bt, c, oc);
    let check = |what: &str, got: f32, terms: &mut dyn Iterator<Item = f64>| {
        let (mut s, mut sabs) = (0.0f64, 0.0f64);
        for x in terms {
            s += x;
            sabs += x.abs();
        }
        let err = (got as f64 - s).abs();
        assert!(
            err <= 1e-5 * sabs.max(1e-30),
            "{what} (BT={bt}, C={c}, OC={oc}): got {got}, want {s}, error {err:.3e}"
        );
    };
    for r in 0..bt {
        for o in 0..oc {
            let mut terms = (0..c)
                .map(|i| inp[r * c + i] as f64 * weight[o * c + i] as f64)
                .chain(with_bias.then_some(bias[o] as f64));
            check(&format!("out[{r},{o}]"), out[r * oc + o], &mut terms);
        }
    }
    let mut dinp = vec![0.0f32; bt * c];
    let mut dweight = vec![0.0f32; oc * c];
    let mut dbias = vec![0.0f32; oc];
    matmul_backward(
        &mut dinp,
        &mut dweight,
        Some(&mut dbias),
        &dout,
        &inp,
        &weight,
        1,
        bt,
        c,
        oc,
    );
    for r in 0..bt {
        for i in 0..c {
            let mut terms = (0..oc).map(|o| dout[r * oc + o] as f64 * weight[o * c + i] as f64);
            check(&format!("dinp[{r},{i}]"), dinp[r * c + i], &mut terms);
        }
    }
    for o in 0..oc {
        for i in 0..c {
            let mut terms = (0..bt).map(|r| dout[r * oc + o] as f64 * inp[r * c + i] as f64);
            check(&format!("dweight[{o},{i}]"), dweight[o * c + i], &mut terms);
        }
        let mut terms = (0..bt).map(|r| dout[r * oc + o] as f64);
        check(&format!("dbias[{o}]"), dbias[o], &mut terms);
    }
}

#[test]
fn matmul_matches_naive_f64_on_awkward_sizes() {
    // Sizes that are not multiples of any tile: single elements, partial micro-tiles, several K
    // blocks (C, OC and B*T above 256) and several column blocks (OC above 512).
    check_matmul_against_naive(1, 1, 1, true, 10);
    check_matmul_against_naive(6, 5, 7, true, 11);
    check_matmul_against_naive(13, 259, 45, false, 12);
    check_matmul_against_naive(37, 300, 531, true, 13);
    check_matmul_against_naive(300, 70, 290, true, 14);
}

#[test]
fn matmul_gradients_by_finite_differences() {
    let (b, t, c, oc) = (2, 3, 5, 7);
    let mut rng = Rng::new(3);
    let inp = randv(&mut rng, b * t * c, 1.0);
    let weight = randv(&mut rng, oc * c, 1.0);
    let bias = randv(&mut rng, oc, 1.0);
    let w = randv(&mut rng, b * t * oc, 1.0);
    let mut dinp = vec![0.0f32; b * t * c];
    let mut dweight = vec![0.0f32; oc * c];
    let mut dbias = vec![0.0f32; oc];
    matmul_backward(
        &mut dinp,
        &mut dweight,
        Some(&mut dbias),
        &w,
        &inp,
        &weight,
        b,
        t,
        c,
        oc,
    );
    let (i64_, w64, b64) = (to64(&inp), to64(&weight), to64(&bias));
    let n_inp = numeric_grad(&inp, |x| {
        dot64(&matmul64(x, &w64, Some(&b64), b * t, c, oc), &w)
    });
    let n_w = numeric_grad(&weight, |x| {
        dot64(&matmul64(&i64_, x, Some(&b64), b * t, c, oc), &w)
    });
    let n_b = numeric_grad(&bias, |x| {
        dot64(&matmul64(&i64_, &w64, Some(x), b * t, c, oc), &w)
    });
    assert_grad("matmul dinp", &dinp, &n_inp);
    assert_grad("matmul dweight", &dweight, &n_w);
    assert_grad("matmul dbias", &dbias, &n_b);
    // Without a bias, the forward is the product alone and dbias is not needed.
    let mut out = vec![0.0f32; b * t * oc];
    matmul_forward(&mut out, &inp, &weight, None, b, t, c, oc);
    assert_close(
        "matmul out, no bias",
        &out,
        &matmul64(&i64_, &w64, None, b * t, c, oc),
        1e-5,
        1.0,
    );
    let mut dinp2 = vec![0.0f32; b * t * c];
    let mut dweight2 = vec![0.0f32; oc * c];
    matmul_backward(
        &mut dinp2,
        &mut dweight2,
        None,
        &w,
        &inp,
        &weight,
        b,
        t,
        c,
        oc,
    );
    assert_eq!(dinp2, dinp);
    assert_eq!(dweight2, dweight);
}

// ---------------------------------------------------------------------------------------------
// Attention

#[test]
fn attention_with_one_position_returns_v() {
    // T = 1: the only key gets weight 1, whatever q . k is.
    let (b, t, c, nh) = (2, 1, 6, 2);
    let mut rng = Rng::new(4);
    let inp = randv(&mut rng, b * t * 3 * c, 3.0);
    let mut out = vec![0.0f32; b * t * c];
    let (mut preatt, mut att) = (vec![0.0f32; b * nh], vec![0.0f32; b * nh]);
    attention_forward(&mut out, &mut preatt, &mut att, &inp, b, t, c, nh);
    for bi in 0..b {
        assert_eq!(
            &out[bi * c..(bi + 1) * c],
            &inp[bi * 3 * c + 2 * c..(bi + 1) * 3 * c]
        );
    }
    assert_eq!(att, vec![1.0; b * nh]);
}

#[test]
fn attention_hand_case_two_positions() {
    // One head, hs = 1, T = 2: q1 = 2, k0 = 0.5, k1 = 1: scores [1, 2] (scale 1), so position 1
    // weights v0 and v1 by softmax([1, 2]) = [0.26894142, 0.73105858].
    let inp = [
        1.0, 0.5, 10.0, // t = 0: q, k, v
        2.0, 1.0, 20.0, // t = 1
    ];
    let mut out = vec![0.0f32; 2];
    let (mut preatt, mut att) = (vec![9.0f32; 4], vec![9.0f32; 4]);
    attention_forward(&mut out, &mut preatt, &mut att, &inp, 1, 2, 1, 1);
    let (a0, a1) = (0.268_941_421_369_995_1, 0.731_058_578_630_004_9);
    assert_close("preatt", &preatt, &[0.5, 0.0, 1.0, 2.0], 1e-7, 1e-7);
    assert_close("att", &att, &[1.0, 0.0, a0, a1], 1e-6, 1e-7);
    assert_close("out", &out, &[10.0, 10.0 * a0 + 20.0 * a1], 1e-6, 1.0);
}

/// Heads that do not divide C are named, as the GPU launcher names them, not split unevenly.
#[test]
#[should_panic(expected = "attention_forward: C = 8 is not divisible by NH = 3")]
fn attention_rejects_heads_that_do_not_divide_c() {
    let (b, t, c, nh) = (1, 2, 8, 3);
    let (mut out, inp) = (vec![0.0f32; b * t * c], vec![0.0f32; b * t * 3 * c]);
    let (mut preatt, mut att) = (vec![0.0f32; b * nh * t * t], vec![0.0f32; b * nh * t * t]);
    attention_forward(&mut out, &mut preatt, &mut att, &inp, b, t, c, nh);
}

#[test]
fn attention_matches_f64_and_finite_differences() {
    for &(b, t, c, nh) in &[(2, 3, 12, 3), (2, 3, 12, 2), (1, 5, 6, 2)] {
        let mut rng = Rng::new(5 + nh as u64 + t as u64);
        let inp = randv(&mut rng, b * t * 3 * c, 1.5);
        let w = randv(&mut rng, b * t * c, 1.0);
        let mut out = vec![0.0f32; b * t * c];
        let (mut preatt, mut att) = (
            vec![f32::NAN; b * nh * t * t],
            vec![f32::NAN; b * nh * t * t],
        );
        attention_forward(&mut out, &mut preatt, &mut att, &inp, b, t, c, nh);
        assert_close(
            "attention out",
            &out,
            &attention64(&to64(&inp), b, t, c, nh),
            1e-5,
            1.0,
        );
        for (row, (p, a)) in preatt.chunks(t).zip(att.chunks(t)).enumerate() {
            let ti = row % t;
            assert!(
                p[ti + 1..].iter().chain(&a[ti + 1..]).all(|&x| x == 0.0),
                "above the diagonal"
            );
            let s: f64 = a.iter().map(|&x| x as f64).sum();
            assert!((s - 1.0).abs() < 1e-6, "att row {row} sums to {s}");
        }

        let mut dinp = vec![0.0f32; b * t * 3 * c];
        let (mut dpreatt, mut datt) = (
            vec![f32::NAN; b * nh * t * t],
            vec![f32::NAN; b * nh * t * t],
        );
        attention_backward(
            &mut dinp,
            &mut dpreatt,
            &mut datt,
            &w,
            &inp,
            &att,
            b,
            t,
            c,
            nh,
        );
        let n = numeric_grad(&inp, |x| dot64(&attention64(x, b, t, c, nh), &w));
        assert_grad(&format!("attention dinp (T={t}, NH={nh})"), &dinp, &n);
        // The softmax backward keeps each row's sum at zero; nothing above the diagonal.
        for (row, dp) in dpreatt.chunks(t).enumerate() {
            let ti = row % t;
            assert!(
                dp[ti + 1..].iter().all(|&x| x == 0.0),
                "dpreatt above the diagonal"
            );
            let s: f32 = dp.iter().sum();
            assert!(s.abs() < 1e-5, "dpreatt row {row} sums to {s}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GELU and residual

#[test]
fn gelu_hand_values() {
    let x = [1.0f32, -1.0, 0.0, 3.0, 0.5];
    let mut out = vec![0.0f32; 5];
    gelu_forward(&mut out, &x);
    let want = [
        0.841_191_990_608_276_8,
        -0.158_808_009_391_723_24,
        0.0,
        2.996_362_607_918_227,
        0.345_714_009_825_143_94,
    ];
    assert_close("gelu", &out, &want, 1e-6, 1e-6);
}

#[test]
fn gelu_gradient_by_finite_differences() {
    let mut rng = Rng::new(6);
    let n = 4099; // more than one rayon chunk, not a multiple of it
    let x = randv(&mut rng, n, 4.0);
    let w = randv(&mut rng, n, 1.0);
    let mut out = vec![0.0f32; n];
    gelu_forward(&mut out, &x);
    let want: Vec<f64> = x.iter().map(|&v| gelu64(v as f64)).collect();
    // For x << 0, 1 + tanh(u) cancels, so fp32 (here and in PyTorch) is only accurate to about
    // |x| * 1e-7 in absolute terms: hence the floor of 1e-2 under the relative tolerance.
    assert_close("gelu out", &out, &want, 1e-5, 1e-2);
    let mut dinp = vec![0.0f32; n];
    gelu_backward(&mut dinp, &x, &w);
    // The loss is a sum of independent terms, so one coordinate at a time is cheap.
    let numeric: Vec<f64> = x
        .iter()
        .zip(&w)
        .map(|(&xi, &wi)| {
            let h = 1e-4;
            let xi = xi as f64;
            (gelu64(xi + h) - gelu64(xi - h)) / (2.0 * h) * wi as f64
        })
        .collect();
    assert_grad("gelu dinp", &dinp, &numeric);
}

/// GELU and its gradient far out on both sides, where pre-activations of a model that trains
/// with a high learning rate go: finite, and equal to the f64 formula (gelu' from tanh in f64,
/// whose sech^2 = 1 - tanh^2 is exactly 0 there). The backward once overflowed to -inf below
/// x = -10 (4 * exp(-2u) beyond f32's range).
#[test]
fn gelu_far_from_zero() {
    let x = [
        -1e15f32, -1e6, -1000.0, -50.0, -20.0, -12.0, -10.5, -10.0, -9.0, -6.0, 6.0, 9.0, 10.5,
        12.0, 50.0, 1000.0, 1e6, 1e15,
    ];
    let n = x.len();
    let mut out = vec![0.0f32; n];
    gelu_forward(&mut out, &x);
    let want: Vec<f64> = x.iter().map(|&v| gelu64(v as f64)).collect();
    for i in 0..n {
        let tol = 1e-6 * want[i].abs().max(1.0);
        assert!(
            (out[i] as f64 - want[i]).abs() <= tol,
            "gelu({}) = {}, want {}",
            x[i],
            out[i],
            want[i]
        );
    }
    let mut dinp = vec![0.5f32; n];
    gelu_backward(&mut dinp, &x, &vec![2.0; n]);
    for i in 0..n {
        let x64 = x[i] as f64;
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let th = (c * (x64 + 0.044715 * x64 * x64 * x64)).tanh();
        let sech2 = 1.0 - th * th;
        let dudx = c * (1.0 + 3.0 * 0.044715 * x64 * x64);
        let d = 0.5 * (1.0 + th)
            + if sech2 == 0.0 {
                0.0
            } else {
                0.5 * x64 * sech2 * dudx
            };
        let want = 0.5 + 2.0 * d;
        assert!(
            (dinp[i] as f64 - want).abs() <= 1e-5,
            "gelu'({}): dinp {}, want {want}",
            x[i],
            dinp[i]
        );
    }
}

#[test]
fn residual_forward_and_backward() {
    let mut rng = Rng::new(7);
    let n = 10_000;
    let (a, b, d) = (
        randv(&mut rng, n, 1.0),
        randv(&mut rng, n, 1.0),
        randv(&mut rng, n, 1.0),
    );
    let mut out = vec![0.0f32; n];
    residual_forward(&mut out, &a, &b);
    for i in 0..n {
        assert_eq!(out[i], a[i] + b[i]);
    }
    let (mut d1, mut d2) = (vec![1.0f32; n], vec![-2.0f32; n]);
    residual_backward(&mut d1, &mut d2, &d);
    for i in 0..n {
        assert_eq!(d1[i], 1.0 + d[i]);
        assert_eq!(d2[i], -2.0 + d[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// Classifier

/// A softmax over no tokens (V = 0) has no distribution: it is refused by name, not written as
/// NaNs or zeros.
#[test]
#[should_panic(expected = "softmax_forward: need 0 < V <= Vp, got V = 0, Vp = 4")]
fn softmax_of_no_tokens_is_refused() {
    let mut probs = vec![0.0f32; 4];
    softmax_forward(&mut probs, &[1.0; 4], 1, 1, 0, 4);
}

#[test]
fn softmax_crossentropy_hand_case_with_padding() {
    // V = 3, Vp = 4: the padding logit is huge and must be ignored. Two rows: the second is the
    // first shifted by 1000 (softmax is shift-invariant; a naive exp would overflow).
    let (v, vp) = (3, 4);
    let logits = [1.0f32, 2.0, 3.0, 100.0, 1001.0, 1002.0, 1003.0, -5.0];
    let mut probs = vec![f32::NAN; 8];
    softmax_forward(&mut probs, &logits, 1, 2, v, vp);
    let p = [
        0.090_030_573_170_380_46,
        0.244_728_471_054_797_67,
        0.665_240_955_774_821_9,
    ];
    assert_close("probs row 0", &probs[..3], &p, 1e-6, 1e-6);
    assert_close("probs row 1", &probs[4..7], &p, 1e-6, 1e-6);
    assert_eq!(
        (probs[3], probs[7]),
        (0.0, 0.0),
        "padding columns get probability exactly 0"
    );
    let mut losses = vec![0.0f32; 2];
    crossentropy_forward(&mut losses, &probs, &logits, &[2, 0], 1, 2, v, vp);
    assert_close(
        "losses",
        &losses,
        &[0.407_605_964_444_380_3, 2.407_605_964_444_38],
        1e-6,
        1.0,
    );
    // dlogits = (p - onehot) * dloss on the first V columns; padding untouched.
    let mut dlogits = vec![0.0f32; 8];
    crossentropy_softmax_backward(&mut dlogits, &[1.0, 0.5], &probs, &[2, 0], 1, 2, v, vp);
    let want = [
        p[0],
        p[1],
        p[2] - 1.0,
        0.0,
        (p[0] - 1.0) * 0.5,
        p[1] * 0.5,
        p[2] * 0.5,
        0.0,
    ];
    assert_close("dlogits", &dlogits, &want, 1e-6, 1e-6);
}

#[test]
fn classifier_gradient_by_finite_differences() {
    let (b, t, v, vp) = (2, 3, 11, 16);
    let mut rng = Rng::new(8);
    let logits = randv(&mut rng, b * t * vp, 3.0);
    let targets: Vec<u32> = vec![0, 10, 5, 5, 3, 9];
    let dlosses = randv(&mut rng, b * t, 1.0);
    let mut probs = vec![0.0f32; b * t * vp];
    softmax_forward(&mut probs, &logits, b, t, v, vp);
    let mut losses = vec![0.0f32; b * t];
    crossentropy_forward(&mut losses, &probs, &logits, &targets, b, t, v, vp);
    assert_close(
        "losses",
        &losses,
        &crossentropy64(&to64(&logits), &targets, v, vp),
        1e-5,
        1.0,
    );
    for row in probs.chunks(vp) {
        assert!(
            row[v..].iter().all(|&p| p == 0.0),
            "padding probabilities must be exactly 0"
        );
    }
    let mut dlogits = vec![0.0f32; b * t * vp];
    crossentropy_softmax_backward(&mut dlogits, &dlosses, &probs, &targets, b, t, v, vp);
    let n = numeric_grad(&logits, |x| {
        dot64(&crossentropy64(x, &targets, v, vp), &dlosses)
    });
    assert_grad("dlogits", &dlogits, &n);
    for row in dlogits.chunks(vp) {
        assert!(
            row[v..].iter().all(|&g| g == 0.0),
            "padding columns get no gradient"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW and the gradient norm

#[test]
fn adamw_two_steps_match_the_formula() {
    let (lr, beta1, beta2, eps, wd) = (1e-2f64, 0.9f64, 0.95f64, 1e-8f64, 0.1f64);
    let hp = AdamW {
        lr: lr as f32,
        beta1: beta1 as f32,
        beta2: beta2 as f32,
        eps: eps as f32,
        weight_decay: wd as f32,
        decay_on: train_gpt2_cuda::cpu::adamw::DecayOn::All,
    };
    let mut rng = Rng::new(9);
    let n = 40_000; // several rayon chunks
    let mut params = randv(&mut rng, n, 1.0);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut p64, mut m64, mut v64) = (to64(&params), vec![0.0f64; n], vec![0.0f64; n]);
    // Step 2 scales the gradients by 0.5, as gradient clipping would.
    for (step, scale) in [(1usize, 1.0f32), (2, 0.5)] {
        let grads = randv(&mut rng, n, 1.0);
        adamw_update(&mut params, &grads, &mut m, &mut v, &hp, step, scale);
        for i in 0..n {
            let g = grads[i] as f64 * scale as f64;
            m64[i] = beta1 * m64[i] + (1.0 - beta1) * g;
            v64[i] = beta2 * v64[i] + (1.0 - beta2) * g * g;
            let mhat = m64[i] / (1.0 - beta1.powi(step as i32));
            let vhat = v64[i] / (1.0 - beta2.powi(step as i32));
            p64[i] -= lr * (mhat / (vhat.sqrt() + eps) + wd * p64[i]);
        }
        // m and v are sums of terms up to 0.1 and 0.05 in size that may cancel: fp32 rounding is
        // then ~1e-8 absolute, hence the floors.
        assert_close(&format!("m after step {step}"), &m, &m64, 1e-6, 1e-2);
        assert_close(&format!("v after step {step}"), &v, &v64, 1e-6, 1e-3);
        // Each step moves a parameter by about lr; allow 1e-4 of that beyond fp32 rounding.
        for i in 0..n {
            let err = (params[i] as f64 - p64[i]).abs();
            assert!(
                err <= 1e-7 * p64[i].abs() + 1e-4 * lr,
                "param[{i}] after step {step}: {} vs {}",
                params[i],
                p64[i]
            );
        }
    }
}

#[test]
fn adamw_first_step_moves_by_lr_times_sign() {
    // At step 1, mhat = g and vhat = g^2, so without decay each parameter moves by -lr * g/(|g|+eps).
    let hp = AdamW {
        lr: 0.5,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decay_on: train_gpt2_cuda::cpu::adamw::DecayOn::All,
    };
    let mut params = vec![1.0f32, 1.0, 1.0];
    let (mut m, mut v) = (vec![0.0f32; 3], vec![0.0f32; 3]);
    adamw_update(
        &mut params,
        &[2.0, -0.001, 0.0],
        &mut m,
        &mut v,
        &hp,
        1,
        1.0,
    );
    assert_close("params", &params, &[0.5, 1.5, 1.0], 1e-5, 1.0);
}

/// Step 0 would divide by 1 - beta1^0 = 0 in the bias correction (every weight inf or NaN, with no
/// error): refused, as the GPU launcher refuses it.
#[test]
#[should_panic(expected = "adamw_update: step counts from 1")]
fn adamw_refuses_step_0() {
    let hp = train_gpt2_cuda::verify::VERIFY_ADAMW;
    let (mut params, mut m, mut v) = (vec![1.0f32; 3], vec![0.0f32; 3], vec![0.0f32; 3]);
    adamw_update(&mut params, &[2.0, -1.0, 0.5], &mut m, &mut v, &hp, 0, 1.0);
}

#[test]
fn global_norm_matches_f64_and_is_deterministic() {
    let mut rng = Rng::new(10);
    let g = randv(&mut rng, 200_003, 1.0);
    let want = g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let got = global_norm(&g);
    assert!(
        ((got as f64) - want).abs() <= 1e-6 * want,
        "{got} vs {want}"
    );
    assert_eq!(global_norm(&[3.0, 4.0]), 5.0);
    assert_eq!(global_norm(&[]), 0.0);
    for threads in [1, 3] {
        assert_eq!(
            with_threads(threads, || global_norm(&g)).to_bits(),
            got.to_bits()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Accumulation and determinism

#[test]
fn backward_functions_accumulate() {
    let (b, t, c, nh, oc, v, vp) = (2, 3, 12, 3, 7, 11, 16);
    let mut rng = Rng::new(11);
    let bt = b * t;
    // Encoder.
    let inp: Vec<u32> = vec![1, 2, 1, 15, 0, 2];
    let dout_c = randv(&mut rng, bt * c, 1.0);
    let run_enc = |k: usize| {
        let (mut dwte, mut dwpe) = (vec![0.0f32; vp * c], vec![0.0f32; t * c]);
        for _ in 0..k {
            encoder_backward(&mut dwte, &mut dwpe, &dout_c, &inp, b, t, c);
        }
        [dwte, dwpe]
    };
    for (name, (a, b2)) in ["dwte", "dwpe"]
        .iter()
        .zip(run_enc(1).iter().zip(run_enc(2).iter()))
    {
        assert_doubled(name, a, b2);
    }
    // LayerNorm.
    let x = randv(&mut rng, bt * c, 1.0);
    let (lw, lb) = (randv(&mut rng, c, 1.0), randv(&mut rng, c, 1.0));
    let mut out = vec![0.0f32; bt * c];
    let (mut mean, mut rstd) = (vec![0.0f32; bt], vec![0.0f32; bt]);
    layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &lw, &lb, b, t, c);
    let run_ln = |k: usize| {
        let (mut di, mut dw, mut db) = (vec![0.0f32; bt * c], vec![0.0f32; c], vec![0.0f32; c]);
        for _ in 0..k {
            layernorm_backward(
                &mut di, &mut dw, &mut db, &dout_c, &x, &lw, &mean, &rstd, b, t, c,
            );
        }
        [di, dw, db]
    };
    for (name, (a, b2)) in ["ln dinp", "ln dweight", "ln dbias"]
        .iter()
        .zip(run_ln(1).iter().zip(run_ln(2).iter()))
    {
        assert_doubled(name, a, b2);
    }
    // Matmul.
    let weight = randv(&mut rng, oc * c, 1.0);
    let dout_oc = randv(&mut rng, bt * oc, 1.0);
    let run_mm = |k: usize| {
        let (mut di, mut dw, mut db) =
            (vec![0.0f32; bt * c], vec![0.0f32; oc * c], vec![0.0f32; oc]);
        for _ in 0..k {
            matmul_backward(
                &mut di,
                &mut dw,
                Some(&mut db),
                &dout_oc,
                &x,
                &weight,
                b,
                t,
                c,
                oc,
            );
        }
        [di, dw, db]
    };
    for (name, (a, b2)) in ["mm dinp", "mm dweight", "mm dbias"]
        .iter()
        .zip(run_mm(1).iter().zip(run_mm(2).iter()))
    {
        assert_doubled(name, a, b2);
    }
    // Attention: dinp accumulates; datt and dpreatt are scratch, overwritten by each call.
    let qkv = randv(&mut rng, bt * 3 * c, 1.0);
    let (mut preatt, mut att) = (vec![0.0f32; b * nh * t * t], vec![0.0f32; b * nh * t * t]);
    let mut aout = vec![0.0f32; bt * c];
    attention_forward(&mut aout, &mut preatt, &mut att, &qkv, b, t, c, nh);
    let run_att = |k: usize| {
        let mut di = vec![0.0f32; bt * 3 * c];
        let (mut dp, mut da) = (vec![0.0f32; b * nh * t * t], vec![0.0f32; b * nh * t * t]);
        for _ in 0..k {
            attention_backward(&mut di, &mut dp, &mut da, &dout_c, &qkv, &att, b, t, c, nh);
        }
        (di, dp, da)
    };
    let (once, twice) = (run_att(1), run_att(2));
    assert_doubled("attention dinp", &once.0, &twice.0);
    assert_eq!(once.1, twice.1, "dpreatt is overwritten, not accumulated");
    assert_eq!(once.2, twice.2, "datt is overwritten, not accumulated");
    // GELU and residual.
    let run_gelu = |k: usize| {
        let mut di = vec![0.0f32; bt * c];
        for _ in 0..k {
            gelu_backward(&mut di, &x, &dout_c);
        }
        di
    };
    assert_doubled("gelu dinp", &run_gelu(1), &run_gelu(2));
    let run_res = |k: usize| {
        let (mut d1, mut d2) = (vec![0.0f32; bt * c], vec![0.0f32; bt * c]);
        for _ in 0..k {
            residual_backward(&mut d1, &mut d2, &dout_c);
        }
        [d1, d2]
    };
    let (r1, r2) = (run_res(1), run_res(2));
    assert_doubled("residual dinp1", &r1[0], &r2[0]);
    assert_doubled("residual dinp2", &r1[1], &r2[1]);
    // Classifier.
    let logits = randv(&mut rng, bt * vp, 1.0);
    let mut probs = vec![0.0f32; bt * vp];
    softmax_forward(&mut probs, &logits, b, t, v, vp);
    let targets: Vec<u32> = vec![0, 1, 2, 3, 4, 10];
    let dlosses = vec![1.0 / bt as f32; bt];
    let run_cls = |k: usize| {
        let mut dl = vec![0.0f32; bt * vp];
        for _ in 0..k {
            crossentropy_softmax_backward(&mut dl, &dlosses, &probs, &targets, b, t, v, vp);
        }
        dl
    };
    assert_doubled("dlogits", &run_cls(1), &run_cls(2));
}

#[test]
fn weight_gradients_do_not_depend_on_the_thread_count() {
    // Sizes with several tiles and K blocks, so that a split over B*T would show.
    let (b, t, c, oc, vp) = (3, 100, 70, 300, 64);
    let bt = b * t;
    let mut rng = Rng::new(12);
    let x = randv(&mut rng, bt * c, 1.0);
    let weight = randv(&mut rng, oc * c, 1.0);
    let dout_oc = randv(&mut rng, bt * oc, 1.0);
    let dout_c = randv(&mut rng, bt * c, 1.0);
    let (lw, lb) = (randv(&mut rng, c, 1.0), randv(&mut rng, c, 1.0));
    let inp: Vec<u32> = (0..bt).map(|_| rng.below(vp) as u32).collect();
    let run = || {
        let (mut di, mut dw, mut db) =
            (vec![0.0f32; bt * c], vec![0.0f32; oc * c], vec![0.0f32; oc]);
        matmul_backward(
            &mut di,
            &mut dw,
            Some(&mut db),
            &dout_oc,
            &x,
            &weight,
            b,
            t,
            c,
            oc,
        );
        let mut out = vec![0.0f32; bt * c];
        let (mut mean, mut rstd) = (vec![0.0f32; bt], vec![0.0f32; bt]);
        layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &lw, &lb, b, t, c);
        let (mut ldi, mut ldw, mut ldb) = (vec![0.0f32; bt * c], vec![0.0f32; c], vec![0.0f32; c]);
        layernorm_backward(
            &mut ldi, &mut ldw, &mut ldb, &dout_c, &x, &lw, &mean, &rstd, b, t, c,
        );
        let (mut dwte, mut dwpe) = (vec![0.0f32; vp * c], vec![0.0f32; t * c]);
        encoder_backward(&mut dwte, &mut dwpe, &dout_c, &inp, b, t, c);
        [di, dw, db, ldi, ldw, ldb, dwte, dwpe]
    };
    let reference = with_threads(1, run);
    for threads in [2, 3, 5] {
        let got = with_threads(threads, run);
        for (i, (a, r)) in got.iter().zip(&reference).enumerate() {
            let same = a.iter().zip(r).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "gradient #{i} differs between 1 and {threads} threads"
            );
        }
    }
}
