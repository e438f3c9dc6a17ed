//! The cuBLASLt matmuls (`Gpu::matmul_forward_lt`, `matmul_forward_gelu_lt`, `matmul_backward_lt`,
//! `matmul_backward_dgelu_lt`) against the CPU twins `cpu::matmul::{matmul_forward,
//! matmul_backward}` and `cpu::gelu::{gelu_forward, gelu_backward}`, in fp32 (TF32 off: full fp32)
//! and bf16 (the CPU gets the same bf16-rounded inputs, widened to f32). Sizes: B=2, T=37
//! (B*T = 74, not a multiple of 8), (C, OC) = (64, 192) and (128, 256) (bf16 needs multiples of 8),
//! and B = T = 1 with (64, 192).
//! Gradient buffers start from random values, so "accumulates" and "overwrites" are both checked
//! (dinp both ways, through the `accumulate` flag). Every test here needs a GPU and is
//! `#[ignore = "needs a CUDA GPU"]`: run `cargo test --test gpu_matmul_lt -- --ignored` on one.
//! The shape and alignment rules that need no GPU are unit tests in `src/gpu/matmul_lt.rs`.
//!
//! Inputs: inp uniform in [-1, 1], weight in [-4/sqrt(C), 4/sqrt(C)], bias in [-0.5, 0.5], so that
//! the pre-activations spread over about [-4, 4], where GELU's tanh and erf forms differ most
//! (up to 4.7e-4, at |x| = 2.7).
//!
//! Tolerances, `|gpu - cpu| <= atol + rtol * |cpu|` elementwise:
//! - fp32 products (forward, dinp, dweight, dbias): atol 1e-4, rtol 1e-4, as tests/gpu_layers.rs's
//!   matmul: fp32 sums of K = 64..256 terms of size <= ~1 in another order.
//! - fp32 GELU epilogue: out_gelu against `cpu::gelu::gelu_forward` of the GPU's own pre_gelu,
//!   atol 1e-6, rtol 1e-5 (as the gelu kernel's test: an ulp or two of the exp/tanh), far below
//!   the tanh/erf difference: this is what pins down which GELU cuBLASLt computes.
//! - fp32 DGELU: dpre = gelu'(pre) * (dout . weight): the product's 1e-4 times |gelu'| <= 1.13,
//!   plus gelu' differences: atol 2e-4, rtol 2e-4.
//! - bf16: the GPU accumulates in fp32 and rounds each output once to bf16, whose significand has
//!   8 bits: half an ulp is at most 2^-8 relative (at a power of two: 1.0 and 1.0078125 are
//!   neighbours), so rtol 2^-8 and atol 1e-4 (the fp32 summation differences above, which do not
//!   shrink with |cpu| under cancellation and can move a value across a rounding boundary). The
//!   bf16 GELU output is checked against gelu(pre_gelu) with an extra 1.13 * 2^-8 * |pre| (the
//!   epilogue may apply GELU to the fp32 pre-activation, the CPU to its bf16 rounding, up to half
//!   an ulp away; |gelu'| <= 1.13).

mod common;

#[cfg(has_cuda)]
mod on_gpu {
    use super::common::*;
    use half::bf16;
    use train_gpt2_cuda::cpu;
    use train_gpt2_cuda::gpu::{DeviceFloat, Gpu};
    use train_gpt2_cuda::precision::Precision;
    use train_gpt2_cuda::rng::Rng;

    const B: usize = 2;
    const T: usize = 37;
    /// (B, T, C, OC); B*T = 1 too (the backward once returned early at B*T = 1 as at 0, and no test
    /// noticed).
    const SHAPES: [(usize, usize, usize, usize); 3] =
        [(B, T, 64, 192), (B, T, 128, 256), (1, 1, 64, 192)];

    /// The products' tolerance for precision F (see the file doc).
    fn product_tol<F: DeviceFloat>() -> (f32, f32) {
        match F::PRECISION {
            Precision::Fp32 => (1e-4, 1e-4),
            Precision::Bf16 => (1e-4, 1.0 / 256.0),
        }
    }

    #[track_caller]
    fn assert_product<F: DeviceFloat>(what: &str, got: &[f32], want: &[f32]) {
        let (atol, rtol) = product_tol::<F>();
        assert_within(what, got, want, |_, w| atol + rtol * w.abs());
    }

    fn forward<F: DeviceFloat>(g: &Gpu) {
        for (b, t, c, oc) in SHAPES {
            let n = b * t;
            let what = format!("{:?} C={c} OC={oc}", F::PRECISION);
            let mut rng = Rng::new(10 + c as u64 + oc as u64);
            let inp = round_to::<F>(&rand(&mut rng, n * c, 1.0));
            let weight = round_to::<F>(&rand(&mut rng, oc * c, 4.0 / (c as f32).sqrt()));
            let bias = round_to::<F>(&rand(&mut rng, oc, 0.5));
            let (d_inp, d_w, d_b) = (
                up_t::<F>(g, &inp),
                up_t::<F>(g, &weight),
                up_t::<F>(g, &bias),
            );

            for with_bias in [true, false] {
                let mut out = vec![0.0; n * oc];
                let bias_opt = with_bias.then_some(bias.as_slice());
                cpu::matmul::matmul_forward(&mut out, &inp, &weight, bias_opt, b, t, c, oc);
                // Start from garbage: the launcher overwrites.
                let mut d_out = up_t::<F>(g, &rand(&mut rng, n * oc, 3.0));
                let d_bias_view = d_b.as_view();
                g.matmul_forward_lt(
                    &mut d_out.as_view_mut(),
                    &d_inp.as_view(),
                    &d_w.as_view(),
                    with_bias.then_some(&d_bias_view),
                    b,
                    t,
                    c,
                    oc,
                )
                .unwrap();
                assert_product::<F>(
                    &format!("{what} bias={with_bias} out"),
                    &down_t(g, &d_out),
                    &out,
                );
            }

            // GELU-fused: pre_gelu is the biased product, out_gelu its GELU.
            let mut pre = vec![0.0; n * oc];
            cpu::matmul::matmul_forward(&mut pre, &inp, &weight, Some(&bias), b, t, c, oc);
            let mut d_out = up_t::<F>(g, &rand(&mut rng, n * oc, 3.0));
            let mut d_pre = up_t::<F>(g, &rand(&mut rng, n * oc, 3.0));
            g.matmul_forward_gelu_lt(
                &mut d_out.as_view_mut(),
                &mut d_pre.as_view_mut(),
                &d_inp.as_view(),
                &d_w.as_view(),
                &d_b.as_view(),
                b,
                t,
                c,
                oc,
            )
            .unwrap();
            let got_pre = down_t(g, &d_pre);
            assert_product::<F>(&format!("{what} pre_gelu"), &got_pre, &pre);
            let spread = got_pre.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(spread > 2.7, "{what}: pre-activations only reach {spread}");
            // The epilogue's GELU against the CPU's on the GPU's own pre-activations.
            let mut gelu_of_pre = vec![0.0; n * oc];
            cpu::gelu::gelu_forward(&mut gelu_of_pre, &got_pre);
            let got_out = down_t(g, &d_out);
            match F::PRECISION {
                Precision::Fp32 => assert_within(
                    &format!("{what} out_gelu vs gelu(pre_gelu)"),
                    &got_out,
                    &gelu_of_pre,
                    |_, w| 1e-6 + 1e-5 * w.abs(),
                ),
                Precision::Bf16 => assert_within(
                    &format!("{what} out_gelu vs gelu(pre_gelu)"),
                    &got_out,
                    &gelu_of_pre,
                    |i, w| 1e-6 + (w.abs() + 1.13 * got_pre[i].abs()) / 256.0,
                ),
            }
            // And against the CPU end to end.
            let mut out = vec![0.0; n * oc];
            cpu::gelu::gelu_forward(&mut out, &pre);
            let (atol, rtol) = product_tol::<F>();
            assert_within(&format!("{what} out_gelu"), &got_out, &out, |i, w| {
                atol + rtol * w.abs() + 1.13 * rtol * pre[i].abs()
            });
        }
    }

    fn backward<F: DeviceFloat>(g: &Gpu) {
        for (b, t, c, oc) in SHAPES {
            let n = b * t;
            let what = format!("{:?} C={c} OC={oc}", F::PRECISION);
            let mut rng = Rng::new(20 + c as u64 + oc as u64);
            let inp = round_to::<F>(&rand(&mut rng, n * c, 1.0));
            let weight = round_to::<F>(&rand(&mut rng, oc * c, 4.0 / (c as f32).sqrt()));
            let dout = round_to::<F>(&rand(&mut rng, n * oc, 1.0));
            let dinp0 = round_to::<F>(&rand(&mut rng, n * c, 1.0));
            let dw0 = round_to::<F>(&rand(&mut rng, oc * c, 1.0));
            let db0 = round_to::<F>(&rand(&mut rng, oc, 1.0));
            let (d_inp, d_w, d_dout) = (
                up_t::<F>(g, &inp),
                up_t::<F>(g, &weight),
                up_t::<F>(g, &dout),
            );

            for accumulate in [true, false] {
                // CPU: dinp accumulates onto dinp0, or onto zeros for the overwrite.
                let mut dinp = if accumulate {
                    dinp0.clone()
                } else {
                    vec![0.0; n * c]
                };
                let (mut dw, mut db) = (dw0.clone(), db0.clone());
                cpu::matmul::matmul_backward(
                    &mut dinp,
                    &mut dw,
                    Some(&mut db),
                    &dout,
                    &inp,
                    &weight,
                    b,
                    t,
                    c,
                    oc,
                );
                let mut d_dinp = up_t::<F>(g, &dinp0);
                let mut d_dw = up_t::<F>(g, &dw0);
                let mut d_db = up_t::<F>(g, &db0);
                g.matmul_backward_lt(
                    &mut d_dinp.as_view_mut(),
                    accumulate,
                    &mut d_dw.as_view_mut(),
                    Some(&mut d_db.as_view_mut()),
                    &d_dout.as_view(),
                    &d_inp.as_view(),
                    &d_w.as_view(),
                    b,
                    t,
                    c,
                    oc,
                )
                .unwrap();
                let w = format!("{what} accumulate={accumulate}");
                assert_product::<F>(&format!("{w} dinp"), &down_t(g, &d_dinp), &dinp);
                assert_product::<F>(&format!("{w} dweight"), &down_t(g, &d_dw), &dw);
                assert_product::<F>(&format!("{w} dbias"), &down_t(g, &d_db), &db);
            }

            // Without dbias: dweight still accumulates, and a second call adds again.
            let mut d_dinp = up_t::<F>(g, &dinp0);
            let mut d_dw = up_t::<F>(g, &dw0);
            for _ in 0..2 {
                g.matmul_backward_lt(
                    &mut d_dinp.as_view_mut(),
                    false,
                    &mut d_dw.as_view_mut(),
                    None,
                    &d_dout.as_view(),
                    &d_inp.as_view(),
                    &d_w.as_view(),
                    b,
                    t,
                    c,
                    oc,
                )
                .unwrap();
            }
            // The CPU rounds dweight to F after each call, as the GPU stores it.
            let (mut scratch, mut dw) = (vec![0.0; n * c], dw0.clone());
            for _ in 0..2 {
                cpu::matmul::matmul_backward(
                    &mut scratch,
                    &mut dw,
                    None,
                    &dout,
                    &inp,
                    &weight,
                    b,
                    t,
                    c,
                    oc,
                );
                dw = round_to::<F>(&dw);
            }
            let mut dinp = vec![0.0; n * c];
            cpu::matmul::matmul_backward(
                &mut dinp,
                &mut vec![0.0; oc * c],
                None,
                &dout,
                &inp,
                &weight,
                b,
                t,
                c,
                oc,
            );
            assert_product::<F>(&format!("{what} twice dweight"), &down_t(g, &d_dw), &dw);
            assert_product::<F>(
                &format!("{what} twice dinp (overwritten)"),
                &down_t(g, &d_dinp),
                &dinp,
            );
        }
    }

    fn backward_dgelu<F: DeviceFloat>(g: &Gpu) {
        // This matmul's input is gelu(pre) of C channels: (C, OC) = (4C', C') in GPT-2's MLP, but
        // any shape will do; C must be a multiple of 8 (the aux leading dimension).
        for (b, t, c, oc) in SHAPES {
            let n = b * t;
            let what = format!("{:?} C={c} OC={oc} dgelu", F::PRECISION);
            let mut rng = Rng::new(30 + c as u64 + oc as u64);
            let pre = round_to::<F>(&rand(&mut rng, n * c, 4.0));
            let mut inp = vec![0.0; n * c];
            cpu::gelu::gelu_forward(&mut inp, &pre);
            let inp = round_to::<F>(&inp);
            let weight = round_to::<F>(&rand(&mut rng, oc * c, 4.0 / (c as f32).sqrt()));
            let dout = round_to::<F>(&rand(&mut rng, n * oc, 1.0));
            let dw0 = round_to::<F>(&rand(&mut rng, oc * c, 1.0));
            let db0 = round_to::<F>(&rand(&mut rng, oc, 1.0));

            // CPU: dinp of the matmul (from zeros), then the GELU backward into zeros.
            let (mut dinp, mut dw, mut db) = (vec![0.0; n * c], dw0.clone(), db0.clone());
            cpu::matmul::matmul_backward(
                &mut dinp,
                &mut dw,
                Some(&mut db),
                &dout,
                &inp,
                &weight,
                b,
                t,
                c,
                oc,
            );
            let mut dpre = vec![0.0; n * c];
            cpu::gelu::gelu_backward(&mut dpre, &pre, &dinp);

            let (d_inp, d_w, d_dout) = (
                up_t::<F>(g, &inp),
                up_t::<F>(g, &weight),
                up_t::<F>(g, &dout),
            );
            let d_pre = up_t::<F>(g, &pre);
            // dpre starts from garbage: DGELU overwrites.
            let mut d_dpre = up_t::<F>(g, &rand(&mut rng, n * c, 1.0));
            let mut d_dw = up_t::<F>(g, &dw0);
            let mut d_db = up_t::<F>(g, &db0);
            g.matmul_backward_dgelu_lt(
                &mut d_dpre.as_view_mut(),
                &mut d_dw.as_view_mut(),
                Some(&mut d_db.as_view_mut()),
                &d_dout.as_view(),
                &d_inp.as_view(),
                &d_w.as_view(),
                &d_pre.as_view(),
                b,
                t,
                c,
                oc,
            )
            .unwrap();
            let (atol, rtol) = match F::PRECISION {
                Precision::Fp32 => (2e-4, 2e-4),
                Precision::Bf16 => product_tol::<F>(),
            };
            assert_within(
                &format!("{what} dpre"),
                &down_t(g, &d_dpre),
                &dpre,
                |_, w| atol + rtol * w.abs(),
            );
            assert_product::<F>(&format!("{what} dweight"), &down_t(g, &d_dw), &dw);
            assert_product::<F>(&format!("{what} dbias"), &down_t(g, &d_db), &db);
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_forward_lt_matches_cpu_fp32() {
        let g = gpu();
        assert!(!g.tf32(), "TF32 must be off for the fp32 comparison");
        forward::<f32>(&g);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_forward_lt_matches_cpu_bf16() {
        forward::<bf16>(&gpu());
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_backward_lt_matches_cpu_fp32() {
        backward::<f32>(&gpu());
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_backward_lt_matches_cpu_bf16() {
        backward::<bf16>(&gpu());
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_backward_dgelu_lt_matches_cpu_fp32() {
        backward_dgelu::<f32>(&gpu());
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_backward_dgelu_lt_matches_cpu_bf16() {
        backward_dgelu::<bf16>(&gpu());
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_lt_rejects_bad_shapes_and_alignment() {
        let g = gpu();
        let (c, oc) = (64, 131);
        let n = B * T;
        let inp = g.zeros::<f32>(n * c + 1).unwrap();
        let w = g.zeros::<f32>(oc * c).unwrap();
        let bias = g.zeros::<f32>(oc).unwrap();
        let mut out = g.zeros::<f32>(n * oc).unwrap();
        let mut pre = g.zeros::<f32>(n * oc).unwrap();
        // Wrong length.
        let e = g
            .matmul_forward_lt(
                &mut out.as_view_mut(),
                &inp.as_view(),
                &w.as_view(),
                None,
                B,
                T,
                c,
                oc,
            )
            .unwrap_err();
        assert!(
            format!("{e}").starts_with("matmul_forward_lt: inp has 4737 elements"),
            "{e}"
        );
        // Misaligned view (one float in).
        let e = g
            .matmul_forward_lt(
                &mut out.as_view_mut(),
                &inp.slice(1..),
                &w.as_view(),
                None,
                B,
                T,
                c,
                oc,
            )
            .unwrap_err();
        assert!(
            format!("{e}").starts_with("matmul_forward_lt: inp is not 16-byte aligned"),
            "{e}"
        );
        // And the aligned, right-length view works (fp32 takes OC = 131 without an epilogue aux).
        g.matmul_forward_lt(
            &mut out.as_view_mut(),
            &inp.slice(..n * c),
            &w.as_view(),
            Some(&bias.as_view()),
            B,
            T,
            c,
            oc,
        )
        .unwrap();
        // GELU aux leading dimension OC = 131.
        let e = g
            .matmul_forward_gelu_lt(
                &mut out.as_view_mut(),
                &mut pre.as_view_mut(),
                &inp.slice(..n * c),
                &w.as_view(),
                &bias.as_view(),
                B,
                T,
                c,
                oc,
            )
            .unwrap_err();
        assert!(
            format!("{e}").contains("aux leading dimension (OC = 131) must be a multiple of 8"),
            "{e}"
        );
        // bf16 with OC not a multiple of 8.
        let inp16 = g.zeros::<bf16>(n * c).unwrap();
        let w16 = g.zeros::<bf16>(oc * c).unwrap();
        let mut out16 = g.zeros::<bf16>(n * oc).unwrap();
        let e = g
            .matmul_forward_lt(
                &mut out16.as_view_mut(),
                &inp16.as_view(),
                &w16.as_view(),
                None,
                B,
                T,
                c,
                oc,
            )
            .unwrap_err();
        assert!(
            format!("{e}").contains("in bf16 OC must be a multiple of 8"),
            "{e}"
        );
    }
}
