//! The GPU flash attention (`Gpu::flash_attention_forward/backward`, kernels/flash_attention.cu)
//! against its CPU twin (`cpu::flash_attention`), fp32 and bf16, HS 64 and 128, T in {1, 17, 100,
//! 257} (not multiples of the 64-row tiles), B = 2, NH = 2, and both bf16 HS 64 forwards (16 and
//! 32 queries a warp); accumulation into a pre-filled dqkv,
//! bitwise determinism of two runs, each row's own maximum at scores hundreds apart or all far
//! below 0, and the errors. Every GPU test is
//! `#[ignore = "needs a CUDA GPU"]`: run them with
//! `cargo test --test gpu_flash_attention -- --ignored` on a machine with one.
//!
//! Inputs are uniform in [-1.5, 1.5) (qkv) and [-1, 1) (dout, the pre-filled dqkv). Tolerances,
//! `|gpu - cpu| <= atol + rtol |cpu|` elementwise:
//! - fp32 (plain FMA on the GPU, the same algorithm, sums in another order): out and lse
//!   1e-5 + 1e-5 relative; dqkv 2e-5 + 1e-4 relative (as the plain attention's dinp: sums of up
//!   to 257 terms of O(1)).
//! - bf16, u = 2^-8 (bf16's unit roundoff): the inputs are bf16 on both sides (the CPU gets them
//!   widened exactly), the products of bf16 values are exact and accumulate in fp32, so the
//!   differences come from the GPU's roundings to bf16:
//!   - out: P is rounded to bf16 before P V (relative u on each term of sum p v / l, at most
//!     u max|v| = 1.5u in all) and out is rounded once (u |out|): atol 2u, rtol 2u.
//!   - lse: fp32 from exact products, not rounded to bf16: as fp32, 2e-5 + 1e-5 relative.
//!   - dqkv: the CPU backward gets the GPU's out and lse (so D = rowsum(dout out) is the same);
//!     P (for dV) and dS (for dQ, dK) are rounded to bf16 before their products (relative u per
//!     term, over sums whose sum of |terms| S is a few units here: the causal probabilities of a
//!     key summed over the queries grow like ln T, ~6 at T = 257), then dqkv0 + g is rounded once
//!     (u |result|): atol 8u, rtol 2u.

mod common;
#[cfg(has_cuda)]
mod flash_scores;

#[cfg(has_cuda)]
mod on_gpu {
    use super::common::*;
    use super::flash_scores::{Scores, FAR_FP32_OUT};
    use half::bf16;
    use train_gpt2_cuda::cpu::flash_attention::{
        flash_attention_backward, flash_attention_forward,
    };
    use train_gpt2_cuda::gpu::float::{to_device_float, to_f32_vec};
    use train_gpt2_cuda::gpu::launch::FlashQueries;
    use train_gpt2_cuda::gpu::{
        flash_attention_backward_scratch_len, DeviceFloat, Gpu, FLASH_ATTENTION_HEAD_SIZES,
    };
    use train_gpt2_cuda::rng::Rng;

    const B: usize = 2;
    const NH: usize = 2;
    const TS: [usize; 4] = [1, 17, 100, 257];
    /// Tolerances (atol, rtol) of out, lse and dqkv for T.
    struct Tol {
        out: (f32, f32),
        lse: (f32, f32),
        dqkv: (f32, f32),
    }

    fn tolerances<T: DeviceFloat>() -> Tol {
        if T::PRECISION == train_gpt2_cuda::precision::Precision::Bf16 {
            Tol {
                out: (2.0 * BF16_U, 2.0 * BF16_U),
                lse: (2e-5, 1e-5),
                dqkv: (8.0 * BF16_U, 2.0 * BF16_U),
            }
        } else {
            Tol {
                out: (1e-5, 1e-5),
                lse: (1e-5, 1e-5),
                dqkv: (2e-5, 1e-4),
            }
        }
    }

    /// Forward and backward of one shape against the CPU twin; the backward twice, bitwise.
    /// At scores other than the usual ones, the forward alone (see `Scores`).
    fn check<T: DeviceFloat>(g: &Gpu, hs: usize, t: usize, scores: Scores) {
        let c = NH * hs;
        let mut tol = tolerances::<T>();
        if scores != Scores::Usual && T::PRECISION == train_gpt2_cuda::precision::Precision::Fp32 {
            tol.out = FAR_FP32_OUT;
        }
        let name = format!(
            "{:?} HS={hs} T={t} {scores:?} (forward {:?})",
            T::PRECISION,
            g.flash_queries()
        );
        let mut rng = Rng::new(1000 + hs as u64 * 7 + t as u64);
        let mut qkv = rand(&mut rng, B * t * 3 * c, 1.5);
        scores.apply(&mut qkv, t, c);
        let qkv = round_to::<T>(&qkv);
        let dout = round_to::<T>(&rand(&mut rng, B * t * c, 1.0));
        let dqkv0 = round_to::<T>(&rand(&mut rng, B * t * 3 * c, 1.0));

        let (mut out, mut lse) = (vec![0.0; B * t * c], vec![0.0; B * NH * t]);
        flash_attention_forward(&mut out, &mut lse, &qkv, B, t, c, NH);

        let d_qkv = g.upload(&to_device_float::<T>(&qkv)).unwrap();
        // garbage in the outputs: the forward must write every element
        let mut d_out = g
            .upload(&to_device_float::<T>(&rand(&mut rng, B * t * c, 9.0)))
            .unwrap();
        let mut d_lse = g.upload(&rand(&mut rng, B * NH * t, 9.0)).unwrap();
        g.flash_attention_forward(
            &mut d_out.as_view_mut(),
            &mut d_lse.as_view_mut(),
            &d_qkv.as_view(),
            B,
            t,
            c,
            NH,
        )
        .unwrap();
        let g_out = to_f32_vec(&g.download(&d_out).unwrap());
        let g_lse = g.download(&d_lse).unwrap();
        assert_close(&format!("{name} out"), &g_out, &out, tol.out.0, tol.out.1);
        assert_close(&format!("{name} lse"), &g_lse, &lse, tol.lse.0, tol.lse.1);
        if scores != Scores::Usual {
            return;
        }

        // The CPU backward from the GPU's out and lse (see the file comment).
        let mut dqkv = dqkv0.clone();
        flash_attention_backward(&mut dqkv, &dout, &qkv, &g_out, &g_lse, B, t, c, NH);
        let d_dout = g.upload(&to_device_float::<T>(&dout)).unwrap();
        let mut scratch = g
            .upload(&rand(
                &mut rng,
                flash_attention_backward_scratch_len(B, t, c, NH),
                9.0,
            ))
            .unwrap();
        let mut first: Option<Vec<f32>> = None;
        for run in 0..2 {
            // pre-filled: the backward accumulates
            let mut d_dqkv = g.upload(&to_device_float::<T>(&dqkv0)).unwrap();
            g.flash_attention_backward(
                &mut d_dqkv.as_view_mut(),
                &d_dout.as_view(),
                &d_qkv.as_view(),
                &d_out.as_view(),
                &d_lse.as_view(),
                B,
                t,
                c,
                NH,
                &mut scratch.as_view_mut(),
            )
            .unwrap();
            let got = to_f32_vec(&g.download(&d_dqkv).unwrap());
            match &first {
                None => {
                    assert_close(&format!("{name} dqkv"), &got, &dqkv, tol.dqkv.0, tol.dqkv.1);
                    first = Some(got);
                }
                Some(f) => assert_bitwise(&format!("{name} dqkv, run {run}"), &got, f),
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fp32_matches_cpu() {
        let g = gpu();
        for hs in FLASH_ATTENTION_HEAD_SIZES {
            for t in TS {
                check::<f32>(&g, hs, t, Scores::Usual);
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn bf16_matches_cpu() {
        check_bf16_forwards(&mut gpu(), Scores::Usual);
    }

    /// `check` in bf16 of every shape with the forward of 16 queries a warp, then (HS 64 only:
    /// the others have no variant) 32.
    fn check_bf16_forwards(g: &mut Gpu, scores: Scores) {
        g.set_flash_queries(FlashQueries::Q16);
        for hs in FLASH_ATTENTION_HEAD_SIZES {
            for t in TS {
                check::<bf16>(g, hs, t, scores);
            }
        }
        g.set_flash_queries(FlashQueries::Q32);
        for t in TS {
            check::<bf16>(g, 64, t, scores);
        }
    }

    /// Scores in the hundreds, whose rows' maxima differ by about as much, and rows whose every
    /// score is far below 0 (see `Scores`; the GPU twin of tests/emulated_kernels.rs's
    /// `flash_attention_keeps_each_row_s_own_maximum`). The forward alone.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn each_row_keeps_its_own_maximum() {
        let mut g = gpu();
        for scores in [Scores::Sharp(100.0), Scores::FarBelowZero(4.0)] {
            for hs in FLASH_ATTENTION_HEAD_SIZES {
                for t in TS {
                    check::<f32>(&g, hs, t, scores);
                }
            }
            check_bf16_forwards(&mut g, scores);
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn forward_is_deterministic() {
        let g = gpu();
        let (t, c) = (257, NH * 64);
        let mut rng = Rng::new(5);
        let qkv = to_device_float::<bf16>(&rand(&mut rng, B * t * 3 * c, 1.5));
        let d_qkv = g.upload(&qkv).unwrap();
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut d_out = g.zeros::<bf16>(B * t * c).unwrap();
            let mut d_lse = g.zeros::<f32>(B * NH * t).unwrap();
            g.flash_attention_forward(
                &mut d_out.as_view_mut(),
                &mut d_lse.as_view_mut(),
                &d_qkv.as_view(),
                B,
                t,
                c,
                NH,
            )
            .unwrap();
            let mut v = to_f32_vec(&g.download(&d_out).unwrap());
            v.extend(g.download(&d_lse).unwrap());
            runs.push(v);
        }
        assert_bitwise("forward out and lse", &runs[0], &runs[1]);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn errors_name_the_kernel() {
        let g = gpu();
        let (b, t) = (1, 3);
        // HS = 32: not compiled
        let (c, nh) = (64, 2);
        let qkv = g.zeros::<f32>(b * t * 3 * c).unwrap();
        let mut out = g.zeros::<f32>(b * t * c).unwrap();
        let mut lse = g.zeros::<f32>(b * nh * t).unwrap();
        let e = g
            .flash_attention_forward(
                &mut out.as_view_mut(),
                &mut lse.as_view_mut(),
                &qkv.as_view(),
                b,
                t,
                c,
                nh,
            )
            .unwrap_err();
        let msg = format!("{e}");
        assert!(
            msg.starts_with("flash_attention_forward") && msg.contains("HS = C/NH = 64/2 = 32"),
            "{msg}"
        );
        let mut dqkv = g.zeros::<f32>(b * t * 3 * c).unwrap();
        let mut scratch = g.zeros::<f32>(b * nh * t).unwrap();
        let e = g
            .flash_attention_backward(
                &mut dqkv.as_view_mut(),
                &out.as_view(),
                &qkv.as_view(),
                &out.as_view(),
                &lse.as_view(),
                b,
                t,
                c,
                nh,
                &mut scratch.as_view_mut(),
            )
            .unwrap_err();
        assert!(
            format!("{e}").starts_with("flash_attention_backward: head size"),
            "{e}"
        );
        // C not divisible by NH
        let e = g
            .flash_attention_forward(
                &mut out.as_view_mut(),
                &mut lse.as_view_mut(),
                &qkv.as_view(),
                b,
                t,
                c,
                3,
            )
            .unwrap_err();
        assert!(format!("{e}").contains("not divisible by NH = 3"), "{e}");
        // HS = 64, wrong lse length; too little scratch; misaligned qkv
        let (c, nh) = (128, 2);
        let qkv = g.zeros::<f32>(b * t * 3 * c + 1).unwrap();
        let mut out = g.zeros::<f32>(b * t * c).unwrap();
        let mut lse = g.zeros::<f32>(b * nh * t).unwrap();
        let n3 = b * t * 3 * c;
        let e = g
            .flash_attention_forward(
                &mut out.as_view_mut(),
                &mut lse.slice_mut(1..),
                &qkv.slice(0..n3),
                b,
                t,
                c,
                nh,
            )
            .unwrap_err();
        assert!(format!("{e}").contains("lse has 5 elements"), "{e}");
        let e = g
            .flash_attention_forward(
                &mut out.as_view_mut(),
                &mut lse.as_view_mut(),
                &qkv.slice(1..),
                b,
                t,
                c,
                nh,
            )
            .unwrap_err();
        assert!(format!("{e}").contains("qkv is not 16-byte aligned"), "{e}");
        let mut dqkv = g.zeros::<f32>(n3).unwrap();
        let mut scratch = g.zeros::<f32>(b * nh * t - 1).unwrap();
        let e = g
            .flash_attention_backward(
                &mut dqkv.as_view_mut(),
                &out.as_view(),
                &qkv.slice(0..n3),
                &out.as_view(),
                &lse.as_view(),
                b,
                t,
                c,
                nh,
                &mut scratch.as_view_mut(),
            )
            .unwrap_err();
        assert!(format!("{e}").contains("scratch has 5 elements"), "{e}");
        // B*T == 0: nothing to do
        let mut empty = g.zeros::<f32>(1).unwrap();
        let mut empty2 = g.zeros::<f32>(1).unwrap();
        g.flash_attention_forward(
            &mut empty.slice_mut(0..0),
            &mut empty2.slice_mut(0..0),
            &qkv.slice(0..0),
            0,
            t,
            c,
            nh,
        )
        .unwrap();
        g.synchronize().unwrap();
    }
}
