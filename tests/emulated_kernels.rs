//! Every hand-written CUDA kernel run on the CPU through the host emulation (`tests/emu`: the
//! kernel files compiled by g++ against a CUDA shim, each CUDA thread a fiber, warp shuffles and
//! barriers as real rendezvous, guarded buffers) and compared with its CPU twin (`cpu::*`). Needs
//! no GPU and no nvcc, only a C++ compiler: it runs in every `cargo test`.
//!
//! Each kernel is launched with the launch geometry its Rust launcher uses (`gpu::launch`, shared
//! with the launchers) and the arguments in the launcher's order, on awkward sizes (T = 1, sizes
//! that are not multiples of 32 or of the block), in fp32 and bf16. Its buffers are all 16-byte
//! aligned, or one of them is one element off: a kernel takes its packed path only when every
//! buffer it packs is aligned, and one misaligned buffer is what tells a test of all of them from
//! a test of some (the emulation fails a packed access to a misaligned address, as the GPU does).
//! The grid-stride kernels also run on 3 blocks (`with_both_grids`), so that their loops run more
//! than once, as they do on the GPU past 2^16 blocks. Threads and blocks run in
//! ascending, descending or shuffled order (`schedule`); a kernel whose result depends on that
//! order (a race at barrier level) fails the bitwise comparisons of two schedules below.
//!
//! Tolerances, `|emulated - cpu| <= atol + rtol |cpu|` elementwise, and why:
//! - bitwise: encoder, residual, AdamW (fp32 and mixed), attention permute/unpermute, add_bias,
//!   and the chunked column sums (bias and layernorm dweight/dbias against a host twin of the
//!   chunked order; layernorm's packed first stage against its scalar one): the kernel performs
//!   the CPU's fp32 operations one for one, in the same order, and g++ compiles them without FMA
//!   contraction (-ffp-contract=off), so every bit must agree.
//!   In bf16: the CPU's fp32 result rounded once.
//! - gelu: 1e-6 / 1e-5 forward, 1e-5 / 1e-5 backward: the same formula, but tanhf (host libm here,
//!   CUDA's on the GPU) differs from Rust's tanh in the last bits.
//! - layernorm, softmax, classifier, fused residual + layernorm, flash attention: the sums run in
//!   another order (warp butterflies vs sequential), a few ulps of the terms: the GPU tests'
//!   tolerances (tests/gpu_layers.rs, tests/gpu_flash_attention.rs).
//!   The classifier's bf16 losses and row sums add |m| log2 e's rounding (its 2^(x log2 e - base)
//!   exponentials): ln 2 ulp(|m| log2 e), for the row's maximum m.
//! - bf16 adds one rounding of the output (rtol 2^-8) where the kernel rounds once; flash attention
//!   bf16 also rounds P and dS to bf16 before the tensor-core products (tolerances as in
//!   tests/gpu_flash_attention.rs).

mod emu;
mod flash_scores;
mod tolerance;

use emu::{
    assert_bitwise, assert_close, assert_within, down, kernels, max_abs, rand, round_to, up, Arg,
    Storage,
};
use flash_scores::{Scores, FAR_FP32_OUT};
use half::bf16;
use tolerance::classifier_exp_base_slack;
use train_gpt2_cuda::cpu;
use train_gpt2_cuda::gpu::launch;
use train_gpt2_cuda::rng::Rng;

const B: usize = 3;
const TS: [usize; 2] = [1, 37];

fn label<T: Storage>(family: &str, what: &str) -> String {
    format!("{family} {} {what}", T::label())
}

thread_local! {
    /// Whether [`grid_stride`] gives few blocks (set by [`with_both_grids`]).
    static FEW_BLOCKS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The grid of a grid-stride launch over `n` items: the launchers' (`launch::grid_stride`), or
/// inside [`with_both_grids`]'s second run at most 3 blocks. The launchers' grid covers every
/// item of the sizes tested here at once; on the GPU it stops at 2^16 blocks (16.7M items), past
/// which each thread's loop runs more than once (AdamW over d12's 124M parameters): 3 blocks make
/// the loops here run several times too.
fn grid_stride(n: usize) -> launch::Grid {
    let g = launch::grid_stride(n);
    if FEW_BLOCKS.get() {
        launch::grid_1d((g.grid.0 as usize).min(3), launch::BLOCK)
    } else {
        g
    }
}

/// Asserts that the last launch on `k` in this thread took its packed path (16-byte loads and
/// stores) if `packed`, its scalar path otherwise: a kernel that stopped packing would still
/// compute the same numbers, only slower.
fn assert_path(k: &emu::Kernels, what: &str, packed: bool) {
    let n = k.last_vector_accesses();
    assert_eq!(
        n > 0,
        packed,
        "{what}: {n} packed loads and stores, where the {} path should run",
        if packed { "packed" } else { "scalar" }
    );
}

/// Runs `f` with the launchers' grids, then again with grid-stride launches of at most 3 blocks.
fn with_both_grids(f: impl Fn()) {
    f();
    FEW_BLOCKS.set(true);
    f();
    FEW_BLOCKS.set(false);
}

// ---- encoder -------------------------------------------------------------------------------------

/// gpu::encoder_forward's launch in T: out (B, T, C) = wte[inp] + wpe, a grid-stride launch over
/// the packs; `dims` is (B, T, C, Vp).
fn encoder_forward<T: Storage>(
    k: &emu::Kernels,
    [out, inp, wte, wpe]: [&emu::Buf; 4],
    (b, t, c, vp): (usize, usize, usize, usize),
    schedule: u32,
) {
    k.launch(
        &T::kernel("encoder_forward"),
        grid_stride((b * t * c).div_ceil(launch::pack::<T>())),
        &[
            Arg::Buf(out),
            Arg::Buf(inp),
            Arg::Buf(wte),
            Arg::Buf(wpe),
            Arg::I32(b as i32),
            Arg::I32(t as i32),
            Arg::I32(c as i32),
            Arg::I32(vp as i32),
        ],
        schedule,
    );
}

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
            encoder_forward::<T>(
                &k,
                [&d_out, &d_inp, &d_wte, &d_wpe],
                (B, t, c, vp),
                t as u32 % 3,
            );
            assert_path(
                &k,
                &label::<T>("encoder_forward", "path"),
                !misaligned && c % launch::pack::<T>() == 0,
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
            // padded to B*T buckets, as the engine uploads them (the kernel skips the padding)
            let buckets = launch::token_buckets(&inp);
            let nb = inp.len();
            assert_eq!(buckets.len(), launch::buckets_len(nb));
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
    with_both_grids(|| {
        // 72: packed path (multiple of 4); 37: scalar path
        encoder_case::<f32>(&[72, 37], 1, false);
        encoder_case::<f32>(&[72], 2, true);
    });
}

#[test]
fn encoder_bf16_is_the_cpu_rounded_once() {
    with_both_grids(|| {
        // 64: packed (multiple of 8); 100: scalar; misaligned wte: scalar
        encoder_case::<bf16>(&[64, 100], 1000, false);
        encoder_case::<bf16>(&[64], 1001, true);
    });
}

#[test]
fn encoder_bad_token_gives_nan_not_a_wild_read() {
    let k = kernels("encoder");
    // token Vp is the first past wte's rows (its row would start at the guard page after wte)
    let (b, t, c, vp) = (1, 3, 8, 4);
    let inp = [1u32, vp as u32, 1_000_000];
    // wte aligned (the packed path) or one element off (the scalar path)
    for misaligned in [false, true] {
        let d_inp = k.upload(&inp, false);
        let d_wte = up::<f32>(&k, &vec![1.0; vp * c], misaligned);
        let d_wpe = up::<f32>(&k, &vec![2.0; t * c], false);
        let d_out = up::<f32>(&k, &vec![0.0; b * t * c], false);
        encoder_forward::<f32>(&k, [&d_out, &d_inp, &d_wte, &d_wpe], (b, t, c, vp), 0);
        let out = down::<f32>(&d_out);
        assert!(out[..c].iter().all(|&x| x == 3.0), "{out:?}");
        assert!(out[c..].iter().all(|x| x.is_nan()), "{out:?}");
    }
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

/// Launches layernorm_backward_params_partial as gpu::layernorm_backward does (packed when
/// `launch::rows_packable` says so for partial, dout, inp, unless `force_scalar`) and returns
/// whether it took the packed path.
#[allow(clippy::too_many_arguments)]
fn layernorm_params_partial<T: Storage>(
    k: &std::sync::Arc<emu::Kernels>,
    partial: &emu::Buf, // (chunks, 2, C) fp32
    dout: &emu::Buf,    // (N, C)
    inp: &emu::Buf,     // (N, C)
    mean: &emu::Buf,    // (N)
    rstd: &emu::Buf,    // (N)
    n: usize,
    c: usize,
    force_scalar: bool,
    schedule: u32,
) -> bool {
    let packed =
        !force_scalar && launch::rows_packable::<T>(c, &[partial.addr(), dout.addr(), inp.addr()]);
    let (g, _, rpc) = launch::layernorm_params_partial::<T>(c, n, packed);
    k.launch(
        &T::kernel("layernorm_backward_params_partial"),
        g,
        &[
            Arg::Buf(partial),
            Arg::Buf(dout),
            Arg::Buf(inp),
            Arg::Buf(mean),
            Arg::Buf(rstd),
            Arg::I32(n as i32),
            Arg::I32(c as i32),
            Arg::I32(rpc as i32),
            Arg::I32(packed as i32),
        ],
        schedule,
    );
    packed
}

/// Layernorm forward and backward in T for t in TS and c in `cs`, inp and dinp 16-byte aligned or
/// one element off (`misaligned`). dinp's kernel takes its packed path by itself when C is a
/// multiple of the pack and dinp, dout, inp, weight are aligned; the parameter gradients' first
/// stage is launched packed when `launch::rows_packable` allows (C a multiple of the pack, partial,
/// dout and inp aligned), and then also scalar: the partial sums must agree bitwise.
fn layernorm_case<T: Storage>(cs: &[usize], seed0: u64, misaligned: bool) {
    let k = kernels("layernorm");
    let u = T::unit();
    for t in TS {
        for &c in cs {
            let n = B * t;
            let packable = !misaligned && c % launch::pack::<T>() == 0;
            let what = |x: &str| {
                let path = if packable { "packed" } else { "scalar" };
                label::<T>("layernorm", &format!("{x} (C={c} T={t}, {path})"))
            };
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
            let dinp_packed = launch::rows_packable::<T>(
                c,
                &[d_dinp.addr(), d_dout.addr(), d_inp.addr(), d_w.addr()],
            );
            assert_eq!(dinp_packed, packable, "{}", what("dinp's path"));
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
            let (_, chunks, rpc) = launch::column_chunks(c, n);
            let d_partial = up::<f32>(&k, &rand(&mut rng, chunks * 2 * c, 9.0), false);
            let packed = layernorm_params_partial::<T>(
                &k, &d_partial, &d_dout, &d_inp, &d_mean, &d_rstd, n, c, false, 3,
            );
            assert_eq!(packed, packable, "{}", what("params_partial's path"));
            if packed {
                // the scalar path on the same inputs: the same partial sums, bit for bit
                let d_scalar = up::<f32>(&k, &rand(&mut rng, chunks * 2 * c, 9.0), false);
                layernorm_params_partial::<T>(
                    &k, &d_scalar, &d_dout, &d_inp, &d_mean, &d_rstd, n, c, true, 1,
                );
                assert_bitwise(
                    &what("partial sums, packed vs scalar"),
                    &down::<f32>(&d_partial),
                    &down::<f32>(&d_scalar),
                );
            }
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
            // dbias is a plain column sum and dweight the column sum of dout * norm, norm = (x -
            // mean) * rstd from the kernels' mean and rstd: bitwise the chunked order's (then one
            // rounding).
            let (km, ks) = (down::<f32>(&d_mean), down::<f32>(&d_rstd));
            let dout_norm: Vec<f32> = (0..n * c)
                .map(|i| dout[i] * ((inp[i] - km[i / c]) * ks[i / c]))
                .collect();
            for (name, d_got, acc0, x) in [
                ("dbias", &d_db, &db0, &dout),
                ("dweight", &d_dw, &dw0, &dout_norm),
            ] {
                let mut want = acc0.clone();
                chunked_column_sums(&mut want, x, n, c, rpc);
                let got = down::<T>(d_got);
                assert_bitwise(
                    &what(&format!("{name} (chunked order)")),
                    &got,
                    &round_to::<T>(&want),
                );
            }
        }
    }
}

#[test]
fn layernorm_fp32_matches_cpu() {
    // packed (C a multiple of 4, aligned): 72, 100, 2056 (514 packs: 3 blocks of the parameter
    // gradients' first stage); scalar: 37 and the misaligned inp/dinp
    layernorm_case::<f32>(&[72, 100, 37, 2056], 100, false);
    layernorm_case::<f32>(&[72], 101, true);
}

#[test]
fn layernorm_bf16_matches_cpu() {
    // packed (C a multiple of 8, aligned): 72, 64, 2056 (257 packs: 2 blocks of the parameter
    // gradients' first stage); scalar: 100 and the misaligned inp/dinp
    layernorm_case::<bf16>(&[72, 100, 64, 2056], 1100, false);
    layernorm_case::<bf16>(&[64], 1101, true);
}

// ---- residual and gelu -----------------------------------------------------------------------------

/// Whether an elementwise kernel over `n` elements must take its packed path: with every buffer
/// aligned and at least one whole pack (with none, the packed path has nothing to do).
fn takes_packed_path<T: Storage>(misaligned: bool, n: usize) -> bool {
    !misaligned && n >= launch::pack::<T>()
}

/// The elementwise kernels' sizes: fewer elements than a pack of either precision (4 fp32, 8
/// bf16), one pack and a few more of each (the packed loop's part ends where the scalar tail
/// begins), and many, not a multiple of a pack.
const ELEMENTWISE_SIZES: [usize; 4] = [3, 5, 9, B * 37 * 72 + 5];

/// Residual forward and backward of `n` elements in T on buffers 16-byte aligned, or with one of
/// them one element off (`misaligned`): the CPU's fp32 result rounded once to T, bitwise.
fn residual_case<T: Storage>(misaligned: bool, seed: u64, n: usize) {
    let k = kernels("residual");
    let packed = takes_packed_path::<T>(misaligned, n);
    let mut rng = Rng::new(seed);
    let a = round_to::<T>(&rand(&mut rng, n, 1.0));
    let b = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut out = vec![0.0; n];
    cpu::residual::residual_forward(&mut out, &a, &b);
    let (d_a, d_b) = (up::<T>(&k, &a, false), up::<T>(&k, &b, false));
    let d_out = up::<T>(&k, &vec![0.0; n], misaligned);
    let g = grid_stride(n.div_ceil(launch::pack::<T>()));
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
    let what = format!(
        "residual {} out, n {n} (misaligned {misaligned})",
        T::label()
    );
    assert_path(&k, &what, packed);
    assert_bitwise(&what, &down::<T>(&d_out), &round_to::<T>(&out));

    let dout = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut d1 = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut d2 = round_to::<T>(&rand(&mut rng, n, 1.0));
    let (g1, g2) = (up::<T>(&k, &d1, false), up::<T>(&k, &d2, misaligned));
    cpu::residual::residual_backward(&mut d1, &mut d2, &dout);
    let d_dout = up::<T>(&k, &dout, false);
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
    let what = format!(
        "residual {} dinp, n {n} (misaligned {misaligned})",
        T::label()
    );
    assert_path(&k, &what, packed);
    assert_bitwise(&what, &down::<T>(&g1), &round_to::<T>(&d1));
    assert_bitwise(&what, &down::<T>(&g2), &round_to::<T>(&d2));
}

#[test]
fn residual_is_bitwise_the_cpu_in_both_precisions_and_paths() {
    with_both_grids(|| {
        for misaligned in [false, true] {
            for n in ELEMENTWISE_SIZES {
                residual_case::<f32>(misaligned, 500 + misaligned as u64, n);
                residual_case::<bf16>(misaligned, 1500 + misaligned as u64, n);
            }
        }
    });
}

fn gelu_case<T: Storage>(seed: u64, misaligned: bool, n: usize) {
    let k = kernels("gelu");
    let packed = takes_packed_path::<T>(misaligned, n);
    let u = T::unit();
    let what = |x: &str| format!("gelu {} {x}, n {n} (misaligned {misaligned})", T::label());
    let mut rng = Rng::new(seed);
    let inp = round_to::<T>(&rand(&mut rng, n, 5.0));
    let mut out = vec![0.0; n];
    cpu::gelu::gelu_forward(&mut out, &inp);
    let dout = round_to::<T>(&rand(&mut rng, n, 1.0));
    let dinp0 = round_to::<T>(&rand(&mut rng, n, 1.0));
    let mut dinp = dinp0.clone();
    cpu::gelu::gelu_backward(&mut dinp, &inp, &dout);
    let g = grid_stride(n.div_ceil(launch::pack::<T>()));
    let d_inp = up::<T>(&k, &inp, false);
    let d_out = up::<T>(&k, &vec![0.0; n], misaligned);
    k.launch(
        &T::kernel("gelu_forward"),
        g,
        &[Arg::Buf(&d_out), Arg::Buf(&d_inp), Arg::Usize(n)],
        0,
    );
    assert_path(&k, &what("out"), packed);
    assert_close(&what("out"), &down::<T>(&d_out), &out, 1e-6, u + 1e-5);
    let d_dinp = up::<T>(&k, &dinp0, false);
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
    assert_path(&k, &what("dinp"), packed);
    assert_close(&what("dinp"), &down::<T>(&d_dinp), &dinp, 1e-5, u + 1e-5);
}

#[test]
fn gelu_matches_cpu_in_both_precisions_and_paths() {
    with_both_grids(|| {
        for misaligned in [false, true] {
            for n in ELEMENTWISE_SIZES {
                gelu_case::<f32>(400, misaligned, n);
                gelu_case::<bf16>(1400, misaligned, n);
            }
        }
    });
}

// ---- matmul: bias add and bias gradient (the products are cuBLAS) ---------------------------------

fn matmul_bias_case<T: Storage>(seed0: u64, misaligned: bool) {
    let k = kernels("matmul");
    let u = T::unit();
    let what = |x: &str| label::<T>("matmul", x);
    let oc = 131;
    for t in TS {
        let n = B * t;
        let mut rng = Rng::new(seed0 + n as u64);
        // add_bias: out (the product, here random) += bias[o], one rounding
        let prod = round_to::<T>(&rand(&mut rng, n * oc, 3.0));
        let bias = round_to::<T>(&rand(&mut rng, oc, 1.0));
        let want: Vec<f32> = prod
            .iter()
            .enumerate()
            .map(|(i, &x)| x + bias[i % oc])
            .collect();
        let (d_out, d_bias) = (up::<T>(&k, &prod, misaligned), up::<T>(&k, &bias, false));
        // gpu::matmul_forward: one grid-stride thread per element
        k.launch(
            &T::kernel("add_bias"),
            grid_stride(n * oc),
            &[
                Arg::Buf(&d_out),
                Arg::Buf(&d_bias),
                Arg::Usize(n * oc),
                Arg::I32(oc as i32),
            ],
            t as u32,
        );
        assert_bitwise(
            &what("out + bias"),
            &down::<T>(&d_out),
            &round_to::<T>(&want),
        );

        // bias_backward_partial + column_sum_reduce against the CPU twin's dbias (any order:
        // tolerance) and against the chunked order (bitwise); run under two schedules.
        let c = 5;
        let dout = round_to::<T>(&rand(&mut rng, n * oc, 1.0));
        let db0 = round_to::<T>(&rand(&mut rng, oc, 1.0));
        let mut db = db0.clone();
        let (inp, weight) = (rand(&mut rng, n * c, 1.0), rand(&mut rng, oc * c, 1.0));
        let (mut dinp, mut dw) = (vec![0.0; n * c], vec![0.0; oc * c]);
        cpu::matmul::matmul_backward(
            &mut dinp,
            &mut dw,
            Some(&mut db[..]),
            &dout,
            &inp,
            &weight,
            B,
            t,
            c,
            oc,
        );
        let (g, chunks, rpc) = launch::column_chunks(oc, n);
        let mut chunked = db0.clone();
        chunked_column_sums(&mut chunked, &dout, n, oc, rpc);
        let d_dout = up::<T>(&k, &dout, misaligned);
        for schedule in [0, 5] {
            let d_partial = up::<f32>(&k, &rand(&mut rng, chunks * oc, 9.0), false);
            let d_db = up::<T>(&k, &db0, misaligned);
            k.launch(
                &T::kernel("bias_backward_partial"),
                g,
                &[
                    Arg::Buf(&d_partial),
                    Arg::Buf(&d_dout),
                    Arg::I32(n as i32),
                    Arg::I32(oc as i32),
                    Arg::I32(rpc as i32),
                ],
                schedule,
            );
            k.launch(
                &T::kernel("column_sum_reduce"),
                launch::per_element(oc),
                &[
                    Arg::Buf(&d_db),
                    Arg::Buf(&d_partial),
                    Arg::I32(chunks as i32),
                    Arg::I32(oc as i32),
                ],
                schedule,
            );
            let got = down::<T>(&d_db);
            assert_close(&what("dbias"), &got, &db, 1e-4, u + 1e-4);
            assert_bitwise(
                &what("dbias (chunked order)"),
                &got,
                &round_to::<T>(&chunked),
            );
        }
    }
}

#[test]
fn matmul_bias_kernels_match_cpu() {
    with_both_grids(|| {
        matmul_bias_case::<f32>(200, false);
        matmul_bias_case::<bf16>(1200, false);
        matmul_bias_case::<bf16>(1201, true);
    });
}

#[test]
fn bias_gradient_over_more_than_one_chunk() {
    // N = 200 rows: 4 chunks of 64, the last partial
    let k = kernels("matmul");
    let (n, oc) = (200, 300);
    let mut rng = Rng::new(7);
    let dout = rand(&mut rng, n * oc, 1.0);
    let (g, chunks, rpc) = launch::column_chunks(oc, n);
    assert_eq!((chunks, rpc), (4, 64));
    let d_dout = up::<f32>(&k, &dout, false);
    let d_partial = up::<f32>(&k, &vec![f32::NAN; chunks * oc], false);
    let d_db = up::<f32>(&k, &vec![0.0; oc], false);
    k.launch(
        "bias_backward_partial",
        g,
        &[
            Arg::Buf(&d_partial),
            Arg::Buf(&d_dout),
            Arg::I32(n as i32),
            Arg::I32(oc as i32),
            Arg::I32(rpc as i32),
        ],
        2,
    );
    k.launch(
        "column_sum_reduce",
        launch::per_element(oc),
        &[
            Arg::Buf(&d_db),
            Arg::Buf(&d_partial),
            Arg::I32(chunks as i32),
            Arg::I32(oc as i32),
        ],
        3,
    );
    let mut want = vec![0.0; oc];
    chunked_column_sums(&mut want, &dout, n, oc, rpc);
    assert_bitwise("dbias, 4 chunks", &down::<f32>(&d_db), &want);
}

// ---- attention (the cuBLAS path's kernels) -----------------------------------------------------------

/// attention_permute, _unpermute and their backwards: pure data movement (plus one fp32 add and
/// rounding in the backward): bitwise against the index formulas.
fn attention_permute_case<T: Storage>(seed: u64) {
    let k = kernels("attention");
    for t in TS {
        for (c, nh) in [(72, 3), (100, 4)] {
            let hs = c / nh;
            let btc = B * t * c;
            let mut rng = Rng::new(seed + t as u64 + c as u64);
            let inp = round_to::<T>(&rand(&mut rng, 3 * btc, 1.0));
            // (b, h, t, d) -> index into the per-head tensor and into (B, T, 3C)
            let per_head =
                |b: usize, h: usize, ti: usize, d: usize| ((b * nh + h) * t + ti) * hs + d;
            let fused = |b: usize, ti: usize, h: usize, d: usize| (b * t + ti) * 3 * c + h * hs + d;
            let dims = [
                Arg::I32(B as i32),
                Arg::I32(t as i32),
                Arg::I32(nh as i32),
                Arg::I32(hs as i32),
            ];
            let d_inp = up::<T>(&k, &inp, false);
            let qkv: Vec<_> = (0..3)
                .map(|_| up::<T>(&k, &rand(&mut rng, btc, 9.0), false))
                .collect();
            let mut args = vec![
                Arg::Buf(&qkv[0]),
                Arg::Buf(&qkv[1]),
                Arg::Buf(&qkv[2]),
                Arg::Buf(&d_inp),
            ];
            args.extend(dims.iter().map(|a| match a {
                Arg::I32(x) => Arg::I32(*x),
                _ => unreachable!(),
            }));
            k.launch(&T::kernel("attention_permute"), grid_stride(btc), &args, 1);
            let mut want = vec![vec![0.0; btc]; 3];
            let mut y = vec![0.0; btc];
            let y_host = rand(&mut rng, btc, 1.0);
            let mut unperm = vec![0.0; btc];
            for b in 0..B {
                for ti in 0..t {
                    for h in 0..nh {
                        for d in 0..hs {
                            for (part, w) in want.iter_mut().enumerate() {
                                w[per_head(b, h, ti, d)] = inp[fused(b, ti, h, d) + part * c];
                            }
                            y[per_head(b, h, ti, d)] = y_host[per_head(b, h, ti, d)];
                            unperm[(b * t + ti) * c + h * hs + d] = y_host[per_head(b, h, ti, d)];
                        }
                    }
                }
            }
            for (part, w) in want.iter().enumerate() {
                assert_bitwise(
                    &label::<T>("attention_permute", &format!("part {part}")),
                    &down::<T>(&qkv[part]),
                    w,
                );
            }
            // unpermute: out (B,T,C) <- y (B,NH,T,HS)
            let y = round_to::<T>(&y);
            let unperm = round_to::<T>(&unperm);
            let d_y = up::<T>(&k, &y, false);
            let d_o = up::<T>(&k, &rand(&mut rng, btc, 9.0), false);
            k.launch(
                &T::kernel("attention_unpermute"),
                grid_stride(btc),
                &[
                    Arg::Buf(&d_o),
                    Arg::Buf(&d_y),
                    Arg::I32(B as i32),
                    Arg::I32(t as i32),
                    Arg::I32(nh as i32),
                    Arg::I32(hs as i32),
                ],
                2,
            );
            assert_bitwise(
                &label::<T>("attention_unpermute", "out"),
                &down::<T>(&d_o),
                &unperm,
            );
            // unpermute backward: dy (B,NH,T,HS) = dout (B,T,C) rearranged: the inverse
            let d_dy = up::<T>(&k, &rand(&mut rng, btc, 9.0), false);
            k.launch(
                &T::kernel("attention_unpermute_backward"),
                grid_stride(btc),
                &[
                    Arg::Buf(&d_dy),
                    Arg::Buf(&d_o),
                    Arg::I32(B as i32),
                    Arg::I32(t as i32),
                    Arg::I32(nh as i32),
                    Arg::I32(hs as i32),
                ],
                0,
            );
            assert_bitwise(
                &label::<T>("attention_unpermute_backward", "dy"),
                &down::<T>(&d_dy),
                &y,
            );
            // permute backward: dinp (B,T,3C) += dq, dk, dv
            let dinp0 = round_to::<T>(&rand(&mut rng, 3 * btc, 1.0));
            let mut dinp = dinp0.clone();
            for b in 0..B {
                for ti in 0..t {
                    for h in 0..nh {
                        for d in 0..hs {
                            for (part, w) in want.iter().enumerate() {
                                dinp[fused(b, ti, h, d) + part * c] += w[per_head(b, h, ti, d)];
                            }
                        }
                    }
                }
            }
            let d_dinp = up::<T>(&k, &dinp0, false);
            k.launch(
                &T::kernel("attention_permute_backward"),
                grid_stride(btc),
                &[
                    Arg::Buf(&d_dinp),
                    Arg::Buf(&qkv[0]),
                    Arg::Buf(&qkv[1]),
                    Arg::Buf(&qkv[2]),
                    Arg::I32(B as i32),
                    Arg::I32(t as i32),
                    Arg::I32(nh as i32),
                    Arg::I32(hs as i32),
                ],
                3,
            );
            assert_bitwise(
                &label::<T>("attention_permute_backward", "dinp"),
                &down::<T>(&d_dinp),
                &round_to::<T>(&dinp),
            );
        }
    }
}

#[test]
fn attention_permutations_are_bitwise() {
    with_both_grids(|| {
        attention_permute_case::<f32>(300);
        attention_permute_case::<bf16>(1300);
    });
}

/// The causal softmax forward and backward kernels fed the CPU twin's preatt and datt (with
/// garbage above the diagonal, as the gemms leave it), against the CPU twin's att and dpreatt.
fn attention_softmax_case<T: Storage>(seed0: u64) {
    let k = kernels("attention");
    let u = T::unit();
    let what = |x: &str| label::<T>("attention softmax", x);
    for t in TS.into_iter().chain([70]) {
        for (c, nh) in [(72, 3), (100, 4)] {
            let mut rng = Rng::new(seed0 + t as u64 + c as u64);
            let btt = B * nh * t * t;
            let rows = B * nh * t;
            let inp = round_to::<T>(&rand(&mut rng, B * t * 3 * c, 1.5));
            let (mut out, mut preatt, mut att) =
                (vec![0.0; B * t * c], vec![0.0; btt], vec![0.0; btt]);
            cpu::attention::attention_forward(&mut out, &mut preatt, &mut att, &inp, B, t, c, nh);
            let with_garbage = |x: &[f32], rng: &mut Rng| {
                let g = rand(rng, btt, 7.0);
                let mut y = round_to::<T>(x);
                for row in 0..rows {
                    let ti = row % t;
                    y[row * t + ti + 1..(row + 1) * t]
                        .copy_from_slice(&round_to::<T>(&g[row * t + ti + 1..(row + 1) * t]));
                }
                y
            };
            let d_pre = up::<T>(&k, &with_garbage(&preatt, &mut rng), false);
            let d_att = up::<T>(&k, &rand(&mut rng, btt, 7.0), false);
            k.launch(
                &T::kernel("attention_softmax_forward"),
                launch::warp_per_row(rows),
                &[
                    Arg::Buf(&d_att),
                    Arg::Buf(&d_pre),
                    Arg::I32((B * nh) as i32),
                    Arg::I32(t as i32),
                ],
                t as u32 % 4,
            );
            // bf16: the softmax of the rounded preatt (see tests/gpu_layers.rs)
            let r_att = if T::BF16 {
                2.5 * (u * max_abs(&preatt) + 1e-5) + 1.1 * u
            } else {
                1e-5
            };
            let got_att = down::<T>(&d_att);
            assert_close(&what("att"), &got_att, &att, 1e-6, r_att);
            let got_pre = down::<T>(&d_pre);
            for row in 0..rows {
                let ti = row % t;
                let r = row * t..(row + 1) * t;
                assert!(
                    got_pre[r.clone()][ti + 1..].iter().all(|&x| x == 0.0)
                        && got_att[r][ti + 1..].iter().all(|&x| x == 0.0),
                    "row {row}: not zero above the diagonal"
                );
            }

            let att_t = round_to::<T>(&att);
            let dout = rand(&mut rng, B * t * c, 1.0);
            let mut dinp = vec![0.0; B * t * 3 * c];
            let (mut dpreatt, mut datt) = (vec![0.0; btt], vec![0.0; btt]);
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
            let d_att_t = up::<T>(&k, &att_t, false);
            let d_datt = up::<T>(&k, &with_garbage(&datt, &mut rng), false);
            let d_dpre = up::<T>(&k, &rand(&mut rng, btt, 7.0), false);
            k.launch(
                &T::kernel("attention_softmax_backward"),
                launch::warp_per_row(rows),
                &[
                    Arg::Buf(&d_dpre),
                    Arg::Buf(&d_datt),
                    Arg::Buf(&d_att_t),
                    Arg::I32((B * nh) as i32),
                    Arg::I32(t as i32),
                ],
                2,
            );
            let (atol, rtol) = if T::BF16 {
                let e = u * max_abs(&datt) + 1e-6;
                (2.0 * e + 1e-5, u + 1e-5)
            } else {
                (1e-5, 1e-4)
            };
            assert_close(&what("dpreatt"), &down::<T>(&d_dpre), &dpreatt, atol, rtol);
            let got_datt = down::<T>(&d_datt);
            for row in 0..rows {
                let ti = row % t;
                assert!(
                    got_datt[row * t + ti + 1..(row + 1) * t]
                        .iter()
                        .all(|&x| x == 0.0),
                    "datt row {row}: not zero above the diagonal"
                );
            }
        }
    }
}

#[test]
fn attention_softmax_matches_cpu() {
    attention_softmax_case::<f32>(310);
    attention_softmax_case::<bf16>(1310);
}

/// The causal softmax forward at scores spread over hundreds, where the row's own maximum must be
/// subtracted (a maximum off by more than about 88 makes exp overflow or every term underflow):
/// random preatt in [-300, 300] (above the diagonal too, where it must take no part), against the
/// softmax in f64 of the same rounded values. The preatt of `attention_softmax_case` come from
/// attention of O(1) inputs, within a few units of each other, where any maximum would do. A
/// random row here has its largest two a few units apart, where a maximum that misses one does
/// as well; so the rows of one head in three hold a lone peak at their diagonal, 300 or more
/// above the row's other scores. Every position is then the peak of some row, and a maximum that
/// skips one (a loop striding 33, not 32) misses it there: exp overflows.
fn attention_softmax_large_scores_case<T: Storage>(seed0: u64) {
    let k = kernels("attention");
    let what = |x: &str| label::<T>("attention softmax at large scores", x);
    let bnh = B * 3;
    for t in TS.into_iter().chain([70]) {
        let mut rng = Rng::new(seed0 + t as u64);
        let rows = bnh * t;
        let mut preatt = rand(&mut rng, rows * t, 300.0);
        for (row, x) in preatt.chunks_mut(t).enumerate() {
            if (row / t) % 3 == 0 {
                let diagonal = row % t;
                x[..diagonal]
                    .iter_mut()
                    .for_each(|xi| *xi = *xi / 3.0 - 100.0); // [-200, 0]
                x[diagonal] = 300.0;
            }
        }
        let preatt = round_to::<T>(&preatt);
        let mut want = vec![0.0; rows * t];
        for (row, (x, y)) in preatt.chunks(t).zip(want.chunks_mut(t)).enumerate() {
            let causal = &x[..=row % t];
            let m = causal
                .iter()
                .fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let sum: f64 = causal.iter().map(|&xi| (xi as f64 - m).exp()).sum();
            for (yi, &xi) in y.iter_mut().zip(causal) {
                *yi = ((xi as f64 - m).exp() / sum) as f32;
            }
        }
        let d_pre = up::<T>(&k, &preatt, false);
        let d_att = up::<T>(&k, &rand(&mut rng, rows * t, 7.0), false);
        k.launch(
            &T::kernel("attention_softmax_forward"),
            launch::warp_per_row(rows),
            &[
                Arg::Buf(&d_att),
                Arg::Buf(&d_pre),
                Arg::I32(bnh as i32),
                Arg::I32(t as i32),
            ],
            t as u32 % 4,
        );
        // fp32: each term's exp(x - m) within a few ulps (x - m rounds by at most |x - m| 2^-24,
        // and att |x - m| <= 1/e); bf16: then one rounding
        let rtol = if T::BF16 { T::unit() + 1e-5 } else { 1e-5 };
        assert_close(&what("att"), &down::<T>(&d_att), &want, 1e-6, rtol);
    }
}

#[test]
fn attention_softmax_keeps_the_row_maximum_at_large_scores() {
    attention_softmax_large_scores_case::<f32>(320);
    attention_softmax_large_scores_case::<bf16>(1320);
}

// ---- classifier --------------------------------------------------------------------------------------

/// The fused classifier in T on both of its paths (Vp = 128: 16-byte packs, V = Vp among them, so
/// that a pack read past V would be the next row's; Vp = 103 or a misaligned buffer: single
/// elements), as the model runs it: first the losses alone, saving each
/// row's softmax max and sum (logits untouched), then the backward with those statistics; and the
/// backward computing them itself, which must give bitwise the same dlogits and losses. The rows
/// of V = 20011 (one sequence, T = 1) give each of a block's threads several packs or elements,
/// so that its running max rises and its sum must be rescaled. The logits are uniform in
/// [-scale, scale], plus -shift, 0 and +shift on the rows in turn.
fn classifier_case<T: Storage>(seed0: u64, scale: f32, shift: f32) {
    let k = kernels("classifier");
    let u = T::unit();
    for (v, vp, misaligned) in [
        (101, 128, false),
        (101, 128, true),
        (101, 103, false),
        (20011, 20016, false),
        (20011, 20011, false),
        (128, 128, false),
    ] {
        let ts: &[usize] = if v > 1000 { &[1] } else { &TS };
        for &t in ts {
            let n = B * t;
            let mut rng = Rng::new(seed0 + t as u64 + vp as u64);
            let mut logits = rand(&mut rng, n * vp, scale);
            for (r, row) in logits.chunks_mut(vp).enumerate() {
                let offset = shift * (r % 3) as f32 - shift;
                row[..v].iter_mut().for_each(|x| *x += offset);
                row[v..].fill(1e4); // the padding must take no part
            }
            let logits = round_to::<T>(&logits);
            let targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
            let dloss = 1.0 / n as f32;
            let (losses, dlogits) =
                cpu::classifier::fused_classifier(&logits, dloss, &targets, B, t, v, vp);
            let row_max: Vec<f32> = logits
                .chunks(vp)
                .map(|x| x[..v].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)))
                .collect();
            // bf16's rounded exponent base (tests/tolerance)
            let base_slack: Vec<f32> = row_max
                .iter()
                .map(|&m| classifier_exp_base_slack(T::BF16, m))
                .collect();
            let loss_tol = |row: usize, w: f32| 1e-5 + 1e-5 * w.abs() + base_slack[row];
            let d_targets = k.upload(&targets, false);
            let d_stats = up::<f32>(&k, &rand(&mut rng, 2 * n, 9.0), false);
            let case = format!("classifier (V {v}, Vp {vp}, misaligned {misaligned})");
            // launches fused_classifier; stats: None passes a null row_stats
            let run =
                |logits: &emu::Buf, write: i32, stats: Option<(&emu::Buf, i32)>, order: u32| {
                    let d_losses = up::<f32>(&k, &vec![f32::NAN; n], false);
                    let stats_arg = match stats {
                        Some((b, _)) => Arg::Buf(b),
                        None => Arg::Usize(0),
                    };
                    k.launch(
                        &T::kernel("fused_classifier"),
                        launch::classifier(n),
                        &[
                            Arg::Buf(logits),
                            Arg::Buf(&d_losses),
                            stats_arg,
                            Arg::F32(if write == 1 { dloss } else { 0.0 }),
                            Arg::Buf(&d_targets),
                            Arg::I32(n as i32),
                            Arg::I32(v as i32),
                            Arg::I32(vp as i32),
                            Arg::I32(write),
                            Arg::I32(stats.map_or(0, |(_, given)| given)),
                        ],
                        order,
                    );
                    down::<f32>(&d_losses)
                };
            let what = |step: &str, x: &str| label::<T>(&format!("{case} {step}"), x);

            // the forward: losses and row statistics, the logits untouched
            let d_logits = up::<T>(&k, &logits, misaligned);
            let got = run(&d_logits, 0, Some((&d_stats, 0)), t as u32);
            assert_path(
                &k,
                &what("losses alone", "path"),
                !misaligned && vp % launch::pack::<T>() == 0,
            );
            assert_within(&what("losses alone", "losses"), &got, &losses, loss_tol);
            assert_bitwise(
                &what("losses alone", "logits untouched"),
                &down::<T>(&d_logits),
                &logits,
            );
            let stats = down::<f32>(&d_stats);
            for (row, x) in logits.chunks(vp).enumerate() {
                let m = row_max[row];
                let sum: f64 = x[..v].iter().map(|&xi| ((xi - m) as f64).exp()).sum();
                assert_eq!(stats[2 * row], m, "{case}: row {row} max");
                let rel = (stats[2 * row + 1] as f64 - sum).abs() / sum;
                assert!(
                    rel <= 1e-5 + base_slack[row] as f64,
                    "{case}: row {row} sum {} vs {sum}",
                    stats[2 * row + 1]
                );
            }

            // the backward with the saved statistics
            let got = run(&d_logits, 1, Some((&d_stats, 1)), t as u32 + 1);
            assert_within(&what("backward", "losses"), &got, &losses, loss_tol);
            let with_stats = down::<T>(&d_logits);
            assert_close(
                &what("backward", "dlogits"),
                &with_stats,
                &dlogits,
                1e-8,
                u + 1e-5,
            );
            for row in with_stats.chunks(vp) {
                assert!(row[v..].iter().all(|&x| x == 0.0), "padding not zeroed");
            }

            // the backward computing the statistics itself: the same bits
            let d_fresh = up::<T>(&k, &logits, misaligned);
            let got_fresh = run(&d_fresh, 1, None, t as u32 + 2);
            assert_bitwise(
                &what("backward without stats", "dlogits"),
                &down::<T>(&d_fresh),
                &with_stats,
            );
            assert_bitwise(&what("backward without stats", "losses"), &got_fresh, &got);
        }
    }
}

#[test]
fn fused_classifier_matches_cpu() {
    classifier_case::<f32>(600, 4.0, 0.0);
    classifier_case::<bf16>(1600, 4.0, 0.0);
}

/// Logits spread over hundreds (a diverging run's, or a confident model's), and rows whose every
/// logit is far below 0 or far above (softmax ignores a row's offset, so a model is free to drift
/// there): a sum of exp(x - m) is finite and the loss right only with m the row's own maximum.
/// With logits within a few units of 0, as above, any maximum near 0 would do: exp(x - m) neither
/// overflows nor underflows, and the loss log(s) - (x - m) does not depend on m.
#[test]
fn fused_classifier_keeps_the_row_maximum_at_large_logits() {
    classifier_case::<f32>(700, 120.0, 240.0);
    classifier_case::<bf16>(1700, 120.0, 240.0);
}

/// A target out of range (V, the first column past the vocabulary, and u32::MAX) gives a NaN
/// loss and no one-hot term, not a read past the row: the kernel's own guard (the device's
/// targets are not checked on the host). The padding holds 1e4: target V read as a logit would
/// give a finite loss. Against the softmax in f64, on both paths.
#[test]
fn fused_classifier_bad_target_gives_nan_not_a_wild_read() {
    let k = kernels("classifier");
    let (v, vp, n, dloss) = (5, 8, 3, 0.5);
    let row: Vec<f32> = (0..vp)
        .map(|i| if i < v { i as f32 * 0.5 } else { 1e4 })
        .collect();
    let logits = row.repeat(n);
    let targets = [1u32, v as u32, u32::MAX];
    let sum: f64 = row[..v].iter().map(|&x| (x as f64).exp()).sum();
    let p: Vec<f64> = row[..v].iter().map(|&x| (x as f64).exp() / sum).collect();
    for misaligned in [false, true] {
        let d_logits = up::<f32>(&k, &logits, misaligned);
        let d_targets = k.upload(&targets, false);
        let d_losses = up::<f32>(&k, &[f32::NAN; 3], false);
        k.launch(
            "fused_classifier",
            launch::classifier(n),
            &[
                Arg::Buf(&d_logits),
                Arg::Buf(&d_losses),
                Arg::Usize(0),
                Arg::F32(dloss),
                Arg::Buf(&d_targets),
                Arg::I32(n as i32),
                Arg::I32(v as i32),
                Arg::I32(vp as i32),
                Arg::I32(1),
                Arg::I32(0),
            ],
            0,
        );
        assert_path(&k, "bad target path", !misaligned);
        let losses = down::<f32>(&d_losses);
        assert!((losses[0] as f64 + p[1].ln()).abs() < 1e-6, "{losses:?}");
        assert!(losses[1].is_nan() && losses[2].is_nan(), "{losses:?}");
        let dlogits = down::<f32>(&d_logits);
        for (r, got) in dlogits.chunks(vp).enumerate() {
            for (i, &g) in got.iter().enumerate() {
                let want = match i {
                    _ if i >= v => 0.0,
                    1 if r == 0 => (p[i] - 1.0) * dloss as f64,
                    _ => p[i] * dloss as f64,
                };
                assert!((g as f64 - want).abs() < 1e-6, "row {r}: {got:?}");
            }
        }
    }
}

// ---- AdamW and the global norm -----------------------------------------------------------------------

#[cfg(has_cuda)]
const ADAMW_HP: cpu::adamw::AdamW = cpu::adamw::AdamW {
    lr: 3e-4,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
    decay_on: train_gpt2_cuda::cpu::adamw::DecayOn::All,
};

/// The kernel's AdamWParams (eight floats, `kernels/common.h`) as the launcher derives them.
#[cfg(has_cuda)]
fn adamw_params(step: usize, grad_scale: f32) -> Arg<'static> {
    let p = train_gpt2_cuda::gpu::adamw_params(&ADAMW_HP, step, grad_scale);
    let f = [
        p.grad_scale,
        p.decay,
        p.one_minus_beta1,
        p.beta2,
        p.one_minus_beta2,
        p.neg_step_size,
        p.beta2_correction_sqrt,
        p.eps,
    ];
    assert_eq!(std::mem::size_of_val(&p), std::mem::size_of_val(&f));
    Arg::Bytes(f.iter().flat_map(|x| x.to_ne_bytes()).collect())
}

#[cfg(has_cuda)]
#[test]
fn adamw_fp32_is_bitwise_the_cpu() {
    with_both_grids(|| {
        let k = kernels("adamw");
        for misaligned in [false, true] {
            let n = 10_003;
            let mut rng = Rng::new(700 + misaligned as u64);
            let mut params = rand(&mut rng, n, 1.0);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let d_p = up::<f32>(&k, &params, false);
            let (d_m, d_v) = (up::<f32>(&k, &m, false), up::<f32>(&k, &v, misaligned));
            for step in 1..=3 {
                let grads = rand(&mut rng, n, 0.5);
                let d_g = up::<f32>(&k, &grads, false);
                let scale = if step == 2 { 0.7 } else { 1.0 };
                cpu::adamw::adamw_update(
                    &mut params,
                    &grads,
                    &mut m,
                    &mut v,
                    &ADAMW_HP,
                    step,
                    scale,
                );
                k.launch(
                    "adamw_kernel",
                    grid_stride(n.div_ceil(launch::pack::<f32>())),
                    &[
                        Arg::Buf(&d_p),
                        Arg::Buf(&d_g),
                        Arg::Buf(&d_m),
                        Arg::Buf(&d_v),
                        Arg::Usize(n),
                        adamw_params(step, scale),
                    ],
                    step as u32,
                );
                assert_path(&k, "adamw", !misaligned);
                assert_bitwise("adamw params", &down::<f32>(&d_p), &params);
                assert_bitwise("adamw m", &down::<f32>(&d_m), &m);
                assert_bitwise("adamw v", &down::<f32>(&d_v), &v);
            }
        }
    });
}

#[cfg(has_cuda)]
#[test]
fn adamw_mixed_is_bitwise_the_cpu_with_stochastic_rounding() {
    with_both_grids(|| {
        use train_gpt2_cuda::precision::{round_bf16_stochastic, rounding_bits};
        let k = kernels("adamw");
        for misaligned in [false, true] {
            let n = 10_003;
            // the rounding counters start at `first` (the slice's place in a whole parameter buffer)
            let first = if misaligned { 3_000_000_001u32 } else { 0 };
            let mut rng = Rng::new(1700 + misaligned as u64);
            let mut master = rand(&mut rng, n, 1.0);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let d_params = up::<bf16>(&k, &vec![0.0; n], misaligned);
            let d_master = up::<f32>(&k, &master, false);
            let (d_m, d_v) = (up::<f32>(&k, &m, false), up::<f32>(&k, &v, false));
            for step in 1..=2 {
                let grads = round_to::<bf16>(&rand(&mut rng, n, 0.5));
                let d_g = up::<bf16>(&k, &grads, false);
                let seed = 0x9e37_79b9u32.wrapping_mul(step as u32 + 7 * misaligned as u32);
                cpu::adamw::adamw_update(&mut master, &grads, &mut m, &mut v, &ADAMW_HP, step, 1.0);
                k.launch(
                    "adamw_mixed_kernel",
                    grid_stride(n.div_ceil(launch::pack::<bf16>())),
                    &[
                        Arg::Buf(&d_params),
                        Arg::Buf(&d_master),
                        Arg::Buf(&d_g),
                        Arg::Buf(&d_m),
                        Arg::Buf(&d_v),
                        Arg::Usize(n),
                        adamw_params(step, 1.0),
                        Arg::U32(seed),
                        Arg::U32(first),
                    ],
                    step as u32 + 1,
                );
                assert_path(&k, "adamw mixed", !misaligned);
                assert_bitwise("adamw mixed master", &down::<f32>(&d_master), &master);
                assert_bitwise("adamw mixed m", &down::<f32>(&d_m), &m);
                assert_bitwise("adamw mixed v", &down::<f32>(&d_v), &v);
                for (i, (p, &w)) in d_params.read::<bf16>().iter().zip(&master).enumerate() {
                    let want = round_bf16_stochastic(w, rounding_bits(seed, first + i as u32));
                    assert_eq!(
                        p.to_bits(),
                        want.to_bits(),
                        "adamw mixed params[{i}] (step {step})"
                    );
                }
            }
        }
    });
}

/// The global norm of n values of T, 16-byte aligned (the packed path, then the tail of n % pack)
/// or one element off (`misaligned`: the scalar path), against the CPU's (f64): rtol 1e-5; three
/// schedules agree bitwise.
fn global_norm_case<T: Storage>(n: usize, seed: u64, misaligned: bool) {
    let k = kernels("global_norm");
    let mut rng = Rng::new(seed);
    let x = round_to::<T>(&rand(&mut rng, n, 0.5));
    let d_x = up::<T>(&k, &x, misaligned);
    let mut totals = Vec::new();
    for schedule in [0, 1, 6] {
        let d_partial = up::<f32>(&k, &vec![f32::NAN; launch::NORM_BLOCKS], false);
        let d_total = up::<f32>(&k, &[f32::NAN], false);
        k.launch(
            &T::kernel("global_norm_partial"),
            launch::grid_1d(launch::NORM_BLOCKS, launch::NORM_THREADS),
            &[Arg::Buf(&d_partial), Arg::Buf(&d_x), Arg::Usize(n)],
            schedule,
        );
        assert_path(&k, "global_norm_partial", !misaligned);
        k.launch(
            "global_norm_final",
            launch::grid_1d(1, launch::NORM_THREADS),
            &[
                Arg::Buf(&d_total),
                Arg::Buf(&d_partial),
                Arg::I32(launch::NORM_BLOCKS as i32),
            ],
            schedule,
        );
        totals.push(down::<f32>(&d_total)[0]);
    }
    let what = format!(
        "global_norm {} (n = {n}, misaligned {misaligned})",
        T::label()
    );
    assert_close(
        &what,
        &[totals[0].sqrt()],
        &[cpu::adamw::global_norm(&x)],
        0.0,
        1e-5,
    );
    assert_bitwise(&format!("{what}, schedules"), &totals[1..], &totals[..2]);
}

#[test]
fn global_norm_matches_cpu_and_is_deterministic() {
    for misaligned in [false, true] {
        let s = misaligned as u64;
        // aligned: packs of 4 and a tail of 3; misaligned: the scalar path
        global_norm_case::<f32>(100_003, 800 + s, misaligned);
        // aligned: no tail
        global_norm_case::<f32>(100_000, 802 + s, misaligned);
        // more than NORM_BLOCKS x NORM_THREADS packs (aligned) or elements (misaligned): each
        // thread's loop runs more than once, as on the GPU (d12: 124M parameters)
        global_norm_case::<f32>(1_100_003, 806 + s, misaligned);
        // fewer elements than threads (aligned: 19 packs and a tail of 1)
        global_norm_case::<f32>(77, 804 + s, misaligned);
        // aligned: packs of 8 and a tail of 1
        global_norm_case::<bf16>(70_001, 1800 + s, misaligned);
        // aligned: no tail
        global_norm_case::<bf16>(64_000, 1802 + s, misaligned);
    }
    // The final stage is written for any number of partials: over more than its threads (each
    // thread's loop runs twice), the f64 sum within fp32 roundoff.
    let k = kernels("global_norm");
    let partials = rand(&mut Rng::new(810), 1000, 1.0);
    let d_partials = up::<f32>(&k, &partials, false);
    let d_total = up::<f32>(&k, &[f32::NAN], false);
    k.launch(
        "global_norm_final",
        launch::grid_1d(1, launch::NORM_THREADS),
        &[
            Arg::Buf(&d_total),
            Arg::Buf(&d_partials),
            Arg::I32(partials.len() as i32),
        ],
        1,
    );
    let want = partials.iter().map(|&x| x as f64).sum::<f64>() as f32;
    assert_close(
        "global_norm_final over 1000 partials",
        &down::<f32>(&d_total),
        &[want],
        1e-4,
        1e-6,
    );
}

// ---- fused residual + layernorm ------------------------------------------------------------------------

fn residual_layernorm_case<T: Storage>(cs: &[usize], seed0: u64, misaligned: bool) {
    let k = kernels("fused_residual_layernorm");
    let u = T::unit();
    for t in TS {
        for &c in cs {
            let n = B * t;
            let what = |x: &str| {
                format!(
                    "residual_layernorm {} C={c} T={t} misaligned {misaligned}: {x}",
                    T::label()
                )
            };
            let mut rng = Rng::new(seed0 + n as u64 + c as u64);
            let inp1 = round_to::<T>(&rand(&mut rng, n * c, 2.0));
            let inp2 = round_to::<T>(&rand(&mut rng, n * c, 1.0));
            let weight = round_to::<T>(&rand(&mut rng, c, 1.0));
            let bias = round_to::<T>(&rand(&mut rng, c, 1.0));
            // the CPU twin on T: the residual rounded to T first, as the kernel stores it
            let mut res = vec![0.0; n * c];
            cpu::residual::residual_forward(&mut res, &inp1, &inp2);
            let res = round_to::<T>(&res);
            let (mut ln, mut mean, mut rstd) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            cpu::layernorm::layernorm_forward(
                &mut ln, &mut mean, &mut rstd, &res, &weight, &bias, B, t, c,
            );
            if !T::BF16 {
                // in fp32 the fused twin is exactly this
                let mut res2 = vec![0.0; n * c];
                let (mut ln2, mut m2, mut r2) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
                cpu::fused_residual_layernorm::residual_layernorm_forward(
                    &mut res2, &mut ln2, &mut m2, &mut r2, &inp1, &inp2, &weight, &bias, B, t, c,
                );
                assert_bitwise("cpu fused twin", &ln2, &ln);
            }
            let d_res = up::<T>(&k, &rand(&mut rng, n * c, 9.0), misaligned);
            let d_ln = up::<T>(&k, &rand(&mut rng, n * c, 9.0), false);
            let d_mean = up::<f32>(&k, &rand(&mut rng, n, 9.0), false);
            let d_rstd = up::<f32>(&k, &rand(&mut rng, n, 9.0), false);
            let (d_1, d_2) = (up::<T>(&k, &inp1, false), up::<T>(&k, &inp2, misaligned));
            let (d_w, d_b) = (up::<T>(&k, &weight, false), up::<T>(&k, &bias, false));
            // gpu::residual_layernorm_forward's launch
            let (g, cache_row) = launch::residual_layernorm(n, c);
            let vec = launch::rows_packable::<T>(
                c,
                &[
                    d_res.addr(),
                    d_ln.addr(),
                    d_1.addr(),
                    d_2.addr(),
                    d_w.addr(),
                    d_b.addr(),
                ],
            );
            assert_eq!(vec, !misaligned && c % launch::pack::<T>() == 0);
            k.launch(
                &T::kernel("residual_layernorm_forward"),
                g,
                &[
                    Arg::Buf(&d_res),
                    Arg::Buf(&d_ln),
                    Arg::Buf(&d_mean),
                    Arg::Buf(&d_rstd),
                    Arg::Buf(&d_1),
                    Arg::Buf(&d_2),
                    Arg::Buf(&d_w),
                    Arg::Buf(&d_b),
                    Arg::I32(n as i32),
                    Arg::I32(c as i32),
                    Arg::I32(vec as i32),
                    Arg::I32(cache_row as i32),
                ],
                c as u32 % 5,
            );
            assert_bitwise(&what("residual_out"), &down::<T>(&d_res), &res);
            assert_close(&what("ln_out"), &down::<T>(&d_ln), &ln, 1e-5, u + 1e-5);
            assert_close(&what("mean"), &down::<f32>(&d_mean), &mean, 1e-6, 1e-5);
            assert_close(&what("rstd"), &down::<f32>(&d_rstd), &rstd, 1e-6, 1e-5);
        }
    }
}

#[test]
fn fused_residual_layernorm_matches_cpu() {
    // 768: cached rows, packed; 100: cached, scalar (fp32: packed); 12296 (bf16, > 12288 floats):
    // no cache, re-read from residual_out
    residual_layernorm_case::<f32>(&[768, 100, 37], 900, false);
    residual_layernorm_case::<f32>(&[72], 901, true);
    residual_layernorm_case::<bf16>(&[768, 100, 12296], 1900, false);
    residual_layernorm_case::<bf16>(&[64], 1901, true);
}

// ---- flash attention --------------------------------------------------------------------------------

/// Flash attention forward and the three backward kernels against `cpu::flash_attention`, with the
/// tolerances of tests/gpu_flash_attention.rs. The backward from the kernels' out and lse (so D is
/// the same on both sides), twice under different schedules, bitwise equal.
fn flash_case<T: Storage>(hs: usize, t: usize, nh: usize) {
    flash_case_scores::<T>(hs, t, nh, Scores::Usual);
}

/// [`flash_case`] at the given [`Scores`].
fn flash_case_scores<T: Storage>(hs: usize, t: usize, nh: usize, scores: Scores) {
    let k = kernels("flash_attention");
    let b = 2;
    let c = nh * hs;
    let name = format!("flash {} HS={hs} T={t} {scores:?}", T::label());
    let ((oa, or), (la, lr), (da, dr)) = if T::BF16 {
        let u = T::unit();
        ((2.0 * u, 2.0 * u), (2e-5, 1e-5), (8.0 * u, 2.0 * u))
    } else if scores != Scores::Usual {
        (FAR_FP32_OUT, (1e-5, 1e-5), (0.0, 0.0))
    } else {
        ((1e-5, 1e-5), (1e-5, 1e-5), (2e-5, 1e-4))
    };
    let mut rng = Rng::new(1000 + hs as u64 * 7 + t as u64);
    let mut qkv = rand(&mut rng, b * t * 3 * c, 1.5);
    scores.apply(&mut qkv, t, c);
    let qkv = round_to::<T>(&qkv);
    let dout = round_to::<T>(&rand(&mut rng, b * t * c, 1.0));
    let dqkv0 = round_to::<T>(&rand(&mut rng, b * t * 3 * c, 1.0));
    let (mut out, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    cpu::flash_attention::flash_attention_forward(&mut out, &mut lse, &qkv, b, t, c, nh);

    let fwd = if hs == 64 {
        "flash_attention_forward_hs64"
    } else {
        "flash_attention_forward_hs128"
    };
    let d_qkv = up::<T>(&k, &qkv, false);
    let d_out = up::<T>(&k, &rand(&mut rng, b * t * c, 9.0), false);
    let d_lse = up::<f32>(&k, &rand(&mut rng, b * nh * t, 9.0), false);
    let dims = || [Arg::I32(b as i32), Arg::I32(t as i32), Arg::I32(nh as i32)];
    let mut args = vec![Arg::Buf(&d_out), Arg::Buf(&d_lse), Arg::Buf(&d_qkv)];
    args.extend(dims());
    k.launch(
        &T::kernel(fwd),
        launch::flash(b, t, nh),
        &args,
        t as u32 % 3,
    );
    let g_out = down::<T>(&d_out);
    let g_lse = down::<f32>(&d_lse);
    assert_close(&format!("{name} out"), &g_out, &out, oa, or);
    assert_close(&format!("{name} lse"), &g_lse, &lse, la, lr);
    if T::BF16 && hs == 64 {
        // The forward with 32 queries a warp (128 a block): every row sees the same tiles in the
        // same order, and the tiles past a row block's last query change nothing, so out and lse
        // are bitwise those of 16 a warp (the emulation compiles without FMA contraction), under
        // both ends of the schedule.
        for schedule in [0, 1] {
            let d_out2 = up::<T>(&k, &rand(&mut rng, b * t * c, 9.0), false);
            let d_lse2 = up::<f32>(&k, &rand(&mut rng, b * nh * t, 9.0), false);
            let mut args = vec![Arg::Buf(&d_out2), Arg::Buf(&d_lse2), Arg::Buf(&d_qkv)];
            args.extend(dims());
            k.launch(
                "flash_attention_forward_hs64_bf16_q32",
                launch::flash_with(b, t, nh, launch::FlashQueries::Q32),
                &args,
                schedule,
            );
            let what = format!("{name} q32 (schedule {schedule})");
            let (o2, l2) = (down::<T>(&d_out2), down::<f32>(&d_lse2));
            assert_close(&format!("{what} out"), &o2, &out, oa, or);
            assert_bitwise(&format!("{what} out against q16"), &o2, &g_out);
            assert_bitwise(&format!("{what} lse against q16"), &l2, &g_lse);
        }
    }

    if scores != Scores::Usual {
        // the forward alone (see `Scores`)
        return;
    }
    let mut dqkv = dqkv0.clone();
    cpu::flash_attention::flash_attention_backward(
        &mut dqkv, &dout, &qkv, &g_out, &g_lse, b, t, c, nh,
    );
    let d_dout = up::<T>(&k, &dout, false);
    let suffix = if hs == 64 { "hs64" } else { "hs128" };
    let mut runs = Vec::new();
    for schedule in [1, 4] {
        let d_d = up::<f32>(&k, &rand(&mut rng, b * nh * t, 9.0), false);
        let d_dqkv = up::<T>(&k, &dqkv0, false);
        k.launch(
            &T::kernel("flash_attention_backward_d"),
            launch::warp_per_row(b * nh * t),
            &[
                Arg::Buf(&d_d),
                Arg::Buf(&d_dout),
                Arg::Buf(&d_out),
                Arg::I32(b as i32),
                Arg::I32(t as i32),
                Arg::I32(nh as i32),
                Arg::I32(hs as i32),
            ],
            schedule,
        );
        let backward = |dqkv: &emu::Buf, fam: &str, kernel: &str, grid| {
            let mut args = vec![
                Arg::Buf(dqkv),
                Arg::Buf(&d_dout),
                Arg::Buf(&d_qkv),
                Arg::Buf(&d_lse),
                Arg::Buf(&d_d),
            ];
            args.extend(dims());
            let name = format!("flash_attention_backward_{fam}_{suffix}");
            k.launch(
                &format!("{}{kernel}", T::kernel(&name)),
                grid,
                &args,
                schedule,
            );
        };
        backward(&d_dqkv, "dkdv", "", launch::flash(b, t, nh));
        backward(&d_dqkv, "dq", "", launch::flash(b, t, nh));
        runs.push(down::<T>(&d_dqkv));
        if T::BF16 && hs == 64 {
            // dQ with 32 queries a warp (and 32-key tiles): every row's S, dP and dS are the same
            // and its dQ sums the same 16-key slices in the same order, so dqkv is bitwise that of
            // 16 a warp
            let d_dqkv2 = up::<T>(&k, &dqkv0, false);
            backward(&d_dqkv2, "dkdv", "", launch::flash(b, t, nh));
            let q32 = launch::flash_with(b, t, nh, launch::FlashQueries::Q32);
            backward(&d_dqkv2, "dq", "_q32", q32);
            let what = format!("{name} dqkv, dQ of 32 queries a warp (schedule {schedule})");
            assert_bitwise(&what, &down::<T>(&d_dqkv2), runs.last().unwrap());
        }
    }
    assert_close(&format!("{name} dqkv"), &runs[0], &dqkv, da, dr);
    assert_bitwise(&format!("{name} dqkv, two schedules"), &runs[1], &runs[0]);
}

#[test]
fn flash_attention_fp32_hs64_matches_cpu() {
    for t in [1, 17, 65, 100] {
        flash_case::<f32>(64, t, 2);
    }
}

#[test]
fn flash_attention_fp32_hs128_matches_cpu() {
    for t in [1, 65, 70] {
        flash_case::<f32>(128, t, 1);
    }
}

#[test]
fn flash_attention_bf16_hs64_matches_cpu() {
    // T = 65 (in every case here; T = 257 in tests/gpu_flash_attention.rs): key 64, the last
    // query's own, alone in the last key tile (of 64 keys, or 32)
    // T = 199: three key tiles for the last query block (its four warps all real), so a buffer of
    // the cp.async pipeline is refilled while the warps may still be reading it (schedule
    // 199 % 3 = 1: the warps far apart, the copies landing at once)
    for t in [1, 17, 65, 100, 130, 199] {
        flash_case::<bf16>(64, t, 2);
    }
}

#[test]
fn flash_attention_bf16_hs128_matches_cpu() {
    for t in [1, 17, 65, 100] {
        flash_case::<bf16>(128, t, 2);
    }
}

/// Scores in the hundreds, whose rows' maxima differ by about as much, and rows whose every score
/// is far below 0 (see [`Scores`]): the forward's running maximum is what keeps exp finite.
#[test]
fn flash_attention_keeps_each_row_s_own_maximum() {
    for scores in [Scores::Sharp(100.0), Scores::FarBelowZero(4.0)] {
        flash_case_scores::<f32>(64, 40, 1, scores);
        flash_case_scores::<bf16>(64, 40, 1, scores);
        flash_case_scores::<f32>(128, 40, 1, scores);
    }
}

// ---- the emulation's self-test: it must catch the bugs it is for -----------------------------------

/// Runs `f`, expecting a panic whose message contains `want`.
fn expect_failure(what: &str, want: &str, f: impl FnOnce()) {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .expect_err(&format!("{what}: the emulation did not catch it"));
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains(want), "{what}: expected {want:?} in: {msg}");
    eprintln!("{what}: caught: {msg}");
}

/// The emulated ldmatrix gives each lane the words the PTX ISA assigns it ("Warp-level matrix
/// load instruction: ldmatrix"): lane 8i + r supplies the address of row r of matrix i; lane
/// 4r + w receives, in register i, elements (r, 2w) and (r, 2w + 1) of matrix i (low half first),
/// or with .trans elements (2w, r) and (2w + 1, r). The flash attention kernels build their mma B
/// fragments on exactly this.
#[test]
fn the_emulated_ldmatrix_follows_the_ptx_isa_layout() {
    let k = emu::kernels_at(&emu::root().join("tests/emu/selftest.cu"));
    // the tile: v(r, c) = 256 + 16 r + c; lane p points at row p & 15, column 8 (p >> 4), so
    // matrix i (lanes 8i..8i+7) is rows 8 (i & 1).., columns 8 (i >> 1)..
    let v = |r: usize, c: usize| (256 + 16 * r + c) as u32;
    for num in [2usize, 4] {
        for trans in [false, true] {
            let regs = k.upload(&[0u32; 128], false);
            k.launch(
                "ldmatrix_layout",
                launch::grid_1d(1, 32),
                &[
                    Arg::Buf(&regs),
                    Arg::I32(num as i32),
                    Arg::I32(trans as i32),
                    Arg::I32(0),
                ],
                0,
            );
            let got = regs.read::<u32>();
            for lane in 0..32 {
                let (r, w) = (lane / 4, lane % 4);
                for i in 0..4 {
                    let (r0, c0) = (8 * (i & 1), 8 * (i >> 1));
                    let want = if i >= num {
                        0
                    } else if trans {
                        v(r0 + 2 * w, c0 + r) | v(r0 + 2 * w + 1, c0 + r) << 16
                    } else {
                        v(r0 + r, c0 + 2 * w) | v(r0 + r, c0 + 2 * w + 1) << 16
                    };
                    assert_eq!(
                        got[4 * lane + i],
                        want,
                        "x{num} trans={trans}: lane {lane}, register {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_emulation_reports_divergence_faults_races_and_bad_launches() {
    let k = emu::kernels_at(&emu::root().join("tests/emu/selftest.cu"));
    let out = up::<f32>(&k, &[0.0; 64], false);
    let one_warp = launch::grid_1d(1, 32);
    expect_failure("early return before a shuffle", "deadlock", || {
        k.launch(
            "early_return_before_shuffle",
            one_warp,
            &[Arg::Buf(&out)],
            0,
        )
    });
    // 40 floats end on a 16-byte boundary, against the guard page: the write faults; 39 leave 4
    // bytes of canary slack: the write is found after the launch.
    let short = up::<f32>(&k, &[0.0; 40], false);
    let off_by_one = |buf: &emu::Buf, n: i32| {
        k.launch(
            "off_by_one_write",
            one_warp,
            &[Arg::Buf(buf), Arg::I32(n)],
            0,
        )
    };
    expect_failure(
        "off-by-one write (fault)",
        "0 bytes past the end of a 160-byte",
        || off_by_one(&short, 40),
    );
    let odd = up::<f32>(&k, &[0.0; 39], false);
    expect_failure(
        "off-by-one write (canary)",
        "write 0 bytes past the end",
        || off_by_one(&odd, 39),
    );
    expect_failure("wild read", "SIGSEGV", || {
        k.launch(
            "wild_read",
            one_warp,
            &[Arg::Buf(&out), Arg::Buf(&short), Arg::I32(40)],
            0,
        )
    });
    expect_failure(
        "barrier in divergent code",
        "a barrier in divergent code",
        || {
            k.launch(
                "divergent_barrier",
                launch::grid_1d(1, 64),
                &[Arg::Buf(&out)],
                0,
            )
        },
    );
    expect_failure(
        "more threads than __launch_bounds__",
        "__launch_bounds__(64)",
        || k.launch("bounded", launch::grid_1d(1, 128), &[Arg::Buf(&out)], 0),
    );
    // A race at barrier level: two schedules, two results.
    let results: Vec<Vec<f32>> = [0, 1]
        .into_iter()
        .map(|schedule| {
            let o = up::<f32>(&k, &[0.0; 64], false);
            k.launch(
                "missing_barrier",
                launch::grid_1d(1, 64),
                &[Arg::Buf(&o)],
                schedule,
            );
            down::<f32>(&o)
        })
        .collect();
    assert_ne!(
        results[0], results[1],
        "a missing barrier must show as schedule dependence"
    );
    // ldmatrix from a misaligned row address
    let regs = k.upload(&[0u32; 128], false);
    let ldmatrix = |num: i32, trans: i32, offset: i32| {
        k.launch(
            "ldmatrix_layout",
            one_warp,
            &[
                Arg::Buf(&regs),
                Arg::I32(num),
                Arg::I32(trans),
                Arg::I32(offset),
            ],
            0,
        )
    };
    expect_failure("misaligned ldmatrix", "not 16-byte aligned", || {
        ldmatrix(4, 0, 1)
    });
    // a packed load from an address one float off a 16-byte boundary (the GPU faults; the host's
    // own load would not)
    let four = [1.0f32, 2.0, 3.0, 4.0];
    let packed_load = |inp: &emu::Buf| {
        k.launch(
            "unchecked_packed_load",
            one_warp,
            &[Arg::Buf(&out), Arg::Buf(inp)],
            0,
        )
    };
    packed_load(&up::<f32>(&k, &four, false));
    assert_eq!(&down::<f32>(&out)[..4], &four);
    expect_failure(
        "misaligned packed load",
        "load_packed of 16 bytes at",
        || packed_load(&up::<f32>(&k, &four, true)),
    );
    // an element one past a pack (the host's stack would not notice)
    let d_four = up::<f32>(&k, &four, false);
    let pack_sum = |n: i32| {
        let args = [Arg::Buf(&out), Arg::Buf(&d_four), Arg::I32(n)];
        k.launch("element_past_a_pack", one_warp, &args, 0)
    };
    pack_sum(4);
    assert_eq!(down::<f32>(&out)[0], 10.0);
    expect_failure(
        "an element past a pack",
        "an element of a Packed at index 4 of 4",
        || pack_sum(5),
    );
    // an element one past a local array (the host's stack would not notice either)
    let local_sum = |n: i32| {
        let args = [Arg::Buf(&out), Arg::I32(n)];
        k.launch("element_past_a_local_array", one_warp, &args, 0)
    };
    local_sum(4);
    assert_eq!(down::<f32>(&out)[0], 10.0);
    if emu::checks_local_bounds() {
        expect_failure(
            "an element past a local array",
            "an index past a local array's bound",
            || local_sum(5),
        );
    }
    // Memory nothing wrote: static shared memory is NaN bytes at each block's start (the first
    // block's writes do not reach the second), a local 0xfe bytes (where the compiler can
    // initialise them so), not the zeros a sum would pass for initialised with.
    let unwritten = up::<f32>(&k, &[0.0; 128], false);
    k.launch(
        "unwritten_memory",
        launch::grid_1d(2, 32),
        &[Arg::Buf(&unwritten)],
        0,
    );
    let seen = down::<f32>(&unwritten);
    for b in 0..2 {
        let shared = &seen[64 * b..64 * b + 32];
        assert!(
            shared.iter().all(|x| x.is_nan()),
            "block {b} read static shared memory nothing wrote as {shared:?}, not NaN"
        );
        let local = &seen[64 * b + 32..64 * b + 64];
        if emu::initialises_locals() {
            assert!(
                local.iter().all(|x| x.to_bits() == 0xfefe_fefe),
                "block {b} read a local nothing wrote as {local:?}, not the 0xfe pattern"
            );
        }
    }
    // An endless loop fails the launch when the watchdog expires, instead of hanging the test.
    k.set_launch_limit(0.5);
    expect_failure("endless loop", "still running after 0.5 s", || {
        k.launch(
            "endless_loop",
            one_warp,
            &[Arg::Buf(&out), Arg::I32(2000)],
            0,
        )
    });
    k.set_launch_limit(0.0);
    // The launch after the failures works.
    k.launch("bounded", launch::grid_1d(1, 64), &[Arg::Buf(&out)], 0);
    assert!(down::<f32>(&out).iter().all(|&x| x == 1.0));
}
