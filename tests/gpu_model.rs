//! The CUDA engine (`gpu::Gpt2Gpu`, built through `engine::create_gpu_engine`) against the CPU
//! reference (`cpu::model::Gpt2Cpu`) and the independent PyTorch fixtures
//! (tools/pytorch_reference.py): logits, loss and all 16 gradients, the 10-step AdamW losses, a
//! few training steps with gradient accumulation and clipping on a random model, determinism,
//! the sampling path, and errors on bad input. Every test that needs a GPU is
//! `#[ignore = "needs a CUDA GPU"]`: run them with `cargo test --test gpu_model -- --ignored` on a
//! machine with one. They go through the `Engine` trait, so they compile in every build.
//!
//! Tolerances: `verify::Tolerances::FP32` (normalised max error: logits 2e-6, loss 1e-6, gradients
//! 1e-5; justified in src/verify.rs) for the fixtures, GPU against PyTorch and GPU against CPU
//! alike, with TF32 off; the training losses within 1e-5 relative of the CPU's at every step, the
//! gradient norms within 1e-5 relative (the GPU's fp32 tree against the CPU's f64 sum, on
//! gradients that agree to ~1e-7), the parameters after 5 steps within 1e-3 normalised (see
//! there); two GPU runs bitwise equal.

use std::ops::ControlFlow;
use std::path::PathBuf;
use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::cpu::adamw::{AdamW, DecayOn};
use train_gpt2_cuda::cpu::model::Gpt2Cpu;
use train_gpt2_cuda::engine::{
    create_engine, create_gpu_engine, Engine, EngineOptions, Kernels, OptimizerArray,
};
use train_gpt2_cuda::precision::{round_bf16_stochastic, rounding_bits, Precision};

/// `device` with the default precision, TF32 off.
fn opts(device: Device) -> EngineOptions {
    EngineOptions {
        device,
        precision: None,
        tf32: false,
        kernels: None,
        cuda_graphs: true,
        classifier_chunk: None,
        recompute: Default::default(),
        forwards_only: false,
    }
}
use train_gpt2_cuda::formats::checkpoint::read_checkpoint;
use train_gpt2_cuda::formats::debug_state::{read_debug_state, DebugState};
use train_gpt2_cuda::params::{init_params, split, IS_MATRIX, PARAM_NAMES};
use train_gpt2_cuda::rng::Rng;
use train_gpt2_cuda::sample::{generate, SampleOptions};
use train_gpt2_cuda::train::Device;
use train_gpt2_cuda::verify::{self, Tolerances};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(root()).join("tests/fixtures").join(name)
}

/// The fp32 GPU engine, or a panic that says why there is none.
fn gpu_engine(cfg: GPT2Config, params: Vec<f32>, b: usize, t: usize) -> Box<dyn Engine> {
    gpu_engine_in(Precision::Fp32, cfg, params, b, t)
}

/// The GPU engine in `precision`, or a panic that says why there is none.
fn gpu_engine_in(
    precision: Precision,
    cfg: GPT2Config,
    params: Vec<f32>,
    b: usize,
    t: usize,
) -> Box<dyn Engine> {
    let e =
        create_gpu_engine(cfg, params, b, t, precision, false).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(e.precision(), precision);
    e
}

/// The GPU engine in `precision` on the given kernels (None: the default for the model), or a
/// panic that says why there is none; it must say which kernels it runs.
fn gpu_engine_with(
    precision: Precision,
    kernels: Option<Kernels>,
    cfg: GPT2Config,
    params: Vec<f32>,
    b: usize,
    t: usize,
) -> Box<dyn Engine> {
    let opts = EngineOptions {
        kernels,
        ..EngineOptions::cuda(precision)
    };
    let e = create_engine(&opts, cfg, params, b, t).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(e.precision(), precision);
    match kernels {
        Some(Kernels::Fused) => assert!(e.describe().contains("fused kernels"), "{}", e.describe()),
        Some(Kernels::Plain) => assert!(e.describe().contains("plain kernels"), "{}", e.describe()),
        None => {}
    }
    e
}

/// The error of building a GPU engine that must not build.
fn gpu_engine_error(cfg: GPT2Config, params: Vec<f32>, b: usize, t: usize) -> String {
    match create_gpu_engine(cfg, params, b, t, Precision::Fp32, false) {
        Ok(_) => panic!("a GPU engine for B={b}, T={t} was built"),
        Err(e) => format!("{e:#}"),
    }
}

/// The small random model of the training tests: GPT-2's vocabulary, 2 layers, 2 heads, C=64.
fn small_config() -> GPT2Config {
    GPT2Config::new(64, 50257, 50304, 2, 2, 64).unwrap()
}

/// As `small_config` with C=128: head size 64, the shapes the fused kernels run.
fn fused_config() -> GPT2Config {
    GPT2Config::new(64, 50257, 50304, 2, 2, 128).unwrap()
}

/// n random token ids below V.
fn tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(v) as u32).collect()
}

/// The normalised max error max|got - want| / max|want| (as `verify::compare`).
fn normalised_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &w| m.max((w as f64).abs()));
    let max_abs = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    assert!(got.iter().all(|x| x.is_finite()), "non-finite values");
    max_abs / scale
}

fn rel(got: f32, want: f32) -> f64 {
    ((got as f64 - want as f64) / want as f64).abs()
}

/// The fp32 weights AdamW updates: the master weights where the engine keeps them, else the
/// parameters.
fn fp32_weights(engine: &mut dyn Engine) -> Vec<f32> {
    if engine.has_master_weights() {
        engine.optimizer_array(OptimizerArray::Master).unwrap()
    } else {
        engine.params().unwrap()
    }
}

/// Weight decay by hand: with zero gradients (and zero moments) an AdamW step is the decay alone
/// (m = v = 0, the step term is -0), so one update multiplies each tensor the decay applies to by
/// (1 - lr * wd) rounded to f32, bit for bit, and leaves every other tensor as it was. With
/// `DecayOn::Matrices` (training): wte, wpe, qkvw, attprojw, fcw, fcprojw; with `All`: every
/// tensor.
fn check_weight_decay(engine: &mut dyn Engine) {
    let cfg = *engine.config();
    let decay = (1.0 - 0.01f64 * 0.1f64) as f32;
    for (step, decay_on) in [(1, DecayOn::Matrices), (2, DecayOn::All)] {
        let hp = AdamW {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_on,
        };
        let before = fp32_weights(engine);
        engine.zero_grad().unwrap();
        engine.update(&hp, step, 1.0).unwrap();
        let after = fp32_weights(engine);
        let (b, a) = (split(&cfg, &before), split(&cfg, &after));
        let tensors = b.into_array().into_iter().zip(a.into_array());
        for (i, (b, a)) in tensors.enumerate() {
            let decayed = decay_on == DecayOn::All || IS_MATRIX[i];
            let want: Vec<f32> = if decayed {
                b.iter().map(|&x| x * decay).collect()
            } else {
                b.to_vec()
            };
            let what = format!("{} after a step with {decay_on:?}", PARAM_NAMES[i]);
            assert!(a == &want[..], "{what}: {}", engine.describe());
            assert!(
                b.iter().any(|&x| x != 0.0),
                "{what}: all zero, tests nothing"
            );
        }
        // bf16: the weights are the master weights rounded stochastically, each element with
        // its index in the whole buffer as the counter (across the update's ranges)
        if engine.has_master_weights() {
            let params = engine.params().unwrap();
            for (i, (&p, &w)) in params.iter().zip(&after).enumerate() {
                let want = round_bf16_stochastic(w, rounding_bits(step as u32, i as u32)).to_f32();
                assert_eq!(p.to_bits(), want.to_bits(), "weight {i} after step {step}");
            }
        }
    }
}

fn perturbed_params(cfg: &GPT2Config) -> Vec<f32> {
    // biases and LayerNorm parameters away from 0 and 1, so that leaving them alone shows
    let mut rng = Rng::new(77);
    init_params(cfg, 5)
        .iter()
        .map(|&x| x + 0.01 * (rng.uniform_f32() - 0.5))
        .collect()
}

#[test]
fn cpu_weight_decay_applies_to_the_matrices() {
    let cfg = small_config();
    let mut cpu = Gpt2Cpu::new(cfg, perturbed_params(&cfg), 1, 8).unwrap();
    check_weight_decay(&mut cpu);
    let mut cpu_bf16 = Gpt2Cpu::new(cfg, perturbed_params(&cfg), 1, 8)
        .unwrap()
        .emulating_bf16_storage();
    check_weight_decay(&mut cpu_bf16);
}

/// The GPU's update cut into ranges of tensors (one launch each), in fp32 and bf16 (where the
/// stochastic rounding counters continue across the ranges).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_weight_decay_applies_to_the_matrices() {
    let cfg = small_config();
    for precision in [Precision::Fp32, Precision::Bf16] {
        let mut gpu = gpu_engine_in(precision, cfg, perturbed_params(&cfg), 1, 8);
        check_weight_decay(gpu.as_mut());
    }
}

/// Runs everywhere: without a GPU (or without kernels) the CUDA engine is a clear error, never a
/// panic, and `--device auto` falls back to the CPU; with one, both give the CUDA engine.
#[test]
fn cuda_engine_is_a_clear_error_or_works() {
    let cfg = GPT2Config::new(16, 100, 128, 1, 2, 8).unwrap();
    let params = init_params(&cfg, 1);
    match create_gpu_engine(cfg, params.clone(), 2, 8, Precision::Fp32, false) {
        Ok(e) => {
            if !train_gpt2_cuda::gpu::HAS_CUDA {
                panic!("a build without kernels built a GPU engine");
            }
            assert!(e.describe().starts_with("cuda: "), "{}", e.describe());
            let auto = create_engine(&opts(Device::Auto), cfg, params, 2, 8).unwrap();
            assert!(auto.describe().starts_with("cuda: "), "{}", auto.describe());
        }
        Err(e) => {
            let msg = format!("{e:#}");
            if train_gpt2_cuda::gpu::HAS_CUDA {
                assert!(
                    msg.starts_with("no CUDA GPU available") || msg.contains("cuBLAS"),
                    "unexpected error: {msg}"
                );
            } else {
                assert_eq!(msg, train_gpt2_cuda::gpu::NO_CUDA_BUILD);
            }
            match create_engine(&opts(Device::Cuda), cfg, params.clone(), 2, 8) {
                Ok(_) => panic!("--device cuda built an engine where create_gpu_engine failed"),
                Err(e) => assert_eq!(format!("{e:#}"), msg),
            }
            let auto = create_engine(&opts(Device::Auto), cfg, params, 2, 8).unwrap();
            assert!(auto.describe().starts_with("cpu"), "{}", auto.describe());
        }
    }
}

/// GPU against the CPU and against PyTorch on one committed fixture, then the 10 AdamW steps, in
/// `precision` at its tolerances (`Tolerances::for_precision`: the bf16 engine against the same
/// fp32 references).
fn check_fixture_in(name: &str, precision: Precision) {
    check_fixture_with(name, precision, None);
}

/// As `check_fixture_in`, on the given kernels.
fn check_fixture_with(name: &str, precision: Precision, kernels: Option<Kernels>) {
    let tol = Tolerances::for_precision(precision);
    let ck = read_checkpoint(&fixture(&format!("ref_{name}_model.bin"))).unwrap();
    let cfg = ck.config;
    let state = read_debug_state(&fixture(&format!("ref_{name}_state.bin")), &cfg).unwrap();
    let mut gpu = gpu_engine_with(precision, kernels, cfg, ck.params.clone(), state.b, state.t);
    println!("{}", gpu.describe());
    let mut cpu = Gpt2Cpu::new(cfg, ck.params.clone(), state.b, state.t).unwrap();
    let got = verify::run_engine(&mut *gpu, &state).unwrap();
    let want_cpu = verify::run_engine(&mut cpu, &state).unwrap();
    let want_ref = verify::Outputs::expected(&state);
    for (what, want) in [("cpu", &want_cpu), ("pytorch", &want_ref)] {
        let rows = verify::compare_outputs(&cfg, &got, want, &tol);
        let table = verify::format_table(&format!("gpu {precision} vs {what} on {name}"), &rows);
        println!("{table}");
        assert_eq!(rows.len(), 18);
        assert!(rows.iter().all(|r| r.pass), "{table}");
    }

    let gpu = gpu_engine_with(precision, kernels, cfg, ck.params, state.b, state.t);
    let expected = check_steps(gpu, &state, &format!("ref_{name}_losses.txt"), 0.0, &tol);
    assert!(
        expected[9].loss < expected[0].loss - 1e-3,
        "the trajectory must move"
    );
}

/// The 10 AdamW steps of losses file `file` on `gpu` (gradients clipped to `grad_clip`, 0: not),
/// each step's loss and gradient norm within `tol` (`steps`, `norms`) of the file's; returns the
/// file's steps.
fn check_steps(
    mut gpu: Box<dyn Engine>,
    state: &DebugState,
    file: &str,
    grad_clip: f32,
    tol: &Tolerances,
) -> Vec<verify::ExpectedStep> {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let expected = verify::parse_losses(&text).unwrap();
    assert_eq!(expected.len(), 10);
    assert!(
        expected.iter().all(|s| s.norm.is_some()),
        "{file} gives norms"
    );
    let steps = verify::run_steps(&mut *gpu, state, expected.len(), grad_clip).unwrap();
    for (i, (&got, &want)) in steps.iter().zip(&expected).enumerate() {
        let c = verify::check_step(got, want, tol);
        println!("step {i} {got:?} expected {want:?} {c:?}");
        assert!(c.pass(), "step {i}: {got:?} vs {want:?} ({c:?})");
    }
    expected
}

/// The GPU's gradient norm and clipping against PyTorch's `clip_grad_norm_` (ref_tiny, clipped to
/// norm 1 at every step; tests/reference.rs shows that the file tells clipped from unclipped
/// steps at the fp32 tolerance).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_pytorch_with_gradient_clipping() {
    let ck = read_checkpoint(&fixture("ref_tiny_model.bin")).unwrap();
    let cfg = ck.config;
    let state = read_debug_state(&fixture("ref_tiny_state.bin"), &cfg).unwrap();
    let gpu = gpu_engine_with(Precision::Fp32, None, cfg, ck.params, state.b, state.t);
    check_steps(
        gpu,
        &state,
        "ref_tiny_clip_losses.txt",
        1.0,
        &Tolerances::FP32,
    );
}

fn check_fixture(name: &str) {
    check_fixture_in(name, Precision::Fp32);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_cpu_and_pytorch_hs64() {
    check_fixture("hs64");
}

/// The fused kernels in fp32 (flash attention's fp32 kernels, cuBLASLt products, residual +
/// layernorm) at the fp32 tolerances: the fused path's arithmetic checked without bf16 rounding.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_fused_fp32_matches_cpu_and_pytorch_hs64() {
    check_fixture_with("hs64", Precision::Fp32, Some(Kernels::Fused));
}

/// The plain kernels in bf16 on the head-size-64 fixture, for comparison with the fused path.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_plain_matches_cpu_and_pytorch_hs64() {
    check_fixture_with("hs64", Precision::Bf16, Some(Kernels::Plain));
}

/// Head size 64: the bf16 engine runs its fused path here (flash attention, cuBLASLt epilogues,
/// residual + layernorm); on the other fixtures (head sizes 4 to 16) its plain bf16 kernels.
#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_fused_matches_cpu_and_pytorch_hs64() {
    check_fixture_in("hs64", Precision::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_matches_cpu_and_pytorch_tiny() {
    check_fixture_in("tiny", Precision::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_matches_cpu_and_pytorch_sharp_attention() {
    check_fixture_in("sharp", Precision::Bf16);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_matches_cpu_and_pytorch_gpt2_vocab() {
    check_fixture_in("gpt2vocab", Precision::Bf16);
}

/// bf16 training: seeded stochastic rounding, no atomics, so two runs are bitwise the same; and
/// the run follows the fp32 CPU's within the bf16 step tolerance (5 steps of a 2-layer model).
#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_training_is_deterministic_and_follows_fp32() {
    bf16_training(small_config(), Kernels::Plain);
}

/// As `bf16_training_is_deterministic_and_follows_fp32`, on the fused kernels (head size 64).
#[test]
#[ignore = "needs a CUDA GPU"]
fn bf16_fused_training_is_deterministic_and_follows_fp32() {
    bf16_training(fused_config(), Kernels::Fused);
}

fn bf16_training(cfg: GPT2Config, kernels: Kernels) {
    let (b, t, steps) = (2, 64, 5);
    let params = init_params(&cfg, 42);
    let mut cpu = Gpt2Cpu::new(cfg, params.clone(), b, t).unwrap();
    let want = train(&mut cpu, steps, b, t, 7);
    let k = Some(kernels);
    let mut gpu = gpu_engine_with(Precision::Bf16, k, cfg, params.clone(), b, t);
    let got = train(&mut *gpu, steps, b, t, 7);
    for i in 0..steps {
        println!(
            "step {i}: loss bf16 {} fp32 cpu {} (rel {:.2e}), norm bf16 {} cpu {} (rel {:.2e})",
            got.losses[i],
            want.losses[i],
            rel(got.losses[i], want.losses[i]),
            got.norms[i],
            want.norms[i],
            rel(got.norms[i], want.norms[i]),
        );
        assert!(rel(got.losses[i], want.losses[i]) <= Tolerances::BF16.steps);
        assert!(rel(got.norms[i], want.norms[i]) <= 5e-2, "step {i} norm");
    }
    // the parameters the bf16 engine reports are its bf16 weights, exactly representable
    assert!(got
        .params
        .iter()
        .all(|&p| half::bf16::from_f32(p).to_f32() == p));
    let mut gpu2 = gpu_engine_with(Precision::Bf16, k, cfg, params, b, t);
    let again = train(&mut *gpu2, steps, b, t, 7);
    assert_eq!(
        again.losses, got.losses,
        "losses differ between two bf16 runs"
    );
    assert_eq!(again.norms, got.norms, "norms differ between two bf16 runs");
    assert!(
        again.params == got.params,
        "parameters differ between bf16 runs"
    );
}

/// The classifier in chunks (`--classifier-chunk`, `ModelOptions::classifier_chunk`) computes the same
/// model: B = 3 in chunks of 2 (a full chunk and a 1-sequence tail), T = 33, against the whole
/// batch at once, 3 steps of 2 micro-batches in fp32 on the plain kernels and bf16 on the fused
/// ones. The chunks change only how dwte's sum is grouped (per chunk, then added) and, in bf16,
/// where it is rounded: fp32 losses and norms within 1e-5 relative and parameters within 1e-5
/// (normalised); bf16 within its step tolerance (a bf16 rounding of dwte per chunk, amplified by
/// AdamW at the updated embedding rows). Then the logits: kept and equal for a batch of one
/// chunk, an error (not stale data) for a larger one, and a forward without targets over more
/// than a chunk is an error.
#[cfg(has_cuda)] // names the CUDA engine's own types
#[test]
#[ignore = "needs a CUDA GPU"]
fn classifier_chunks_compute_the_same_model() {
    use train_gpt2_cuda::gpu::{Gpt2Gpu, Gpu, ModelFloat, ModelOptions};
    fn check<T: ModelFloat>(cfg: GPT2Config, kernels: Kernels, tol: f64) {
        let (b, t, steps) = (3, 33, 3);
        let params = init_params(&cfg, 42);
        let model = |chunk: Option<usize>| {
            let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e:#}"));
            let opts = ModelOptions {
                kernels: Some(kernels),
                classifier_chunk: chunk,
                ..ModelOptions::default()
            };
            Gpt2Gpu::<T>::new_with_options(gpu, cfg, params.clone(), b, t, opts)
                .unwrap_or_else(|e| panic!("{e:#}"))
        };
        let (mut whole, mut chunked) = (model(None), model(Some(2)));
        let want = train(&mut whole, steps, b, t, 7);
        let got = train(&mut chunked, steps, b, t, 7);
        let what = format!("{:?} {kernels:?}", T::PRECISION);
        for i in 0..steps {
            assert!(
                rel(got.losses[i], want.losses[i]) <= tol,
                "{what} step {i}: loss chunked {} whole {}",
                got.losses[i],
                want.losses[i]
            );
            assert!(
                rel(got.norms[i], want.norms[i]) <= tol,
                "{what} step {i}: norm chunked {} whole {}",
                got.norms[i],
                want.norms[i]
            );
        }
        let err = normalised_err(&got.params, &want.params);
        assert!(err <= tol, "{what}: parameters differ by {err:.2e}");

        // logits: one chunk's batch keeps them, a larger one does not
        let mut rng = Rng::new(5);
        let x = tokens(&mut rng, 2 * t, cfg.vocab_size);
        let y = tokens(&mut rng, 2 * t, cfg.vocab_size);
        whole.forward(&x, Some(&y), 2, t).unwrap();
        chunked.forward(&x, Some(&y), 2, t).unwrap();
        let (lw, lc) = (whole.logits().unwrap(), chunked.logits().unwrap());
        let err = normalised_err(&lc, &lw);
        assert!(err <= tol, "{what}: one chunk's logits differ by {err:.2e}");
        let x3 = tokens(&mut rng, b * t, cfg.vocab_size);
        let y3 = tokens(&mut rng, b * t, cfg.vocab_size);
        chunked.forward(&x3, Some(&y3), b, t).unwrap();
        let e = format!("{:#}", chunked.logits().unwrap_err());
        assert!(e.contains("chunks of 2 sequences"), "{e}");
        let e = format!("{:#}", chunked.forward(&x3, None, b, t).unwrap_err());
        assert!(e.contains("without targets") && e.contains("B = 3"), "{e}");
    }
    check::<f32>(small_config(), Kernels::Plain, 1e-5);
    check::<half::bf16>(fused_config(), Kernels::Fused, Tolerances::BF16.steps);
}

/// `--recompute gelu` (`EngineOptions::recompute`) keeps one layer's GELU output and computes
/// each layer's again in the backward: the same training, 3 steps of 2 micro-batches at B = 2,
/// T = 33 (CUDA graphs on, so the recomputing kernel is captured and replayed too), against
/// keeping every layer's. On the plain kernels the same GELU kernel computes the same values
/// again, so losses, norms and parameters agree bitwise, fp32 and bf16. On the fused path the
/// forward's GELU comes from the product's epilogue and the recomputed one from the GELU kernel,
/// which may differ in the last bits, and so the MLP's second weight gradient: fp32 within 1e-5
/// relative (losses, norms; parameters normalised, as the classifier chunks), bf16 within its step
/// tolerance (`Tolerances::BF16.steps`). The engine says that it recomputes.
#[test]
#[ignore = "needs a CUDA GPU"]
fn recomputing_gelu_computes_the_same_model() {
    use train_gpt2_cuda::engine::Recompute;
    let cases = [
        (Precision::Fp32, Kernels::Plain, small_config(), 0.0),
        (Precision::Bf16, Kernels::Plain, small_config(), 0.0),
        (Precision::Fp32, Kernels::Fused, fused_config(), 1e-5),
        (
            Precision::Bf16,
            Kernels::Fused,
            fused_config(),
            Tolerances::BF16.steps,
        ),
    ];
    for (precision, kernels, cfg, tol) in cases {
        let (b, t, steps) = (2, 33, 3);
        let params = init_params(&cfg, 42);
        let engine = |recompute: Recompute| {
            let opts = EngineOptions {
                kernels: Some(kernels),
                recompute,
                ..EngineOptions::cuda(precision)
            };
            create_engine(&opts, cfg, params.clone(), b, t).unwrap_or_else(|e| panic!("{e:#}"))
        };
        let (mut keep, mut again) = (engine(Recompute::None), engine(Recompute::Gelu));
        let what = format!("{precision} {kernels:?}");
        assert!(!keep.describe().contains("GELU"), "{}", keep.describe());
        assert!(
            again.describe().contains("GELU recomputed"),
            "{}",
            again.describe()
        );
        let want = train(keep.as_mut(), steps, b, t, 7);
        let got = train(again.as_mut(), steps, b, t, 7);
        if tol == 0.0 {
            assert_eq!(got.losses, want.losses, "{what}: losses");
            assert_eq!(got.norms, want.norms, "{what}: norms");
            assert!(got.params == want.params, "{what}: parameters differ");
            continue;
        }
        for i in 0..steps {
            let (l, n) = (
                rel(got.losses[i], want.losses[i]),
                rel(got.norms[i], want.norms[i]),
            );
            assert!(
                l <= tol && n <= tol,
                "{what} step {i}: loss {l:.2e}, norm {n:.2e}"
            );
        }
        let err = normalised_err(&got.params, &want.params);
        assert!(err <= tol, "{what}: parameters differ by {err:.2e}");
    }
}

/// A model built for forwards only (`eval`, `sample`) computes the same logits and losses, bit
/// for bit, as one built for training, holds less device memory by the arenas it leaves out (the
/// training state, and all but one layer's activations: three layers, so that its two residual
/// streams take turns), and refuses the calls that train with a clear error; `eval`'s and
/// `sample`'s options build one.
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_model_for_forwards_only_computes_the_same_forwards() {
    let three_layers = |cfg: GPT2Config| GPT2Config {
        num_layers: 3,
        ..cfg
    };
    let cases = [
        (
            Precision::Fp32,
            Kernels::Plain,
            three_layers(small_config()),
        ),
        (
            Precision::Bf16,
            Kernels::Fused,
            three_layers(fused_config()),
        ),
    ];
    for (precision, kernels, cfg) in cases {
        let (b, t) = (2, 33);
        let params = init_params(&cfg, 5);
        let engine = |forwards_only: bool| {
            let opts = EngineOptions {
                kernels: Some(kernels),
                forwards_only,
                ..EngineOptions::cuda(precision)
            };
            create_engine(&opts, cfg, params.clone(), b, t).unwrap_or_else(|e| panic!("{e:#}"))
        };
        let what = format!("{precision} {kernels:?}");
        let mut full = engine(false);
        let full_bytes = full.peak_memory_bytes().expect("the driver reports memory");
        drop(full);
        let mut lean = engine(true);
        let lean_bytes = lean.peak_memory_bytes().expect("the driver reports memory");
        full = engine(false);
        // at least the gradients and both moments (and the master weights in bf16) are left out,
        // and two layers' activations: ln1, qkv, atty, attproj, residual2, ln2, fch, fch_gelu and
        // fcproj, 16 x (B, T, C) a layer (and one residual stream of three)
        let n = params.len() as u64;
        let elem = if precision == Precision::Bf16 { 2 } else { 4 };
        let master = if precision == Precision::Bf16 { 4 } else { 0 };
        let acts = elem * (2 * 16 + 1) * (b * t * cfg.channels) as u64;
        assert!(
            full_bytes - lean_bytes >= n * (elem + 8 + master) + acts,
            "{what}: {full_bytes} vs {lean_bytes} bytes"
        );
        assert!(!lean.has_master_weights(), "{what}");
        assert_eq!(full.has_master_weights(), precision == Precision::Bf16);

        let mut rng = Rng::new(3);
        let x = tokens(&mut rng, b * t, cfg.vocab_size);
        let y = tokens(&mut rng, b * t, cfg.vocab_size);
        for targets in [Some(&y[..]), None] {
            let want = full.forward(&x, targets, b, t).unwrap();
            let got = lean.forward(&x, targets, b, t).unwrap();
            assert_eq!(got, want, "{what}: loss");
            assert!(
                lean.logits().unwrap() == full.logits().unwrap(),
                "{what}: logits"
            );
            // a shorter batch, as sampling runs
            let want = full.forward(&x[..5], None, 1, 5).unwrap();
            assert_eq!(lean.forward(&x[..5], None, 1, 5).unwrap(), want);
            assert!(lean.position_logits(0, 4).unwrap() == full.position_logits(0, 4).unwrap());
        }
        assert!(lean.forward(&x, Some(&y), b, t).unwrap().is_some());
        let hp = verify::VERIFY_ADAMW;
        let refused = [
            ("zero_grad", lean.zero_grad().err()),
            ("backward", lean.backward(1.0).err()),
            ("grad_norm", lean.grad_norm().err()),
            ("update", lean.update(&hp, 1, 1.0).err()),
            ("reading the gradients", lean.grads().err()),
            (
                "reading AdamW's m",
                lean.optimizer_array(OptimizerArray::M).err(),
            ),
            (
                "restoring AdamW's v",
                lean.set_optimizer_array(OptimizerArray::V, &vec![0.0; params.len()])
                    .err(),
            ),
        ];
        for (call, e) in refused {
            let e = format!("{:#}", e.unwrap_or_else(|| panic!("{what}: {call} worked")));
            assert!(
                e.starts_with(&format!("{call}: this model was built for forwards only")),
                "{what}: {e}"
            );
        }
        // still the same forwards after the refusals
        let want = full.forward(&x, Some(&y), b, t).unwrap();
        assert_eq!(lean.forward(&x, Some(&y), b, t).unwrap(), want, "{what}");
    }
    // the message when even the forwards do not fit names them
    let cfg = small_config();
    let opts = EngineOptions {
        forwards_only: true,
        ..EngineOptions::cuda(Precision::Fp32)
    };
    let e = create_engine(&opts, cfg, init_params(&cfg, 5), 100_000, 64)
        .err()
        .map(|e| format!("{e:#}"))
        .expect("1.2 TiB of logits do not fit");
    assert!(e.starts_with("not enough GPU memory"), "{e}");
    assert!(e.contains(" GiB for its forwards (parameters "), "{e}");
}

/// CUDA graphs change the speed, never the numbers: the same training (a shape change and an
/// inference forward in between) with the forward and backward passes replayed as graphs and with
/// every kernel launched from the host gives bitwise the same losses, norms and parameters.
#[cfg(has_cuda)] // names the CUDA engine's own types
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_graphs_give_bitwise_the_same_training() {
    use train_gpt2_cuda::gpu::{Gpt2Gpu, Gpu};
    fn check<T: train_gpt2_cuda::gpu::ModelFloat>(cfg: GPT2Config, kernels: Kernels) {
        let (b, t, steps) = (2, 64, 4);
        let params = init_params(&cfg, 42);
        let model = |graphs: bool| {
            let gpu = Gpu::new().unwrap_or_else(|e| panic!("{e:#}"));
            let mut m = Gpt2Gpu::<T>::new_with(gpu, cfg, params.clone(), b, t, Some(kernels))
                .unwrap_or_else(|e| panic!("{e:#}"));
            m.set_cuda_graphs(graphs);
            m
        };
        let (mut with, mut without) = (model(true), model(false));
        let mut runs = Vec::new();
        for m in [&mut with, &mut without] {
            // a smaller batch first (so that nothing sized by the first batch may be replaced
            // under a captured graph by the larger one), inference forwards of another shape
            // (twice: generation is never captured), then the largest batch
            let first = train(m, steps, 1, 32, 7);
            let x: Vec<u32> = (0..17).map(|i| (i * 7 % cfg.vocab_size) as u32).collect();
            m.forward(&x, None, 1, 17).unwrap();
            m.forward(&x, None, 1, 17).unwrap();
            let second = train(m, steps, b, t, 8);
            // and the smaller batch again: its graphs replayed after the larger batch ran
            let third = train(m, 2, 1, 32, 9);
            runs.push((first, second, third, m.grads().unwrap()));
        }
        assert!(
            with.cuda_graphs(),
            "a capture failed and turned the graphs off"
        );
        // forward with targets and backward at (1, 32) and at (2, 64); not the inference forward
        assert_eq!(with.cuda_graphs_captured(), 4, "pieces captured");
        assert_eq!(without.cuda_graphs_captured(), 0);
        let (g, e) = (&runs[0], &runs[1]);
        for (a, b) in [(&g.0, &e.0), (&g.1, &e.1), (&g.2, &e.2)] {
            assert_eq!(a.losses, b.losses, "losses with and without graphs");
            assert_eq!(a.norms, b.norms, "norms with and without graphs");
            assert!(a.params == b.params, "parameters with and without graphs");
        }
        assert!(g.3 == e.3, "gradients with and without graphs");
    }
    check::<f32>(small_config(), Kernels::Plain);
    check::<f32>(fused_config(), Kernels::Fused);
    check::<half::bf16>(fused_config(), Kernels::Fused);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_cpu_and_pytorch_tiny() {
    check_fixture("tiny");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_cpu_and_pytorch_sharp_attention() {
    check_fixture("sharp");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_cpu_and_pytorch_gpt2_vocab() {
    check_fixture("gpt2vocab");
}

/// What a few training steps produced: per step the loss (mean over the micro-batches) and the
/// gradient norm, then the final parameters.
struct Run {
    losses: Vec<f32>,
    norms: Vec<f32>,
    params: Vec<f32>,
}

/// `steps` AdamW steps of 2 accumulated micro-batches of random tokens (seeded), the gradients
/// clipped to norm 1, as the training loop does.
fn train(engine: &mut dyn Engine, steps: usize, b: usize, t: usize, seed: u64) -> Run {
    let v = engine.config().vocab_size;
    let hp = AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
        decay_on: DecayOn::Matrices,
    };
    let mut rng = Rng::new(seed);
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 1..=steps {
        engine.zero_grad().unwrap();
        let mut loss = 0.0;
        for _ in 0..2 {
            let x = tokens(&mut rng, b * t, v);
            let y = tokens(&mut rng, b * t, v);
            loss += engine.forward(&x, Some(&y), b, t).unwrap().unwrap() / 2.0;
            engine.backward(0.5).unwrap();
        }
        let norm = engine.grad_norm().unwrap();
        let scale = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        engine.update(&hp, step, scale).unwrap();
        losses.push(loss);
        norms.push(norm);
    }
    Run {
        losses,
        norms,
        params: engine.params().unwrap(),
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn training_steps_match_the_cpu_and_are_deterministic() {
    fp32_training(small_config(), Kernels::Plain);
}

/// The same on the fused kernels in fp32 (head size 64, T=33: flash attention's partial tiles).
#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_fp32_training_matches_the_cpu_and_is_deterministic() {
    fp32_training(fused_config(), Kernels::Fused);
}

fn fp32_training(cfg: GPT2Config, kernels: Kernels) {
    let (b, t, steps) = (2, 33, 5);
    let params = init_params(&cfg, 42);
    let mut cpu = Gpt2Cpu::new(cfg, params.clone(), b, t).unwrap();
    let want = train(&mut cpu, steps, b, t, 7);
    let k = Some(kernels);
    let mut gpu = gpu_engine_with(Precision::Fp32, k, cfg, params.clone(), b, t);
    let got = train(&mut *gpu, steps, b, t, 7);
    for i in 0..steps {
        println!(
            "step {i}: loss gpu {} cpu {} (rel {:.2e}), norm gpu {} cpu {} (rel {:.2e})",
            got.losses[i],
            want.losses[i],
            rel(got.losses[i], want.losses[i]),
            got.norms[i],
            want.norms[i],
            rel(got.norms[i], want.norms[i]),
        );
        assert!(rel(got.losses[i], want.losses[i]) <= 1e-5, "step {i} loss");
        assert!(rel(got.norms[i], want.norms[i]) <= 1e-5, "step {i} norm");
    }
    // the run must have clipped and learned something for the comparison to mean much
    assert!(want.norms.iter().any(|&n| n > 1.0) || want.losses[steps - 1] < want.losses[0]);
    // AdamW divides by sqrt(v) + eps (1e-8): a gradient entry near eps with a roundoff-size
    // difference (~1e-10) moves its parameter by up to ~lr * 1e-2 differently, ~1e-4 of the
    // largest parameter; a wrong gradient or update moves it by ~lr = 1e-2 of it
    assert!(normalised_err(&got.params, &want.params) <= 1e-3);
    assert_ne!(got.params, params, "the parameters moved");

    // the same seed on a fresh GPU engine: bitwise the same run
    let mut gpu2 = gpu_engine_with(Precision::Fp32, k, cfg, params, b, t);
    let again = train(&mut *gpu2, steps, b, t, 7);
    assert_eq!(
        again.losses, got.losses,
        "losses differ between two GPU runs"
    );
    assert_eq!(again.norms, got.norms, "norms differ between two GPU runs");
    assert!(again.params == got.params, "parameters differ between runs");

    // a smaller batch than the arenas were sized for, on the trained GPU model, against the CPU
    // with the GPU's trained parameters (the CPU's own differ by the roundoff AdamW amplifies,
    // ~1e-4 of the logits, far above the same-parameters tolerances used here)
    let mut cpu = Gpt2Cpu::new(cfg, got.params.clone(), b, t).unwrap();
    let mut rng = Rng::new(9);
    let (b1, t1) = (1, 17);
    let x = tokens(&mut rng, b1 * t1, cfg.vocab_size);
    let y = tokens(&mut rng, b1 * t1, cfg.vocab_size);
    let lg = gpu.forward(&x, Some(&y), b1, t1).unwrap().unwrap();
    let lc = cpu.forward(&x, Some(&y), b1, t1).unwrap().unwrap();
    assert!(rel(lg, lc) <= 1e-5, "{lg} vs {lc}");
    let (gl, cl) = (gpu.logits().unwrap(), Engine::logits(&mut cpu).unwrap());
    assert_eq!(gl.len(), b1 * t1 * cfg.padded_vocab_size);
    assert!(normalised_err(&gl, &cl) <= Tolerances::FP32.logits);
    gpu.zero_grad().unwrap();
    cpu.zero_grad();
    gpu.backward(1.0).unwrap();
    Engine::backward(&mut cpu, 1.0).unwrap();
    let (gg, cg) = (gpu.grads().unwrap(), cpu.grads.clone());
    assert!(normalised_err(&gg, &cg) <= Tolerances::FP32.grads[0]);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn position_logits_are_rows_of_the_logits() {
    let cfg = small_config();
    let (b, t, vp) = (2, 33, cfg.padded_vocab_size);
    let params = init_params(&cfg, 5);
    let mut gpu = gpu_engine(cfg, params.clone(), b, t);
    let mut cpu = Gpt2Cpu::new(cfg, params, b, t).unwrap();
    let mut rng = Rng::new(3);
    let x = tokens(&mut rng, b * t, cfg.vocab_size);
    let y = tokens(&mut rng, b * t, cfg.vocab_size);
    gpu.forward(&x, Some(&y), b, t).unwrap();
    cpu.forward(&x, Some(&y), b, t).unwrap();
    let all = gpu.logits().unwrap();
    assert_eq!(all.len(), b * t * vp);
    for (bi, ti) in [(0, 0), (0, 17), (1, 5), (1, 32)] {
        let row = gpu.position_logits(bi, ti).unwrap();
        let at = (bi * t + ti) * vp;
        assert_eq!(row, all[at..at + vp], "({bi}, {ti})");
        let want = Engine::position_logits(&mut cpu, bi, ti).unwrap();
        assert!(normalised_err(&row, &want) <= Tolerances::FP32.logits);
        assert!(row[cfg.vocab_size..].iter().all(|&x| x == 0.0), "padding");
    }

    // the sampler's call: B=1, no targets, the last position
    let ctx = &x[..9];
    assert_eq!(gpu.forward(ctx, None, 1, 9).unwrap(), None);
    cpu.forward(ctx, None, 1, 9).unwrap();
    let row = gpu.position_logits(0, 8).unwrap();
    assert_eq!(row, gpu.logits().unwrap()[8 * vp..]);
    let want = Engine::position_logits(&mut cpu, 0, 8).unwrap();
    assert!(normalised_err(&row, &want) <= Tolerances::FP32.logits);

    // backward consumes the logits: reading them afterwards is an error, as is a second backward
    gpu.forward(&x, Some(&y), b, t).unwrap();
    gpu.backward(1.0).unwrap();
    let e = format!("{:#}", gpu.logits().unwrap_err());
    assert!(e.contains("overwrites them with their gradient"), "{e}");
    assert!(gpu.position_logits(0, 0).is_err());
    let e = format!("{:#}", gpu.backward(1.0).unwrap_err());
    assert!(e.contains("backward ran already"), "{e}");
}

/// `sample` on the GPU (which has no key/value cache: a full forward of each context) picks the
/// tokens the CPU's cached decoder picks, same model, prompt and seed. As in decode.rs, a low
/// temperature on this model near its initialisation makes a wrong row of logits change the
/// tokens; fp32's error (about 1e-6 of the largest logit) moves a draw only if it lands that
/// close to a boundary of the cumulative probabilities.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sampling_on_the_gpu_picks_the_cpu_s_tokens() {
    let ck = read_checkpoint(&fixture("ref_sharp_model.bin")).unwrap();
    let cfg = ck.config;
    let w = 9; // below maxT 16: the window slides for most of the 40 tokens
    let opts = SampleOptions {
        temperature: 0.3,
        ..Default::default()
    };
    let prompt = [3u32, 1, 4];
    let draw = |engine: &mut dyn Engine, seed| {
        generate(engine, &prompt, 40, w, &opts, seed, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
    };
    let mut cpu = Gpt2Cpu::new(cfg, ck.params.clone(), 1, w).unwrap();
    let mut gpu = gpu_engine(cfg, ck.params, 1, w);
    let want = draw(&mut cpu, 7);
    assert_eq!(want.len(), 40);
    assert_eq!(draw(gpu.as_mut(), 7), want);
    // and the tokens depend on the seed (not a constant stream that any logits would give)
    assert_ne!(draw(gpu.as_mut(), 8), want);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_input_is_an_error_not_a_panic() {
    let cfg = small_config();
    let (b, t, v) = (2, 33, cfg.vocab_size);
    let params = init_params(&cfg, 11);
    let mut gpu = gpu_engine(cfg, params.clone(), b, t);
    let mut rng = Rng::new(4);
    let x = tokens(&mut rng, b * t, v);
    let y = tokens(&mut rng, b * t, v);
    let err = |r: anyhow::Result<Option<f32>>| format!("{:#}", r.unwrap_err());

    let e = format!("{:#}", gpu.backward(1.0).unwrap_err());
    assert!(e.contains("backward before forward"), "{e}");
    let e = format!("{:#}", gpu.logits().unwrap_err());
    assert!(e.contains("no logits: run a forward pass first"), "{e}");

    let loss = gpu.forward(&x, Some(&y), b, t).unwrap().unwrap();
    // T larger than the arenas (but within maxT), and B larger
    let x2 = tokens(&mut rng, 34, v);
    let e = err(gpu.forward(&x2, None, 1, 34));
    assert!(e.contains("larger than the 2x33"), "{e}");
    let x3 = tokens(&mut rng, 3 * 4, v);
    let e = err(gpu.forward(&x3, None, 3, 4));
    assert!(e.contains("larger than the 2x33"), "{e}");
    // T beyond the model's maxT
    let e = err(gpu.forward(&tokens(&mut rng, 65, v), None, 1, 65));
    assert!(e.contains("maximum sequence length"), "{e}");
    // a token id >= V (the padded rows V..Vp exist on the device but are not tokens)
    let mut bad = x.clone();
    bad[40] = v as u32;
    let e = err(gpu.forward(&bad, Some(&y), b, t));
    assert!(e.contains("input token id 50257 at position 40"), "{e}");
    let mut bad_y = y.clone();
    bad_y[3] = u32::MAX;
    let e = err(gpu.forward(&x, Some(&bad_y), b, t));
    assert!(e.contains("target token id"), "{e}");
    // wrong lengths, an empty batch
    let e = err(gpu.forward(&x[..10], None, b, t));
    assert!(e.contains("expected 66 input tokens, got 10"), "{e}");
    let e = err(gpu.forward(&[], None, 0, t));
    assert!(e.contains("must both be at least 1"), "{e}");

    // the engine is unharmed: the same batch gives the same loss, bitwise
    assert_eq!(gpu.forward(&x, Some(&y), b, t).unwrap().unwrap(), loss);
    let e = format!("{:#}", gpu.position_logits(2, 0).unwrap_err());
    assert!(
        e.contains("outside the last forward's batch of 2x33"),
        "{e}"
    );
    assert!(gpu.position_logits(0, 33).is_err());
    gpu.forward(&x, None, b, t).unwrap();
    let e = format!("{:#}", gpu.backward(1.0).unwrap_err());
    assert!(e.contains("needs a forward pass with targets"), "{e}");
    // an AdamW array of the wrong length (the CPU twin: cpu::model's
    // an_optimizer_array_of_the_wrong_length_is_an_error)
    let n = params.len();
    for which in [OptimizerArray::M, OptimizerArray::V, OptimizerArray::Master] {
        let e = gpu.set_optimizer_array(which, &vec![1.0; n - 1]);
        let e = format!("{:#}", e.unwrap_err());
        let want = format!("has {} values, the model {n} parameters", n - 1);
        assert!(e.starts_with("AdamW's ") && e.contains(&want), "{e}");
    }
    assert_eq!(gpu.forward(&x, Some(&y), b, t).unwrap().unwrap(), loss);
    // what the model no longer or never held is an error, not stale values: the logits once the
    // backward has overwritten them, the losses of a forward without targets, an fp32 model's
    // master weights (the CPU twin: cpu::model's what_the_model_does_not_hold_is_an_error)
    gpu.backward(1.0).unwrap();
    let e = format!("{:#}", gpu.logits().unwrap_err());
    assert!(
        e.contains("the logits of the last forward are gone: on the GPU the backward pass"),
        "{e}"
    );
    gpu.forward(&x, None, b, t).unwrap();
    let e = format!("{:#}", gpu.losses().unwrap_err());
    assert!(
        e.contains("the last forward had no targets, so it computed no losses"),
        "{e}"
    );
    let e = gpu.optimizer_array(OptimizerArray::Master).unwrap_err();
    assert!(
        format!("{e:#}").contains("an fp32 model has no master weights"),
        "{e:#}"
    );
    assert_eq!(gpu.forward(&x, Some(&y), b, t).unwrap().unwrap(), loss);

    // a wrong parameter count, and arenas that cannot fit
    let e = gpu_engine_error(cfg, params[1..].to_vec(), b, t);
    assert!(e.contains("parameter count"), "{e}");
    // the logits alone: 100000 * 64 * 50304 floats = 1.2 TiB
    let e = gpu_engine_error(cfg, params.clone(), 100_000, 64);
    assert!(e.starts_with("not enough GPU memory"), "{e}");
    assert!(e.contains("GiB free"), "{e}");
    // what the memory-saving flags would save: the logits (B, T, Vp), in fp32; not (L - 1)
    // layers' GELU outputs (B, T, 4C), 6.10 GiB of 1308 (under 1%: not worth its work)
    assert!(
        e.contains("the logits take 1199.34 GiB for 100000 sequences"),
        "{e}"
    );
    assert!(!e.contains("--recompute gelu"), "{e}");
    let e = gpu_engine_error(cfg, params, usize::MAX / 64, 64);
    assert!(e.contains("do not fit in memory"), "{e}");
}

/// The crate root: `CARGO_MANIFEST_DIR` at run time (cargo, or .gpu/on-gpu.sh on the GPU machine,
/// where the compile-time path does not exist), else the one compiled in.
fn root() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

/// `--kernels fused` on a model the fused kernels cannot run (head size 32) is a clear error.
#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_kernels_on_an_unsupported_shape_are_a_clear_error() {
    let cfg = small_config();
    let opts = EngineOptions {
        kernels: Some(Kernels::Fused),
        ..EngineOptions::cuda(Precision::Bf16)
    };
    let e = create_engine(&opts, cfg, init_params(&cfg, 1), 1, 8)
        .err()
        .expect("head size 32 has no fused kernels");
    assert!(
        format!("{e:#}").contains("the fused path needs a head size"),
        "{e:#}"
    );
}

/// `eval --hellaswag` on the GPU: the fixture's five examples (tests/hellaswag.rs checks the CPU's
/// scores against transformers) score as on the CPU, in batches of two examples and a last one.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_hellaswag_scores_match_the_cpu() {
    use train_gpt2_cuda::hellaswag::{evaluate, read_examples, render, row_length, ENDINGS};
    let tok = train_gpt2_cuda::tokenizer::Tokenizer::gpt2().unwrap();
    let examples = read_examples(&fixture("hellaswag_tiny.jsonl")).unwrap();
    let rendered: Vec<_> = examples.iter().map(|ex| render(&tok, ex)).collect();
    let ck = read_checkpoint(&fixture("ref_gpt2vocab_model.bin")).unwrap();
    let t = row_length(&rendered, ck.config.max_seq_len, "maxT").unwrap();
    let b = ENDINGS * 2;
    let mut cpu = create_engine(&opts(Device::Cpu), ck.config, ck.params.clone(), b, t).unwrap();
    let mut gpu = gpu_engine(ck.config, ck.params, b, t);
    let (want, want_scores) = evaluate(cpu.as_mut(), &rendered, 2, t, |_| {}).unwrap();
    let (got, got_scores) = evaluate(gpu.as_mut(), &rendered, 2, t, |_| {}).unwrap();
    assert_eq!(got, want);
    for (i, (g, w)) in got_scores.iter().zip(&want_scores).enumerate() {
        assert_eq!(g.count, w.count);
        for e in 0..ENDINGS {
            // sums of about 7 losses of 10.8 (fp32, TF32 off)
            assert!(
                (g.sum[e] - w.sum[e]).abs() < 1e-4,
                "example {i} ending {e}: {} vs {}",
                g.sum[e],
                w.sum[e]
            );
        }
        assert_eq!((g.pred_sum, g.pred_norm), (w.pred_sum, w.pred_norm));
    }
}
