//! tools/loss_band.py (does a bf16 run track the fp32 run?) on hand-made logs: window means and
//! validation losses compared by hand, a run that drifts fails, bad input is exit status 2; then
//! on real curves: the bf16 engine emulated on the CPU against fp32, on the default corpus.

mod python_tool;

use std::path::PathBuf;
use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::cpu::adamw::AdamW;
use train_gpt2_cuda::cpu::model::Gpt2Cpu;
use train_gpt2_cuda::data::{self, DataLoader};
use train_gpt2_cuda::lr_schedule::{LrSchedule, LrShape};
use train_gpt2_cuda::params::init_params;

/// A log of `losses` (one `step` line each) with validation losses `vals` (first, last).
fn log(dir: &std::path::Path, name: &str, losses: &[f32], vals: [f32; 2]) -> PathBuf {
    let n = losses.len();
    let mut s = format!("model: ...\nval loss {:.4}\n", vals[0]);
    for (i, l) in losses.iter().enumerate() {
        s += &format!(
            "step {:>5}/{n} | loss {l:.4} | lr 1.00e-4 | norm 1.000 | 5.0 ms | 1000 tok/s | MFU -\n",
            i + 1
        );
    }
    s += &format!("val loss {:.4}\npeak memory: 1.0 MiB\n", vals[1]);
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p
}

fn run(args: &[&str]) -> (i32, String) {
    python_tool::run("loss_band.py", args)
}

#[test]
fn window_means_and_validation_losses_against_the_band() {
    let dir = std::env::temp_dir().join(format!("loss_band_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fp32 = log(&dir, "fp32.log", &[10.0, 9.0, 8.0, 7.0], [10.0, 7.5]);
    // window 1: (10 + 9.3) / 2 = 9.65 vs 9.5: 1.58% off; window 2 equal; val 7.6 vs 7.5: 1.33%
    let close = log(&dir, "close.log", &[10.0, 9.3, 8.0, 7.0], [10.0, 7.6]);
    let (rc, out) = run(&[
        fp32.to_str().unwrap(),
        close.to_str().unwrap(),
        "--window",
        "2",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("fp32 9.5000 bf16 9.6500 rel diff 1.58e-02 ok"),
        "{out}"
    );
    assert!(
        out.contains("fp32 7.5000 bf16 7.6000 rel diff 1.33e-02 ok"),
        "{out}"
    );
    // the same run against a 1% band: both the first window and the last validation fail
    let (rc, out) = run(&[
        fp32.to_str().unwrap(),
        close.to_str().unwrap(),
        "--window",
        "2",
        "--band",
        "0.01",
        "--val-band",
        "0.01",
    ]);
    assert_eq!(rc, 1, "{out}");
    assert_eq!(out.matches("FAIL").count(), 2, "{out}");
    assert!(out.ends_with("(validation): NO\n"), "{out}");
    // bad input: a missing file, a file without steps, runs of different lengths
    let (rc, out) = run(&[fp32.to_str().unwrap(), "/nonexistent.log"]);
    assert_eq!(rc, 1, "{out}"); // SystemExit("error: ...") exits 1 with the message
    assert!(out.contains("/nonexistent.log: cannot read"), "{out}");
    let empty = dir.join("empty.log");
    std::fs::write(&empty, "hello\n").unwrap();
    let (_, out) = run(&[fp32.to_str().unwrap(), empty.to_str().unwrap()]);
    assert!(out.contains("no `step N/M | loss X` lines"), "{out}");
    let short = log(&dir, "short.log", &[10.0, 9.0, 8.0], [10.0, 7.5]);
    let (_, out) = run(&[fp32.to_str().unwrap(), short.to_str().unwrap()]);
    assert!(
        out.contains("the runs differ: steps 1-4 of 4 (4 lines) vs 1-3 of 3 (3 lines)"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// What would make the verdict wrong is refused or fails: a run cut short (its last step line
/// not M of M, though as many lines as the other run's), the logs given the other way round
/// (their model lines' precisions), a NaN loss (the engine prints `NaN`); an fp32 loss of 0 is
/// no division by zero, a last window of one step joins the one before, and the band is printed
/// as given.
#[test]
fn cut_runs_swapped_logs_and_nan_losses_are_not_passed() {
    let dir = std::env::temp_dir().join(format!("loss_band_bad_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    // a log of steps 1..=losses.len() out of `total`, after a model line on `device`
    let log = |name: &str, device: &str, total: usize, losses: &[&str]| {
        let mut s = format!("model: L=1 NH=1 C=64 (1.0M parameters) on {device}\n");
        for (i, l) in losses.iter().enumerate() {
            s += &format!(
                "step {:>5}/{total} | loss {l} | lr 1.00e-4 | 5.0 ms\n",
                i + 1
            );
        }
        write(name, s + "val loss 7.0000\n")
    };
    let cuda = |p: &str| format!("cuda: NVIDIA H200, {p}, fused kernels, CUDA graphs");
    let losses = ["10.0000", "9.0000", "8.0000", "7.0000"];
    let fp32 = log("fp32.log", &cuda("fp32"), 4, &losses);
    let bf16 = log("bf16.log", &cuda("bf16"), 4, &losses);
    let (rc, out) = run(&[&fp32, &bf16, "--window", "2"]);
    assert_eq!(rc, 0, "{out}");
    // cut short: 4 lines of a run of 8 steps, against a whole run of 4
    let cut = log("cut.log", &cuda("bf16"), 8, &losses);
    let (rc, out) = run(&[&fp32, &cut]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("the run stopped at step 4 of 8"), "{out}");
    // the other way round, and two fp32 runs (a CPU run is fp32)
    let cpu = log("cpu.log", "cpu (2 threads)", 4, &losses);
    for (a, b, said) in [
        (&bf16, &fp32, "say bf16 and fp32"),
        (&fp32, &cpu, "say fp32 and fp32"),
    ] {
        let (rc, out) = run(&[a, b]);
        assert_eq!(rc, 1, "{out}");
        assert!(out.contains(said), "{out}");
        assert!(out.contains("give the fp32 run's log first"), "{out}");
    }
    // a NaN in the bf16 run fails its window; the other window passes
    let nan = log(
        "nan.log",
        &cuda("bf16"),
        4,
        &["10.0000", "NaN", "8.0000", "7.0000"],
    );
    let (rc, out) = run(&[&fp32, &nan, "--window", "2"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("rel diff nan FAIL"), "{out}");
    assert!(
        out.contains("steps     3-4     fp32 7.5000 bf16 7.5000"),
        "{out}"
    );
    // fp32 losses of 0 (an overfit batch): equal is no difference, anything else infinite
    let zero = log("zero.log", &cuda("fp32"), 2, &["0.0000", "0.0000"]);
    let one = log("one.log", &cuda("bf16"), 2, &["0.0000", "0.0001"]);
    let (rc, out) = run(&[&zero, &one, "--window", "1"]);
    assert_eq!(rc, 1, "{out}");
    assert!(
        out.contains("steps     1-1     fp32 0.0000 bf16 0.0000 rel diff 0.00e+00 ok"),
        "{out}"
    );
    assert!(out.contains("rel diff inf FAIL"), "{out}");
    // 5 steps in windows of 4: the fifth joins the first window; a band of 1.5%
    let five = ["10.0000", "9.0000", "8.0000", "7.0000", "6.0000"];
    let f5 = log("f5.log", &cuda("fp32"), 5, &five);
    let b5 = log("b5.log", &cuda("bf16"), 5, &five);
    let (rc, out) = run(&[&f5, &b5, "--window", "4", "--band", "0.015"]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("steps     1-5     fp32 8.0000"), "{out}");
    assert!(
        out.contains("within 1.5% (windows of 4 steps) and 2% (validation): yes"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// One training run of `model` on the default corpus, as a train-gpt2-cuda log (the lines
/// tools/loss_band.py reads): validation loss, `steps` steps at B x T, validation loss.
fn train_log(mut model: Gpt2Cpu, steps: usize, b: usize, t: usize) -> String {
    let v = model.config.vocab_size;
    let mut train = DataLoader::new(&data::default_train_pattern(), b, t, v, None).unwrap();
    let mut val = DataLoader::new(&data::default_val_pattern(), b, t, v, None).unwrap();
    let mut val_loss = |model: &mut Gpt2Cpu| {
        val.reset().unwrap();
        let mut sum = 0.0;
        for _ in 0..4 {
            let (x, y) = val.next_batch().unwrap();
            sum += model.forward(x, Some(y), b, t).unwrap().unwrap() / 4.0;
        }
        sum
    };
    let mut log = format!("val loss {:.4}\n", val_loss(&mut model));
    let schedule = LrSchedule {
        shape: LrShape::Cosine,
        lr: 1e-3,
        steps,
        warmup: 10,
        final_frac: 0.1,
        decay_frac: 0.0,
    };
    for step in 0..steps {
        let hp = AdamW {
            lr: schedule.at(step),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
            decay_on: train_gpt2_cuda::cpu::adamw::DecayOn::Matrices,
        };
        let (x, y) = train.next_batch().unwrap();
        let loss = model.forward(x, Some(y), b, t).unwrap().unwrap();
        model.zero_grad();
        model.backward(1.0);
        let norm = model.grad_norm();
        let scale = if norm > 1.0 { 1.0 / norm } else { 1.0 };
        model.update(&hp, step + 1, scale);
        log += &format!(
            "step {:>5}/{steps} | loss {loss:.4} | lr {:.2e} | norm {norm:.3} | 1.0 ms | 1 tok/s | MFU -\n",
            step + 1,
            hp.lr
        );
    }
    log += &format!("val loss {:.4}\n", val_loss(&mut model));
    log
}

/// The bf16 engine's arithmetic emulated on the CPU (`Gpt2Cpu::emulating_bf16_storage`: bf16
/// weights, activations and gradients, fp32 master weights, AdamW writing the weights with
/// stochastic rounding) tracks the fp32 run of the same seed and data within the band that
/// tools/gpu-verify.sh demands of the GPU (25-step windows and validation losses within 2%):
/// 150 steps of a 2-layer C=64 model on the Shakespeare corpus, loss 10.9 falling below 7.
#[test]
fn bf16_emulated_training_tracks_fp32_within_the_band() {
    let cfg = GPT2Config::new(64, 50257, 50304, 2, 2, 64).unwrap();
    let params = init_params(&cfg, 1337);
    let (steps, b, t) = (150, 4, 64);
    let fp32 = train_log(
        Gpt2Cpu::new(cfg, params.clone(), b, t).unwrap(),
        steps,
        b,
        t,
    );
    let emulated = Gpt2Cpu::new(cfg, params, b, t)
        .unwrap()
        .emulating_bf16_storage();
    let bf16 = train_log(emulated, steps, b, t);
    assert_ne!(fp32, bf16, "the emulation changed nothing");
    let dir = std::env::temp_dir().join(format!("loss_band_emu_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p32, p16) = (dir.join("fp32.log"), dir.join("bf16.log"));
    std::fs::write(&p32, &fp32).unwrap();
    std::fs::write(&p16, &bf16).unwrap();
    let (rc, out) = run(&[
        p32.to_str().unwrap(),
        p16.to_str().unwrap(),
        "--window",
        "25",
        "--band",
        "0.02",
        "--val-band",
        "0.02",
    ]);
    println!("{out}");
    assert_eq!(rc, 0, "{out}");
    // the curve must have moved for the comparison to mean something
    let losses: Vec<f32> = fp32
        .lines()
        .filter_map(|l| l.split("| loss ").nth(1))
        .map(|r| r.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let mean = |w: &[f32]| w.iter().sum::<f32>() / w.len() as f32;
    assert!(
        mean(&losses[steps - 25..]) < mean(&losses[..25]) - 2.0,
        "{fp32}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
