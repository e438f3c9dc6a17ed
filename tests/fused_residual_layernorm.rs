//! The fused residual add + LayerNorm forward: the CPU twin (`cpu::fused_residual_layernorm`)
//! against the two separate CPU calls (bitwise, runs everywhere), and the GPU launcher
//! (`Gpu::residual_layernorm_forward`) against the CPU twin (`#[ignore = "needs a CUDA GPU"]`; run
//! with `cargo test --test fused_residual_layernorm -- --ignored` on a machine with one).
//!
//! Sizes: B=3, T=1 and 37, C=72, 100 and 768 (the brief's awkward sizes: all take the kernel's
//! 128-bit path in fp32, C=100 the scalar path in bf16), plus C=101 (scalar in both), C=100 on
//! views offset by one element (misaligned: scalar), C=1536 (fp32: 8 rows fill the 48 KiB of
//! shared memory exactly), C=12400 (the row does not fit in shared memory: the kernel re-reads
//! residual_out), and C=1 (variance 0, ln_out the bias; a launcher
//! that returned early for one channel as it does for none failed no test before).
//!
//! Tolerances, `|gpu - cpu| <= atol + rtol * |cpu|` elementwise:
//! - residual_out: bitwise, in both precisions. fp32: one IEEE add, as the CPU. bf16: the CPU
//!   reference is the f32 sum of the same bf16 inputs rounded to bf16 (round to nearest even), which
//!   is exactly the kernel's `__float2bfloat16_rn(a + b)`.
//! - mean: atol 1e-6, rtol 1e-5; rstd: atol 1e-6, rtol 1e-5; ln_out (fp32): atol 1e-5, rtol 1e-5:
//!   the kernel sums in fp32 over warp trees, the CPU in f64; a few ulps of O(1) values (as
//!   tests/gpu_layers.rs's layernorm). In bf16 the statistics are fp32 on the identical rounded
//!   residual, so the same tolerances hold.
//! - ln_out (bf16): rtol 2^-8 (one rounding of the fp32 result to bf16's 8-bit significand is at
//!   most half an ulp, which is 2^-8 relative just above a power of two: 1.0 and 1.0078125 are
//!   neighbours) plus atol 2e-5 (the fp32 differences above, which can move a value across a
//!   rounding boundary).

mod common;

use train_gpt2_cuda::cpu;
use train_gpt2_cuda::rng::Rng;

/// n values uniform in [-scale, scale) + shift.
fn rand(rng: &mut Rng, n: usize, scale: f32, shift: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * scale + shift)
        .collect()
}

#[test]
fn cpu_twin_is_residual_then_layernorm_bitwise() {
    for (b, t, c) in [(3, 1, 72), (3, 37, 100), (2, 5, 768), (1, 1, 1)] {
        let n = b * t;
        let mut rng = Rng::new(11 + (n * c) as u64);
        let inp1 = rand(&mut rng, n * c, 2.0, 0.5);
        let inp2 = rand(&mut rng, n * c, 1.0, 0.0);
        let weight = rand(&mut rng, c, 1.0, 0.0);
        let bias = rand(&mut rng, c, 1.0, 0.0);

        let mut res = vec![f32::NAN; n * c];
        let (mut ln, mut mean, mut rstd) = (vec![f32::NAN; n * c], vec![0.0; n], vec![0.0; n]);
        cpu::fused_residual_layernorm::residual_layernorm_forward(
            &mut res, &mut ln, &mut mean, &mut rstd, &inp1, &inp2, &weight, &bias, b, t, c,
        );

        let mut res2 = vec![0.0; n * c];
        cpu::residual::residual_forward(&mut res2, &inp1, &inp2);
        let (mut ln2, mut mean2, mut rstd2) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        cpu::layernorm::layernorm_forward(
            &mut ln2, &mut mean2, &mut rstd2, &res2, &weight, &bias, b, t, c,
        );

        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&res), bits(&res2), "residual_out, C={c}");
        assert_eq!(bits(&ln), bits(&ln2), "ln_out, C={c}");
        assert_eq!(bits(&mean), bits(&mean2), "mean, C={c}");
        assert_eq!(bits(&rstd), bits(&rstd2), "rstd, C={c}");
        // Not vacuous: the sum is the hand sum, the statistics finite and positive.
        assert_eq!(res[0], inp1[0] + inp2[0]);
        assert!(rstd.iter().all(|&r| r.is_finite() && r > 0.0));
    }
}

#[cfg(has_cuda)]
mod on_gpu {
    use super::common::{assert_bitwise, assert_close, gpu};
    use super::rand;
    use half::bf16;
    use train_gpt2_cuda::cpu;
    use train_gpt2_cuda::gpu::float::{to_device_float, to_f32_vec};
    use train_gpt2_cuda::gpu::{DeviceFloat, Gpu};
    use train_gpt2_cuda::rng::Rng;

    /// Runs the GPU launcher in precision T on inputs rounded to T, against the CPU twin on the
    /// same (widened) inputs; in bf16 the CPU's residual is rounded to bf16 before its LayerNorm,
    /// as the kernel stores it. `offset` shifts every device buffer by that many elements (to
    /// defeat 16-byte alignment).
    fn check<T: DeviceFloat>(g: &Gpu, b: usize, t: usize, c: usize, offset: usize, seed: u64) {
        let n = b * t;
        let what = format!("{:?} B={b} T={t} C={c} offset={offset}", T::PRECISION);
        let mut rng = Rng::new(seed);
        let round = |v: Vec<f32>| to_f32_vec::<T>(&to_device_float::<T>(&v));
        let inp1 = round(rand(&mut rng, n * c, 2.0, 0.5));
        let inp2 = round(rand(&mut rng, n * c, 1.0, 0.0));
        let weight = round(rand(&mut rng, c, 1.0, 0.0));
        let bias = round(rand(&mut rng, c, 1.0, 0.0));

        // The reference: residual (rounded to T), then LayerNorm of it.
        let mut res = vec![0.0; n * c];
        cpu::residual::residual_forward(&mut res, &inp1, &inp2);
        let res = round(res);
        let (mut ln, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        cpu::layernorm::layernorm_forward(
            &mut ln, &mut mean, &mut rstd, &res, &weight, &bias, b, t, c,
        );
        if T::PRECISION == train_gpt2_cuda::precision::Precision::Fp32 {
            // In fp32 that is the twin itself.
            let mut res2 = vec![0.0; n * c];
            let (mut ln2, mut m2, mut r2) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            cpu::fused_residual_layernorm::residual_layernorm_forward(
                &mut res2, &mut ln2, &mut m2, &mut r2, &inp1, &inp2, &weight, &bias, b, t, c,
            );
            assert_bitwise("cpu twin", &ln2, &ln);
        }

        // Device buffers with `offset` leading elements of padding.
        let pad = |v: &[f32]| {
            let mut p = vec![T::from_f32(7.0); offset];
            p.extend(to_device_float::<T>(v));
            g.upload(&p).unwrap()
        };
        let (d_in1, d_in2, d_w, d_b) = (pad(&inp1), pad(&inp2), pad(&weight), pad(&bias));
        let mut d_res = g.zeros::<T>(offset + n * c).unwrap();
        let mut d_ln = g.zeros::<T>(offset + n * c).unwrap();
        let mut d_mean = g.upload(&vec![f32::NAN; n]).unwrap();
        let mut d_rstd = g.upload(&vec![f32::NAN; n]).unwrap();
        g.residual_layernorm_forward(
            &mut d_res.slice_mut(offset..),
            &mut d_ln.slice_mut(offset..),
            &mut d_mean.as_view_mut(),
            &mut d_rstd.as_view_mut(),
            &d_in1.slice(offset..),
            &d_in2.slice(offset..),
            &d_w.slice(offset..),
            &d_b.slice(offset..),
            b,
            t,
            c,
        )
        .unwrap();
        let down = |d: &cudarc::driver::CudaSlice<T>| to_f32_vec::<T>(&g.download(d).unwrap());
        let (got_res, got_ln) = (down(&d_res), down(&d_ln));
        // The padding is untouched.
        assert!(
            got_res[..offset].iter().all(|&x| x == 0.0),
            "{what}: wrote before residual_out"
        );
        assert_bitwise(&format!("{what} residual_out"), &got_res[offset..], &res);
        assert_close(
            &format!("{what} mean"),
            &g.download(&d_mean).unwrap(),
            &mean,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("{what} rstd"),
            &g.download(&d_rstd).unwrap(),
            &rstd,
            1e-6,
            1e-5,
        );
        let (atol, rtol) = match T::PRECISION {
            train_gpt2_cuda::precision::Precision::Fp32 => (1e-5, 1e-5),
            train_gpt2_cuda::precision::Precision::Bf16 => (2e-5, 1.0 / 256.0),
        };
        assert_close(
            &format!("{what} ln_out"),
            &got_ln[offset..],
            &ln,
            atol,
            rtol,
        );
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn residual_layernorm_matches_cpu_fp32() {
        let g = gpu();
        for t in [1, 37] {
            for c in [72, 100, 101, 768] {
                check::<f32>(&g, 3, t, c, 0, 1000 + (t * c) as u64);
            }
            check::<f32>(&g, 3, t, 100, 1, 2000 + t as u64);
        }
        check::<f32>(&g, 1, 2, 12400, 0, 3000);
        // C = 1536: 8 cached rows of 6 KiB fill the 48 KiB of shared memory exactly (the most a
        // launch may ask for without opting in)
        check::<f32>(&g, 2, 5, 1536, 0, 3050);
        // one channel: every row's variance is 0 and ln_out is the bias
        check::<f32>(&g, 3, 5, 1, 0, 3100);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn residual_layernorm_matches_cpu_bf16() {
        let g = gpu();
        for t in [1, 37] {
            for c in [72, 100, 101, 768] {
                check::<bf16>(&g, 3, t, c, 0, 4000 + (t * c) as u64);
            }
            check::<bf16>(&g, 3, t, 72, 1, 5000 + t as u64);
        }
        check::<bf16>(&g, 1, 2, 12400, 0, 6000);
        check::<bf16>(&g, 3, 5, 1, 0, 6100);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn residual_layernorm_rejects_bad_shapes() {
        let g = gpu();
        let (b, t, c) = (2, 3, 8);
        let x = g.zeros::<f32>(b * t * c).unwrap();
        let short = g.zeros::<f32>(b * t * c - 1).unwrap();
        let w = g.zeros::<f32>(c).unwrap();
        let mut res = g.zeros::<f32>(b * t * c).unwrap();
        let mut ln = g.zeros::<f32>(b * t * c).unwrap();
        let mut mean = g.zeros::<f32>(b * t).unwrap();
        let mut rstd = g.zeros::<f32>(b * t).unwrap();
        let e = g
            .residual_layernorm_forward(
                &mut res.as_view_mut(),
                &mut ln.as_view_mut(),
                &mut mean.as_view_mut(),
                &mut rstd.as_view_mut(),
                &x.as_view(),
                &short.as_view(),
                &w.as_view(),
                &w.as_view(),
                b,
                t,
                c,
            )
            .unwrap_err();
        assert!(
            format!("{e}").starts_with("residual_layernorm_forward: inp2 has 47 elements"),
            "{e}"
        );
    }
}
