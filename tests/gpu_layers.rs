//! The GPU launchers against their CPU twins (`cpu::*`, the reference), on the same random inputs
//! of awkward sizes: B=3, T=1 and T=37, C=72 and 100 (not multiples of 32; matmul also C=1), NH=3
//! and 4, OC=131, V=101 with Vp=128. Gradient buffers start from random values, not zeros, so
//! that "accumulates" (+=) and "overwrites" are both checked. Every GPU test is `#[ignore = "needs
//! a CUDA GPU"]`: run them with `cargo test --test gpu_layers -- --ignored` on a machine with one.
//!
//! Each kernel family (encoder, layernorm, matmul, attention, gelu, residual, classifier) is one
//! function generic over the storage type `T: DeviceFloat` (`*_case::<T>`), called by an fp32 test
//! and a bf16 test (the one with `bf16` in its name; residual's runs both). Inputs pass through
//! `round_to::<T>` (the identity for f32) and a bound "the fp32 tolerance plus one rounding" is
//! written `rtol + unit::<T>()` (0 for f32, U below for bf16), so the fp32 tests keep exactly the
//! fp32 tolerances below. What else the precisions do differently is in the arguments: seeds,
//! channel sizes (bf16 adds C=64 and, for layernorm, 768, multiples of 8, to encoder and layernorm;
//! fp32 layernorm adds C=37, not a multiple of 4), misaligned views (bf16 gelu; layernorm in both),
//! the runs of the encoder backward, and the checks only bf16 makes.
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
//! global norm) are run twice and must agree bitwise (dwte and dwpe in the fp32 test only).
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

mod common;
#[cfg(has_cuda)]
mod tolerance;

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
    use super::common::*;
    use half::bf16;
    use train_gpt2_cuda::cpu;
    use train_gpt2_cuda::gpu::{
        attention_backward_scratch_len, attention_forward_scratch_len, CudaSlice, DeviceFloat, Gpu,
    };
    use train_gpt2_cuda::precision::{round_bf16_stochastic, rounding_bits, Precision};
    use train_gpt2_cuda::rng::Rng;

    const B: usize = 3;
    const TS: [usize; 2] = [1, 37];

    /// The device's memory pool keeps what the stream frees (the launchers' scratch) for the next
    /// step: its release threshold is the largest, not the default 0 (which gives it back to the
    /// system at every synchronize).
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn the_memory_pool_keeps_freed_memory() {
        use cudarc::driver::sys;
        let _gpu = Gpu::new().unwrap();
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes device 0's default pool into `pool`; then reads a u64 attribute of it.
        let threshold = unsafe {
            assert_eq!(
                sys::cuDeviceGetDefaultMemPool(&mut pool, 0),
                sys::CUresult::CUDA_SUCCESS
            );
            let mut v = 0u64;
            let rc = sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut v as *mut u64).cast(),
            );
            assert_eq!(rc, sys::CUresult::CUDA_SUCCESS);
            v
        };
        assert_eq!(threshold, u64::MAX);
    }

    fn up(g: &Gpu, x: &[f32]) -> CudaSlice<f32> {
        g.upload(x).unwrap()
    }

    fn down(g: &Gpu, x: &CudaSlice<f32>) -> Vec<f32> {
        g.download(x).unwrap()
    }

    /// What one rounding to T adds to a relative tolerance: 0 for f32, BF16_U for bf16. The bounds
    /// that are "the fp32 tolerance plus one rounding" are `rtol_fp32 + unit::<T>()`.
    fn unit<T: DeviceFloat>() -> f32 {
        match T::PRECISION {
            Precision::Fp32 => 0.0,
            Precision::Bf16 => BF16_U,
        }
    }

    /// `what` labelled with T's precision: "layernorm out" in f32, "layernorm bf16 out" in bf16.
    fn label<T: DeviceFloat>(family: &str, what: &str) -> String {
        match T::PRECISION {
            Precision::Fp32 => format!("{family} {what}"),
            Precision::Bf16 => format!("{family} bf16 {what}"),
        }
    }

    /// x after `offset` zeros: a view starting `offset` elements into the buffer holds x.
    fn padded(offset: usize, x: &[f32]) -> Vec<f32> {
        let mut p = vec![0.0; offset];
        p.extend_from_slice(x);
        p
    }

    /// The largest |x| (0 for an empty slice).
    fn max_abs(x: &[f32]) -> f32 {
        x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
    }

    // ---- encoder -----------------------------------------------------------------------------

    /// Encoder forward and backward in T, for t in TS and c in `cs`, with inputs rounded to T:
    /// bitwise the CPU's fp32 result rounded once to T (in f32: the CPU's result). The backward
    /// runs `runs` times from the same starting gradients, each bitwise (so also deterministic).
    fn encoder_case<T: DeviceFloat>(g: &Gpu, cs: &[usize], seed0: u64, runs: usize) {
        let (vp, maxt) = (128, 40);
        for t in TS {
            for &c in cs {
                let mut rng = Rng::new(seed0 + t as u64 * c as u64);
                // Few distinct tokens so that buckets hold many positions.
                let inp: Vec<u32> = (0..B * t).map(|_| rng.below(13) as u32 * 9).collect();
                let wte = round_to::<T>(&rand(&mut rng, vp * c, 1.0));
                let wpe = round_to::<T>(&rand(&mut rng, maxt * c, 1.0));
                let mut out = vec![0.0; B * t * c];
                cpu::encoder::encoder_forward(&mut out, &inp, &wte, &wpe, B, t, c);
                let d_inp = g.upload(&inp).unwrap();
                let (d_wte, d_wpe) = (up_t::<T>(g, &wte), up_t::<T>(g, &wpe));
                let mut d_out = g.zeros::<T>(B * t * c).unwrap();
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
                let what = label::<T>("encoder_forward", "out");
                assert_bitwise(&what, &down_t(g, &d_out), &round_to::<T>(&out));

                let dout = round_to::<T>(&rand(&mut rng, B * t * c, 1.0));
                let dwte0 = round_to::<T>(&rand(&mut rng, vp * c, 1.0));
                let dwpe0 = round_to::<T>(&rand(&mut rng, maxt * c, 1.0));
                let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
                cpu::encoder::encoder_backward(&mut dwte, &mut dwpe, &dout, &inp, B, t, c);
                let (dwte, dwpe) = (round_to::<T>(&dwte), round_to::<T>(&dwpe));
                let d_dout = up_t::<T>(g, &dout);
                for run in 0..runs {
                    let (mut d_dwte, mut d_dwpe) = (up_t::<T>(g, &dwte0), up_t::<T>(g, &dwpe0));
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
                    let what = |x: &str| label::<T>(x, &format!("run {run}"));
                    assert_bitwise(&what("dwte"), &down_t(g, &d_dwte), &dwte);
                    assert_bitwise(&what("dwpe"), &down_t(g, &d_dwpe), &dwpe);
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn encoder_matches_cpu_bitwise() {
        encoder_case::<f32>(&gpu(), &[72, 100], 1, 2);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn encoder_bf16_is_the_cpu_result_rounded_once() {
        encoder_case::<bf16>(&gpu(), &[72, 100, 64], 1000, 1);
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

    // ---- layernorm ---------------------------------------------------------------------------

    /// Layernorm forward and backward in T (mean and rstd stay f32), for t in TS and c in `cs`, with
    /// inputs rounded to T, inp and dinp views starting `offset` elements into their buffers
    /// (offset 0 and C a multiple of the pack: the packed paths of the output pass, dinp and the
    /// parameter gradients' first stage; offset 1 or another C: the scalar ones). The backward
    /// runs twice: dweight/dbias (reductions without atomics) must agree bitwise.
    fn layernorm_case<T: DeviceFloat>(g: &Gpu, cs: &[usize], seed0: u64, offset: usize) {
        let u = unit::<T>();
        for t in TS {
            for &c in cs {
                let what = |x: &str| {
                    label::<T>("layernorm", &format!("{x} (C={c} T={t} offset {offset})"))
                };
                let n = B * t;
                let mut rng = Rng::new(seed0 + n as u64 + c as u64);
                // An offset mean and a spread so that mean and rstd matter.
                let inp: Vec<f32> = rand(&mut rng, n * c, 2.0).iter().map(|x| x + 0.5).collect();
                let inp = round_to::<T>(&inp);
                let weight = round_to::<T>(&rand(&mut rng, c, 1.0));
                let bias = round_to::<T>(&rand(&mut rng, c, 1.0));
                let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
                cpu::layernorm::layernorm_forward(
                    &mut out, &mut mean, &mut rstd, &inp, &weight, &bias, B, t, c,
                );
                let (d_inp, d_w, d_b) = (
                    up_t::<T>(g, &padded(offset, &inp)),
                    up_t::<T>(g, &weight),
                    up_t::<T>(g, &bias),
                );
                let mut d_out = g.zeros::<T>(n * c).unwrap();
                let mut d_mean = g.zeros::<f32>(n).unwrap();
                let mut d_rstd = g.zeros::<f32>(n).unwrap();
                g.layernorm_forward(
                    &mut d_out.as_view_mut(),
                    &mut d_mean.as_view_mut(),
                    &mut d_rstd.as_view_mut(),
                    &d_inp.slice(offset..),
                    &d_w.as_view(),
                    &d_b.as_view(),
                    B,
                    t,
                    c,
                )
                .unwrap();
                // out: the fp32 tolerance plus one rounding to T; mean and rstd are f32 from the
                // same inputs in either precision: the fp32 tolerances
                assert_close(&what("out"), &down_t(g, &d_out), &out, 1e-5, u + 1e-5);
                assert_close(&what("mean"), &down(g, &d_mean), &mean, 1e-6, 1e-5);
                assert_close(&what("rstd"), &down(g, &d_rstd), &rstd, 1e-6, 1e-5);

                let dout = round_to::<T>(&rand(&mut rng, n * c, 1.0));
                let dinp0 = round_to::<T>(&rand(&mut rng, n * c, 1.0));
                let dw0 = round_to::<T>(&rand(&mut rng, c, 1.0));
                let db0 = round_to::<T>(&rand(&mut rng, c, 1.0));
                let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
                cpu::layernorm::layernorm_backward(
                    &mut dinp, &mut dw, &mut db, &dout, &inp, &weight, &mean, &rstd, B, t, c,
                );
                let d_dout = up_t::<T>(g, &dout);
                let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
                for _run in 0..2 {
                    let mut d_dinp = up_t::<T>(g, &padded(offset, &dinp0));
                    let mut d_dw = up_t::<T>(g, &dw0);
                    let mut d_db = up_t::<T>(g, &db0);
                    g.layernorm_backward(
                        &mut d_dinp.slice_mut(offset..),
                        &mut d_dw.as_view_mut(),
                        &mut d_db.as_view_mut(),
                        &d_dout.as_view(),
                        &d_inp.slice(offset..),
                        &d_w.as_view(),
                        &d_mean.as_view(),
                        &d_rstd.as_view(),
                        B,
                        t,
                        c,
                    )
                    .unwrap();
                    // the fp32 tolerances plus one rounding to T
                    let got = down_t(g, &d_dinp);
                    assert_close(&what("dinp"), &got[offset..], &dinp, 1e-5, u + 1e-5);
                    // dweight/dbias sum B*T = up to 111 terms of size ~1.
                    let (gw, gb) = (down_t(g, &d_dw), down_t(g, &d_db));
                    assert_close(&what("dweight"), &gw, &dw, 2e-5, u + 1e-5);
                    assert_close(&what("dbias"), &gb, &db, 2e-5, u + 1e-5);
                    match &first {
                        None => first = Some((gw, gb)),
                        Some((w1, b1)) => {
                            assert_bitwise(&what("dweight, second run"), &gw, w1);
                            assert_bitwise(&what("dbias, second run"), &gb, b1);
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn layernorm_matches_cpu() {
        let g = gpu();
        // 72, 100: multiples of 4 (the packed paths); 37 and the misaligned views: the scalar ones
        layernorm_case::<f32>(&g, &[72, 100, 37], 100, 0);
        layernorm_case::<f32>(&g, &[72], 101, 1);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn layernorm_bf16_matches_cpu() {
        let g = gpu();
        // 72, 64 and 768: multiples of 8 (the packed paths); 100 and the misaligned views: the
        // scalar ones
        layernorm_case::<bf16>(&g, &[72, 100, 64, 768], 1100, 0);
        layernorm_case::<bf16>(&g, &[64], 1101, 1);
    }

    // ---- matmul ------------------------------------------------------------------------------

    /// Matmul forward and backward in T (cuBLAS, TF32 off), with and without a bias, inputs
    /// rounded to T. The backward runs twice: dbias (a reduction without atomics) must agree
    /// bitwise.
    fn matmul_case<T: DeviceFloat>(g: &Gpu, seed0: u64) {
        let u = unit::<T>();
        let what = |x: &str| label::<T>("matmul", x);
        let oc = 131;
        // C = 1 too: a product over one channel (a backward that returned early at C = 1, as it
        // does at C = 0, failed no test before)
        for t in TS {
            for c in [72, 100, 1] {
                for with_bias in [true, false] {
                    let n = B * t;
                    let mut rng = Rng::new(seed0 + n as u64 + c as u64);
                    let inp = round_to::<T>(&rand(&mut rng, n * c, 1.0));
                    let weight = round_to::<T>(&rand(&mut rng, oc * c, 1.0));
                    let bias = round_to::<T>(&rand(&mut rng, oc, 1.0));
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
                    let d_inp = up_t::<T>(g, &inp);
                    let (d_w, d_bias) = (up_t::<T>(g, &weight), up_t::<T>(g, &bias));
                    let d_bias_view = d_bias.as_view();
                    let mut d_out = up_t::<T>(g, &rand(&mut rng, n * oc, 9.0)); // overwritten
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
                    // fp32: 1e-4, 1e-4. In T, the product is rounded (<= u (|out| + |bias|),
                    // |bias| <= 1), then the bias added and rounded again (<= u |out|).
                    let got = down_t(g, &d_out);
                    assert_close(&what("out"), &got, &out, u + 1e-4, 2.0 * u + 1e-4);

                    let dout = round_to::<T>(&rand(&mut rng, n * oc, 1.0));
                    let dinp0 = round_to::<T>(&rand(&mut rng, n * c, 1.0));
                    let dw0 = round_to::<T>(&rand(&mut rng, oc * c, 1.0));
                    let db0 = round_to::<T>(&rand(&mut rng, oc, 1.0));
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
                    let d_dout = up_t::<T>(g, &dout);
                    let mut first_db: Option<Vec<f32>> = None;
                    for _run in 0..2 {
                        let mut d_dinp = up_t::<T>(g, &dinp0);
                        let mut d_dw = up_t::<T>(g, &dw0);
                        let mut d_db = up_t::<T>(g, &db0);
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
                        // old + product in fp32, rounded once to T
                        let (gi, gw) = (down_t(g, &d_dinp), down_t(g, &d_dw));
                        assert_close(&what("dinp"), &gi, &dinp, 1e-4, u + 1e-4);
                        assert_close(&what("dweight"), &gw, &dw, 1e-4, u + 1e-4);
                        let gdb = down_t(g, &d_db);
                        // Without a bias the dbias buffer must be untouched (db == db0 then).
                        assert_close(&what("dbias"), &gdb, &db, 1e-4, u + 1e-4);
                        match &first_db {
                            None => first_db = Some(gdb),
                            Some(f) => assert_bitwise(&what("dbias, second run"), &gdb, f),
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_matches_cpu() {
        matmul_case::<f32>(&gpu(), 200);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn matmul_bf16_matches_cpu() {
        matmul_case::<bf16>(&gpu(), 1200);
    }

    // ---- attention ---------------------------------------------------------------------------

    /// Attention forward and backward in T with inputs rounded to T; the backward from att rounded
    /// to T (what a forward in T stores). The two precisions differ, besides the tolerances, in
    /// `random_cpu_outputs` (the CPU's preatt, att, dpreatt and datt start from values drawn from
    /// the rng, which moves the draws that follow; else zeros) and `zeros_above_diagonal` (the
    /// GPU's preatt and att above the diagonal must be exactly 0).
    fn attention_case<T: DeviceFloat>(
        g: &Gpu,
        seed0: u64,
        random_cpu_outputs: bool,
        zeros_above_diagonal: bool,
    ) {
        let u = unit::<T>();
        let what = |x: &str| label::<T>("attention", x);
        for t in TS {
            for (c, nh) in [(72, 3), (100, 4)] {
                let mut rng = Rng::new(seed0 + t as u64 + c as u64);
                let btt = B * nh * t * t;
                let cpu_start = |rng: &mut Rng| {
                    if random_cpu_outputs {
                        rand(rng, btt, 1.0)
                    } else {
                        vec![0.0; btt]
                    }
                };
                let inp = round_to::<T>(&rand(&mut rng, B * t * 3 * c, 1.5));
                let mut out = vec![0.0; B * t * c];
                let (mut preatt, mut att) = (cpu_start(&mut rng), cpu_start(&mut rng));
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
                let d_inp = up_t::<T>(g, &inp);
                let mut d_out = g.zeros::<T>(B * t * c).unwrap();
                // Garbage in preatt/att and the scratch: the launcher must overwrite all of it.
                let mut d_preatt = up_t::<T>(g, &rand(&mut rng, btt, 7.0));
                let mut d_att = up_t::<T>(g, &rand(&mut rng, btt, 7.0));
                let mut scratch = up_t::<T>(
                    g,
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
                // preatt: the fp32 tolerance plus one rounding (of an fp32-accumulated product)
                let got_pre = down_t(g, &d_preatt);
                assert_close(&what("preatt"), &got_pre, &preatt, 1e-5, u + 1e-5);
                // (rtol of att, atol of out)
                let (r_att, out_atol) = match T::PRECISION {
                    Precision::Fp32 => (1e-5, 1e-5),
                    Precision::Bf16 => {
                        // att from the rounded preatt (each |d preatt| <= dpre): softmax's output
                        // moves by a factor exp(+-2 dpre), <= 2.5 dpre relative for dpre < 0.1,
                        // then one rounding
                        let dpre = BF16_U * max_abs(&preatt) + 1e-5;
                        assert!(dpre < 0.1, "dpre {dpre}");
                        let r_att = 2.5 * dpre + 1.1 * BF16_U;
                        // out = att v: sum_j |d att_j| |v_j| <= r_att max|v| (a row of att sums
                        // to 1), then one rounding (u in the rtol)
                        (r_att, r_att * max_abs(&inp) + 1e-5)
                    }
                };
                let got_att = down_t(g, &d_att);
                assert_close(&what("att"), &got_att, &att, 1e-6, r_att);
                assert_close(&what("out"), &down_t(g, &d_out), &out, out_atol, u + 1e-5);
                if zeros_above_diagonal {
                    for row in 0..B * nh * t {
                        let ti = row % t;
                        let r = row * t..(row + 1) * t;
                        assert!(
                            got_pre[r.clone()][ti + 1..].iter().all(|&x| x == 0.0)
                                && got_att[r][ti + 1..].iter().all(|&x| x == 0.0),
                            "row {row}: not zero above the diagonal"
                        );
                    }
                }

                // The backward from att rounded to T (what a forward in T stores).
                let att_t = round_to::<T>(&att);
                let dout = round_to::<T>(&rand(&mut rng, B * t * c, 1.0));
                let dinp0 = round_to::<T>(&rand(&mut rng, B * t * 3 * c, 1.0));
                let mut dinp = dinp0.clone();
                let (mut dpreatt, mut datt) = (cpu_start(&mut rng), cpu_start(&mut rng));
                cpu::attention::attention_backward(
                    &mut dinp,
                    &mut dpreatt,
                    &mut datt,
                    &dout,
                    &inp,
                    &att_t,
                    B,
                    t,
                    c,
                    nh,
                );
                let (d_dout, d_att_t) = (up_t::<T>(g, &dout), up_t::<T>(g, &att_t));
                let mut d_dinp = up_t::<T>(g, &dinp0);
                let mut d_dpreatt = up_t::<T>(g, &rand(&mut rng, btt, 7.0));
                let mut d_datt = up_t::<T>(g, &rand(&mut rng, btt, 7.0));
                g.attention_backward(
                    &mut d_dinp.as_view_mut(),
                    &mut d_dpreatt.as_view_mut(),
                    &mut d_datt.as_view_mut(),
                    &d_dout.as_view(),
                    &d_inp.as_view(),
                    &d_att_t.as_view(),
                    B,
                    t,
                    c,
                    nh,
                    &mut scratch.as_view_mut(),
                )
                .unwrap();
                // datt = dy v^T: the fp32 tolerance plus one rounding (of an fp32-accumulated
                // product)
                assert_close(&what("datt"), &down_t(g, &d_datt), &datt, 1e-5, u + 1e-5);
                // ((atol, rtol) of dpreatt, (atol, rtol) of dinp)
                let (dpre_tol, dinp_tol) = match T::PRECISION {
                    Precision::Fp32 => ((1e-5, 1e-4), (1e-5, 1e-4)),
                    Precision::Bf16 => {
                        // dpreatt = att (datt - dot) from the rounded datt (each off by <= e =
                        // U max|datt|, so dot, a convex combination, too): |d| <= 2 e att <= 2 e,
                        // then one rounding
                        let e = BF16_U * max_abs(&datt) + 1e-6;
                        // dq = scale dpreatt k and dk = scale dpreatt^T q sum <= T products whose
                        // dpreatt factor is off by <= 2 e + U |dpreatt|, each rounded (U |dq|,
                        // |dq| <= scale T max|dpreatt| max|k|); dv = att^T dy (exact inputs)
                        // rounded once, |dv| <= T max|dy|; then the accumulation into dinp rounds
                        // once more (the rtol). x1.25 for the second-order terms and fp32's own
                        // error.
                        let scale = 1.0 / ((c / nh) as f32).sqrt();
                        let tf = t as f32;
                        let dqk = tf
                            * scale
                            * max_abs(&inp)
                            * (2.0 * e + 2.0 * BF16_U * max_abs(&dpreatt));
                        let dv = BF16_U * tf * max_abs(&dout);
                        let atol = 1.25 * (dqk + dv) + 1e-5;
                        ((2.0 * e + 1e-5, BF16_U + 1e-5), (atol, BF16_U + 1e-5))
                    }
                };
                let got_dpre = down_t(g, &d_dpreatt);
                assert_close(
                    &what("dpreatt"),
                    &got_dpre,
                    &dpreatt,
                    dpre_tol.0,
                    dpre_tol.1,
                );
                let got_dinp = down_t(g, &d_dinp);
                assert_close(&what("dinp"), &got_dinp, &dinp, dinp_tol.0, dinp_tol.1);
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn attention_matches_cpu() {
        // the CPU's outputs start random; above the diagonal only the tolerance
        attention_case::<f32>(&gpu(), 300, true, false);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn attention_bf16_matches_cpu() {
        // the CPU's outputs start at zero; above the diagonal exactly 0
        attention_case::<bf16>(&gpu(), 1300, false, true);
    }

    // ---- gelu --------------------------------------------------------------------------------

    /// GELU forward and backward in T with inputs rounded to T, on views starting `offset`
    /// elements into their buffers for each of `offsets` (0: the packed path plus a tail of 5;
    /// 1: every pointer misaligned, the scalar path).
    fn gelu_case<T: DeviceFloat>(g: &Gpu, seed: u64, offsets: &[usize]) {
        let u = unit::<T>();
        let what = |x: &str| label::<T>("gelu", x);
        let n = B * 37 * 4 * 72 + 5;
        let mut rng = Rng::new(seed);
        let inp = round_to::<T>(&rand(&mut rng, n, 5.0));
        let mut out = vec![0.0; n];
        cpu::gelu::gelu_forward(&mut out, &inp);
        let dout = round_to::<T>(&rand(&mut rng, n, 1.0));
        let dinp0 = round_to::<T>(&rand(&mut rng, n, 1.0));
        let mut dinp = dinp0.clone();
        cpu::gelu::gelu_backward(&mut dinp, &inp, &dout);
        for &offset in offsets {
            let d_inp = up_t::<T>(g, &padded(offset, &inp));
            let mut d_out = g.zeros::<T>(n + offset).unwrap();
            g.gelu_forward(&mut d_out.slice_mut(offset..), &d_inp.slice(offset..))
                .unwrap();
            // the fp32 tolerance (1e-6 + 1e-5 rel) plus one rounding to T
            let got = down_t(g, &d_out);
            assert_close(&what("out"), &got[offset..], &out, 1e-6, u + 1e-5);
            let mut d_dinp = up_t::<T>(g, &padded(offset, &dinp0));
            let d_dout = up_t::<T>(g, &padded(offset, &dout));
            g.gelu_backward(
                &mut d_dinp.slice_mut(offset..),
                &d_inp.slice(offset..),
                &d_dout.slice(offset..),
            )
            .unwrap();
            // tanh's last-bit differences reach the gradient through (1 - tanh^2) * 0.5 x du/dx,
            // a factor up to ~9 for |x| <= 5: 1e-5 absolute; plus one rounding to T.
            let got = down_t(g, &d_dinp);
            assert_close(&what("dinp"), &got[offset..], &dinp, 1e-5, u + 1e-5);
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gelu_matches_cpu() {
        gelu_case::<f32>(&gpu(), 400, &[0]);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn gelu_bf16_matches_cpu() {
        gelu_case::<bf16>(&gpu(), 1400, &[0, 1]);
    }

    // ---- residual ----------------------------------------------------------------------------

    /// Residual forward and backward in T on views starting `offset` elements into their buffers
    /// (offset 1 makes every pointer misaligned: the scalar path); the result must be the CPU's
    /// fp32 result rounded once to T.
    fn residual_case<T: DeviceFloat>(g: &Gpu, offset: usize, seed: u64) {
        let n = B * 37 * 100 + 3;
        let mut rng = Rng::new(seed);
        let (a, b) = (rand(&mut rng, n, 1.0), rand(&mut rng, n, 1.0));
        let (a, b) = (round_to::<T>(&a), round_to::<T>(&b));
        let mut out = vec![0.0; n];
        cpu::residual::residual_forward(&mut out, &a, &b);
        let (d_a, d_b) = (
            up_t::<T>(g, &padded(offset, &a)),
            up_t::<T>(g, &padded(offset, &b)),
        );
        let mut d_out = g.zeros::<T>(n + offset).unwrap();
        g.residual_forward(
            &mut d_out.slice_mut(offset..),
            &d_a.slice(offset..),
            &d_b.slice(offset..),
        )
        .unwrap();
        let what = format!("residual out ({:?}, offset {offset})", T::PRECISION);
        assert_bitwise(&what, &down_t(g, &d_out)[offset..], &round_to::<T>(&out));

        let dout = round_to::<T>(&rand(&mut rng, n, 1.0));
        let (d1, d2) = (rand(&mut rng, n, 1.0), rand(&mut rng, n, 1.0));
        let (mut d1, mut d2) = (round_to::<T>(&d1), round_to::<T>(&d2));
        let (mut g1, mut g2) = (
            up_t::<T>(g, &padded(offset, &d1)),
            up_t::<T>(g, &padded(offset, &d2)),
        );
        cpu::residual::residual_backward(&mut d1, &mut d2, &dout);
        let d_dout = up_t::<T>(g, &padded(offset, &dout));
        g.residual_backward(
            &mut g1.slice_mut(offset..),
            &mut g2.slice_mut(offset..),
            &d_dout.slice(offset..),
        )
        .unwrap();
        let what = format!("residual dinp ({:?}, offset {offset})", T::PRECISION);
        assert_bitwise(&what, &down_t(g, &g1)[offset..], &round_to::<T>(&d1));
        assert_bitwise(&what, &down_t(g, &g2)[offset..], &round_to::<T>(&d2));
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn residual_matches_cpu_bitwise() {
        residual_case::<f32>(&gpu(), 0, 500);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn residual_packed_and_scalar_paths_match_cpu_bitwise_in_both_precisions() {
        let g = gpu();
        for offset in [0, 1] {
            residual_case::<f32>(&g, offset, 1500 + offset as u64);
            residual_case::<bf16>(&g, offset, 1500 + offset as u64);
        }
    }

    // ---- classifier --------------------------------------------------------------------------

    /// The fused classifier in T (logits in, dlogits out; the losses f32) with logits rounded to
    /// T, on both of its paths (Vp = 128: 16-byte packs; Vp = 103: single elements), as the model
    /// runs it: the losses alone (`classifier_losses`, logits untouched) saving each row's softmax
    /// statistics, then the backward with them; and the backward computing them itself, which
    /// must give bitwise the same dlogits and losses. The logits are uniform in [-scale, scale],
    /// plus -shift, 0 and +shift on the rows in turn.
    fn classifier_case<T: DeviceFloat>(g: &Gpu, seed0: u64, scale: f32, shift: f32) {
        let u = unit::<T>();
        let v = 101;
        for vp in [128, 103] {
            for t in TS {
                let n = B * t;
                let mut rng = Rng::new(seed0 + t as u64 + vp as u64);
                let mut logits = rand(&mut rng, n * vp, scale);
                // Huge values in the padding: they must take no part in the softmax.
                for (r, row) in logits.chunks_mut(vp).enumerate() {
                    let offset = shift * (r % 3) as f32 - shift;
                    row[..v].iter_mut().for_each(|x| *x += offset);
                    row[v..].fill(1e4);
                }
                let logits = round_to::<T>(&logits);
                let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
                let dloss = 1.0 / n as f32;
                let (losses, dlogits) =
                    cpu::classifier::fused_classifier(&logits, dloss, &targets, B, t, v, vp);
                // bf16's rounded exponent base (tests/tolerance)
                let loss_tol = |row: usize, w: f32| {
                    let x = &logits[row * vp..row * vp + v];
                    let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    let bf16 = T::PRECISION == Precision::Bf16;
                    1e-5 + 1e-5 * w.abs() + super::tolerance::classifier_exp_base_slack(bf16, m)
                };
                let d_targets = g.upload(&targets).unwrap();
                let mut d_logits = up_t::<T>(g, &logits);
                let mut d_stats = up(g, &rand(&mut rng, 2 * n, 9.0));
                let case = format!("classifier_losses (Vp {vp})");
                let what = |x: &str| label::<T>(&case, x);
                let mut d_losses = up(g, &rand(&mut rng, n, 9.0));
                g.classifier_losses(
                    &d_logits.as_view(),
                    &mut d_losses.as_view_mut(),
                    &d_targets.as_view(),
                    B,
                    t,
                    v,
                    vp,
                    Some(&mut d_stats.as_view_mut()),
                )
                .unwrap();
                assert_within(&what("losses"), &down(g, &d_losses), &losses, loss_tol);
                assert_bitwise(&what("logits"), &down_t(g, &d_logits), &logits);
                let stats = down(g, &d_stats);
                for (row, x) in logits.chunks(vp).enumerate() {
                    let m = x[..v].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    assert_eq!(stats[2 * row], m, "{case}: row {row} max");
                }

                let backward = |d_logits: &mut CudaSlice<T>, stats: Option<&CudaSlice<f32>>| {
                    let mut d_losses = up(g, &vec![f32::NAN; n]);
                    g.fused_classifier(
                        &mut d_logits.as_view_mut(),
                        &mut d_losses.as_view_mut(),
                        dloss,
                        &d_targets.as_view(),
                        B,
                        t,
                        v,
                        vp,
                        stats.map(|s| s.as_view()).as_ref(),
                    )
                    .unwrap();
                    down(g, &d_losses)
                };
                // losses: f32 from the same logits in either precision: the fp32 tolerance
                let case = format!("classifier (Vp {vp})");
                let what = |x: &str| label::<T>(&case, x);
                let got_losses = backward(&mut d_logits, Some(&d_stats));
                assert_within(&what("losses"), &got_losses, &losses, loss_tol);
                // dlogits are O(dloss) = O(1/B*T): the fp32 tolerance plus one rounding to T; the
                // padding columns must be exactly 0.
                let got = down_t(g, &d_logits);
                assert_close(&what("dlogits"), &got, &dlogits, 1e-8, u + 1e-5);
                for row in got.chunks(vp) {
                    assert!(row[v..].iter().all(|&x| x == 0.0), "padding not zeroed");
                }
                let mut d_fresh = up_t::<T>(g, &logits);
                let fresh_losses = backward(&mut d_fresh, None);
                assert_bitwise(&what("dlogits without stats"), &down_t(g, &d_fresh), &got);
                assert_bitwise(&what("losses without stats"), &fresh_losses, &got_losses);
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fused_classifier_matches_cpu() {
        classifier_case::<f32>(&gpu(), 600, 4.0, 0.0);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fused_classifier_bf16_matches_cpu() {
        classifier_case::<bf16>(&gpu(), 1600, 4.0, 0.0);
    }

    /// Logits over hundreds and rows far below or above 0, where only the row's own maximum
    /// keeps the sum of exponentials finite (tests/emulated_kernels.rs has the same test).
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn fused_classifier_keeps_the_row_maximum_at_large_logits() {
        classifier_case::<f32>(&gpu(), 700, 120.0, 240.0);
        classifier_case::<bf16>(&gpu(), 1700, 120.0, 240.0);
    }

    // ---- AdamW, global norm, argument errors ---------------------------------------------------

    /// The hyperparameters of the AdamW comparisons (fp32 and mixed).
    const ADAMW_HP: cpu::adamw::AdamW = cpu::adamw::AdamW {
        lr: 3e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        decay_on: train_gpt2_cuda::cpu::adamw::DecayOn::All,
    };

    /// The global norm of x (already rounded to T) on the GPU in T against the CPU's (f64): rtol
    /// 1e-5; a second run agrees bitwise. On a view 16-byte aligned (offset 0: the packed loads,
    /// then the tail of n % pack) and one starting one element into its buffer (offset 1: the
    /// scalar path).
    fn check_global_norm<T: DeviceFloat>(g: &Gpu, x: &[f32]) {
        for offset in [0, 1] {
            let d_x = up_t::<T>(g, &padded(offset, x));
            let view = d_x.slice(offset..);
            let norm = g.global_norm(&view).unwrap();
            let what = label::<T>(
                "global_norm",
                &format!("(n = {}, offset {offset})", x.len()),
            );
            assert_close(&what, &[norm], &[cpu::adamw::global_norm(x)], 0.0, 1e-5);
            assert_eq!(
                norm.to_bits(),
                g.global_norm(&view).unwrap().to_bits(),
                "{what}: a second run"
            );
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn adamw_matches_cpu_bitwise_and_global_norm_is_close() {
        let g = gpu();
        let n = 100_003;
        let mut rng = Rng::new(700);
        let hp = ADAMW_HP;
        let mut params = rand(&mut rng, n, 1.0);
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let (mut d_p, mut d_m, mut d_v) = (up(&g, &params), up(&g, &m), up(&g, &v));
        for step in 1..=3 {
            let grads = rand(&mut rng, n, 0.5);
            let d_g = up(&g, &grads);
            check_global_norm::<f32>(&g, &grads);
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

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn adamw_mixed_matches_cpu_bitwise_and_rounds_stochastically() {
        let g = gpu();
        let hp = ADAMW_HP;
        // offset 0: packed path (8 per thread) with a tail of 3; offset 1: the scalar path; the
        // rounding counters start at `first` (the slice's place in a whole parameter buffer)
        for (offset, first) in [(0usize, 0usize), (1, 3_000_000_001)] {
            let n = 100_003;
            let mut rng = Rng::new(1700 + offset as u64);
            let mut master = rand(&mut rng, n, 1.0);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let pad = |x: &[f32]| padded(offset, x);
            let mut d_params = g.zeros::<bf16>(n + offset).unwrap();
            let mut d_master = up(&g, &pad(&master));
            let (mut d_m, mut d_v) = (up(&g, &pad(&m)), up(&g, &pad(&v)));
            let mut rounded_up = 0usize;
            for step in 1..=3 {
                let grads = round_to::<bf16>(&rand(&mut rng, n, 0.5));
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
                    first,
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
                    let want = round_bf16_stochastic(w, rounding_bits(seed, (first + i) as u32));
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
    fn adamw_and_global_norm_bf16_check_their_arguments() {
        let g = gpu();
        let hp = cpu::adamw::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_on: train_gpt2_cuda::cpu::adamw::DecayOn::All,
        };
        let mut p = g.zeros::<bf16>(10).unwrap();
        let mut master = g.zeros::<f32>(10).unwrap();
        let (mut m, mut v) = (g.zeros::<f32>(10).unwrap(), g.zeros::<f32>(10).unwrap());
        // 9 gradients for 10 weights; 10 elements from 2^32 - 9 (the last rounding counter would
        // wrap); step 0 (the bias corrections would divide by 1 - beta^0 = 0)
        for (grads_len, step, first, error) in [
            (9, 1, 0, "adamw_update_mixed: grads has 9 elements"),
            (10, 1, (1usize << 32) - 9, "needs them below 2^32"),
            (10, 0, 0, "adamw_update_mixed: step counts from 1, got 0"),
        ] {
            let grads = g.zeros::<bf16>(grads_len).unwrap();
            let e = g
                .adamw_update_mixed(
                    &mut p.as_view_mut(),
                    &mut master.as_view_mut(),
                    &grads.as_view(),
                    &mut m.as_view_mut(),
                    &mut v.as_view_mut(),
                    &hp,
                    step,
                    1.0,
                    0,
                    first,
                )
                .unwrap_err();
            assert!(format!("{e}").contains(error), "{e}");
        }
        let (mut p32, grads32) = (g.zeros::<f32>(10).unwrap(), g.zeros::<f32>(10).unwrap());
        let e = g
            .adamw_update(
                &mut p32.as_view_mut(),
                &grads32.as_view(),
                &mut m.as_view_mut(),
                &mut v.as_view_mut(),
                &hp,
                0,
                1.0,
            )
            .unwrap_err();
        assert!(
            format!("{e}").contains("adamw_update: step counts from 1, got 0"),
            "{e}"
        );
        // global norm of bf16 gradients: fp32 accumulation of the widened values (packs of 8 with
        // a tail of 1, then none)
        let mut rng = Rng::new(1800);
        for n in [70_001, 64_000] {
            let x = round_to::<bf16>(&rand(&mut rng, n, 0.5));
            check_global_norm::<bf16>(&g, &x);
        }
    }
}
