//! The GPU launchers against their CPU twins (`cpu::*`, the reference), on the same random inputs
//! of awkward sizes: B=3, T=1 and T=37, C=72 and 100 (not multiples of 32), NH=3 and 4, OC=131,
//! V=101 with Vp=128. Gradient buffers start from random values, not zeros, so that "accumulates"
//! (+=) and "overwrites" are both checked. Every GPU test is `#[ignore = "needs a CUDA GPU"]`:
//! run them with `cargo test --test gpu_layers -- --ignored` on a machine with one.
//!
//! Tolerances, each `|gpu - cpu| <= atol + rtol * |cpu|` elementwise, as small as the arithmetic
//! allows:
//! - exact (bitwise): encoder forward/backward, residual, AdamW: the GPU performs the CPU's float
//!   operations in the CPU's order (buckets of positions for dwte, one IEEE add per element, the
//!   rounded-op AdamW kernel).
//! - gelu: atol 1e-6 forward, 1e-5 backward, rtol 1e-5 (CUDA's tanhf and Rust's tanh differ by an
//!   ulp or two, amplified up to ~9x in the gradient).
//! - layernorm, attention, classifier: atol 1e-5..1e-4 on O(1) values; the sums run in another
//!   order (warp trees vs sequential / f64), a few ulps of each term's size.
//! - matmul (fp32 cuBLAS, TF32 off): rtol 1e-4 (`|d| <= 1e-4 * max(1, |cpu|)`), summation order
//!   differs over K = 100..131 terms of size ~1.
//! - global norm: rtol 1e-5 (fp32 tree on the GPU, f64 on the CPU).
//!
//! Determinism: the reductions that avoid atomics (dwte, dwpe, layernorm dweight/dbias, dbias,
//! global norm) are run twice and must agree bitwise.
//!
//! bf16 (the `_bf16` tests): every input is rounded to bf16 first and the CPU twin runs in fp32 on
//! those values widened, so the only differences are the GPU's roundings of its bf16 outputs. bf16
//! has an 8-bit significand: one round-to-nearest moves a value by at most U = 2^-8 of its
//! magnitude (half a unit in the last place, 2^-7 relative at worst). Tolerances:
//! - exact: encoder forward/backward and residual are the CPU's fp32 result rounded once
//!   (`bf16::from_f32` of it): the GPU does the CPU's fp32 operations, then rounds once.
//! - one rounding (the fp32 tolerance above, plus rtol U): gelu, layernorm out/dinp/dweight/dbias
//!   (mean and rstd stay fp32: the fp32 tolerance), matmul dinp/dweight/dbias (old + product in
//!   fp32, rounded once), classifier dlogits (the losses stay fp32: the fp32 tolerance), attention
//!   preatt and datt.
//! - matmul out: the product is rounded, then the bias added and rounded again: atol U (|bias| <=
//!   1) plus rtol 2U.
//! - attention att, out, dpreatt, dinp: bounds propagated from the roundings of the tensors they
//!   are computed from (each derived next to its assert from the data's max magnitudes).
//! - AdamW mixed: master weights, m and v bitwise the CPU's update on the widened bf16 gradients;
//!   params bitwise `precision::round_bf16_stochastic(master[i], rounding_bits(seed, i))`.
//!   global norm of bf16 gradients: rtol 1e-5, as in fp32.
//!
//! The packed (128-bit) and scalar paths are both exercised: sizes that are and are not multiples
//! of the pack, and views that start one element into their buffer (misaligned).

use train_gpt2_cuda::gpu::Gpu;

/// Gpu::new never panics: on a machine without a GPU (or a build without kernels) it is an error
/// that says which; with a GPU it works. Runs everywhere (no `ignore`).
#[test]
fn gpu_new_is_a_clear_error_or_works() {
    match Gpu::new() {
        Ok(_) => {
            if !train_gpt2_cuda::gpu::HAS_CUDA {
                panic!("a build without kernels created a Gpu");
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            if train_gpt2_cuda::gpu::HAS_CUDA {
                assert!(
                    msg.starts_with("no CUDA GPU available") || msg.contains("cuBLAS"),
                    "unexpected error: {msg}"
                );
            } else {
                assert!(msg.starts_with("this build has no CUDA kernels"), "{msg}");
            }
        }
    }
}

#[cfg(has_cuda)]
mod on_gpu {
    use half::bf16;
    use train_gpt2_cuda::cpu;
    use train_gpt2_cuda::gpu::float::{to_device_float, to_f32_vec};
    use train_gpt2_cuda::gpu::{
        attention_backward_scratch_len, attention_forward_scratch_len, CudaSlice, DeviceFloat, Gpu,
    };
    use train_gpt2_cuda::precision::{round_bf16_stochastic, rounding_bits};
    use train_gpt2_cuda::rng::Rng;

    const B: usize = 3;
    const TS: [usize; 2] = [1, 37];

    fn gpu() -> Gpu {
        Gpu::new().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// n values uniform in [-scale, scale).
    fn rand(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * scale)
            .collect()
    }

    fn up(g: &Gpu, x: &[f32]) -> CudaSlice<f32> {
        g.upload(x).unwrap()
    }

    fn down(g: &Gpu, x: &CudaSlice<f32>) -> Vec<f32> {
        g.download(x).unwrap()
    }

    /// |got - want| <= atol + rtol * |want| everywhere (and no NaN where want has none).
    #[track_caller]
    fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        let mut worst = (0usize, 0.0f32);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs();
            let tol = atol + rtol * w.abs();
            assert!(
                err <= tol,
                "{what}[{i}]: gpu {g} vs cpu {w} (|diff| {err} > tolerance {tol})"
            );
            if err > worst.1 {
                worst = (i, err);
            }
        }
        eprintln!("{what}: max |diff| {} at {}", worst.1, worst.0);
    }

    #[track_caller]
    fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{what}[{i}]: gpu {g} vs cpu {w} (must be bitwise equal)"
            );
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn encoder_matches_cpu_bitwise() {
        let g = gpu();
        let (vp, maxt) = (128, 40);
        for t in TS {
            for c in [72, 100] {
                let mut rng = Rng::new(1 + t as u64 * c as u64);
                // Few distinct tokens so that buckets hold many positions.
                let inp: Vec<u32> = (0..B * t).map(|_| rng.below(13) as u32 * 9).collect();
                let wte = rand(&mut rng, vp * c, 1.0);
                let wpe = rand(&mut rng, maxt * c, 1.0);
                let mut out = vec![0.0; B * t * c];
                cpu::encoder::encoder_forward(&mut out, &inp, &wte, &wpe, B, t, c);
                let (d_inp, d_wte, d_wpe) = (g.upload(&inp).unwrap(), up(&g, &wte), up(&g, &wpe));
                let mut d_out = g.zeros::<f32>(B * t * c).unwrap();
                g.encoder_forward(
                    &mut d_out.as_view_mut(),
                    &d_inp.as_view(),
                    &d_wte.as_view(),
                    &d_wpe.as_view(),
                    B,
                    t,
                    c,
                )
                .unwrap();
                assert_bitwise("encoder_forward out", &down(&g, &d_out), &out);

                let dout = rand(&mut rng, B * t * c, 1.0);
                let dwte0 = rand(&mut rng, vp * c, 1.0);
                let dwpe0 = rand(&mut rng, maxt * c, 1.0);
                let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
                cpu::encoder::encoder_backward(&mut dwte, &mut dwpe, &dout, &inp, B, t, c);
                let d_dout = up(&g, &dout);
                for run in 0..2 {
                    let (mut d_dwte, mut d_dwpe) = (up(&g, &dwte0), up(&g, &dwpe0));
                    g.encoder_backward(
                        &mut d_dwte.as_view_mut(),
                        &mut d_dwpe.as_view_mut(),
                        &d_dout.as_view(),
                        &inp,
                        B,
                        t,
                        c,
                    )
                    .unwrap();
                    assert_bitwise(&format!("dwte run {run}"), &down(&g, &d_dwte), &dwte);
                    assert_bitwise(&format!("dwpe run {run}"), &down(&g, &d_dwpe), &dwpe);
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn encoder_rejects_bad_tokens_and_shapes() {
        let g = gpu();
        let (b, t, c, vp) = (1, 2, 4, 8);
        let mut dwte = g.zeros::<f32>(vp * c).unwrap();
        let mut dwpe = g.zeros::<f32>(t * c).unwrap();
        let dout = g.zeros::<f32>(b * t * c).unwrap();
        let e = g
            .encoder_backward(
                &mut dwte.as_view_mut(),
                &mut dwpe.as_view_mut(),
                &dout.as_view(),
                &[3, 8],
                b,
                t,
                c,
            )
            .unwrap_err();
        assert!(format!("{e}").contains("token id 8 at position 1"), "{e}");
        let e = g
            .encoder_backward(
                &mut dwte.as_view_mut(),
                &mut dwpe.as_view_mut(),
                &dout.as_view(),
                &[3],
                b,
                t,
                c,
            )
            .unwrap_err();
        assert!(
            format!("{e}").starts_with("encoder_backward: inp has 1 elements"),
            "{e}"
        );
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn layernorm_matches_cpu() {
        let g = gpu();
        for t in TS {
            for c in [72, 100] {
                let n = B * t;
                let mut rng = Rng::new(100 + n as u64 + c as u64);
                // An offset mean and a spread so that mean and rstd matter.
                let inp: Vec<f32> = rand(&mut rng, n * c, 2.0).iter().map(|x| x + 0.5).collect();
                let weight = rand(&mut rng, c, 1.0);
                let bias = rand(&mut rng, c, 1.0);
                let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
                cpu::layernorm::layernorm_forward(
                    &mut out, &mut mean, &mut rstd, &inp, &weight, &bias, B, t, c,
                );
                let (d_inp, d_w, d_b) = (up(&g, &inp), up(&g, &weight), up(&g, &bias));
                let mut d_out = g.zeros::<f32>(n * c).unwrap();
                let mut d_mean = g.zeros::<f32>(n).unwrap();
                let mut d_rstd = g.zeros::<f32>(n).unwrap();
                g.layernorm_forward(
                    &mut d_out.as_view_mut(),
                    &mut d_mean.as_view_mut(),
                    &mut d_rstd.as_view_mut(),
                    &d_inp.as_view(),
                    &d_w.as_view(),
                    &d_b.as_view(),
                    B,
                    t,
                    c,
                )
                .unwrap();
                assert_close("layernorm out", &down(&g, &d_out), &out, 1e-5, 1e-5);
                assert_close("layernorm mean", &down(&g, &d_mean), &mean, 1e-6, 1e-5);
                assert_close("layernorm rstd", &down(&g, &d_rstd), &rstd, 1e-6, 1e-5);

                let dout = rand(&mut rng, n * c, 1.0);
                let dinp0 = rand(&mut rng, n * c, 1.0);
                let dw0 = rand(&mut rng, c, 1.0);
                let db0 = rand(&mut rng, c, 1.0);
                let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
                cpu::layernorm::layernorm_backward(
                    &mut dinp, &mut dw, &mut db, &dout, &inp, &weight, &mean, &rstd, B, t, c,
                );
                let d_dout = up(&g, &dout);
                let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
                for _run in 0..2 {
                    let mut d_dinp = up(&g, &dinp0);
                    let mut d_dw = up(&g, &dw0);
                    let mut d_db = up(&g, &db0);
                    g.layernorm_backward(
                        &mut d_dinp.as_view_mut(),
                        &mut d_dw.as_view_mut(),
                        &mut d_db.as_view_mut(),
                        &d_dout.as_view(),
                        &d_inp.as_view(),
                        &d_w.as_view(),
                        &d_mean.as_view(),
                        &d_rstd.as_view(),
                        B,
                        t,
                        c,
                    )
                    .unwrap();
                    assert_close("layernorm dinp", &down(&g, &d_dinp), &dinp, 1e-5, 1e-5);
                    // dweight/dbias sum B*T = up to 111 terms of size ~1.
                    let (gw, gb) = (down(&g, &d_dw), down(&g, &d_db));
                    assert_close("layernorm dweight", &gw, &dw, 2e-5, 1e-5);
                    assert_close("layernorm dbias", &gb, &db, 2e-5, 1e-5);
                    match &first {
                        None => first = Some((gw, gb)),
                        Some((w1, b1)) => {
                            assert_bitwise("layernorm dweight, second run", &gw, w1);
                            assert_bitwise("layernorm dbias, second run", &gb, b1);
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_matches_cpu() {
        let g = gpu();
        let oc = 131;
        for t in TS {
            for c in [72, 100] {
                for with_bias in [true, false] {
                    let n = B * t;
                    let mut rng = Rng::new(200 + n as u64 + c as u64);
                    let inp = rand(&mut rng, n * c, 1.0);
                    let weight = rand(&mut rng, oc * c, 1.0);
                    let bias = rand(&mut rng, oc, 1.0);
                    let mut out = vec![0.0; n * oc];
                    cpu::matmul::matmul_forward(
                        &mut out,
                        &inp,
                        &weight,
                        with_bias.then_some(&bias[..]),
                        B,
                        t,
                        c,
                        oc,
                    );
                    let (d_inp, d_w, d_bias) = (up(&g, &inp), up(&g, &weight), up(&g, &bias));
                    let d_bias_view = d_bias.as_view();
                    let mut d_out = up(&g, &rand(&mut rng, n * oc, 9.0)); // overwritten
                    g.matmul_forward(
                        &mut d_out.as_view_mut(),
                        &d_inp.as_view(),
                        &d_w.as_view(),
                        with_bias.then_some(&d_bias_view),
                        B,
                        t,
                        c,
                        oc,
                    )
                    .unwrap();
                    assert_close("matmul out", &down(&g, &d_out), &out, 1e-4, 1e-4);

                    let dout = rand(&mut rng, n * oc, 1.0);
                    let dinp0 = rand(&mut rng, n * c, 1.0);
                    let dw0 = rand(&mut rng, oc * c, 1.0);
                    let db0 = rand(&mut rng, oc, 1.0);
                    let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
                    cpu::matmul::matmul_backward(
                        &mut dinp,
                        &mut dw,
                        with_bias.then_some(&mut db[..]),
                        &dout,
                        &inp,
                        &weight,
                        B,
                        t,
                        c,
                        oc,
                    );
                    let d_dout = up(&g, &dout);
                    let mut first_db: Option<Vec<f32>> = None;
                    for _run in 0..2 {
                        let mut d_dinp = up(&g, &dinp0);
                        let mut d_dw = up(&g, &dw0);
                        let mut d_db = up(&g, &db0);
                        let mut d_db_view = d_db.as_view_mut();
                        g.matmul_backward(
                            &mut d_dinp.as_view_mut(),
                            &mut d_dw.as_view_mut(),
                            with_bias.then_some(&mut d_db_view),
                            &d_dout.as_view(),
                            &d_inp.as_view(),
                            &d_w.as_view(),
                            B,
                            t,
                            c,
                            oc,
                        )
                        .unwrap();
                        assert_close("matmul dinp", &down(&g, &d_dinp), &dinp, 1e-4, 1e-4);
                        assert_close("matmul dweight", &down(&g, &d_dw), &dw, 1e-4, 1e-4);
                        let gdb = down(&g, &d_db);
                        // Without a bias the dbias buffer must be untouched.
                        assert_close("matmul dbias", &gdb, &db, 1e-4, 1e-4);
                        match &first_db {
                            None => first_db = Some(gdb),
                            Some(f) => assert_bitwise("matmul dbias, second run", &gdb, f),
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn attention_matches_cpu() {
        let g = gpu();
        for t in TS {
            for (c, nh) in [(72, 3), (100, 4)] {
                let mut rng = Rng::new(300 + t as u64 + c as u64);
                let btt = B * nh * t * t;
                let inp = rand(&mut rng, B * t * 3 * c, 1.5);
                let mut out = vec![0.0; B * t * c];
                let (mut preatt, mut att) = (rand(&mut rng, btt, 1.0), rand(&mut rng, btt, 1.0));
                cpu::attention::attention_forward(
                    &mut out,
                    &mut preatt,
                    &mut att,
                    &inp,
                    B,
                    t,
                    c,
                    nh,
                );
                let d_inp = up(&g, &inp);
                let mut d_out = g.zeros::<f32>(B * t * c).unwrap();
                // Garbage in preatt/att and the scratch: the launcher must overwrite all of it.
                let mut d_preatt = up(&g, &rand(&mut rng, btt, 7.0));
                let mut d_att = up(&g, &rand(&mut rng, btt, 7.0));
                let mut scratch = up(
                    &g,
                    &rand(&mut rng, attention_backward_scratch_len(B, t, c), 7.0),
                );
                assert!(attention_forward_scratch_len(B, t, c) <= scratch.len());
                g.attention_forward(
                    &mut d_out.as_view_mut(),
                    &mut d_preatt.as_view_mut(),
                    &mut d_att.as_view_mut(),
                    &d_inp.as_view(),
                    B,
                    t,
                    c,
                    nh,
                    &mut scratch.as_view_mut(),
                )
                .unwrap();
                assert_close(
                    "attention preatt",
                    &down(&g, &d_preatt),
                    &preatt,
                    1e-5,
                    1e-5,
                );
                assert_close("attention att", &down(&g, &d_att), &att, 1e-6, 1e-5);
                assert_close("attention out", &down(&g, &d_out), &out, 1e-5, 1e-5);

                let dout = rand(&mut rng, B * t * c, 1.0);
                let dinp0 = rand(&mut rng, B * t * 3 * c, 1.0);
                let mut dinp = dinp0.clone();
                let (mut dpreatt, mut datt) = (rand(&mut rng, btt, 1.0), rand(&mut rng, btt, 1.0));
                cpu::attention::attention_backward(
                    &mut dinp,
                    &mut dpreatt,
                    &mut datt,
                    &dout,
                    &inp,
                    &att,
                    B,
                    t,
                    c,
                    nh,
                );
                let (d_dout, d_att_cpu) = (up(&g, &dout), up(&g, &att));
                let mut d_dinp = up(&g, &dinp0);
                let mut d_dpreatt = up(&g, &rand(&mut rng, btt, 7.0));
                let mut d_datt = up(&g, &rand(&mut rng, btt, 7.0));
                g.attention_backward(
                    &mut d_dinp.as_view_mut(),
                    &mut d_dpreatt.as_view_mut(),
                    &mut d_datt.as_view_mut(),
                    &d_dout.as_view(),
                    &d_inp.as_view(),
                    &d_att_cpu.as_view(),
                    B,
                    t,
                    c,
                    nh,
                    &mut scratch.as_view_mut(),
                )
                .unwrap();
                assert_close("attention datt", &down(&g, &d_datt), &datt, 1e-5, 1e-5);
                assert_close(
                    "attention dpreatt",
                    &down(&g, &d_dpreatt),
                    &dpreatt,
                    1e-5,
                    1e-4,
                );
                assert_close("attention dinp", &down(&g, &d_dinp), &dinp, 1e-5, 1e-4);
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gelu_matches_cpu() {
        let g = gpu();
        let n = B * 37 * 4 * 72 + 5;
        let mut rng = Rng::new(400);
        let inp = rand(&mut rng, n, 5.0);
        let mut out = vec![0.0; n];
        cpu::gelu::gelu_forward(&mut out, &inp);
        let d_inp = up(&g, &inp);
        let mut d_out = g.zeros::<f32>(n).unwrap();
        g.gelu_forward(&mut d_out.as_view_mut(), &d_inp.as_view())
            .unwrap();
        assert_close("gelu out", &down(&g, &d_out), &out, 1e-6, 1e-5);
        let dout = rand(&mut rng, n, 1.0);
        let dinp0 = rand(&mut rng, n, 1.0);
        let mut dinp = dinp0.clone();
        cpu::gelu::gelu_backward(&mut dinp, &inp, &dout);
        let mut d_dinp = up(&g, &dinp0);
        g.gelu_backward(
            &mut d_dinp.as_view_mut(),
            &d_inp.as_view(),
            &up(&g, &dout).as_view(),
        )
        .unwrap();
        // tanh's last-bit differences reach the gradient through (1 - tanh^2) * 0.5 x du/dx, a
        // factor up to ~9 for |x| <= 5: 1e-5 absolute.
        assert_close("gelu dinp", &down(&g, &d_dinp), &dinp, 1e-5, 1e-5);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn residual_matches_cpu_bitwise() {
        let g = gpu();
        let n = B * 37 * 100 + 3;
        let mut rng = Rng::new(500);
        let (a, b) = (rand(&mut rng, n, 1.0), rand(&mut rng, n, 1.0));
        let mut out = vec![0.0; n];
        cpu::residual::residual_forward(&mut out, &a, &b);
        let mut d_out = g.zeros::<f32>(n).unwrap();
        let (d_a, d_b) = (up(&g, &a), up(&g, &b));
        g.residual_forward(&mut d_out.as_view_mut(), &d_a.as_view(), &d_b.as_view())
            .unwrap();
        assert_bitwise("residual out", &down(&g, &d_out), &out);
        let dout = rand(&mut rng, n, 1.0);
        let (mut d1, mut d2) = (rand(&mut rng, n, 1.0), rand(&mut rng, n, 1.0));
        let (mut g1, mut g2) = (up(&g, &d1), up(&g, &d2));
        cpu::residual::residual_backward(&mut d1, &mut d2, &dout);
        g.residual_backward(
            &mut g1.as_view_mut(),
            &mut g2.as_view_mut(),
            &up(&g, &dout).as_view(),
        )
        .unwrap();
        assert_bitwise("residual dinp1", &down(&g, &g1), &d1);
        assert_bitwise("residual dinp2", &down(&g, &g2), &d2);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fused_classifier_matches_cpu() {
        let g = gpu();
        let (v, vp) = (101, 128);
        for t in TS {
            let n = B * t;
            let mut rng = Rng::new(600 + t as u64);
            let mut logits = rand(&mut rng, n * vp, 4.0);
            // Huge values in the padding: they must take no part in the softmax.
            for row in logits.chunks_mut(vp) {
                row[v..].fill(1e4);
            }
            let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
            let dloss = 1.0 / n as f32;
            let mut probs = vec![0.0; n * vp];
            cpu::classifier::softmax_forward(&mut probs, &logits, B, t, v, vp);
            let mut losses = vec![0.0; n];
            cpu::classifier::crossentropy_forward(&mut losses, &probs, &targets, B, t, vp);
            let mut dlogits = vec![0.0; n * vp];
            cpu::classifier::crossentropy_softmax_backward(
                &mut dlogits,
                &vec![dloss; n],
                &probs,
                &targets,
                B,
                t,
                v,
                vp,
            );
            let mut d_logits = up(&g, &logits);
            let mut d_losses = up(&g, &rand(&mut rng, n, 9.0));
            let d_targets = g.upload(&targets).unwrap();
            g.fused_classifier(
                &mut d_logits.as_view_mut(),
                &mut d_losses.as_view_mut(),
                dloss,
                &d_targets.as_view(),
                B,
                t,
                v,
                vp,
            )
            .unwrap();
            assert_close(
                "classifier losses",
                &down(&g, &d_losses),
                &losses,
                1e-5,
                1e-5,
            );
            // dlogits are O(dloss) = O(1/B*T); the padding columns must be exactly 0.
            let got = down(&g, &d_logits);
            assert_close("classifier dlogits", &got, &dlogits, 1e-8, 1e-5);
            for row in got.chunks(vp) {
                assert!(row[v..].iter().all(|&x| x == 0.0), "padding not zeroed");
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn adamw_matches_cpu_bitwise_and_global_norm_is_close() {
        let g = gpu();
        let n = 100_003;
        let mut rng = Rng::new(700);
        let hp = cpu::adamw::AdamW {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut params = rand(&mut rng, n, 1.0);
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let (mut d_p, mut d_m, mut d_v) = (up(&g, &params), up(&g, &m), up(&g, &v));
        for step in 1..=3 {
            let grads = rand(&mut rng, n, 0.5);
            let d_g = up(&g, &grads);
            let norm = cpu::adamw::global_norm(&grads);
            let gpu_norm = g.global_norm(&d_g.as_view()).unwrap();
            assert_close("global_norm", &[gpu_norm], &[norm], 0.0, 1e-5);
            assert_eq!(
                gpu_norm.to_bits(),
                g.global_norm(&d_g.as_view()).unwrap().to_bits()
            );
            let scale = if step == 2 { 0.7 } else { 1.0 };
            cpu::adamw::adamw_update(&mut params, &grads, &mut m, &mut v, &hp, step, scale);
            g.adamw_update(
                &mut d_p.as_view_mut(),
                &d_g.as_view(),
                &mut d_m.as_view_mut(),
                &mut d_v.as_view_mut(),
                &hp,
                step,
                scale,
            )
            .unwrap();
            assert_bitwise("adamw params", &down(&g, &d_p), &params);
            assert_bitwise("adamw m", &down(&g, &d_m), &m);
            assert_bitwise("adamw v", &down(&g, &d_v), &v);
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn tf32_switch_and_shape_errors() {
        let mut g = gpu();
        assert!(!g.tf32());
        g.set_tf32(true).unwrap();
        assert!(g.tf32());
        g.set_tf32(false).unwrap();
        let mut out = g.zeros::<f32>(10).unwrap();
        let inp = g.zeros::<f32>(11).unwrap();
        let e = g
            .gelu_forward(&mut out.as_view_mut(), &inp.as_view())
            .unwrap_err();
        assert!(
            format!("{e}").starts_with("gelu_forward: inp has 11 elements"),
            "{e}"
        );
    }

    // ---- bf16 (mixed precision) ------------------------------------------------------------
    // The CPU twins run in fp32 on the same bf16-rounded inputs, widened; see the file doc for the
    // tolerances.

    /// The unit roundoff of bf16 (8-bit significand, round to nearest even): one rounding moves a
    /// value by at most BF16_U times its magnitude.
    const BF16_U: f32 = 1.0 / 256.0;

    /// x rounded to bf16 and widened back (what the GPU sees as its bf16 input).
    fn round_bf(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    }

    /// x rounded to T and uploaded.
    fn up_t<T: DeviceFloat>(g: &Gpu, x: &[f32]) -> CudaSlice<T> {
        g.upload(&to_device_float::<T>(x)).unwrap()
    }

    /// A device buffer of T, widened to f32.
    fn down_t<T: DeviceFloat>(g: &Gpu, x: &CudaSlice<T>) -> Vec<f32> {
        to_f32_vec(&g.download(x).unwrap())
    }

    /// The largest |x| (0 for an empty slice).
    fn max_abs(x: &[f32]) -> f32 {
        x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn encoder_bf16_is_the_cpu_result_rounded_once() {
        let g = gpu();
        let (vp, maxt) = (128, 40);
        for t in TS {
            for c in [72, 100, 64] {
                let mut rng = Rng::new(1000 + t as u64 * c as u64);
                let inp: Vec<u32> = (0..B * t).map(|_| rng.below(13) as u32 * 9).collect();
                let wte = round_bf(&rand(&mut rng, vp * c, 1.0));
                let wpe = round_bf(&rand(&mut rng, maxt * c, 1.0));
                let mut out = vec![0.0; B * t * c];
                cpu::encoder::encoder_forward(&mut out, &inp, &wte, &wpe, B, t, c);
                let d_inp = g.upload(&inp).unwrap();
                let (d_wte, d_wpe) = (up_t::<bf16>(&g, &wte), up_t::<bf16>(&g, &wpe));
                let mut d_out = g.zeros::<bf16>(B * t * c).unwrap();
                g.encoder_forward(
                    &mut d_out.as_view_mut(),
                    &d_inp.as_view(),
                    &d_wte.as_view(),
                    &d_wpe.as_view(),
                    B,
                    t,
                    c,
                )
                .unwrap();
                assert_bitwise("encoder_forward bf16", &down_t(&g, &d_out), &round_bf(&out));

                let dout = round_bf(&rand(&mut rng, B * t * c, 1.0));
                let dwte0 = round_bf(&rand(&mut rng, vp * c, 1.0));
                let dwpe0 = round_bf(&rand(&mut rng, maxt * c, 1.0));
                let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
                cpu::encoder::encoder_backward(&mut dwte, &mut dwpe, &dout, &inp, B, t, c);
                let d_dout = up_t::<bf16>(&g, &dout);
                let (mut d_dwte, mut d_dwpe) = (up_t::<bf16>(&g, &dwte0), up_t::<bf16>(&g, &dwpe0));
                g.encoder_backward(
                    &mut d_dwte.as_view_mut(),
                    &mut d_dwpe.as_view_mut(),
                    &d_dout.as_view(),
                    &inp,
                    B,
                    t,
                    c,
                )
                .unwrap();
                assert_bitwise("dwte bf16", &down_t(&g, &d_dwte), &round_bf(&dwte));
                assert_bitwise("dwpe bf16", &down_t(&g, &d_dwpe), &round_bf(&dwpe));
            }
        }
    }

    /// Residual forward and backward in T on views starting `offset` elements into their buffers
    /// (offset 1 makes every pointer misaligned: the scalar path); the result must be the CPU's
    /// fp32 result rounded once to T.
    fn residual_case<T: DeviceFloat>(g: &Gpu, offset: usize) {
        let n = B * 37 * 100 + 3;
        let mut rng = Rng::new(1500 + offset as u64);
        let round = |x: Vec<f32>| to_f32_vec(&to_device_float::<T>(&x));
        let (a, b) = (round(rand(&mut rng, n, 1.0)), round(rand(&mut rng, n, 1.0)));
        let mut out = vec![0.0; n];
        cpu::residual::residual_forward(&mut out, &a, &b);
        let pad = |x: &[f32]| {
            let mut v = vec![0.0; offset];
            v.extend_from_slice(x);
            v
        };
        let (d_a, d_b) = (up_t::<T>(g, &pad(&a)), up_t::<T>(g, &pad(&b)));
        let mut d_out = g.zeros::<T>(n + offset).unwrap();
        g.residual_forward(
            &mut d_out.slice_mut(offset..),
            &d_a.slice(offset..),
            &d_b.slice(offset..),
        )
        .unwrap();
        let what = format!("residual out ({:?}, offset {offset})", T::PRECISION);
        assert_bitwise(&what, &down_t(g, &d_out)[offset..], &round(out));

        let dout = round(rand(&mut rng, n, 1.0));
        let (mut d1, mut d2) = (round(rand(&mut rng, n, 1.0)), round(rand(&mut rng, n, 1.0)));
        let (mut g1, mut g2) = (up_t::<T>(g, &pad(&d1)), up_t::<T>(g, &pad(&d2)));
        cpu::residual::residual_backward(&mut d1, &mut d2, &dout);
        let d_dout = up_t::<T>(g, &pad(&dout));
        g.residual_backward(
            &mut g1.slice_mut(offset..),
            &mut g2.slice_mut(offset..),
            &d_dout.slice(offset..),
        )
        .unwrap();
        let what = format!("residual dinp ({:?}, offset {offset})", T::PRECISION);
        assert_bitwise(&what, &down_t(g, &g1)[offset..], &round(d1));
        assert_bitwise(&what, &down_t(g, &g2)[offset..], &round(d2));
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn residual_packed_and_scalar_paths_match_cpu_bitwise_in_both_precisions() {
        let g = gpu();
        for offset in [0, 1] {
            residual_case::<f32>(&g, offset);
            residual_case::<bf16>(&g, offset);
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gelu_bf16_matches_cpu() {
        let g = gpu();
        let n = B * 37 * 4 * 72 + 5;
        let mut rng = Rng::new(1400);
        let inp = round_bf(&rand(&mut rng, n, 5.0));
        let mut out = vec![0.0; n];
        cpu::gelu::gelu_forward(&mut out, &inp);
        let dout = round_bf(&rand(&mut rng, n, 1.0));
        let dinp0 = round_bf(&rand(&mut rng, n, 1.0));
        let mut dinp = dinp0.clone();
        cpu::gelu::gelu_backward(&mut dinp, &inp, &dout);
        // offset 0: the packed path (plus a tail of 5); offset 1: the scalar path
        for offset in [0, 1] {
            let pad = |x: &[f32]| {
                let mut v = vec![0.0; offset];
                v.extend_from_slice(x);
                v
            };
            let d_inp = up_t::<bf16>(&g, &pad(&inp));
            let mut d_out = g.zeros::<bf16>(n + offset).unwrap();
            g.gelu_forward(&mut d_out.slice_mut(offset..), &d_inp.slice(offset..))
                .unwrap();
            // fp32 tolerance (1e-6 + 1e-5 rel) plus one rounding
            let got = down_t(&g, &d_out);
            assert_close("gelu bf16 out", &got[offset..], &out, 1e-6, BF16_U + 1e-5);
            let mut d_dinp = up_t::<bf16>(&g, &pad(&dinp0));
            let d_dout = up_t::<bf16>(&g, &pad(&dout));
            g.gelu_backward(
                &mut d_dinp.slice_mut(offset..),
                &d_inp.slice(offset..),
                &d_dout.slice(offset..),
            )
            .unwrap();
            let got = down_t(&g, &d_dinp);
            assert_close("gelu bf16 dinp", &got[offset..], &dinp, 1e-5, BF16_U + 1e-5);
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn layernorm_bf16_matches_cpu() {
        let g = gpu();
        for t in TS {
            // 72 and 64: multiples of 8 (the packed output pass); 100: the scalar one
            for c in [72, 100, 64] {
                let n = B * t;
                let mut rng = Rng::new(1100 + n as u64 + c as u64);
                let inp: Vec<f32> = round_bf(
                    &rand(&mut rng, n * c, 2.0)
                        .iter()
                        .map(|x| x + 0.5)
                        .collect::<Vec<_>>(),
                );
                let weight = round_bf(&rand(&mut rng, c, 1.0));
                let bias = round_bf(&rand(&mut rng, c, 1.0));
                let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
                cpu::layernorm::layernorm_forward(
                    &mut out, &mut mean, &mut rstd, &inp, &weight, &bias, B, t, c,
                );
                let d_inp = up_t::<bf16>(&g, &inp);
                let (d_w, d_b) = (up_t::<bf16>(&g, &weight), up_t::<bf16>(&g, &bias));
                let mut d_out = g.zeros::<bf16>(n * c).unwrap();
                let mut d_mean = g.zeros::<f32>(n).unwrap();
                let mut d_rstd = g.zeros::<f32>(n).unwrap();
                g.layernorm_forward(
                    &mut d_out.as_view_mut(),
                    &mut d_mean.as_view_mut(),
                    &mut d_rstd.as_view_mut(),
                    &d_inp.as_view(),
                    &d_w.as_view(),
                    &d_b.as_view(),
                    B,
                    t,
                    c,
                )
                .unwrap();
                // mean and rstd: fp32 from the same inputs, the fp32 tolerances
                assert_close("layernorm bf16 mean", &down(&g, &d_mean), &mean, 1e-6, 1e-5);
                assert_close("layernorm bf16 rstd", &down(&g, &d_rstd), &rstd, 1e-6, 1e-5);
                // out: the fp32 tolerance plus one rounding
                let got = down_t(&g, &d_out);
                assert_close("layernorm bf16 out", &got, &out, 1e-5, BF16_U + 1e-5);

                let dout = round_bf(&rand(&mut rng, n * c, 1.0));
                let dinp0 = round_bf(&rand(&mut rng, n * c, 1.0));
                let dw0 = round_bf(&rand(&mut rng, c, 1.0));
                let db0 = round_bf(&rand(&mut rng, c, 1.0));
                let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
                cpu::layernorm::layernorm_backward(
                    &mut dinp, &mut dw, &mut db, &dout, &inp, &weight, &mean, &rstd, B, t, c,
                );
                let d_dout = up_t::<bf16>(&g, &dout);
                let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
                for _run in 0..2 {
                    let mut d_dinp = up_t::<bf16>(&g, &dinp0);
                    let mut d_dw = up_t::<bf16>(&g, &dw0);
                    let mut d_db = up_t::<bf16>(&g, &db0);
                    g.layernorm_backward(
                        &mut d_dinp.as_view_mut(),
                        &mut d_dw.as_view_mut(),
                        &mut d_db.as_view_mut(),
                        &d_dout.as_view(),
                        &d_inp.as_view(),
                        &d_w.as_view(),
                        &d_mean.as_view(),
                        &d_rstd.as_view(),
                        B,
                        t,
                        c,
                    )
                    .unwrap();
                    let gi = down_t(&g, &d_dinp);
                    assert_close("layernorm bf16 dinp", &gi, &dinp, 1e-5, BF16_U + 1e-5);
                    let (gw, gb) = (down_t(&g, &d_dw), down_t(&g, &d_db));
                    assert_close("layernorm bf16 dweight", &gw, &dw, 2e-5, BF16_U + 1e-5);
                    assert_close("layernorm bf16 dbias", &gb, &db, 2e-5, BF16_U + 1e-5);
                    match &first {
                        None => first = Some((gw, gb)),
                        Some((w1, b1)) => {
                            assert_bitwise("layernorm bf16 dweight, second run", &gw, w1);
                            assert_bitwise("layernorm bf16 dbias, second run", &gb, b1);
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_bf16_matches_cpu() {
        let g = gpu();
        let oc = 131;
        for t in TS {
            for c in [72, 100] {
                for with_bias in [true, false] {
                    let n = B * t;
                    let mut rng = Rng::new(1200 + n as u64 + c as u64);
                    let inp = round_bf(&rand(&mut rng, n * c, 1.0));
                    let weight = round_bf(&rand(&mut rng, oc * c, 1.0));
                    let bias = round_bf(&rand(&mut rng, oc, 1.0));
                    let mut out = vec![0.0; n * oc];
                    cpu::matmul::matmul_forward(
                        &mut out,
                        &inp,
                        &weight,
                        with_bias.then_some(&bias[..]),
                        B,
                        t,
                        c,
                        oc,
                    );
                    let d_inp = up_t::<bf16>(&g, &inp);
                    let (d_w, d_bias) = (up_t::<bf16>(&g, &weight), up_t::<bf16>(&g, &bias));
                    let d_bias_view = d_bias.as_view();
                    let mut d_out = up_t::<bf16>(&g, &rand(&mut rng, n * oc, 9.0)); // overwritten
                    g.matmul_forward(
                        &mut d_out.as_view_mut(),
                        &d_inp.as_view(),
                        &d_w.as_view(),
                        with_bias.then_some(&d_bias_view),
                        B,
                        t,
                        c,
                        oc,
                    )
                    .unwrap();
                    // the product rounded (<= U (|out| + |bias|), |bias| <= 1), then the bias
                    // added and rounded again (<= U |out|), plus fp32's 1e-4
                    let got = down_t(&g, &d_out);
                    assert_close(
                        "matmul bf16 out",
                        &got,
                        &out,
                        BF16_U + 1e-4,
                        2.0 * BF16_U + 1e-4,
                    );

                    let dout = round_bf(&rand(&mut rng, n * oc, 1.0));
                    let dinp0 = round_bf(&rand(&mut rng, n * c, 1.0));
                    let dw0 = round_bf(&rand(&mut rng, oc * c, 1.0));
                    let db0 = round_bf(&rand(&mut rng, oc, 1.0));
                    let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
                    cpu::matmul::matmul_backward(
                        &mut dinp,
                        &mut dw,
                        with_bias.then_some(&mut db[..]),
                        &dout,
                        &inp,
                        &weight,
                        B,
                        t,
                        c,
                        oc,
                    );
                    let d_dout = up_t::<bf16>(&g, &dout);
                    let mut first_db: Option<Vec<f32>> = None;
                    for _run in 0..2 {
                        let mut d_dinp = up_t::<bf16>(&g, &dinp0);
                        let mut d_dw = up_t::<bf16>(&g, &dw0);
                        let mut d_db = up_t::<bf16>(&g, &db0);
                        let mut d_db_view = d_db.as_view_mut();
                        g.matmul_backward(
                            &mut d_dinp.as_view_mut(),
                            &mut d_dw.as_view_mut(),
                            with_bias.then_some(&mut d_db_view),
                            &d_dout.as_view(),
                            &d_inp.as_view(),
                            &d_w.as_view(),
                            B,
                            t,
                            c,
                            oc,
                        )
                        .unwrap();
                        // old + product in fp32, rounded once
                        let (gi, gw) = (down_t(&g, &d_dinp), down_t(&g, &d_dw));
                        assert_close("matmul bf16 dinp", &gi, &dinp, 1e-4, BF16_U + 1e-4);
                        assert_close("matmul bf16 dweight", &gw, &dw, 1e-4, BF16_U + 1e-4);
                        let gdb = down_t(&g, &d_db);
                        // without a bias dbias stays db0 exactly (db == db0 then)
                        assert_close("matmul bf16 dbias", &gdb, &db, 1e-4, BF16_U + 1e-4);
                        match &first_db {
                            None => first_db = Some(gdb),
                            Some(f) => assert_bitwise("matmul bf16 dbias, second run", &gdb, f),
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn adamw_mixed_matches_cpu_bitwise_and_rounds_stochastically() {
        let g = gpu();
        let hp = cpu::adamw::AdamW {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        // offset 0: packed path (8 per thread) with a tail of 3; offset 1: the scalar path
        for offset in [0usize, 1] {
            let n = 100_003;
            let mut rng = Rng::new(1700 + offset as u64);
            let mut master = rand(&mut rng, n, 1.0);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let pad = |x: &[f32]| {
                let mut p = vec![0.0; offset];
                p.extend_from_slice(x);
                p
            };
            let mut d_params = g.zeros::<bf16>(n + offset).unwrap();
            let mut d_master = up(&g, &pad(&master));
            let (mut d_m, mut d_v) = (up(&g, &pad(&m)), up(&g, &pad(&v)));
            let mut rounded_up = 0usize;
            for step in 1..=3 {
                let grads = round_bf(&rand(&mut rng, n, 0.5));
                let d_g = up_t::<bf16>(&g, &pad(&grads));
                let scale = if step == 2 { 0.7 } else { 1.0 };
                let seed = 0x9e37_79b9u32.wrapping_mul(step as u32 + 7 * offset as u32);
                cpu::adamw::adamw_update(&mut master, &grads, &mut m, &mut v, &hp, step, scale);
                g.adamw_update_mixed(
                    &mut d_params.slice_mut(offset..),
                    &mut d_master.slice_mut(offset..),
                    &d_g.slice(offset..),
                    &mut d_m.slice_mut(offset..),
                    &mut d_v.slice_mut(offset..),
                    &hp,
                    step,
                    scale,
                    seed,
                )
                .unwrap();
                assert_bitwise(
                    "adamw mixed master",
                    &down(&g, &d_master)[offset..],
                    &master,
                );
                assert_bitwise("adamw mixed m", &down(&g, &d_m)[offset..], &m);
                assert_bitwise("adamw mixed v", &down(&g, &d_v)[offset..], &v);
                let params = g.download(&d_params).unwrap();
                for (i, (&p, &w)) in params[offset..].iter().zip(&master).enumerate() {
                    let want = round_bf16_stochastic(w, rounding_bits(seed, i as u32));
                    assert_eq!(
                        p.to_bits(),
                        want.to_bits(),
                        "adamw mixed params[{i}] (step {step}): gpu {p} vs host {want} from {w}"
                    );
                    if p.to_f32().abs() > w.abs() {
                        rounded_up += 1;
                    }
                }
            }
            // Stochastic, not nearest: a fair share of the 3n roundings go away from zero.
            assert!(
                rounded_up > n / 2 && rounded_up < 5 * n / 2,
                "{rounded_up} of {} rounded away from zero",
                3 * n
            );
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn adamw_mixed_and_global_norm_bf16_check_their_arguments() {
        let g = gpu();
        let hp = cpu::adamw::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut p = g.zeros::<bf16>(10).unwrap();
        let mut master = g.zeros::<f32>(10).unwrap();
        let grads = g.zeros::<bf16>(9).unwrap();
        let (mut m, mut v) = (g.zeros::<f32>(10).unwrap(), g.zeros::<f32>(10).unwrap());
        let e = g
            .adamw_update_mixed(
                &mut p.as_view_mut(),
                &mut master.as_view_mut(),
                &grads.as_view(),
                &mut m.as_view_mut(),
                &mut v.as_view_mut(),
                &hp,
                1,
                1.0,
                0,
            )
            .unwrap_err();
        assert!(
            format!("{e}").starts_with("adamw_update_mixed: grads has 9 elements"),
            "{e}"
        );
        // global norm of bf16 gradients: fp32 accumulation of the widened values
        let mut rng = Rng::new(1800);
        let x = round_bf(&rand(&mut rng, 70_001, 0.5));
        let d_x = up_t::<bf16>(&g, &x);
        let norm = g.global_norm(&d_x.as_view()).unwrap();
        assert_close(
            "global_norm bf16",
            &[norm],
            &[cpu::adamw::global_norm(&x)],
            0.0,
            1e-5,
        );
        assert_eq!(
            norm.to_bits(),
            g.global_norm(&d_x.as_view()).unwrap().to_bits()
        );
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fused_classifier_bf16_matches_cpu() {
        let g = gpu();
        let (v, vp) = (101, 128);
        for t in TS {
            let n = B * t;
            let mut rng = Rng::new(1600 + t as u64);
            let mut logits = rand(&mut rng, n * vp, 4.0);
            for row in logits.chunks_mut(vp) {
                row[v..].fill(1e4);
            }
            let logits = round_bf(&logits);
            let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
            let dloss = 1.0 / n as f32;
            let mut probs = vec![0.0; n * vp];
            cpu::classifier::softmax_forward(&mut probs, &logits, B, t, v, vp);
            let mut losses = vec![0.0; n];
            cpu::classifier::crossentropy_forward(&mut losses, &probs, &targets, B, t, vp);
            let mut dlogits = vec![0.0; n * vp];
            cpu::classifier::crossentropy_softmax_backward(
                &mut dlogits,
                &vec![dloss; n],
                &probs,
                &targets,
                B,
                t,
                v,
                vp,
            );
            let d_targets = g.upload(&targets).unwrap();
            let mut d_logits = up_t::<bf16>(&g, &logits);
            // the forward half alone: fp32 losses, logits untouched
            let mut d_losses = up(&g, &rand(&mut rng, n, 9.0));
            g.classifier_losses(
                &d_logits.as_view(),
                &mut d_losses.as_view_mut(),
                &d_targets.as_view(),
                B,
                t,
                v,
                vp,
            )
            .unwrap();
            assert_close(
                "classifier_losses bf16",
                &down(&g, &d_losses),
                &losses,
                1e-5,
                1e-5,
            );
            assert_bitwise(
                "classifier_losses bf16 logits",
                &down_t(&g, &d_logits),
                &logits,
            );

            let mut d_losses = up(&g, &rand(&mut rng, n, 9.0));
            g.fused_classifier(
                &mut d_logits.as_view_mut(),
                &mut d_losses.as_view_mut(),
                dloss,
                &d_targets.as_view(),
                B,
                t,
                v,
                vp,
            )
            .unwrap();
            // losses: fp32 from the same (bf16) logits: the fp32 tolerance
            assert_close(
                "classifier bf16 losses",
                &down(&g, &d_losses),
                &losses,
                1e-5,
                1e-5,
            );
            // dlogits: the fp32 tolerance plus one rounding; padding exactly 0
            let got = down_t(&g, &d_logits);
            assert_close(
                "classifier bf16 dlogits",
                &got,
                &dlogits,
                1e-8,
                BF16_U + 1e-5,
            );
            for row in got.chunks(vp) {
                assert!(row[v..].iter().all(|&x| x == 0.0), "padding not zeroed");
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn attention_bf16_matches_cpu() {
        let g = gpu();
        for t in TS {
            for (c, nh) in [(72, 3), (100, 4)] {
                let mut rng = Rng::new(1300 + t as u64 + c as u64);
                let btt = B * nh * t * t;
                let inp = round_bf(&rand(&mut rng, B * t * 3 * c, 1.5));
                let mut out = vec![0.0; B * t * c];
                let (mut preatt, mut att) = (vec![0.0; btt], vec![0.0; btt]);
                cpu::attention::attention_forward(
                    &mut out,
                    &mut preatt,
                    &mut att,
                    &inp,
                    B,
                    t,
                    c,
                    nh,
                );
                let d_inp = up_t::<bf16>(&g, &inp);
                let mut d_out = g.zeros::<bf16>(B * t * c).unwrap();
                let mut d_preatt = up_t::<bf16>(&g, &rand(&mut rng, btt, 7.0));
                let mut d_att = up_t::<bf16>(&g, &rand(&mut rng, btt, 7.0));
                let mut scratch = up_t::<bf16>(
                    &g,
                    &rand(&mut rng, attention_backward_scratch_len(B, t, c), 7.0),
                );
                g.attention_forward(
                    &mut d_out.as_view_mut(),
                    &mut d_preatt.as_view_mut(),
                    &mut d_att.as_view_mut(),
                    &d_inp.as_view(),
                    B,
                    t,
                    c,
                    nh,
                    &mut scratch.as_view_mut(),
                )
                .unwrap();
                // preatt: one rounding of an fp32-accumulated product
                let got_pre = down_t(&g, &d_preatt);
                assert_close(
                    "attention bf16 preatt",
                    &got_pre,
                    &preatt,
                    1e-5,
                    BF16_U + 1e-5,
                );
                // att from the rounded preatt (each |d preatt| <= dpre): softmax's output moves by
                // a factor exp(+-2 dpre), <= 2.5 dpre relative for dpre < 0.1, then one rounding
                let dpre = BF16_U * max_abs(&preatt) + 1e-5;
                assert!(dpre < 0.1, "dpre {dpre}");
                let r_att = 2.5 * dpre + 1.1 * BF16_U;
                let got_att = down_t(&g, &d_att);
                assert_close("attention bf16 att", &got_att, &att, 1e-6, r_att);
                // out = att v: sum_j |d att_j| |v_j| <= r_att max|v| (a row of att sums to 1),
                // then one rounding
                let atol = r_att * max_abs(&inp) + 1e-5;
                let got_out = down_t(&g, &d_out);
                assert_close("attention bf16 out", &got_out, &out, atol, BF16_U + 1e-5);
                for row in 0..B * nh * t {
                    let ti = row % t;
                    let r = row * t..(row + 1) * t;
                    assert!(
                        got_pre[r.clone()][ti + 1..].iter().all(|&x| x == 0.0)
                            && got_att[r][ti + 1..].iter().all(|&x| x == 0.0),
                        "row {row}: not zero above the diagonal"
                    );
                }

                // The backward from the rounded att (what a bf16 forward stores).
                let att_bf = round_bf(&att);
                let dout = round_bf(&rand(&mut rng, B * t * c, 1.0));
                let dinp0 = round_bf(&rand(&mut rng, B * t * 3 * c, 1.0));
                let mut dinp = dinp0.clone();
                let (mut dpreatt, mut datt) = (vec![0.0; btt], vec![0.0; btt]);
                cpu::attention::attention_backward(
                    &mut dinp,
                    &mut dpreatt,
                    &mut datt,
                    &dout,
                    &inp,
                    &att_bf,
                    B,
                    t,
                    c,
                    nh,
                );
                let (d_dout, d_att_bf) = (up_t::<bf16>(&g, &dout), up_t::<bf16>(&g, &att_bf));
                let mut d_dinp = up_t::<bf16>(&g, &dinp0);
                let mut d_dpreatt = up_t::<bf16>(&g, &rand(&mut rng, btt, 7.0));
                let mut d_datt = up_t::<bf16>(&g, &rand(&mut rng, btt, 7.0));
                g.attention_backward(
                    &mut d_dinp.as_view_mut(),
                    &mut d_dpreatt.as_view_mut(),
                    &mut d_datt.as_view_mut(),
                    &d_dout.as_view(),
                    &d_inp.as_view(),
                    &d_att_bf.as_view(),
                    B,
                    t,
                    c,
                    nh,
                    &mut scratch.as_view_mut(),
                )
                .unwrap();
                // datt = dy v^T: one rounding of an fp32-accumulated product
                let got_datt = down_t(&g, &d_datt);
                assert_close("attention bf16 datt", &got_datt, &datt, 1e-5, BF16_U + 1e-5);
                // dpreatt = att (datt - dot) from the rounded datt (each off by <= e = U max|datt|,
                // so dot, a convex combination, too): |d| <= 2 e att <= 2 e, then one rounding
                let e = BF16_U * max_abs(&datt) + 1e-6;
                let got_dpre = down_t(&g, &d_dpreatt);
                assert_close(
                    "attention bf16 dpreatt",
                    &got_dpre,
                    &dpreatt,
                    2.0 * e + 1e-5,
                    BF16_U + 1e-5,
                );
                // dq = scale dpreatt k and dk = scale dpreatt^T q sum <= T products whose dpreatt
                // factor is off by <= 2 e + U |dpreatt|, each rounded (U |dq|, |dq| <= scale T
                // max|dpreatt| max|k|); dv = att^T dy (exact inputs) rounded once, |dv| <= T
                // max|dy|; then the accumulation into dinp rounds once more (the rtol). x1.25 for
                // the second-order terms and fp32's own error.
                let scale = 1.0 / ((c / nh) as f32).sqrt();
                let tf = t as f32;
                let atol = 1.25
                    * (tf * scale * max_abs(&inp) * (2.0 * e + 2.0 * BF16_U * max_abs(&dpreatt))
                        + BF16_U * tf * max_abs(&dout))
                    + 1e-5;
                let got_dinp = down_t(&g, &d_dinp);
                assert_close("attention bf16 dinp", &got_dinp, &dinp, atol, BF16_U + 1e-5);
            }
        }
    }
}
