//! `--profile`: the CUDA engine's kernel-family profile (CUDA events) on a small model, checked
//! against the call counts and FLOPs of its forward and backward passes counted by hand, and the
//! command line with `--profile` on both engines. The tests that need a GPU are
//! `#[ignore = "needs a CUDA GPU"]` (run them with `cargo test --test profile -- --ignored`); they
//! go through the `Engine` trait, so they compile in every build.

use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::cpu::adamw::AdamW;
use train_gpt2_cuda::engine::{create_engine, create_gpu_engine, Engine, EngineOptions, Kernels};
use train_gpt2_cuda::precision::Precision;

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
use train_gpt2_cuda::params::{init_params, num_parameters};
use train_gpt2_cuda::profile::{Family, Profile};
use train_gpt2_cuda::rng::Rng;
use train_gpt2_cuda::train::Device;

mod engine_bin;
use engine_bin::bin;

fn tmp_dir(name: &str) -> engine_bin::TempFolder {
    engine_bin::temp_folder("train-gpt2-profile", name)
}

/// One training step: zero_grad, forward and backward on a random batch, norm, update.
fn step(engine: &mut dyn Engine, rng: &mut Rng, b: usize, t: usize, n: usize) {
    let v = engine.config().vocab_size;
    let x: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
    engine.zero_grad().unwrap();
    engine.forward(&x, Some(&y), b, t).unwrap();
    engine.backward(1.0).unwrap();
    let norm = engine.grad_norm().unwrap();
    assert!(norm.is_finite());
    let hp = AdamW {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decay_on: train_gpt2_cuda::cpu::adamw::DecayOn::Matrices,
    };
    engine.update(&hp, n, 1.0).unwrap();
}

/// The CPU engine has no kernel timers: it says so, and profiling it is a no-op, not an error.
#[test]
fn cpu_engine_has_no_profiler() {
    let cfg = GPT2Config::new(16, 100, 128, 1, 2, 8).unwrap();
    let params = init_params(&cfg, 1);
    let mut cpu = create_engine(&opts(Device::Cpu), cfg, params, 2, 8).unwrap();
    assert_eq!(cpu.profile_method(), None);
    cpu.profile_step_begin().unwrap();
    step(cpu.as_mut(), &mut Rng::new(3), 2, 8, 1);
    cpu.profile_step_end().unwrap();
    assert_eq!(cpu.profile(), None);
}

#[test]
fn cli_profile_on_the_cpu_says_it_is_gpu_only_and_trains() {
    let dir = tmp_dir("cpu");
    let out = bin()
        .args([
            "--device",
            "cpu",
            "--model",
            "d1",
            "--batch",
            "2",
            "--seq",
            "16",
            "--steps",
            "2",
            "--val-batches",
            "1",
            "--sample-tokens",
            "0",
            "--profile",
            "--out-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("profile: cpu (")
            && stdout.contains(
                "has no kernel timers (--profile times kernel families on the CUDA engine only)"
            ),
        "{stdout}"
    );
    assert_eq!(stdout.matches("step ").count(), 2, "{stdout}");
    assert!(!stdout.contains("calls/step"), "{stdout}");
}

/// Calls per step of each family for one micro-batch of an L-layer model in the forward, the
/// backward and the update, counted from the passes (`gpu::model`), on the plain kernels or the
/// fused ones (where the GELU is the matmul's epilogue and the residual add is fused into the
/// next layernorm).
fn calls_per_pass(family: Family, l: u64, fused: bool) -> (u64, u64, u64) {
    match family {
        Family::Gelu | Family::Residual if fused => (0, 0, 0),
        Family::Encoder => (1, 1, 0),
        // ln1, ln2 per layer and lnf
        Family::Layernorm => (2 * l + 1, 2 * l + 1, 0),
        // qkv, attproj, fc, fcproj per layer and the logits
        Family::Matmul => (4 * l + 1, 4 * l + 1, 0),
        Family::Attention => (l, l, 0),
        Family::Gelu => (l, l, 0),
        // two per layer in the forward; the backward passes the residual stream's gradient
        // through in place (no kernel)
        Family::Residual => (2 * l, 0, 0),
        // the losses in the forward, the fused softmax + cross-entropy backward
        Family::Classifier => (1, 1, 0),
        Family::Adamw => (0, 0, 1),
        Family::GlobalNorm => (0, 0, 1),
    }
}

/// Calls per step of each family, every pass.
fn calls_per_step(family: Family, l: u64, fused: bool) -> u64 {
    let (f, b, u) = calls_per_pass(family, l, fused);
    f + b + u
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_profile_times_every_family_with_hand_counted_calls_and_flops() {
    // 2 layers, 2 heads, C = 64, GPT-2's vocabulary; B = 4, T = 32
    let cfg = GPT2Config::new(64, 50257, 50304, 2, 2, 64).unwrap();
    let (b, t) = (4usize, 32usize);
    let params = init_params(&cfg, 7);
    let mut gpu = create_gpu_engine(cfg, params, b, t, Precision::Fp32, false)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(gpu.profile_method().unwrap().contains("CUDA events"));
    let mut rng = Rng::new(11);
    // ending a step before any was begun is an error, not a panic (and nothing is recording yet)
    assert!(gpu.profile_step_end().is_err());
    // step 1 unprofiled (warm-up), steps 2 and 3 profiled, step 4 unprofiled again
    step(gpu.as_mut(), &mut rng, b, t, 1);
    assert_eq!(gpu.profile().unwrap().steps, 0);
    for n in 2..=3 {
        gpu.profile_step_begin().unwrap();
        step(gpu.as_mut(), &mut rng, b, t, n);
        gpu.profile_step_end().unwrap();
    }
    let p: Profile = gpu.profile().unwrap();
    step(gpu.as_mut(), &mut rng, b, t, 4);
    assert_eq!(
        gpu.profile().unwrap(),
        p,
        "an unprofiled step changed the profile"
    );
    // ending a step that was not begun is an error
    assert!(gpu.profile_step_end().is_err());

    print!("{}", p.table());
    assert_eq!(p.steps, 2);
    let l = cfg.num_layers as u64;
    for fam in Family::ALL {
        let f = p.family(fam);
        let (fwd, bwd, _) = calls_per_pass(fam, l, false);
        assert_eq!(f.calls, 2 * calls_per_step(fam, l, false), "{}", fam.name());
        assert_eq!(f.forward_calls, 2 * fwd, "{} forward", fam.name());
        assert_eq!(f.backward_calls, 2 * bwd, "{} backward", fam.name());
        assert!(f.ms > 0.0, "{} has no time", fam.name());
        // the passes' times are parts of the family's, each > 0 where the pass has calls
        assert_eq!(f.forward_ms > 0.0, fwd > 0, "{}", fam.name());
        assert_eq!(f.backward_ms > 0.0, bwd > 0, "{}", fam.name());
        assert!(
            f.forward_ms + f.backward_ms <= f.ms * (1.0 + 1e-9),
            "{}",
            fam.name()
        );
        if fwd + bwd == calls_per_step(fam, l, false) {
            let parts = f.forward_ms + f.backward_ms;
            assert!((parts - f.ms).abs() <= 1e-9 * f.ms, "{}", fam.name());
        }
    }
    // matmul FLOPs per step: per layer 2*BT*C*(3C + C + 4C) forward for qkv, attproj, fc and
    // 2*BT*4C*C for fcproj = 24*BT*C^2, plus the logits 2*BT*C*Vp; the backward twice that
    let (bt, c, vp) = (
        (b * t) as f64,
        cfg.channels as f64,
        cfg.padded_vocab_size as f64,
    );
    let forward = 24.0 * l as f64 * bt * c * c + 2.0 * bt * c * vp;
    assert_eq!(p.family(Family::Matmul).flops, 2.0 * 3.0 * forward);
    // attention: 4*B*T*T*C a layer forward, 8*B*T*T*C backward
    let att = 12.0 * l as f64 * (b * t * t) as f64 * c;
    assert_eq!(p.family(Family::Attention).flops, 2.0 * att);
    // AdamW moves 7 floats per parameter (fp32: no master weights)
    let n = num_parameters(&cfg) as f64;
    assert_eq!(p.family(Family::Adamw).bytes, 2.0 * 28.0 * n);

    // the calls lie inside their step, one after another on one stream
    let in_families: f64 = p.families.iter().map(|f| f.ms).sum();
    assert!(
        in_families <= p.step_ms * 1.001 + 0.01,
        "{in_families} ms in families, {} ms in steps",
        p.step_ms
    );
    let rows = p.rows();
    assert_eq!(rows.len(), Family::ALL.len() + 1);
    let sum: f64 = rows.iter().map(|r| r.percent).sum();
    assert!((sum - 100.0).abs() < 1e-6, "{sum}");
    for r in &rows {
        assert!(r.percent >= 0.0 && r.ms_per_step >= 0.0, "{r:?}");
        if r.name != "other" {
            assert!(r.percent > 0.0, "{r:?}");
            assert!(r.gbps.is_some() != r.tflops.is_some(), "{r:?}");
        }
    }
    // the memory families against the device's bandwidth (from its memory clock and bus width:
    // every GPU reports them); A100, H100, H200: between 1.5 and 5 TB/s
    let peak = p
        .peak_gbps
        .expect("the driver reports the memory clock and bus width");
    assert!((1000.0..6000.0).contains(&peak), "{peak} GB/s");
    let ln = rows.iter().find(|r| r.name == "layernorm").unwrap();
    let want = 100.0 * ln.gbps.unwrap() / peak;
    assert!((ln.percent_of_peak.unwrap() - want).abs() < 1e-9, "{ln:?}");
}

/// In bf16 the profile counts activations and gradients at 2 bytes an element and the fp32 state
/// at 4: the gradient norm reads 2 bytes a parameter, AdamW still moves 28 (fp32 master weights,
/// m and v read and written, bf16 gradients read and parameters written), GELU 2 + 2 + 2 + 2
/// bytes an element backward.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_profile_counts_bf16_bytes_at_their_width() {
    let cfg = GPT2Config::new(64, 50257, 50304, 2, 2, 64).unwrap();
    let (b, t) = (4usize, 32usize);
    let params = init_params(&cfg, 7);
    let opts = EngineOptions {
        kernels: Some(Kernels::Plain),
        ..EngineOptions::cuda(Precision::Bf16)
    };
    let mut gpu = create_engine(&opts, cfg, params, b, t).unwrap_or_else(|e| panic!("{e:#}"));
    let mut rng = Rng::new(11);
    step(gpu.as_mut(), &mut rng, b, t, 1);
    // a discarded step (an outlier's, whose update was skipped) adds nothing; discarding or
    // ending a step that was not begun is an error
    gpu.profile_step_begin().unwrap();
    step(gpu.as_mut(), &mut rng, b, t, 3);
    gpu.profile_step_discard().unwrap();
    assert_eq!(gpu.profile().unwrap().steps, 0);
    assert!(gpu.profile_step_discard().is_err());
    assert!(gpu.profile_step_end().is_err());
    gpu.profile_step_begin().unwrap();
    step(gpu.as_mut(), &mut rng, b, t, 2);
    gpu.profile_step_end().unwrap();
    let p: Profile = gpu.profile().unwrap();
    assert_eq!(p.steps, 1);
    let n = num_parameters(&cfg) as f64;
    assert_eq!(p.family(Family::GlobalNorm).bytes, 2.0 * n);
    assert_eq!(p.family(Family::Adamw).bytes, 28.0 * n);
    // plain kernels: GELU forward (inp, out) and backward (inp, dout, dinp read and written) on
    // (B, T, 4C) per layer
    let n4 = (b * t * 4 * cfg.channels) as f64;
    let layers = cfg.num_layers as f64;
    assert_eq!(
        p.family(Family::Gelu).bytes,
        layers * 2.0 * (2.0 + 4.0) * n4
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cli_profile_on_the_gpu_prints_the_table() {
    let dir = tmp_dir("gpu");
    let out = bin()
        .args([
            "--device",
            "cuda",
            "--model",
            "d2",
            "--batch",
            "4",
            "--seq",
            "64",
            "--steps",
            "4",
            "--val-batches",
            "1",
            "--sample-tokens",
            "0",
            "--profile",
            "--out-dir",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("profile: timing the kernel families of steps 2 to 4 by CUDA events"),
        "{stdout}"
    );
    // the GPU's defaults, which the call counts below assume
    assert!(stdout.contains(", bf16, fused kernels"), "{stdout}");
    assert!(stdout.contains("profile: 3 steps, "), "{stdout}");
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("family "))
        .collect();
    assert!(
        table[0].contains("calls/step") && table[0].contains(" fwd ms    bwd ms "),
        "{stdout}"
    );
    for fam in Family::ALL {
        let line = table
            .iter()
            .find(|l| l.split_whitespace().next() == Some(fam.name()))
            .unwrap_or_else(|| panic!("no {} row:\n{stdout}", fam.name()));
        // calls per step of d2 at grad-accum 1, on the default (bf16, fused) kernels
        let cols: Vec<&str> = line.split_whitespace().collect();
        let calls: f64 = cols[1].parse().unwrap();
        assert_eq!(calls, calls_per_step(fam, 2, true) as f64, "{line}");
        // "fwd ms" and "bwd ms": a time where the pass has calls, else "-"
        let (fwd, bwd, _) = calls_per_pass(fam, 2, true);
        for (col, n) in [(cols[3], fwd), (cols[4], bwd)] {
            assert_eq!(col != "-", n > 0, "{line}");
            if n > 0 {
                assert!(col.parse::<f64>().unwrap() >= 0.0, "{line}");
            }
        }
    }
    assert!(table.iter().any(|l| l.starts_with("other ")), "{stdout}");
    assert!(table.iter().any(|l| l.starts_with("total ")), "{stdout}");
}
