//! Every hand-written CUDA kernel run on the CPU through the host emulation (`tests/emu`: the
//! kernel files compiled by g++ against a CUDA shim, each CUDA thread a fiber, warp shuffles and
//! barriers as real rendezvous, guarded buffers) and compared with its CPU twin (`cpu::*`). Needs
//! no GPU and no nvcc, only a C++ compiler: it runs in every `cargo test`.
//!
//! Each kernel is launched with the launch geometry its Rust launcher uses (`gpu::launch`, shared
//! with the launchers) and the arguments in the launcher's order, on awkward sizes (T = 1, sizes
//! that are not multiples of 32 or of the block, buffers 16-byte aligned and one element off so
//! that both the packed and the scalar paths run), in fp32 and bf16. Threads and blocks run in
//! ascending, descending or shuffled order (`schedule`); a kernel whose result depends on that
//! order (a race at barrier level) fails the bitwise comparisons of two schedules below.
//!
//! Tolerances, `|emulated - cpu| <= atol + rtol |cpu|` elementwise, and why:
//! - bitwise: encoder, residual, AdamW (fp32 and mixed), attention permute/unpermute, add_bias,
//!   and the chunked column sums (bias and layernorm dweight/dbias against a host twin of the
//!   chunked order): the kernel performs the CPU's fp32 operations one for one, in the same order,
//!   and g++ compiles them without FMA contraction (-ffp-contract=off), so every bit must agree.
//!   In bf16: the CPU's fp32 result rounded once.
//! - gelu: 1e-6 / 1e-5 forward, 1e-5 / 1e-5 backward: the same formula, but tanhf (host libm here,
//!   CUDA's on the GPU) differs from Rust's tanh in the last bits.
//! - layernorm, softmax, classifier, fused residual + layernorm, flash attention: the sums run in
//!   another order (warp butterflies vs sequential), a few ulps of the terms: the GPU tests'
//!   tolerances (tests/gpu_layers.rs, tests/gpu_flash_attention.rs).
//! - bf16 adds one rounding of the output (rtol 2^-8) where the kernel rounds once; flash attention
//!   bf16 also rounds P and dS to bf16 before the tensor-core products (tolerances as in
//!   tests/gpu_flash_attention.rs).

mod emu;

use emu::{assert_bitwise, assert_close, down, kernels, max_abs, rand, round_to, up, Arg, Storage};
use half::bf16;
use train_gpt2_cuda::cpu;
use train_gpt2_cuda::gpu::launch;
use train_gpt2_cuda::rng::Rng;

const B: usize = 3;
const TS: [usize; 2] = [1, 37];

fn label<T: Storage>(family: &str, what: &str) -> String {
    format!("{family} {} {what}", T::label())
}

// ---- encoder -------------------------------------------------------------------------------------

fn encoder_case<T: Storage>(cs: &[usize], seed0: u64, misaligned: bool) {
    let k = kernels("encoder");
    let (vp, maxt) = (128, 40);
    for t in TS {
        for &c in cs {
            let mut rng = Rng::new(seed0 + t as u64 * c as u64);
            let inp: Vec<u32> = (0..B * t).map(|_| rng.below(13) as u32 * 9).collect();
            let wte = round_to::<T>(&rand(&mut rng, vp * c, 1.0));
            let wpe = round_to::<T>(&rand(&mut rng, maxt * c, 1.0));
            let mut out = vec![0.0; B * t * c];
            cpu::encoder::encoder_forward(&mut out, &inp, &wte, &wpe, B, t, c);
            let d_inp = k.upload(&inp, false);
            let (d_wte, d_wpe) = (up::<T>(&k, &wte, misaligned), up::<T>(&k, &wpe, false));
            let d_out = up::<T>(&k, &rand(&mut rng, B * t * c, 9.0), misaligned);
            // gpu::encoder_forward: a grid-stride launch over the packs
            k.launch(
                &T::kernel("encoder_forward"),
                launch::grid_stride((B * t * c).div_ceil(launch::pack::<T>())),
                &[
                    Arg::Buf(&d_out),
                    Arg::Buf(&d_inp),
                    Arg::Buf(&d_wte),
                    Arg::Buf(&d_wpe),
                    Arg::I32(B as i32),
                    Arg::I32(t as i32),
                    Arg::I32(c as i32),
                    Arg::I32(vp as i32),
                ],
                t as u32 % 3,
            );
            assert_bitwise(
                &label::<T>("encoder_forward", "out"),
                &down::<T>(&d_out),
                &round_to::<T>(&out),
            );

            let dout = round_to::<T>(&rand(&mut rng, B * t * c, 1.0));
            let dwte0 = round_to::<T>(&rand(&mut rng, vp * c, 1.0));
            let dwpe0 = round_to::<T>(&rand(&mut rng, maxt * c, 1.0));
            let (mut dwte, mut dwpe) = (dwte0.clone(), dwpe0.clone());
            cpu::encoder::encoder_backward(&mut dwte, &mut dwpe, &dout, &inp, B, t, c);
            let d_dout = up::<T>(&k, &dout, false);
            let (d_dwte, d_dwpe) = (up::<T>(&k, &dwte0, false), up::<T>(&k, &dwpe0, false));
            // gpu::encoder_backward: dwpe one thread per (t, c); dwte one per (bucket, c)
            k.launch(
                &T::kernel("encoder_backward_wpe"),
                launch::per_element(t * c),
                &[
                    Arg::Buf(&d_dwpe),
                    Arg::Buf(&d_dout),
                    Arg::I32(B as i32),
                    Arg::I32(t as i32),
                    Arg::I32(c as i32),
                ],
                1,
            );
            let buckets = launch::token_buckets(&inp);
            let nb = launch::num_buckets(&buckets, inp.len());
            let d_buckets = k.upload(&buckets, false);
            k.launch(
                &T::kernel("encoder_backward_wte"),
                launch::encoder_wte(nb, c),
                &[
                    Arg::Buf(&d_dwte),
                    Arg::Buf(&d_dout),
                    Arg::Buf(&d_buckets),
                    Arg::I32(nb as i32),
                    Arg::I32(c as i32),
                ],
                2,
            );
            assert_bitwise(
                &label::<T>("encoder", "dwte"),
                &down::<T>(&d_dwte),
                &round_to::<T>(&dwte),
            );
            assert_bitwise(
                &label::<T>("encoder", "dwpe"),
                &down::<T>(&d_dwpe),
                &round_to::<T>(&dwpe),
            );
        }
    }
}

#[test]
fn encoder_fp32_is_bitwise_the_cpu() {
    // 72: packed path (multiple of 4), 100: too; 37: scalar path
    encoder_case::<f32>(&[72, 37], 1, false);
    encoder_case::<f32>(&[72], 2, true);
}

#[test]
fn encoder_bf16_is_the_cpu_rounded_once() {
    // 64: packed (multiple of 8); 100: scalar; misaligned wte: scalar
    encoder_case::<bf16>(&[64, 100], 1000, false);
    encoder_case::<bf16>(&[64], 1001, true);
}

#[test]
fn encoder_bad_token_gives_nan_not_a_wild_read() {
    let k = kernels("encoder");
    let (b, t, c, vp) = (1, 2, 8, 4);
    let inp = [1u32, 1_000_000];
    let d_inp = k.upload(&inp, false);
    let d_wte = up::<f32>(&k, &vec![1.0; vp * c], false);
    let d_wpe = up::<f32>(&k, &vec![2.0; t * c], false);
    let d_out = up::<f32>(&k, &vec![0.0; b * t * c], false);
    k.launch(
        "encoder_forward",
        launch::grid_stride((b * t * c).div_ceil(4)),
        &[
            Arg::Buf(&d_out),
            Arg::Buf(&d_inp),
            Arg::Buf(&d_wte),
            Arg::Buf(&d_wpe),
            Arg::I32(b as i32),
            Arg::I32(t as i32),
            Arg::I32(c as i32),
            Arg::I32(vp as i32),
        ],
        0,
    );
    let out = down::<f32>(&d_out);
    assert!(out[..c].iter().all(|&x| x == 3.0), "{out:?}");
    assert!(out[c..].iter().all(|x| x.is_nan()), "{out:?}");
}

// ---- layernorm -----------------------------------------------------------------------------------

/// The CPU's column sums of `x` (n rows of `cols`) in the kernels' chunked order: per chunk of
/// `rpc` rows in row order, then the chunks in order, in f32; added to `acc`.
fn chunked_column_sums(acc: &mut [f32], x: &[f32], n: usize, cols: usize, rpc: usize) {
    let chunks = n.div_ceil(rpc);
    for (col, a) in acc.iter_mut().enumerate() {
        let mut total = 0.0f32;
        for k in 0..chunks {
            let mut s = 0.0f32;
            for row in k * rpc..n.min((k + 1) * rpc) {
                s += x[row * cols + col];
            }
            total += s;
        }
        *a += total;
    }
}

fn layernorm_case<T: Storage>(cs: &[usize], seed0: u64, misaligned: bool) {
    let k = kernels("layernorm");
    let u = T::unit();
    let what = |x: &str| label::<T>("layernorm", x);
    for t in TS {
        for &c in cs {
            let n = B * t;
            let mut rng = Rng::new(seed0 + n as u64 + c as u64);
            let inp: Vec<f32> = rand(&mut rng, n * c, 2.0).iter().map(|x| x + 0.5).collect();
            let inp = round_to::<T>(&inp);
            let weight = round_to::<T>(&rand(&mut rng, c, 1.0));
            let bias = round_to::<T>(&rand(&mut rng, c, 1.0));
            let (mut out, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            cpu::layernorm::layernorm_forward(
                &mut out, &mut mean, &mut rstd, &inp, &weight, &bias, B, t, c,
            );
            let d_inp = up::<T>(&k, &inp, misaligned);
            let (d_w, d_b) = (up::<T>(&k, &weight, false), up::<T>(&k, &bias, false));
            let d_out = up::<T>(&k, &rand(&mut rng, n * c, 9.0), false);
            let d_mean = up::<f32>(&k, &rand(&mut rng, n, 9.0), false);
            let d_rstd = up::<f32>(&k, &rand(&mut rng, n, 9.0), false);
            let (ni, ci) = (Arg::I32(n as i32), Arg::I32(c as i32));
            k.launch(
                &T::kernel("layernorm_forward"),
                launch::warp_per_row(n),
                &[
                    Arg::Buf(&d_out),
                    Arg::Buf(&d_mean),
                    Arg::Buf(&d_rstd),
                    Arg::Buf(&d_inp),
                    Arg::Buf(&d_w),
                    Arg::Buf(&d_b),
                    Arg::I32(n as i32),
                    Arg::I32(c as i32),
                ],
                t as u32,
            );
            assert_close(&what("out"), &down::<T>(&d_out), &out, 1e-5, u + 1e-5);
            assert_close(&what("mean"), &down::<f32>(&d_mean), &mean, 1e-6, 1e-5);
            assert_close(&what("rstd"), &down::<f32>(&d_rstd), &rstd, 1e-6, 1e-5);

            let dout = round_to::<T>(&rand(&mut rng, n * c, 1.0));
            let dinp0 = round_to::<T>(&rand(&mut rng, n * c, 1.0));
            let dw0 = round_to::<T>(&rand(&mut rng, c, 1.0));
            let db0 = round_to::<T>(&rand(&mut rng, c, 1.0));
            let (mut dinp, mut dw, mut db) = (dinp0.clone(), dw0.clone(), db0.clone());
            cpu::layernorm::layernorm_backward(
                &mut dinp, &mut dw, &mut db, &dout, &inp, &weight, &mean, &rstd, B, t, c,
            );
            // The kernels' mean and rstd feed the backward (as on the GPU).
            let d_dout = up::<T>(&k, &dout, false);
            let d_dinp = up::<T>(&k, &dinp0, misaligned);
            let (d_dw, d_db) = (up::<T>(&k, &dw0, false), up::<T>(&k, &db0, false));
            k.launch(
                &T::kernel("layernorm_backward_dinp"),
                launch::warp_per_row(n),
                &[
                    Arg::Buf(&d_dinp),
                    Arg::Buf(&d_dout),
                    Arg::Buf(&d_inp),
                    Arg::Buf(&d_w),
                    Arg::Buf(&d_mean),
                    Arg::Buf(&d_rstd),
                    ni,
                    ci,
                ],
                2,
            );
            assert_close(&what("dinp"), &down::<T>(&d_dinp), &dinp, 1e-5, u + 1e-5);
            let (g, chunks, rpc) = launch::column_chunks(c, n);
            let d_partial = up::<f32>(&k, &rand(&mut rng, chunks * 2 * c, 9.0), false);
            k.launch(
                &T::kernel("layernorm_backward_params_partial"),
                g,
                &[
                    Arg::Buf(&d_partial),
                    Arg::Buf(&d_dout),
                    Arg::Buf(&d_inp),
                    Arg::Buf(&d_mean),
                    Arg::Buf(&d_rstd),
                    Arg::I32(n as i32),
                    Arg::I32(c as i32),
                    Arg::I32(rpc as i32),
                ],
                3,
            );
            k.launch(
                &T::kernel("layernorm_backward_params_reduce"),
                launch::per_element(c),
                &[
                    Arg::Buf(&d_dw),
                    Arg::Buf(&d_db),
                    Arg::Buf(&d_partial),
                    Arg::I32(chunks as i32),
                    Arg::I32(c as i32),
                ],
                0,
            );
            assert_close(&what("dweight"), &down::<T>(&d_dw), &dw, 2e-5, u + 1e-5);
            assert_close(&what("dbias"), &down::<T>(&d_db), &db, 2e-5, u + 1e-5);
            // dbias is a plain column sum: bitwise the chunked order's (then one rounding).
            let mut db_chunked = db0.clone();
            chunked_column_sums(&mut db_chunked, &dout, n, c, rpc);
            assert_bitwise(
                &what("dbias (chunked order)"),
                &down::<T>(&d_db),
                &round_to::<T>(&db_chunked),
            );
        }
    }
}

#[test]
fn layernorm_fp32_matches_cpu() {
    layernorm_case::<f32>(&[72, 100], 100, false);
}

#[test]
fn layernorm_bf16_matches_cpu() {
    // 72, 64: the packed output pass; 100 and the misaligned input: the scalar one
    layernorm_case::<bf16>(&[72, 100, 64], 1100, false);
    layernorm_case::<bf16>(&[64], 1101, true);
}

// ---- residual and gelu -----------------------------------------------------------------------------

/// Residual forward and backward in T on buffers 16-byte aligned or one element off: the CPU's
/// fp32 result rounded once to T, bitwise.
fn residual_case<T: Storage>(misaligned: bool, seed: u64) {
    let k = kernels("residual");
    let n = B * 37 * 100 + 3;
    let mut rng = Rng::new(seed);
    let a = round_to::<T>(&rand(&mut rng, n, 1.0));
    let b = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut out = vec![0.0; n];
    cpu::residual::residual_forward(&mut out, &a, &b);
    let (d_a, d_b) = (up::<T>(&k, &a, misaligned), up::<T>(&k, &b, misaligned));
    let d_out = up::<T>(&k, &vec![0.0; n], misaligned);
    let g = launch::grid_stride(n.div_ceil(launch::pack::<T>()));
    k.launch(
        &T::kernel("residual_forward"),
        g,
        &[
            Arg::Buf(&d_out),
            Arg::Buf(&d_a),
            Arg::Buf(&d_b),
            Arg::Usize(n),
        ],
        seed as u32,
    );
    let what = format!("residual {} out (misaligned {misaligned})", T::label());
    assert_bitwise(&what, &down::<T>(&d_out), &round_to::<T>(&out));

    let dout = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut d1 = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut d2 = round_to::<T>(&rand(&mut rng, n, 1.0));
    let (g1, g2) = (up::<T>(&k, &d1, misaligned), up::<T>(&k, &d2, misaligned));
    cpu::residual::residual_backward(&mut d1, &mut d2, &dout);
    let d_dout = up::<T>(&k, &dout, misaligned);
    k.launch(
        &T::kernel("residual_backward"),
        g,
        &[
            Arg::Buf(&g1),
            Arg::Buf(&g2),
            Arg::Buf(&d_dout),
            Arg::Usize(n),
        ],
        1,
    );
    let what = format!("residual {} dinp (misaligned {misaligned})", T::label());
    assert_bitwise(&what, &down::<T>(&g1), &round_to::<T>(&d1));
    assert_bitwise(&what, &down::<T>(&g2), &round_to::<T>(&d2));
}

#[test]
fn residual_is_bitwise_the_cpu_in_both_precisions_and_paths() {
    for misaligned in [false, true] {
        residual_case::<f32>(misaligned, 500 + misaligned as u64);
        residual_case::<bf16>(misaligned, 1500 + misaligned as u64);
    }
}

fn gelu_case<T: Storage>(seed: u64, misaligned: bool) {
    let k = kernels("gelu");
    let u = T::unit();
    let what = |x: &str| format!("gelu {} {x} (misaligned {misaligned})", T::label());
    let n = B * 37 * 72 + 5;
    let mut rng = Rng::new(seed);
    let inp = round_to::<T>(&rand(&mut rng, n, 5.0));
    let mut out = vec![0.0; n];
    cpu::gelu::gelu_forward(&mut out, &inp);
    let dout = round_to::<T>(&rand(&mut rng, n, 1.0));
    let dinp0 = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut dinp = dinp0.clone();
    cpu::gelu::gelu_backward(&mut dinp, &inp, &dout);
    let g = launch::grid_stride(n.div_ceil(launch::pack::<T>()));
    let d_inp = up::<T>(&k, &inp, misaligned);
    let d_out = up::<T>(&k, &vec![0.0; n], misaligned);
    k.launch(
        &T::kernel("gelu_forward"),
        g,
        &[Arg::Buf(&d_out), Arg::Buf(&d_inp), Arg::Usize(n)],
        0,
    );
    assert_close(&what("out"), &down::<T>(&d_out), &out, 1e-6, u + 1e-5);
    let d_dinp = up::<T>(&k, &dinp0, misaligned);
    let d_dout = up::<T>(&k, &dout, misaligned);
    k.launch(
        &T::kernel("gelu_backward"),
        g,
        &[
            Arg::Buf(&d_dinp),
            Arg::Buf(&d_inp),
            Arg::Buf(&d_dout),
            Arg::Usize(n),
        ],
        1,
    );
    assert_close(&what("dinp"), &down::<T>(&d_dinp), &dinp, 1e-5, u + 1e-5);
}

#[test]
fn gelu_matches_cpu_in_both_precisions_and_paths() {
    for misaligned in [false, true] {
        gelu_case::<f32>(400, misaligned);
        gelu_case::<bf16>(1400, misaligned);
    }
}

#[test]
fn unused_max_abs_placeholder() {
    assert_eq!(max_abs(&[1.0, -2.0]), 2.0);
}
