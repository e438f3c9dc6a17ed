//! The `train-gpt2-cuda` command itself on the emulated device (tests/emu/device.rs: the fake
//! libcuda, libcublas and libcublasLt over the host emulation of the kernels): what a user types,
//! with every GPU code path of the engine behind it. `verify --device both` against the committed
//! PyTorch fixtures in both precisions and on both kernel sets, and training runs whose
//! checkpoints must be bitwise the same with and without CUDA graphs, and between two runs of the
//! same seed. The numbers come from the emulation (gemms summed in double, the host's libm), not
//! from a GPU: what this shows is that the engine's orchestration (arenas, launch order, shapes,
//! graphs, the checkpoint and the logs) is right; the GPU tests (`--include-ignored` on a GPU
//! machine) show the real device's rounding.

#![cfg(has_cuda)]

mod emu;

use std::path::{Path, PathBuf};
use std::process::Output;

mod engine_bin;
use engine_bin::{assert_same_files, bin, flags, log_lines, root, step_losses};

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Runs the binary on the emulated device with `args`; panics with its output unless it exits 0.
fn run_ok(args: &[&str], dir: &Path) -> String {
    run_ok_with(args, dir, &[])
}

/// [`run_ok`] with more environment variables (for the fake driver).
fn run_ok_with(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> String {
    let out = run_with(args, dir, env);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "train-gpt2-cuda {} failed on the emulated device ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

fn run_with(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.args(args).current_dir(dir);
    for (k, v) in emu::device::fake_cuda_env() {
        cmd.env(k, v);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("running train-gpt2-cuda")
}

fn scratch(name: &str) -> engine_bin::TempFolder {
    engine_bin::scratch(&format!("emulated-cli/{name}"))
}

/// `verify --device both` on a fixture, with its 10 AdamW steps against PyTorch's losses.
fn verify_both(name: &str, extra: &[&str]) -> String {
    let dir = scratch(&format!(
        "verify-{name}-{}",
        extra.join("").replace("-", "")
    ));
    let (model, state, losses) = (
        fixture(&format!("ref_{name}_model.bin")),
        fixture(&format!("ref_{name}_state.bin")),
        fixture(&format!("ref_{name}_losses.txt")),
    );
    let mut args = vec![
        "verify",
        "--device",
        "both",
        "--model",
        &model,
        "--state",
        &state,
        "--steps",
        "10",
        "--expect-losses",
        &losses,
    ];
    args.extend_from_slice(extra);
    let text = run_ok(&args, &dir);
    assert!(
        text.contains("cuda: Emulated CUDA device (host)")
            && text.contains("verify: all tensors pass"),
        "verify --device both {name} {extra:?}: the GPU side did not run or did not pass:\n{text}"
    );
    // the GPU's flags reach the GPU, and only it: its lines name the kernels asked for, and the
    // CPU engine notes no flag that does nothing there
    if let Some(i) = extra.iter().position(|&f| f == "--kernels") {
        let kernels = format!(", {} kernels", extra[i + 1]);
        let gpu: Vec<&str> = text.lines().filter(|l| l.starts_with("cuda: ")).collect();
        assert!(
            !gpu.is_empty() && gpu.iter().all(|l| l.contains(&kernels)),
            "{extra:?}: {text}"
        );
    }
    assert!(
        !text.contains("does nothing on the CPU engine"),
        "{extra:?}: {text}"
    );
    text
}

#[test]
fn verify_both_passes_on_the_emulated_device_in_fp32_on_the_plain_kernels() {
    for name in ["tiny", "sharp", "hs64", "gpt2vocab"] {
        verify_both(name, &["--kernels", "plain"]);
    }
}

#[test]
fn verify_both_passes_on_the_emulated_device_in_fp32_on_the_fused_kernels() {
    verify_both("hs64", &["--kernels", "fused"]);
}

#[test]
fn verify_both_passes_on_the_emulated_device_in_bf16() {
    verify_both("hs64", &["--precision", "bf16"]);
    verify_both("hs64", &["--precision", "bf16", "--kernels", "plain"]);
    verify_both("sharp", &["--precision", "bf16"]);
    // GELU's output computed again in the backward, not kept: the same tolerances
    let text = verify_both("hs64", &["--precision", "bf16", "--recompute", "gelu"]);
    assert!(text.contains("GELU recomputed"), "{text}");
}

/// The GPU's logits error (err/max|ref|, against PyTorch) in `verify --device both`'s output.
fn gpu_logits_error(text: &str) -> f64 {
    let gpu = &text[text.find("\ncuda: ").expect("a cuda table")..];
    let line = gpu.lines().find(|l| l.starts_with("logits")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// `verify --tf32` is judged by the TF32 tolerances (the fp32 ones failed every gradient), on
/// the fixtures of the largest errors measured (docs/verification.md); in bf16 it does nothing,
/// and says so. Its products really are TF32's: the logits' error is hundreds of times fp32's
/// (on tiny 4.2e-4 of their largest against 2.2e-7; the fake cuBLAS rounds TF32's inputs).
#[test]
fn verify_both_passes_on_the_emulated_device_with_tf32() {
    for name in ["tiny", "gpt2vocab"] {
        let text = verify_both(name, &["--tf32"]);
        assert!(text.contains("fp32, TF32 matmuls"), "{text}");
        assert!(gpu_logits_error(&text) > 1e-5, "{text}");
    }
    let text = verify_both("tiny", &[]);
    assert!(gpu_logits_error(&text) < 1e-5, "{text}");
    assert!(!text.contains("--tf32"), "{text}");
    let text = verify_both("hs64", &["--precision", "bf16", "--tf32"]);
    assert!(text.contains("note: --tf32 does nothing in bf16"), "{text}");
    assert!(!text.contains("TF32 matmuls"), "{text}");
}

/// The stderr of a command (`args`, with `env`) that the GPU engine refuses for its memory:
/// exit status 1, "not enough GPU memory".
fn refused_for_gpu_memory(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> String {
    let out = run_with(args, dir, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains("error: not enough GPU memory: the model"),
        "{stderr}"
    );
    stderr
}

/// A model that does not fit in the GPU's memory: each command's error names its own flags
/// (`sample` has no -b or -t, `eval` no --classifier-chunk), and parameters that alone do not fit
/// ask for a smaller model, not a smaller batch. (The fake device's memory is set just above the
/// 64 MiB of the cuBLAS and cuBLASLt workspaces.)
#[test]
fn out_of_memory_advice_names_each_command_s_flags() {
    let dir = scratch("oom-advice");
    let model = fixture("ref_gpt2vocab_model.bin");
    let fails = |args: &[&str], bytes: &str| {
        let stderr = refused_for_gpu_memory(args, &dir, &[("FAKECUDA_MEMORY_BYTES", bytes)]);
        assert!(!stderr.contains("(-b)"), "{args:?}: {stderr}");
        stderr
    };
    let e = fails(
        &[
            "eval", "--device", "cuda", "--model", &model, "--batch", "64",
        ],
        "80000000",
    );
    assert!(e.contains("; use a smaller --batch or --seq\n"), "{e}");
    let e = fails(
        &[
            "sample", "--device", "cuda", "--model", &model, "--tokens", "3",
        ],
        "68000000",
    );
    assert!(e.contains("; use a smaller --window\n"), "{e}");
    let e = fails(
        &[
            "sample", "--device", "cuda", "--model", &model, "--tokens", "3",
        ],
        "67200000",
    );
    assert!(
        e.contains("the parameters alone take 0.8 MiB, whatever the batch: use a smaller model"),
        "{e}"
    );
    let out = dir.join("train").to_string_lossy().into_owned();
    let e = fails(
        &[
            "--device",
            "cuda",
            "--model",
            "d1",
            "--steps",
            "1",
            "--out-dir",
            &out,
        ],
        "90000000",
    );
    assert!(
        e.contains(
            "the parameters and their gradients and AdamW state alone take 50.9 MiB, whatever the \
             batch: use a smaller model"
        ),
        "{e}"
    );
}

/// A new model bound for the GPU is measured against the GPU's memory, not the host's: `main`
/// checks a new model against the host's memory before drawing its weights only when it is bound
/// for the CPU. d1 at B=100000 (4.75 TiB of activations) is refused by the GPU engine's check.
#[test]
fn a_new_model_for_the_gpu_is_checked_against_the_gpu_s_memory() {
    let dir = scratch("gpu-memory");
    let out = dir.join("train").to_string_lossy().into_owned();
    let args = [
        "--device",
        "cuda",
        "--model",
        "d1",
        "--batch",
        "100000",
        "--steps",
        "1",
        "--out-dir",
        &out,
    ];
    let stderr = refused_for_gpu_memory(&args, &dir, &[]);
    assert!(
        stderr.contains("error: not enough GPU memory: the model (L=1, C=64, ")
            && stderr.contains(" at B=100000, T=64 needs "),
        "{stderr}"
    );
    assert!(!stderr.contains("on the CPU"), "{stderr}");
}

/// `eval --hellaswag` through the GPU engine: the accuracies tests/hellaswag.rs checks on the CPU
/// against transformers, in fp32 and in bf16 (whose rounding may move a close call: only the
/// count of examples is asserted there).
#[test]
fn hellaswag_on_the_emulated_device() {
    let dir = scratch("hellaswag");
    let (model, data) = (
        fixture("ref_gpt2vocab_model.bin"),
        fixture("hellaswag_tiny.jsonl"),
    );
    let args = [
        "eval",
        "--device",
        "cuda",
        "--model",
        &model,
        "--hellaswag",
        &data,
    ];
    let text = run_ok(
        &[&args[..], &["--precision", "fp32", "--batch", "8"]].concat(),
        &dir,
    );
    assert!(
        text.contains("hellaswag: acc_norm 0.2000 (1/5), acc 0.6000 (3/5)"),
        "{text}"
    );
    let text = run_ok(&[&args[..], &["--precision", "bf16"]].concat(), &dir);
    assert!(
        text.contains(", bf16") && text.contains("/5), acc "),
        "{text}"
    );
}

fn last_checkpoint(dir: &Path) -> Vec<u8> {
    let out = dir.join("ckpt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap_or_else(|e| panic!("reading {}: {e}", out.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("model_") && name.ends_with(".bin")
        })
        .collect();
    files.sort();
    let last = files
        .last()
        .unwrap_or_else(|| panic!("no checkpoint in {}", out.display()));
    std::fs::read(last).unwrap()
}

/// A 4-step d1 training run (B=2, T=16 unless `extra` sets the batch) in a fresh directory, with
/// `extra` flags: its log and its last checkpoint.
fn train(name: &str, extra: &[&str]) -> (String, Vec<u8>) {
    train_with(name, extra, &[])
}

/// [`train`] with more environment variables (for the fake driver).
fn train_with(name: &str, extra: &[&str], env: &[(&str, &str)]) -> (String, Vec<u8>) {
    let dir = scratch(name);
    let batch = if extra.contains(&"--batch") {
        &[][..]
    } else {
        &["--batch", "2"][..]
    };
    let mut args = vec![
        "--model",
        "d1",
        "--seq",
        "16",
        "--steps",
        "4",
        "--seed",
        "7",
        "--sample-tokens",
        "8",
        "--val-batches",
        "2",
        "--out-dir",
        "ckpt",
    ];
    args.extend_from_slice(batch);
    args.extend_from_slice(extra);
    let log = run_ok_with(&args, &dir, env);
    let ck = last_checkpoint(&dir);
    (log, ck)
}

#[test]
fn training_on_the_emulated_device_is_deterministic_with_and_without_graphs() {
    for precision in ["fp32", "bf16"] {
        let (log_a, ck_a) = train(
            &format!("train-{precision}-a"),
            &["--device", "cuda", "--precision", precision],
        );
        assert!(
            log_a.contains("Emulated CUDA device"),
            "not on the emulated device:\n{log_a}"
        );
        assert_eq!(step_losses(&log_a).len(), 4, "{log_a}");
        let (log_b, ck_b) = train(
            &format!("train-{precision}-b"),
            &["--device", "cuda", "--precision", precision],
        );
        assert_eq!(step_losses(&log_a), step_losses(&log_b));
        assert!(ck_a == ck_b, "{precision}: two runs with one seed differ");
        let (log_c, ck_c) = train(
            &format!("train-{precision}-c"),
            &[
                "--device",
                "cuda",
                "--precision",
                precision,
                "--no-cuda-graphs",
            ],
        );
        assert_eq!(step_losses(&log_a), step_losses(&log_c));
        assert!(
            ck_a == ck_c,
            "{precision}: CUDA graphs changed the trained parameters"
        );
        // graphs off by the flag, not for an NVTX tool: no note about one
        assert!(!log_c.contains("NVTX tool"), "{log_c}");
    }
}

/// A CUDA graph capture that fails turns the graphs off once, with one note, and the step runs
/// eagerly: the same losses and checkpoint, bit for bit, as a run without graphs. The fake driver
/// fails a capture either way: it invalidates every capture (FAKECUDA_INVALIDATE_CAPTURES=1, as
/// the real one does a capture that did something forbidden), or refuses every launch in one and
/// keeps the capture valid (FAKECUDA_FAIL_CAPTURED_LAUNCHES=1): the engine's own work failed, and
/// the graph of what it launched before must not be replayed as the step. With
/// `--no-cuda-graphs` nothing is captured, so a driver that fails every capture changes nothing.
#[test]
fn a_failed_graph_capture_falls_back_to_eager_launches() {
    let (log_a, ck_a) = train_with(
        "capture-eager",
        &["--device", "cuda", "--no-cuda-graphs"],
        &[("FAKECUDA_INVALIDATE_CAPTURES", "1")],
    );
    assert!(!log_a.contains("capturing a CUDA graph"), "{log_a}");
    for (switch, error) in [
        ("FAKECUDA_INVALIDATE_CAPTURES", "STREAM_CAPTURE_INVALIDATED"),
        ("FAKECUDA_FAIL_CAPTURED_LAUNCHES", "LAUNCH_OUT_OF_RESOURCES"),
    ] {
        let (log, ck) = train_with("capture-fails", &["--device", "cuda"], &[(switch, "1")]);
        let notes = log.matches("note: capturing a CUDA graph of").count();
        assert_eq!(
            notes, 1,
            "{switch}: one failed capture, one note, graphs off after it:\n{log}"
        );
        assert!(log.contains(error), "{switch}: {log}");
        assert_eq!(step_losses(&log), step_losses(&log_a), "{switch}: {log}");
        assert!(
            ck == ck_a,
            "{switch}: the run whose capture failed trained other parameters"
        );
    }
}

/// HellaSwag between training steps (`--hellaswag`, at each validation: forwards of another shape,
/// and their CUDA graphs) leaves training as it was: the same losses and the same checkpoint, bit
/// for bit, as the run without it, in fp32 and bf16.
#[test]
fn hellaswag_during_training_on_the_emulated_device_changes_nothing_else() {
    let hs = fixture("hellaswag_tiny.jsonl");
    for precision in ["fp32", "bf16"] {
        let base = [
            "--device",
            "cuda",
            "--precision",
            precision,
            "--batch",
            "4",
            "--val-every",
            "2",
        ];
        let (log_a, ck_a) = train(&format!("hs-{precision}-without"), &base);
        let with = [&base[..], &["--hellaswag", &hs]].concat();
        let (log_b, ck_b) = train(&format!("hs-{precision}-with"), &with);
        // validations at steps 0 and 2, and at the end
        assert_eq!(log_b.matches("hellaswag acc_norm ").count(), 3, "{log_b}");
        assert_eq!(step_losses(&log_a), step_losses(&log_b), "{precision}");
        assert!(
            ck_a == ck_b,
            "{precision}: HellaSwag changed the trained parameters"
        );
    }
}

/// Text samples between training steps (`--sample-every`: forwards without targets, one length
/// after another, which the graphs leave eager) leave training as it was: the same losses and
/// the same checkpoint, bit for bit, as the run without them, in fp32 and bf16; and the last
/// sample is the one the run without them draws at the end.
#[test]
fn samples_during_training_on_the_emulated_device_change_nothing_else() {
    for precision in ["fp32", "bf16"] {
        let base = ["--device", "cuda", "--precision", precision];
        let (log_a, ck_a) = train(&format!("se-{precision}-without"), &base);
        let with = [&base[..], &["--sample-every", "2"]].concat();
        let (log_b, ck_b) = train(&format!("se-{precision}-with"), &with);
        // after step 2, and at the end (step 4): the same lengths again
        assert_eq!(log_b.matches("sample after step ").count(), 2, "{log_b}");
        assert_eq!(step_losses(&log_a), step_losses(&log_b), "{precision}");
        let last = |log: &str| log.rsplit_once("top-k 40):").map(|(_, s)| s.to_owned());
        assert!(last(&log_a).is_some(), "{log_a}");
        assert_eq!(last(&log_a), last(&log_b), "{precision}");
        assert!(
            ck_a == ck_b,
            "{precision}: sampling changed the trained parameters"
        );
    }
}

/// Training on the emulated device against the CPU path, same seed and data, 4 steps of d1 with
/// GPT-2's vocabulary at a learning rate (1e-2) that moves the loss (10.80 to 10.09 on the CPU,
/// so a step that does not train shows): the printed losses (4 decimals) within `atol`. fp32
/// agrees to the printed digits; TF32 (10-bit mantissas in the products) and bf16 (8-bit storage)
/// differed by up to 2.5e-3 when this was written and get 1e-2.
#[test]
fn training_on_the_emulated_device_tracks_the_cpu() {
    let (cpu, _) = train("train-vs-cpu-cpu", &["--device", "cpu", "--lr", "1e-2"]);
    let (cpu_accum, _) = train(
        "train-vs-cpu-cpu-accum",
        &[
            "--device",
            "cpu",
            "--lr",
            "1e-2",
            "--batch",
            "1",
            "--grad-accum",
            "2",
        ],
    );
    let cases: [(&str, &[&str], bool, f32); 5] = [
        (
            "fp32-plain",
            &["--precision", "fp32", "--kernels", "plain"],
            false,
            1e-3,
        ),
        (
            "fp32-fused-tf32",
            &["--precision", "fp32", "--kernels", "fused", "--tf32"],
            false,
            1e-2,
        ),
        (
            "bf16-fused",
            &["--precision", "bf16", "--kernels", "fused"],
            false,
            1e-2,
        ),
        (
            "fp32-plain-chunks",
            &[
                "--precision",
                "fp32",
                "--kernels",
                "plain",
                "--classifier-chunk",
                "1",
            ],
            false,
            1e-3,
        ),
        (
            "fp32-plain-accum",
            &[
                "--precision",
                "fp32",
                "--kernels",
                "plain",
                "--batch",
                "1",
                "--grad-accum",
                "2",
            ],
            true,
            1e-3,
        ),
    ];
    for (name, args, accum, atol) in cases {
        let mut all = vec!["--device", "cuda", "--lr", "1e-2"];
        all.extend_from_slice(args);
        let (gpu, _) = train(&format!("train-vs-cpu-{name}"), &all);
        let want = if accum { &cpu_accum } else { &cpu };
        let (g, c) = (step_losses(&gpu), step_losses(want));
        assert_eq!(g.len(), 4, "{name}: {gpu}");
        assert_eq!(g.len(), c.len());
        for (i, (a, b)) in g.iter().zip(&c).enumerate() {
            assert!(
                (a - b).abs() <= atol,
                "{name} step {}: loss {a} on the emulated device, {b} on the CPU",
                i + 1
            );
        }
    }
}

/// A run on the emulated device stopped at a checkpoint and resumed from its training state
/// continues exactly: the same step lines and byte-identical model and state at the end, in fp32
/// and in bf16 (whose state carries the fp32 master weights: without them the bf16 weights of the
/// checkpoint would be the master weights and the run would drift). And a bf16 run continues on
/// the CPU in fp32 from its master weights, near the bf16 run's losses.
#[test]
fn training_on_the_emulated_device_resumes_exactly() {
    for precision in ["fp32", "bf16"] {
        let dir = scratch(&format!("resume-{precision}"));
        let mut common = vec!["--precision", precision];
        common.extend(flags(
            "--batch 2 --seq 16 --seed 7 --lr 1e-2 --val-every 0 --val-batches 1 \
             --sample-tokens 0 --steps 4",
        ));
        let cuda = |extra: &[&str]| {
            let args: Vec<&str> = ["--device", "cuda"]
                .iter()
                .chain(&common)
                .chain(extra)
                .copied()
                .collect();
            run_ok(&args, &dir)
        };
        let whole = cuda(&[
            "--model",
            "d1",
            "--checkpoint-every",
            "2",
            "--out-dir",
            "whole",
        ]);
        assert!(whole.contains("Emulated CUDA device"), "{whole}");
        let resumed = cuda(&["--resume", "whole/state_000002.bin", "--out-dir", "resumed"]);
        let want = log_lines(&whole, &["step "]);
        assert_eq!(want.len(), 4, "{whole}");
        assert_eq!(
            log_lines(&resumed, &["step "]),
            want[2..],
            "{precision}:\n{whole}\n{resumed}"
        );
        assert_same_files(
            &dir.join("whole"),
            &dir.join("resumed"),
            &["model_000004.bin", "state_000004.bin"],
            &format!("{precision}: the whole run and the one resumed at step 2"),
        );
        let state = std::fs::metadata(dir.join("whole/state_000002.bin"))
            .unwrap()
            .len();
        let model = std::fs::metadata(dir.join("whole/model_000002.bin"))
            .unwrap()
            .len();
        // header + m + v (+ master weights), against a model of 4 (fp32) or 2 (bf16) bytes each
        let (arrays, bytes_per_param) = if precision == "bf16" { (3, 2) } else { (2, 4) };
        assert_eq!(
            (state - 1024) * bytes_per_param,
            (model - 1024) * 4 * arrays,
            "{precision}: the state's arrays"
        );
        if precision == "bf16" {
            let bf16_steps = step_losses(&whole);
            let cpu: Vec<&str> = ["--device", "cpu"]
                .iter()
                .chain(&common[2..])
                .chain(&["--resume", "whole/state_000002.bin", "--out-dir", "on-cpu"])
                .copied()
                .collect();
            let on_cpu = run_ok(&cpu, &dir);
            let got = step_losses(&on_cpu);
            assert_eq!(got.len(), 2, "{on_cpu}");
            for (a, b) in got.iter().zip(&bf16_steps[2..]) {
                assert!(
                    (a - b).abs() < 1e-2,
                    "bf16 continued in fp32 on the CPU: {got:?} against {bf16_steps:?}"
                );
            }
        }
    }
}

/// `--profile` leaves a step whose update was skipped (`--skip-loss-z`) out of its table: its
/// times lack the update's, and would lower the update's share. A d1 run of 100 steps on a corpus
/// of one repeated pattern whose 97th batch has random targets (judged against the losses of steps
/// 33 to 96, long after the pattern was learnt): step 97 is skipped, and the table averages the 98
/// other steps it timed (steps 2 to 100).
#[test]
fn profile_leaves_out_the_steps_whose_update_was_skipped() {
    let dir = scratch("profile-skipped");
    engine_bin::write_spike_corpus(&dir, 100, 96..97);
    let log = run_ok(
        &flags(
            "--device cuda --model d1 --batch 2 --seq 16 --steps 100 --val-every 0 \
             --val-batches 1 --seed 3 --lr 3e-3 --lr-schedule constant --sample-tokens 0 \
             --no-state --skip-loss-z 5 --profile --train spike.bin --val pattern.bin \
             --out-dir ckpt",
        ),
        &dir,
    );
    let skipped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("update skipped"))
        .collect();
    assert_eq!(skipped.len(), 1, "{log}");
    assert!(skipped[0].starts_with("step    97/100 |"), "{log}");
    assert!(
        log.contains("profile: timing the kernel families of steps 2 to 100 by CUDA events"),
        "{log}"
    );
    assert!(
        log.contains(
            "profile: 1 of the 99 steps timed left out: its update was skipped (outliers)"
        ),
        "{log}"
    );
    assert!(log.contains("profile: 98 steps, "), "{log}");
}
