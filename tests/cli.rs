//! The command line as a user meets it: a short training run end to end, `verify` on the PyTorch
//! fixtures, `sample`, `tokenizer`, and every bad input the user can type giving a clear error and
//! exit status 1 (never a panic, whose status would be 101).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod engine_bin;
use engine_bin::{
    assert_same_files, bin, flags, limited, log_lines, root, step_field, step_losses, step_number,
};

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn tmp_dir(name: &str) -> engine_bin::TempFolder {
    engine_bin::temp_folder("train-gpt2-cli", name)
}

/// A test's folder goes when the test passes, and stays when it fails, to be looked at: these
/// runs leave a few GB of checkpoints. (A failed test is a thread unwinding; `resume_unwind`
/// unwinds without printing a panic message.)
#[test]
fn a_test_s_folder_is_removed_when_it_passes_and_kept_when_it_fails() {
    let passed = tmp_dir("passed");
    let passed_path = passed.to_path_buf();
    std::fs::write(passed.join("model.bin"), b"weights").unwrap();
    drop(passed);
    assert!(!passed_path.exists(), "{}", passed_path.display());
    let failed = std::thread::spawn(|| {
        let failed = tmp_dir("failed");
        std::fs::write(failed.join("model.bin"), b"weights").unwrap();
        std::panic::resume_unwind(Box::new(failed.to_path_buf()))
    })
    .join()
    .unwrap_err();
    let failed_path = failed.downcast::<PathBuf>().unwrap();
    let kept = std::fs::read(failed_path.join("model.bin"));
    std::fs::remove_dir_all(&*failed_path).unwrap();
    assert_eq!(kept.unwrap(), b"weights");
}

/// The names in the folder `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Runs and expects exit status 1 with every `needles` in stderr.
fn expect_error(args: &[&str], needles: &[&str]) {
    let (out, _, stderr) = run(bin().args(args));
    assert_eq!(out.status.code(), Some(1), "args {args:?}: stderr {stderr}");
    for n in needles {
        assert!(
            stderr.contains(n),
            "args {args:?}: stderr lacks '{n}':\n{stderr}"
        );
    }
}

#[test]
fn verify_passes_on_the_pytorch_fixtures_with_steps_and_dump() {
    let dir = tmp_dir("verify");
    let dump = dir.join("dump.bin");
    let (out, stdout, stderr) = run(bin().args([
        "verify",
        "--device",
        "cpu",
        "--model",
        &fixture("ref_tiny_model.bin"),
        "--state",
        &fixture("ref_tiny_state.bin"),
        "--steps",
        "10",
        "--expect-losses",
        &fixture("ref_tiny_losses.txt"),
        "--dump",
        dump.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for name in ["logits", "loss", "wte", "qkvw", "fcprojb", "lnfb"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(name) && l.ends_with("ok")),
            "{name}: {stdout}"
        );
    }
    assert!(stdout.contains("step 0 loss 4.126691"), "{stdout}");
    assert!(stdout.contains("step 9 loss 4.01341"), "{stdout}");
    assert!(stdout.contains("verify: all tensors pass"));
    // a file of exactly --steps steps, all passing: no note (of steps left over, or of clipping)
    assert!(!stderr.contains("note:"), "{stderr}");
    assert!(!stdout.contains("note:"), "{stdout}");
    // one step, from a file of one line
    let one = dir.join("one.txt");
    let text = std::fs::read_to_string(fixture("ref_tiny_losses.txt")).unwrap();
    std::fs::write(&one, text.lines().next().unwrap()).unwrap();
    let (out, stdout, stderr) = verify_tiny_steps(1, &one);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("step 0 loss 4.126691"), "{stdout}");
    // the dump is a debug state that itself verifies
    let (out, stdout, _) = run(bin().args([
        "verify",
        "--model",
        &fixture("ref_tiny_model.bin"),
        "--state",
        dump.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("loss            0.000e0"),
        "the dump's loss is ours exactly: {stdout}"
    );
    assert!(
        !stdout.contains("AdamW step"),
        "no --steps, no steps: {stdout}"
    );
}

/// `--grad-clip` clips verify's steps as `train` clips its own: PyTorch's clipped trajectory
/// (every step's norm is about 2) passes with `--grad-clip 1`, losses and norms, and fails without
/// it; the flag's bounds are checked before any work.
#[test]
fn verify_clips_its_steps_with_grad_clip() {
    let (model, state) = (fixture("ref_tiny_model.bin"), fixture("ref_tiny_state.bin"));
    let losses = fixture("ref_tiny_clip_losses.txt");
    let steps = [
        "verify",
        "--model",
        &model,
        "--state",
        &state,
        "--steps",
        "10",
        "--expect-losses",
        &losses,
    ];
    let (out, stdout, stderr) = run(bin().args(steps).args(["--grad-clip", "1"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("weight decay 0.01, gradients clipped to norm 1)"),
        "{stdout}"
    );
    let step9 = stdout.lines().find(|l| l.starts_with("step 9 ")).unwrap();
    assert!(
        step9.starts_with("step 9 loss 4.01321") && step9.contains("norm expected 1.926"),
        "{step9}"
    );
    let (out, stdout, _) = run(bin().args(steps));
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let step9 = stdout.lines().find(|l| l.starts_with("step 9 ")).unwrap();
    assert!(step9.contains(" FAIL"), "{step9}");
    assert!(
        stdout.contains("note: these steps ran without --grad-clip"),
        "{stdout}"
    );
    // fewer steps than the file holds: the first ones, said
    let mut four = steps;
    four[6] = "4";
    let (out, stdout, stderr) = run(bin().args(four).args(["--grad-clip", "1"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("ref_tiny_clip_losses.txt holds 10 steps: --steps 4 checks the first 4"),
        "{stderr}"
    );
    assert!(stdout.contains(": 4 AdamW steps (lr 1e-4"), "{stdout}");
    for (clip, needles) in [
        (
            "-1",
            &["--grad-clip must be a number of at least 0", "got -1"][..],
        ),
        (
            "1",
            &["--grad-clip clips the gradients of AdamW steps: it needs --steps N"],
        ),
    ] {
        let args = [
            "verify",
            "--model",
            &model,
            "--state",
            &state,
            "--grad-clip",
            clip,
        ];
        expect_error(&args, needles);
    }
}

#[test]
fn verify_fails_on_a_state_from_another_model() {
    // the sharp fixture's batch and gradients do not belong to the tiny model: sizes differ
    expect_error(
        &[
            "verify",
            "--model",
            &fixture("ref_tiny_model.bin"),
            "--state",
            &fixture("ref_sharp_state.bin"),
        ],
        &[
            "ref_sharp_state.bin",
            "a state made with another model does not fit",
        ],
    );
    // losses to compare with, but no steps to compare them with
    expect_error(
        &[
            "verify",
            "--model",
            &fixture("ref_tiny_model.bin"),
            "--state",
            &fixture("ref_tiny_state.bin"),
            "--expect-losses",
            &fixture("ref_tiny_losses.txt"),
        ],
        &["--expect-losses", "needs --steps"],
    );
}

/// verify's inputs and engines are checked before any engine runs: a bad losses file, or a GPU
/// missing for `--device both` (hidden with CUDA_VISIBLE_DEVICES), was reported only after the
/// CPU's whole check (minutes for d12).
#[test]
fn verify_checks_its_inputs_before_any_work() {
    let dir = tmp_dir("verify-first");
    let short = dir.join("short.txt");
    std::fs::write(&short, "step 0 loss 4.15\n").unwrap();
    let (model, state) = (fixture("ref_tiny_model.bin"), fixture("ref_tiny_state.bin"));
    let verify = ["verify", "--model", &model, "--state", &state];
    let missing = dir.join("missing.txt");
    for (extra, env, needles) in [
        (
            vec!["--steps", "2", "--expect-losses", missing.to_str().unwrap()],
            None,
            &["missing.txt: cannot read"][..],
        ),
        (
            vec!["--steps", "2", "--expect-losses", short.to_str().unwrap()],
            None,
            &["short.txt: holds 1 step, fewer than --steps 2"],
        ),
        // a file without end (it was read until the memory ran out), and one not text
        (
            vec!["--steps", "2", "--expect-losses", "/dev/zero"],
            None,
            &["/dev/zero: longer than 64 MiB: not a losses file (lines 'step I loss X [norm N]')"],
        ),
        (
            vec!["--steps", "2", "--expect-losses", &state],
            None,
            &["ref_tiny_state.bin: not text: not a losses file"],
        ),
        // (either error: no GPU, or a build without kernels)
        (
            vec!["--device", "both"],
            Some(""),
            &["error: no CUDA GPU", "this build has no CUDA kernels"],
        ),
    ] {
        let mut cmd = bin();
        if let Some(devices) = env {
            cmd.env("CUDA_VISIBLE_DEVICES", devices);
        }
        let (out, stdout, stderr) = run(cmd.args(verify).args(&extra));
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            needles.iter().any(|n| stderr.contains(n)),
            "{extra:?}: {stderr}"
        );
        assert!(
            !stdout.contains(" vs "),
            "{extra:?}: a table came first: {stdout}"
        );
    }
}

/// `verify` of the tiny fixture for `steps` steps against the losses in `losses`.
fn verify_tiny_steps(steps: usize, losses: &Path) -> (std::process::Output, String, String) {
    let (model, state) = (fixture("ref_tiny_model.bin"), fixture("ref_tiny_state.bin"));
    run(bin()
        .args(["verify", "--model", &model, "--state", &state, "--steps"])
        .arg(steps.to_string())
        .arg("--expect-losses")
        .arg(losses))
}

#[test]
fn verify_reports_failure_with_exit_status_1() {
    // the reference's loss trajectory, perturbed: the steps must fail the comparison
    let dir = tmp_dir("verify-fail");
    let bad = dir.join("losses.txt");
    let text = std::fs::read_to_string(fixture("ref_tiny_losses.txt")).unwrap();
    std::fs::write(&bad, text.replace("step 3 loss 4.08", "step 3 loss 4.18")).unwrap();
    let (out, stdout, _) = verify_tiny_steps(5, &bad);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("verify: FAILED"),
        "{stdout}"
    );
}

#[test]
fn trains_a_small_model_then_samples_from_its_checkpoint() {
    let dir = tmp_dir("train");
    let (out, stdout, stderr) = run(bin().args([
        "--device",
        "cpu",
        "--model",
        "d1",
        "--batch",
        "2",
        "--seq",
        "16",
        "--steps",
        "4",
        "--val-every",
        "2",
        "--val-batches",
        "2",
        "--sample-tokens",
        "8",
        "--peak-tflops",
        "0.5",
        "--out-dir",
        dir.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // every step line carries ms, tokens/s and MFU (a percentage, given a peak), and they agree:
    // ms x tokens/s is the step's B x T tokens, and MFU is the model's FLOPs at that speed against
    // the peak, each within what the printed digits round away
    let cfg = train_gpt2_cuda::train::model_config("d1").unwrap();
    let flops = train_gpt2_cuda::mfu::flops_per_token(&cfg, 16);
    let tokens = 2.0 * 16.0; // B x T
    for line in stdout.lines().filter(|l| l.starts_with("step ")) {
        let (ms, tok_s): (f64, f64) = (step_field(line, "ms"), step_field(line, "tok/s"));
        let mfu: f64 = step_field(line, "MFU");
        assert!(line.trim_end().ends_with('%'), "{line}");
        let (lo, hi) = ((ms - 0.05) * (tok_s - 0.5), (ms + 0.05) * (tok_s + 0.5));
        assert!(lo / 1e3 <= tokens && tokens <= hi / 1e3, "{line}");
        let (lo, hi) = (flops * (tok_s - 0.5), flops * (tok_s + 0.5));
        assert!(
            lo / 0.5e12 * 100.0 - 0.05 <= mfu && mfu <= hi / 0.5e12 * 100.0 + 0.05,
            "{line}: {flops} FLOPs a token"
        );
    }
    // the CPU's peak is the process's resident set: more than 1 MiB, less than the machine has
    let peak: f64 = stdout
        .split("peak memory: ")
        .nth(1)
        .and_then(|rest| rest.split_once(" MiB"))
        .and_then(|(mib, _)| mib.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory line: {stdout}"));
    let total = train_gpt2_cuda::host_memory::host_memory().unwrap().total as f64;
    assert!(
        peak > 1.0 && peak < total / (1 << 20) as f64,
        "{peak} MiB: {stdout}"
    );
    let losses = step_losses(&stdout);
    assert_eq!(losses.len(), 4, "{stdout}");
    // a fresh GPT-2 predicts ~uniformly over 50257 tokens: ln(50257) = 10.825
    assert!((losses[0] - 10.825).abs() < 0.3, "{losses:?}");
    assert!(stdout.matches("val loss").count() >= 3, "{stdout}");
    assert!(stdout.contains("sample after step 4 (8 tokens"), "{stdout}");
    assert_tokens_per_step(&dir, tokens);
    let ckpt = dir.join("model_000004.bin");
    assert!(ckpt.exists(), "{stdout}");

    let (out, stdout, stderr) = run(bin().args([
        "sample",
        "--device",
        "cpu",
        "--model",
        ckpt.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
        "--tokens",
        "5",
        "--window",
        "16",
        "--top-p",
        "0.9",
    ]));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("ROMEO:"), "{stdout}");
    assert!(stdout.trim().len() > "ROMEO:".len(), "{stdout}");
    // the run's folder is not a model: its newest checkpoint is named (it was "a directory
    // without model.safetensors, ...: not a Hugging Face model")
    expect_error(
        &[
            "sample",
            "--device",
            "cpu",
            "--model",
            dir.to_str().unwrap(),
        ],
        &[&format!(
            "is a training run's folder, not a model: give one of its checkpoints, such as its \
             newest, --model {}",
            ckpt.display()
        )],
    );
}

/// A run's sample sees what the run trained on, its --seq tokens (capped at the model's maxT),
/// not the model's whole maxT: the final sample is `sample`'s of the final checkpoint with
/// `--window` the run's --seq and the same seed, and not the one with a wider window.
#[test]
fn a_runs_sample_sees_its_seq_tokens() {
    let dir = tmp_dir("sample-window");
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 4 --steps 2 --lr 1e-2 --val-every 0 \
             --sample-tokens 24 --seed 7",
        ))
        .arg("--out-dir")
        .arg(&dir));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let trained = stdout
        .split("sample after step 2 (24 tokens, top-k 40):\n---\n")
        .nth(1)
        .and_then(|rest| rest.split("\n---").next())
        .unwrap_or_else(|| panic!("no final sample: {stdout}"));
    let model = dir.join("model_000002.bin");
    let sample = |window: &str| {
        let (out, stdout, stderr) = run(bin()
            .args(flags("sample --device cpu --tokens 24 --seed 7 --window"))
            .arg(window)
            .arg("--model")
            .arg(&model));
        assert!(out.status.success(), "{stderr}");
        // the text, then a newline
        stdout.strip_suffix('\n').unwrap().to_string()
    };
    assert_eq!(sample("4"), trained, "{stdout}");
    // the test tells the windows apart: past 4 tokens a wider one samples other text
    assert_ne!(sample("16"), trained, "{stdout}");
}

/// A standard output that closes (`train-gpt2-cuda ... | head`) or fills (`> /dev/full`) is noted
/// once on stderr and ends nothing: the run trains to its last step and writes its checkpoint.
/// What must not be lost (where an earlier run's files went) comes on stderr instead. `sample`,
/// whose output is all it makes, stops early with success.
#[test]
fn a_closed_or_full_stdout_ends_nothing() {
    use std::process::Stdio;
    let dir = tmp_dir("stdout");
    // both runs in one folder: the second moves the first's files aside
    let out_dir = dir.join("run");
    let train = |name: &str, stdout: Stdio| {
        let mut child = bin()
            .args(flags(
                "--device cpu --model d1 --batch 2 --seq 16 --steps 3 --sample-tokens 4",
            ))
            .arg("--out-dir")
            .arg(&out_dir)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // a pipe whose reader is gone: the first write fails with EPIPE
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
        assert_eq!(
            stderr
                .matches("note: cannot write to standard output")
                .count(),
            1,
            "{name}: {stderr}"
        );
        assert!(
            out_dir.join("model_000003.bin").exists(),
            "{name}: {stderr}"
        );
        let log = std::fs::read_to_string(out_dir.join("log.jsonl")).unwrap();
        assert_eq!(log.matches("\"loss\": ").count(), 3, "{name}: {log}");
        stderr
    };
    let stderr = train("closed", Stdio::piped());
    assert!(!stderr.contains("earlier run"), "{stderr}");
    let stderr = train("full", dev_full());
    assert!(
        stderr.contains("held the files of an earlier run") && stderr.contains("earlier_run_1"),
        "{stderr}"
    );
    let model = out_dir.join("model_000003.bin");

    let mut child = bin()
        .args(["sample", "--device", "cpu", "--tokens", "100000", "--model"])
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Broken pipe"), "{stderr}");
    // a full disk lost the sample, or eval's loss or HellaSwag accuracies: not a success
    let sample = [
        "sample",
        "--device",
        "cpu",
        "--tokens",
        "20",
        "--model",
        &model.to_string_lossy(),
    ];
    let (model, data) = (
        fixture("ref_gpt2vocab_model.bin"),
        fixture("hellaswag_tiny.jsonl"),
    );
    let loss = ["eval", "--device", "cpu", "--model", &model, "--seq", "8"];
    let hellaswag = [&["eval"][..], &cpu_hellaswag(&model, &data)].concat();
    for (args, what) in [
        (&sample[..], "the sample"),
        (&loss, "the loss"),
        (&hellaswag, "the accuracies"),
    ] {
        let out = bin().args(args).stdout(dev_full()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let want = format!("error: {what} could not be written to standard output");
        assert!(stderr.contains(&want), "{stderr}");
    }
}

/// `/dev/full` (every write fails: a full disk) as a child's stdout or stderr.
fn dev_full() -> std::process::Stdio {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full");
    std::process::Stdio::from(full.unwrap())
}

/// A stderr that fails (a batch job's error log on a full disk) ends nothing either: a run with a
/// note trains and writes its checkpoint, and an error still exits with status 1, not a panic's
/// 101.
#[test]
fn a_full_stderr_ends_nothing() {
    let dir = tmp_dir("stderr");
    // (--warmup 10 with 2 steps: a note on stderr before anything runs)
    let out = bin()
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 16 --steps 2 --warmup 10 --sample-tokens 0",
        ))
        .arg("--out-dir")
        .arg(dir.join("out"))
        .stderr(dev_full())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(dir.join("out/model_000002.bin").is_file(), "{stdout}");
    let out = bin()
        .args(["--device", "cpu", "--model"])
        .arg(dir.join("missing.bin"))
        .stderr(dev_full())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The bundled corpus is found when the binary runs under another crate's cargo, whose
/// `CARGO_MANIFEST_DIR` names a root without it; a root that holds a corpus of its own (a copy of
/// the tree, as on a GPU machine) is read instead.
#[test]
fn the_bundled_corpus_is_found_under_another_crate_s_cargo() {
    let dir = tmp_dir("other-crate");
    std::fs::create_dir_all(&dir).unwrap();
    let (o, stdout, stderr) = run(bin()
        .env("CARGO_MANIFEST_DIR", &dir)
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 16 --steps 1 --sample-tokens 0",
        ))
        .arg("--out-dir")
        .arg(dir.join("out")));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let corpus = root().join("data/shakespeare/train.bin");
    assert!(
        stdout.contains(&format!("data: train {} (", corpus.display())),
        "{stdout}"
    );
    let copy = dir.join("copy/data/shakespeare");
    std::fs::create_dir_all(&copy).unwrap();
    let tokens: Vec<u32> = (0..200).collect();
    for file in ["train.bin", "val.bin"] {
        train_gpt2_cuda::formats::shard::write_shard(&copy.join(file), &tokens).unwrap();
    }
    let (o, stdout, stderr) = run(bin()
        .env("CARGO_MANIFEST_DIR", dir.join("copy"))
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 16 --steps 1 --sample-tokens 0",
        ))
        .arg("--out-dir")
        .arg(dir.join("out-copy")));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let train = copy.join("train.bin");
    assert!(
        stdout.contains(&format!("data: train {} (6 batches", train.display())),
        "{stdout}"
    );
}

/// A log that cannot be written (here a file-size limit, as a full disk) does not end the run: it
/// trains every step, the log keeps whole records only, and a note says so once. (The limit then
/// also refuses the final checkpoint, which is an error, as it should be.)
#[cfg(unix)]
#[test]
fn a_log_that_cannot_be_written_ends_nothing() {
    let dir = tmp_dir("log-limit");
    let out = dir.join("out");
    // (SIGXFSZ ignored: a write past the limit fails with EFBIG instead of killing the process;
    // 2 KiB holds about a dozen records)
    let script = format!(
        "trap '' XFSZ; ulimit -f 2; exec {} --device cpu --model d1 --batch 2 --seq 16 \
         --steps 30 --val-every 0 --sample-tokens 0 --out-dir {}",
        engine_bin::engine().display(),
        out.display()
    );
    let (o, stdout, stderr) = run(Command::new("bash").args(["-c", &script]));
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    let steps = stdout.lines().filter_map(step_number).max();
    assert_eq!(steps, Some(30), "{stdout}\n{stderr}");
    assert_eq!(
        stderr.matches("cannot write the run's log").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "model_000030.bin: cannot write: File too large (os error 27); the run stops after \
             step 30, unsaved: no training state of this run is on disk"
        ),
        "{stderr}"
    );
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert!(log.lines().count() >= 5, "{log}");
    assert!(log.ends_with('\n'), "{log}");
    for line in log.lines() {
        assert!(
            line.starts_with("{\"step\": ") && line.ends_with('}'),
            "{line}"
        );
    }
}

/// One run writes into a folder at a time: a second run into a folder where a run is going, or a
/// `--resume` of that run, is refused at once (it would replace the live run's checkpoints, move
/// its log aside and interleave their lines), and the live run goes on unharmed.
#[cfg(unix)]
#[test]
fn a_folder_holds_one_live_run() {
    use std::cell::RefCell;
    let dir = tmp_dir("live");
    let out = dir.join("out").to_string_lossy().into_owned();
    let mut common = flags("--device cpu --model d1 --batch 2 --seq 16 --sample-tokens 0");
    common.extend(["--val-every", "0", "--out-dir", &out]);
    let others = RefCell::new(Vec::new());
    // (--steps 2000: about 30 s if the signal did nothing)
    let mut long = bin();
    long.args(&common)
        .args(["--steps", "2000", "--checkpoint-every", "2"]);
    let (code, log, _) = signal_when(&mut long, "-INT", |l| {
        if step_number(l) < Some(3) {
            return false;
        }
        // step 2's checkpoint is on disk
        // (--warmup 10 with 4 steps would give a note)
        for extra in [
            "--steps 4 --warmup 10",
            "--steps 4 --seed 7",
            &format!("--steps 5000 --resume {out}"),
        ] {
            let (o, _, stderr) = run(bin().args(&common).args(flags(extra)));
            others
                .borrow_mut()
                .push((extra.to_string(), o.status.code(), stderr));
        }
        true
    });
    for (extra, code, stderr) in others.into_inner() {
        assert_eq!(code, Some(1), "{extra}: {stderr}");
        // (at once: before the model loads, and so before any note)
        assert!(
            stderr.starts_with("error: ")
                && stderr.contains("out: another run is writing into this folder"),
            "{extra}: {stderr}"
        );
    }
    assert_eq!(code.code(), Some(130), "{log}");
    assert!(!dir.join("out/earlier_run_1").exists(), "{log}");
    let steps = log.lines().filter_map(step_number).max().unwrap();
    let records = std::fs::read_to_string(dir.join("out/log.jsonl")).unwrap();
    assert_eq!(records.lines().count(), steps, "{records}");
    // and once it has ended, the folder is free: the run resumes there
    let (o, stdout, stderr) =
        run(bin()
            .args(&common)
            .args(["--steps", &(steps + 1).to_string(), "--resume", &out]));
    assert!(o.status.success(), "{stdout}\n{stderr}");
}

/// `--model d1 --out-dir d1` runs twice: the descriptor wins over the run folder of its name.
/// A new run may not start from a checkpoint of the run in its --out-dir (it would set it aside,
/// or write its own checkpoint of that step over it).
#[test]
fn a_run_folder_named_as_a_descriptor_and_a_start_inside_it() {
    let dir = tmp_dir("descriptor-folder");
    let train = |extra: &str| {
        let mut cmd = bin();
        cmd.current_dir(&dir).args(flags(
            "--device cpu --batch 2 --seq 16 --steps 1 --sample-tokens 0 --val-batches 1",
        ));
        run(cmd.args(flags(extra)))
    };
    for _ in 0..2 {
        let (out, stdout, stderr) = train("--model d1 --out-dir d1");
        assert!(out.status.success(), "{stdout}\n{stderr}");
    }
    assert!(dir.join("d1/earlier_run_1/model_000001.bin").is_file());
    let (out, _, stderr) = train("--model d1/model_000001.bin --out-dir d1");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "--model d1/model_000001.bin is a checkpoint of the run in d1, which a new run there \
             would set aside (or overwrite)"
        ),
        "{stderr}"
    );
    // a start that is none of the folder's own files (its earlier run's, set aside): the
    // folder's files go aside again, and the run starts
    let (out, stdout, stderr) = train("--model d1/earlier_run_1/model_000001.bin --out-dir d1");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        dir.join("d1/earlier_run_2/model_000001.bin").is_file(),
        "{stdout}"
    );
    // a model stored under a descriptor's name is read, not made: a checkpoint file named d2
    // (the d1 run's), and a Hugging Face folder named d3
    std::fs::copy(dir.join("d1/model_000001.bin"), dir.join("d2")).unwrap();
    let (out, stdout, stderr) = train("--model d2 --out-dir from_d2");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("model: L=1 "), "{stdout}");
    std::fs::create_dir(dir.join("d3")).unwrap();
    std::fs::write(dir.join("d3/config.json"), "{}").unwrap();
    let (out, stdout, stderr) = train("--model d3 --out-dir from_d3");
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("error: d3: a directory without model.safetensors"),
        "{stderr}"
    );
}

/// A descriptor given where a model is read (sample, eval, verify, convert) says that it makes new
/// models only in training (it said "d1: cannot open: No such file or directory").
#[test]
fn a_descriptor_is_no_model_to_read() {
    let dir = tmp_dir("descriptor-read");
    let state = fixture("ref_tiny_state.bin");
    let want = "error: 'd2' is not a file or folder here: a descriptor makes a new, untrained \
                model, and only in training (train-gpt2-cuda --model d2); this command needs a \
                trained checkpoint (such as out/model_000100.bin) or a Hugging Face GPT-2 folder\n";
    for args in [
        &["sample", "--model", "d2", "--tokens", "5"][..],
        &["eval", "--model", "d2", "--device", "cpu"],
        &["verify", "--model", "d2", "--state", &state],
        &["convert", "--model", "d2", "--out", "d2.bin"],
    ] {
        let (out, stdout, stderr) = run(bin().current_dir(&dir).args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!((stdout.as_str(), stderr.as_str()), ("", want), "{args:?}");
    }
    assert!(!dir.join("d2.bin").exists());
}

/// A shard that turns out bad only when the loader reaches it (its token ids are checked as it is
/// loaded, maybe hours into a run) ends the run with its error, after saving the run so far: once
/// the shard is mended, resuming from that state gives the model and state of a run that never
/// met the bad shard, byte for byte.
#[test]
fn a_bad_shard_met_mid_run_loses_nothing() {
    use train_gpt2_cuda::formats::shard::write_shard;
    let dir = tmp_dir("bad-shard");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // a.bin: 4 batches of 2 x 16; b.bin: 4 more, token 40 out of the vocabulary
    let good: Vec<u32> = (0..129).map(|i| 100 + (i * 7 % 50) as u32).collect();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    write_shard(&dir.join("data/a.bin"), &good).unwrap();
    let mut bad = good.clone();
    bad[40] = 60000;
    write_shard(&dir.join("data/b.bin"), &bad).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut args = flags(
            "--device cpu --batch 2 --seq 16 --steps 7 --val-every 0 --sample-tokens 0 \
             --lr 1e-3",
        );
        let (train, val, out) = (d("data/*.bin"), d("data/a.bin"), d(out));
        args.extend(["--train", &train, "--val", &val, "--out-dir", &out]);
        args.extend(extra);
        run(bin().args(&args))
    };
    let (out, _, stderr) = run("broken", &["--model", "d1"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // (--val's shard is one of --train's too, and a note says so)
    let note = format!(
        "note: {} is a validation shard and a training shard too",
        d("data/a.bin")
    );
    assert!(stderr.contains(&note), "{stderr}");
    let state = d("broken/state_000004.bin");
    for needle in [
        "error: step 5: ",
        "b.bin: token id 60000 at position 40 is out of range",
        &format!(
            "; the run after step 4 is saved: with the shard mended (its tokens as many as \
             before), --resume {state} continues it"
        ),
    ] {
        assert!(stderr.contains(needle), "lacks {needle:?}: {stderr}");
    }
    // mended, the run resumes where it stopped and ends as one that never stopped
    write_shard(&dir.join("data/b.bin"), &good).unwrap();
    let (out, _, stderr) = run("broken", &["--resume", &state]);
    assert!(out.status.success(), "{stderr}");
    let (out, _, stderr) = run("unbroken", &["--model", "d1"]);
    assert!(out.status.success(), "{stderr}");
    assert_same_files(
        &dir.join("broken"),
        &dir.join("unbroken"),
        &["model_000007.bin", "state_000007.bin"],
        "resumed after the shard was mended",
    );
}

/// The log lines a run and its resumed twin must print alike.
const LOGGED: &[&str] = &["step ", "val loss"];

/// Checks that each step record of `dir/log.jsonl` took `tokens` tokens (B x T x micro-batches):
/// its tokens/s times its ms, both from one measured time.
fn assert_tokens_per_step(dir: &Path, tokens: f64) {
    let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let mut steps = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(ms), Some(per_s)) = (v["ms"].as_f64(), v["tokens_per_s"].as_f64()) {
            let took = ms * per_s / 1e3;
            assert!(
                (took - tokens).abs() < 1e-4 * tokens,
                "{line}: {took} tokens"
            );
            steps += 1;
        }
    }
    assert!(steps > 0, "no step records: {text}");
}

/// The records of `<dir>/log.jsonl` without the timings (ms, tokens/s, MFU), which differ from run
/// to run.
fn run_log(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let record = v.as_object_mut().unwrap();
            for timing in ["ms", "tokens_per_s", "mfu"] {
                record.remove(timing);
            }
            v
        })
        .collect()
}

/// A run stopped at a checkpoint and resumed from its training state continues exactly: the same
/// losses, gradient norms and validation losses, the same sample, byte-identical model and state
/// at the end. The data are shuffled, so the resumed loader must find its place in the shuffled
/// order, and the learning rate decays, so the step must be right too. With --no-state no state
/// is written; errors for what cannot continue the run.
#[test]
fn a_resumed_run_continues_exactly() {
    let dir = tmp_dir("resume");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let common = flags(
        "--device cpu --batch 2 --lr 1e-2 --warmup 1 --val-every 2 --val-batches 2 \
         --sample-tokens 8 --sample-every 2 --shuffle --grad-accum 2",
    );
    // the common flags, --seq 16 and --seed 5 unless `extra` gives its own, then `extra`
    fn args<'a>(common: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = common.to_vec();
        for (flag, value) in [("--seq", "16"), ("--seed", "5")] {
            if !extra.contains(&flag) {
                a.extend([flag, value]);
            }
        }
        a.extend_from_slice(extra);
        a
    }
    let train = |extra: &[&str]| {
        let (out, stdout, stderr) = run(bin().args(args(&common, extra)));
        assert!(out.status.success(), "{extra:?}:\n{stdout}\n{stderr}");
        stdout
    };
    let whole = train(&[
        "--model",
        "d1",
        "--steps",
        "7",
        "--checkpoint-every",
        "3",
        "--out-dir",
        &d("whole"),
    ]);
    for f in [
        "model_000003.bin",
        "state_000003.bin",
        "model_000006.bin",
        "state_000006.bin",
    ] {
        assert!(dir.join("whole").join(f).is_file(), "{f}:\n{whole}");
    }
    // 2 micro-batches of 2x16 a step
    assert_tokens_per_step(&dir.join("whole"), 2.0 * 2.0 * 16.0);
    // from the state file of step 3
    let from3 = train(&[
        "--steps",
        "7",
        "--resume",
        &d("whole/state_000003.bin"),
        "--out-dir",
        &d("from3"),
    ]);
    assert!(
        from3.contains("resume: ") && from3.contains("at step 3 (6 batches"),
        "{from3}"
    );
    let want = log_lines(&whole, LOGGED);
    assert_eq!(want.len(), 7 + 5, "7 steps and 5 validations:\n{whole}");
    // log.jsonl holds what the run printed, in order: 7 steps and 5 validations, and the samples
    // after steps 2, 4 and 6 (--sample-every 2) and at the end
    let whole_log = run_log(&dir.join("whole"));
    let (samples, numbers): (Vec<_>, Vec<_>) =
        whole_log.iter().partition(|r| r.get("sample").is_some());
    let printed_samples: Vec<(u64, &str)> = whole
        .split("sample after step ")
        .skip(1)
        .map(|s| {
            let step = s.split(' ').next().unwrap().parse().unwrap();
            let text = s.split("---\n").nth(1).unwrap();
            (step, text.strip_suffix('\n').unwrap())
        })
        .collect();
    let logged_samples: Vec<(u64, &str)> = samples
        .iter()
        .map(|r| (r["step"].as_u64().unwrap(), r["sample"].as_str().unwrap()))
        .collect();
    assert_eq!(logged_samples, printed_samples, "{whole}");
    let sample_steps: Vec<u64> = printed_samples.iter().map(|s| s.0).collect();
    assert_eq!(sample_steps, [2, 4, 6, 7], "{whole}");
    assert_eq!(numbers.len(), want.len());
    for (record, line) in numbers.iter().zip(&want) {
        let printed = |key: &str| -> f64 {
            let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
            line[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        // the printed value is the logged one rounded to `decimals`
        let near = |key: &str, printed: f64, decimals: i32| {
            let logged = record[key].as_f64().unwrap();
            let half = 0.5 * 10f64.powi(-decimals) + 1e-6;
            assert!((logged - printed).abs() <= half, "{record} vs {line}");
        };
        if line.starts_with("val loss") {
            near("val_loss", printed("val loss "), 4);
        } else {
            near("loss", printed("| loss "), 4);
            near("norm", printed("| norm "), 3);
            let step: u64 = line["step".len()..]
                .trim_start()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(record["step"], step);
        }
    }
    // the resumed run's log: the whole run's records before step 3, then its own: the same
    assert_eq!(run_log(&dir.join("from3")), whole_log);
    // the whole run's lines from step 4 on (validations at 4, 6 and the end)
    assert_eq!(
        log_lines(&from3, LOGGED),
        want[want.len() - 7..],
        "{whole}\n{from3}"
    );
    // the sample at the end
    let sample = |log: &str| log.rsplit_once("top-k 40):").map(|(_, s)| s.to_owned());
    assert!(sample(&whole).is_some());
    assert_eq!(sample(&from3), sample(&whole));
    assert_same_files(
        &dir.join("whole"),
        &dir.join("from3"),
        &["model_000007.bin", "state_000007.bin"],
        "the whole run and the one resumed at step 3",
    );
    // from the folder: its newest state, which must have its model: with model 7 gone, that
    // is an error naming both (not a silent fall back on step 6, whose run would write over
    // state 7); a stale .tmp of an unfinished write counts for nothing
    std::fs::remove_file(dir.join("whole/model_000007.bin")).unwrap();
    std::fs::write(dir.join("whole/state_000009.bin.tmp"), b"cut short").unwrap();
    expect_error(
        &args(&common, &["--steps", "8", "--resume", &d("whole")]),
        &[
            "the newest training state, state_000007.bin, has no model checkpoint beside it \
             (model_000007.bin is missing)",
            &format!("name it: --resume {}", d("whole/state_000006.bin")),
        ],
    );
    // without state 7, the folder's newest is step 6's; it validates at step 6 first, as the
    // whole run did
    std::fs::remove_file(dir.join("whole/state_000007.bin")).unwrap();
    let from6 = train(&[
        "--steps",
        "7",
        "--resume",
        &d("whole"),
        "--out-dir",
        &d("from6"),
    ]);
    assert!(from6.contains("state_000006.bin at step 6"), "{from6}");
    assert_eq!(run_log(&dir.join("from6")), whole_log);
    assert_eq!(
        log_lines(&from6, LOGGED),
        want[want.len() - 3..],
        "{whole}\n{from6}"
    );
    // --steps may grow: step 8 continues the decay of a 9-step schedule
    let longer = train(&[
        "--steps",
        "9",
        "--resume",
        &d("from3"),
        "--out-dir",
        &d("longer"),
    ]);
    assert!(
        log_lines(&longer, LOGGED)[0].starts_with("step     8/9"),
        "{longer}"
    );

    let no_state = train(&[
        "--model",
        "d1",
        "--steps",
        "1",
        "--no-state",
        "--out-dir",
        &d("none"),
    ]);
    assert!(dir.join("none/model_000001.bin").is_file(), "{no_state}");
    assert!(!dir.join("none/state_000001.bin").exists(), "{no_state}");

    let resume_error = |extra: &[&str], needles: &[&str]| {
        expect_error(&args(&common, extra), needles);
    };
    let state3 = d("whole/state_000003.bin");
    resume_error(
        &["--steps", "3", "--resume", &state3],
        &["the run is at step 3 and --steps is 3: nothing left to train"],
    );
    resume_error(
        &["--steps", "7", "--resume", &state3, "--seq", "17"],
        &["the run trained on batches of B=2 x T=16; resume it with --batch 2 --seq 16"],
    );
    resume_error(
        &["--steps", "7", "--resume", &state3, "--seed", "6"],
        &["shuffled with seed 5 (--shuffle --seed 5)"],
    );
    // other training data is refused before the run's folder is made or anything is said
    let (out, stdout, stderr) = run(bin().args(args(
        &common,
        &[
            "--steps",
            "7",
            "--resume",
            &state3,
            "--train",
            &fixture("../../data/shakespeare/val.bin"),
            "--out-dir",
            &d("other-data"),
        ],
    )));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the run trained on 1 shard of")
            && stderr.contains("resume it with the same training data"),
        "{stderr}"
    );
    assert_eq!(stdout, "");
    assert!(!dir.join("other-data").exists());
    resume_error(
        &["--steps", "7", "--resume", &d("whole/model_000003.bin")],
        &["this is a model checkpoint, not a training state"],
    );
    expect_error(
        &["sample", "--model", &state3],
        &["this is a training state (for --resume), not a model checkpoint"],
    );
    resume_error(
        &["--steps", "7", "--resume", &d("none")],
        &["no training state to resume from"],
    );
    std::fs::remove_file(dir.join("whole/model_000003.bin")).unwrap();
    resume_error(
        &["--steps", "7", "--resume", &state3],
        &["the model checkpoint of its step 3", "is missing"],
    );
    let state6 = std::fs::read(dir.join("whole/state_000006.bin")).unwrap();
    write(
        &dir.join("whole/state_000006.bin"),
        &state6[..state6.len() - 4],
    );
    resume_error(
        &["--steps", "7", "--resume", &d("whole")],
        &["state_000006.bin: training state is truncated"],
    );
}

/// --keep-checkpoints 2 with a checkpoint every 2 of 7 steps: steps 2, 4, 6 and the final 7 are
/// written, and only 6 and 7 (model and state) are left, beside the run's log; a file of another
/// run stays.
#[test]
fn keep_checkpoints_removes_this_runs_older_ones() {
    let dir = tmp_dir("keep");
    std::fs::write(dir.join("model_000001.bin"), b"another run's").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not a run's").unwrap();
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --model d1 --batch 1 --seq 8 --steps 7 --val-every 0",
        ))
        .args(flags(
            "--val-batches 1 --sample-tokens 0 --checkpoint-every 2",
        ))
        .args([
            "--keep-checkpoints",
            "2",
            "--out-dir",
            dir.to_str().unwrap(),
        ]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        names_in(&dir),
        [
            "earlier_run_1",
            "log.jsonl",
            "model_000006.bin",
            "model_000007.bin",
            "notes.txt",
            "state_000006.bin",
            "state_000007.bin"
        ],
        "{stdout}"
    );
    assert_eq!(stdout.matches("removed ").count(), 4, "{stdout}");
    assert_eq!(
        std::fs::read(dir.join("earlier_run_1/model_000001.bin")).unwrap(),
        b"another run's"
    );
    assert!(stdout.contains("moved to "), "{stdout}");

    // --keep-every 4 also keeps step 4's (llm.c's -nm): checkpoints 2, 4, 6 and 7, the last two
    // kept and 4, a multiple of 4; with --no-state there is no state to remove, and no warning
    for state in ["", "--no-state"] {
        let dir = tmp_dir(&format!("keep-every{state}"));
        let (out, stdout, stderr) = run(bin()
            .args(flags(
                "--device cpu --model d1 --batch 1 --seq 8 --steps 7 --val-every 0 --val-batches 1",
            ))
            .args(flags(
                "--sample-tokens 0 --checkpoint-every 2 --keep-checkpoints 2 --keep-every 4",
            ))
            .args(flags(state))
            .args(["--out-dir", dir.to_str().unwrap()]));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(!stderr.contains("warning"), "{state}: {stderr}");
        let files = |kind: &str| {
            let mut names = names_in(&dir);
            names.retain(|n| n.starts_with(kind));
            names
        };
        let kept = ["000004.bin", "000006.bin", "000007.bin"];
        assert_eq!(
            files("model_"),
            kept.map(|k| format!("model_{k}")),
            "{stdout}"
        );
        let states: &[String] = if state.is_empty() {
            &kept.map(|k| format!("state_{k}"))
        } else {
            &[]
        };
        assert_eq!(files("state_"), states, "{state}: {stdout}");
    }
}

/// A folder holds one run. A fresh run into a folder of another run's files (here a d2 run's,
/// further along) moves them aside into `earlier_run_1`, so that `--resume DIR` continues the new
/// run, not the other. A run resumed in its folder counts the checkpoints it wrote before for
/// `--keep-checkpoints` (2, of a run stopped at 6 and resumed to 10: 9 and 10 are left, not 5,
/// 6, 9 and 10), and moves aside the checkpoints after its step (an attempt it replaces).
/// `--model` with `--resume` must be the run's model; `--grad-accum` and `--overfit-batch` the
/// run's too.
#[test]
fn a_folder_holds_one_run() {
    let dir = tmp_dir("one-run");
    let od = dir.join("od").to_string_lossy().into_owned();
    let common =
        flags("--device cpu --batch 2 --seq 16 --val-every 0 --val-batches 1 --sample-tokens 0");
    let cmd = |extra: &str| {
        let mut c = bin();
        c.args(&common).args(["--out-dir", &od]).args(flags(extra));
        c
    };
    let train = |extra: &str| {
        let (o, stdout, stderr) = run(&mut cmd(extra));
        assert!(o.status.success(), "{extra}:\n{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let files = |sub: &str| names_in(&dir.join(sub));
    train("--model d2 --steps 10 --checkpoint-every 5");
    let (stdout, stderr) = train("--model d1 --steps 6 --checkpoint-every 1 --keep-checkpoints 2");
    assert!(
        stdout.contains("held the files of an earlier run") && stdout.contains("earlier_run_1"),
        "{stdout}"
    );
    // (on stdout alone while it works)
    assert!(!stderr.contains("earlier run"), "{stderr}");
    assert_eq!(
        files("od/earlier_run_1"),
        [
            "log.jsonl",
            "model_000005.bin",
            "model_000010.bin",
            "state_000005.bin",
            "state_000010.bin"
        ]
    );
    // --resume with the run's --model (as the Ctrl-C line says: the same flags): the d1 run
    let (stdout, _) = train(&format!(
        "--model d1 --steps 10 --checkpoint-every 1 --keep-checkpoints 2 --resume {od}"
    ));
    assert!(stdout.contains("state_000006.bin at step 6"), "{stdout}");
    assert!(stdout.contains("model: L=1 NH=1 C=64"), "{stdout}");
    assert_eq!(
        files("od"),
        [
            "earlier_run_1",
            "log.jsonl",
            "model_000009.bin",
            "model_000010.bin",
            "state_000009.bin",
            "state_000010.bin"
        ],
        "{stdout}"
    );
    // resumed from step 9 (its state named), step 10's checkpoint is set aside: it is the
    // attempt this one replaces; so is a copy of its log, which the resumed run cuts at step 9.
    // (--model, here that step-10 checkpoint, only has to be the run's model: a resumed run
    // starts from its state's, so the file is set aside with the rest, not refused as a fresh
    // run's start would be)
    let state9 = dir
        .join("od/state_000009.bin")
        .to_string_lossy()
        .into_owned();
    let (stdout, _) = train(&format!(
        "--steps 10 --resume {state9} --checkpoint-every 5 --model {}",
        dir.join("od/model_000010.bin").display()
    ));
    assert!(
        stdout.contains("checkpoints after step 9, of the attempt this run replaces"),
        "{stdout}"
    );
    assert!(
        stdout.contains("and its log.jsonl copied there"),
        "{stdout}"
    );
    assert_eq!(
        files("od/earlier_run_2"),
        ["log.jsonl", "model_000010.bin", "state_000010.bin"]
    );
    let log = std::fs::read_to_string(dir.join("od/earlier_run_2/log.jsonl")).unwrap();
    assert!(log.contains("{\"step\": 10, \"loss\": "), "{log}");

    // what does not continue the run
    let resume_error = |extra: &str, needles: &[&str]| {
        let (o, _, stderr) = run(&mut cmd(&format!("--steps 12 --resume {state9} {extra}")));
        assert_eq!(o.status.code(), Some(1), "{extra}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{extra}: stderr lacks '{n}':\n{stderr}");
        }
    };
    resume_error(
        "--model d2",
        &[
            "--model d2 is L=2 NH=2 C=128",
            "trained L=1 NH=1 C=64",
            "give the run's own --model, or leave --model out",
        ],
    );
    // a Hugging Face weights file (a finetune's --model, given again) is read as one
    resume_error(
        &format!(
            "--model {}",
            root()
                .join("tests/fixtures/hf_tiny/model.safetensors")
                .display()
        ),
        &["is L=2 NH=4 C=32"],
    );
    let d2_model = dir.join("od/earlier_run_1/model_000010.bin");
    resume_error(
        &format!("--model {}", d2_model.display()),
        &["is L=2 NH=2 C=128"],
    );
    resume_error(
        "--grad-accum 2",
        &[
            "the run took 1 micro-batch a step (9 batches of 2x16 in 9 steps); resume it with \
             --grad-accum 1 (or --total-batch 32), got 2",
        ],
    );
    resume_error(
        "--overfit-batch",
        &["it did not overfit one batch; resume it without --overfit-batch"],
    );
    // the model file the run started from is its model too; with skipping on, a run that
    // skipped nothing says so
    let (stdout, _) = train(&format!(
        "--model {} --steps 10 --resume {state9} --skip-norm-z 9",
        dir.join("od/model_000009.bin").display()
    ));
    assert!(stdout.contains("step    10/10"), "{stdout}");
    assert!(
        stdout.contains("updates skipped (outliers): 0 of 10 steps\n"),
        "{stdout}"
    );
}

/// `--keep-best`: model_best.bin is the model of the lowest validation loss, written at each new
/// lowest (a constant rate of 3e-2 on d1 makes the loss fall for 3 steps, then rise: the best
/// is step 3's, not the last), and kept whatever --keep-checkpoints removes. A run stopped at the
/// best step and resumed to 8 ends with the same model_best.bin as the run that never stopped,
/// and writes it no more: the training state carries the best loss (the stopped run's final
/// validation included), so no later, worse loss is written over it.
#[test]
fn keep_best_keeps_the_model_of_the_lowest_validation_loss() {
    let dir = tmp_dir("keep-best");
    let train = |out: &str, steps: usize, extra: &str| {
        let (o, stdout, stderr) = run(bin()
            .args(flags(
                "--device cpu --batch 2 --seq 16 --val-every 1 --val-batches 2 --lr 3e-2",
            ))
            .args(flags(
                "--warmup 1 --lr-schedule constant --sample-tokens 0 --keep-best",
            ))
            // (a resumed run's model is its state's)
            .args(if extra.contains("--resume") {
                &[][..]
            } else {
                &["--model", "d1"][..]
            })
            .args(["--steps", &steps.to_string()])
            .args(["--out-dir", &dir.join(out).to_string_lossy()])
            .args(flags(extra)));
        assert!(o.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    // (step, val loss) of each validation, and the steps whose model_best.bin was written
    let vals = |stdout: &str| -> Vec<f32> {
        let v = stdout.lines().filter_map(|l| l.strip_prefix("val loss "));
        v.map(|x| x.parse().unwrap()).collect()
    };
    let writes = |stdout: &str| -> Vec<usize> {
        let w = stdout
            .lines()
            .filter(|l| l.contains("model_best.bin (val loss"));
        w.map(|l| {
            let after = l.split(" after step ").nth(1).unwrap();
            after.split(',').next().unwrap().parse().unwrap()
        })
        .collect()
    };
    let full = train("full", 8, "--checkpoint-every 1 --keep-checkpoints 2");
    let v = vals(&full);
    assert_eq!(v.len(), 9, "steps 0 to 8:\n{full}");
    // every new lowest, in order: each written once
    let mut lowest = f32::INFINITY;
    let want: Vec<usize> = (0..v.len())
        .filter(|&s| {
            let new = v[s] < lowest;
            lowest = lowest.min(v[s]);
            new
        })
        .collect();
    assert_eq!(writes(&full), want, "{full}");
    let best = *want.last().unwrap();
    let end = format!(
        "best val loss {:.4} after step {best}: {}",
        v[best],
        dir.join("full/model_best.bin").display()
    );
    assert!(full.contains(&end), "{full}");
    assert!(
        best > 0 && best < 8,
        "the test wants a best before the end: {v:?}"
    );
    assert!(
        !dir.join("full/model_000003.bin").exists(),
        "--keep-checkpoints 2 keeps 7 and 8"
    );

    // stopped at the best step, resumed to 8: the first run's last validation (the best) is in
    // its state, so the resumed run, which validates that step again, writes nothing
    let first = train("resumed", best, "");
    // the best model is that step's: the same weights as its checkpoint
    assert!(
        std::fs::read(dir.join("full/model_best.bin")).unwrap()
            == std::fs::read(dir.join(format!("resumed/model_{best:06}.bin"))).unwrap(),
        "model_best.bin is not step {best}'s model"
    );
    let state = dir.join(format!("resumed/state_{best:06}.bin"));
    let second = train("resumed", 8, &format!("--resume {}", state.display()));
    assert_eq!(writes(&first), want, "{first}");
    assert_eq!(writes(&second), Vec::<usize>::new(), "{second}");
    assert!(
        second.contains(&end.replace("/full/", "/resumed/")),
        "{second}"
    );
    assert_eq!(vals(&second)[1..], v[best + 1..], "the same run");
    assert!(
        std::fs::read(dir.join("full/model_best.bin")).unwrap()
            == std::fs::read(dir.join("resumed/model_best.bin")).unwrap(),
        "the resumed run's model_best.bin differs"
    );
}

/// `--keep-best` in a resumed run: model_best.bin is the model of the lowest loss the state
/// records, not what an attempt past the resume point wrote over it, nor missing from another
/// --out-dir. A d1 run at a constant 3e-2 validated every step has its lowest loss at its last,
/// step 3 (falling for 3 steps); its state of step 2 records step 1's (a state of step k holds
/// the validations before step k's). Resumed from there with no validation before the end and
/// a rate that makes the end's worse (1.0), the best stays step 1's.
#[test]
fn keep_best_follows_the_state_a_run_resumes() {
    let dir = tmp_dir("keep-best-resumed");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let common = flags(
        "--device cpu --batch 2 --seq 16 --val-batches 2 --lr-schedule constant --warmup 1 \
         --sample-tokens 0 --keep-best --checkpoint-every 1",
    );
    let train = |extra: &[&str]| {
        let (o, stdout, stderr) = run(bin().args(&common).args(extra));
        assert!(o.status.success(), "{extra:?}\n{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let bytes = |p: &str| std::fs::read(d(p)).unwrap();
    let (first, _) = train(&[
        "--model",
        "d1",
        "--steps",
        "3",
        "--val-every",
        "1",
        "--lr",
        "3e-2",
        "--out-dir",
        &d("a"),
    ]);
    let v: Vec<f32> = first
        .lines()
        .filter_map(|l| l.strip_prefix("val loss "))
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(v[1] < v[0] && v[2] < v[1] && v[3] < v[2], "{first}");
    assert!(bytes("a/model_best.bin") == bytes("a/model_000003.bin"));
    let best1 = bytes("a/model_000001.bin");
    let end = |folder: &str, loss: f32, step: usize| {
        format!(
            "best val loss {loss:.4} after step {step}: {}/model_best.bin",
            d(folder)
        )
    };
    let resume = |folder: &str, state: &str| {
        train(&[
            "--steps",
            "5",
            "--val-every",
            "0",
            "--lr",
            "1",
            "--resume",
            &d(state),
            "--out-dir",
            &d(folder),
        ])
    };
    // into another folder: the state's best model comes along (a's model_best.bin is step 3's:
    // step 1's checkpoint is the one)
    std::fs::create_dir_all(d("c")).unwrap();
    for f in ["model_000002.bin", "state_000002.bin", "model_best.bin"] {
        std::fs::copy(d(&format!("a/{f}")), d(&format!("c/{f}"))).unwrap();
    }
    let (other, _) = resume("other", "a/state_000002.bin");
    assert!(
        other.contains(&format!("copied {}", d("a/model_000001.bin"))),
        "{other}"
    );
    assert!(other.contains(&end("other", v[1], 1)), "{other}");
    assert!(bytes("other/model_best.bin") == best1);
    // in its own folder: the attempt's later best (step 3's, set aside with its checkpoints) is
    // replaced by step 1's
    let (here, _) = resume("a", "a/state_000002.bin");
    assert!(here.contains(&end("a", v[1], 1)), "{here}");
    assert!(bytes("a/model_best.bin") == best1);
    let aside: Vec<_> = std::fs::read_dir(d("a"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(aside.iter().any(|n| n == "earlier_run_1"), "{aside:?}");
    // neither the best model nor its step's checkpoint on disk (c holds step 2's and step 3's
    // best): a note, and the search starts again: the end's validation is the best
    let (lost, stderr) = resume("c", "c/state_000002.bin");
    assert!(
        stderr.contains(&format!(
            "note: the model of the run's lowest validation loss ({:.4} after step 1) is not on \
             disk ({} is another model)",
            v[1],
            d("c/model_best.bin")
        )),
        "{stderr}"
    );
    assert!(
        lost.contains(&format!("{}/model_best.bin (val loss", d("c"))),
        "{lost}"
    );
    assert!(bytes("c/model_best.bin") == bytes("c/model_000005.bin"));
}

/// Ctrl-C (SIGINT) during training: the run finishes its step, writes that step's checkpoint and
/// training state, says how to continue and exits with status 130; SIGTERM (`kill`'s, `timeout`'s
/// and Slurm's) the same with status 143. Following the line, the same flags (`--model` too) and
/// `--resume`, continues from that step.
#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_and_the_run_resumes() {
    for (signal, status, name) in [("-INT", 130, "Ctrl-C"), ("-TERM", 143, "SIGTERM")] {
        stop_and_resume(signal, status, name);
    }
}

/// A model of another vocabulary than GPT-2's, given no data of its own, meets the bundled
/// corpus's token ids: the error says that the data are the default's and which flag gives
/// others, for training data and validation data alike.
#[test]
fn a_model_of_another_vocabulary_on_the_bundled_corpus_is_told_whose_data_it_is() {
    let model = fixture("ref_tiny_model.bin");
    let shard = fixture("train_tiny_shard.bin");
    let dir = tmp_dir("other-vocabulary");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let base = [
        "--device",
        "cpu",
        "--model",
        &model,
        "--batch",
        "2",
        "--seq",
        "8",
        "--out-dir",
        out,
    ];
    for (data, flag) in [(&[][..], "--train"), (&["--train", &shard][..], "--val")] {
        let args = [&base[..], data].concat();
        expect_error(
            &args,
            &[
                &format!(
                    "the default {flag} (the bundled Shakespeare corpus, in GPT-2's vocabulary; \
                     give {flag} for data of your own)"
                ),
                "token id 50256 at position 0 is out of range for vocabulary size 64",
            ],
        );
    }
}

/// A signal delivered twice at once, as GNU `timeout` sends it (to the process, then to its
/// process group, which holds the process again, microseconds apart), is one request: the run
/// stops with its checkpoint and says "stopping" once. Taken as a second signal it ended the run
/// at once, with nothing saved (4 runs in 5 under `timeout 1.2`). (The two may also merge into
/// one delivery; `interrupt`'s unit test holds the rule for two.)
#[cfg(unix)]
#[test]
fn a_signal_delivered_twice_at_once_stops_the_run_once() {
    for (signal, status) in [("-TERM", 143), ("-INT", 130)] {
        let dir = tmp_dir(&format!("twice{signal}"));
        let out = dir.join("out");
        let mut args = flags("--device cpu --batch 2 --seq 16 --val-every 0 --sample-tokens 0");
        args.extend(["--model", "d1", "--steps", "2000", "--out-dir"]);
        args.push(out.to_str().unwrap());
        let (code, log, stderr) =
            signal_times_when(bin().args(&args), signal, 2, |l| step_number(l) >= Some(2));
        assert_eq!(code.code(), Some(status), "{signal}: {log}\n{stderr}");
        assert_eq!(stderr.matches("stopping (").count(), 1, "{stderr}");
        let last = log.lines().filter_map(step_number).next_back().unwrap();
        for kind in ["model", "state"] {
            let f = out.join(format!("{kind}_{last:06}.bin"));
            assert!(f.is_file(), "{} missing:\n{log}\n{stderr}", f.display());
        }
    }
}

/// Runs `cmd`, sends it `signal` (kill's flag, e.g. "-INT") once a line of its stdout satisfies
/// `when`, and waits for it: its exit status, its stdout and its stderr.
#[cfg(unix)]
fn signal_when(
    cmd: &mut Command,
    signal: &str,
    when: impl Fn(&str) -> bool,
) -> (std::process::ExitStatus, String, String) {
    signal_times_when(cmd, signal, 1, when)
}

/// [`signal_when`], sending the signal `times` times by one `kill` (its calls microseconds
/// apart).
#[cfg(unix)]
fn signal_times_when(
    cmd: &mut Command,
    signal: &str,
    times: usize,
    when: impl Fn(&str) -> bool,
) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, BufReader, Read};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log += &line;
        log.push('\n');
        if when(&line) {
            break;
        }
    }
    let pid = child.id().to_string();
    let kill = Command::new("kill")
        .arg(signal)
        .args(std::iter::repeat_n(&pid, times))
        .status()
        .expect("run kill");
    assert!(kill.success());
    for line in lines {
        log += &line.unwrap();
        log.push('\n');
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap(), log, stderr)
}

#[cfg(unix)]
fn stop_and_resume(signal: &str, status: i32, name: &str) {
    let dir = tmp_dir(&format!("stop{signal}"));
    let out = dir.join("out").to_string_lossy().into_owned();
    let mut common = flags("--device cpu --batch 2 --seq 16 --val-every 0 --sample-tokens 0");
    common.extend(["--out-dir", &out, "--model", "d1"]);
    // (--steps 2000: about 30 s if the signal did nothing)
    let (code, log, _) = signal_when(bin().args(&common).args(["--steps", "2000"]), signal, |l| {
        step_number(l) >= Some(3)
    });
    assert_eq!(code.code(), Some(status), "{signal}: {log}");
    let last = log
        .lines()
        .filter_map(step_number)
        .next_back()
        .expect("a step line");
    assert!(last >= 3, "{log}");
    assert!(
        log.contains(&format!(
            "interrupted ({name}) after step {last}: continue with the same flags and --resume {}",
            dir.join("out")
                .join(format!("state_{last:06}.bin"))
                .display()
        )),
        "{log}"
    );
    assert!(
        !log.contains("val loss"),
        "no final validation after {name}:\n{log}"
    );
    for kind in ["model", "state"] {
        let f = dir.join("out").join(format!("{kind}_{last:06}.bin"));
        assert!(f.is_file(), "{} missing:\n{log}", f.display());
    }
    let tmp: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    // the same flags (--model d1 among them) and --resume
    let steps = (last + 1).to_string();
    let (out, stdout, stderr) = run(bin()
        .args(&common)
        .args(["--steps", &steps, "--resume", &out]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let first = stdout
        .lines()
        .find(|l| l.starts_with("step "))
        .unwrap_or("");
    assert!(
        first.contains(&format!("{}/{}", last + 1, last + 1)),
        "{stdout}"
    );
    // resumed by its folder and stopped again: the same command line continues it (its
    // --resume finds the newest state)
    let more = last + 4;
    let out = dir.join("out").to_string_lossy().into_owned();
    let (code, log, _) = signal_when(
        bin()
            .args(&common)
            .args(["--steps", "2000", "--resume", &out]),
        signal,
        |l| step_number(l) >= Some(more),
    );
    assert_eq!(code.code(), Some(status), "{signal}: {log}");
    let stopped = log.lines().filter_map(step_number).next_back().unwrap();
    assert!(
        log.contains(&format!(
            "interrupted ({name}) after step {stopped}: continue with the same command (its \
             --resume {out} finds {})",
            dir.join("out")
                .join(format!("state_{stopped:06}.bin"))
                .display()
        )),
        "{log}"
    );
}

/// A signal between the micro-batches of a long step (a large --grad-accum) stops the run at once,
/// not at the step's end (which may come after a scheduler's SIGKILL): the part of the gradient is
/// dropped, the data put back, and the run after the last whole step saved. Resumed, it ends as
/// a run that was never stopped.
#[cfg(unix)]
#[test]
fn a_signal_within_a_step_of_many_micro_batches_stops_it_there() {
    let dir = tmp_dir("stop-accum");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // (150 micro-batches a step: a second or two each)
    let common = flags(
        "--device cpu --model d1 --batch 2 --seq 16 --grad-accum 150 --val-every 0 \
         --sample-tokens 0 --shuffle --seed 4",
    );
    let (o, stdout, stderr) =
        run(bin()
            .args(&common)
            .args(["--steps", "2", "--out-dir", &d("unbroken")]));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let mut cmd = bin();
    cmd.args(&common)
        .args(["--steps", "2", "--out-dir", &d("broken")]);
    let (code, log, _) = signal_when(&mut cmd, "-TERM", |l| step_number(l) == Some(1));
    assert_eq!(code.code(), Some(143), "{log}");
    assert!(!log.contains("step     2/2"), "{log}");
    let state = d("broken/state_000001.bin");
    assert!(
        log.contains(&format!(
            "interrupted (SIGTERM) after step 1: continue with the same flags and --resume {state}"
        )),
        "{log}"
    );
    let (o, stdout, stderr) = run(bin().args(&common).args([
        "--steps",
        "2",
        "--out-dir",
        &d("broken"),
        "--resume",
        &state,
    ]));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_same_files(
        &dir.join("broken"),
        &dir.join("unbroken"),
        &["model_000002.bin", "state_000002.bin"],
        "stopped within step 2 and resumed",
    );
}

/// A signal during a text sample between steps (or a validation) stops the run there, not after
/// one more step (which may take minutes): the checkpoint of the steps done so far, the line to
/// continue, status 130. Resumed so, the run goes on from that step.
#[cfg(unix)]
#[test]
fn a_signal_during_a_sample_between_steps_stops_before_the_next_step() {
    let dir = tmp_dir("stop-in-sample");
    let out = dir.join("out").to_string_lossy().into_owned();
    // a sample of a million tokens: minutes, unless the signal cuts it short
    let mut common = flags(
        "--device cpu --model d1 --batch 2 --seq 16 --val-every 0 --sample-every 3 \
         --sample-tokens 1000000",
    );
    common.extend(["--out-dir", &out]);
    let (code, log, stderr) =
        signal_when(bin().args(&common).args(["--steps", "6"]), "-INT", |l| {
            l.starts_with("sample after step 3")
        });
    assert_eq!(code.code(), Some(130), "{log}\n{stderr}");
    // the text generated before the signal is printed, then how much of the sample that is
    let (text, cut) = log
        .split_once("sample after step 3 (1000000 tokens, top-k 40):\n---\n")
        .and_then(|(_, after)| after.split_once("\n(the sample is cut short after "))
        .expect(&log);
    let done: usize = cut
        .split_once(" of 1000000 tokens)\n---\n")
        .and_then(|(n, _)| n.parse().ok())
        .expect(&log);
    assert!((1..1_000_000).contains(&done), "{log}");
    assert!(!text.is_empty(), "{log}");
    assert_eq!(
        log.lines().filter_map(step_number).next_back(),
        Some(3),
        "no step after the sample:\n{log}"
    );
    let state = dir.join("out").join("state_000003.bin");
    assert!(
        log.contains(&format!(
            "interrupted (Ctrl-C) after step 3: continue with the same flags and --resume {}",
            state.display()
        )),
        "{log}\n{stderr}"
    );
    assert!(state.is_file(), "{log}");
    // continued with no samples (the same numbers: samples change nothing)
    let mut again = common.clone();
    again.retain(|f| !["--sample-every", "3", "--sample-tokens", "1000000"].contains(f));
    let (done, stdout, stderr) = run(bin()
        .args(&again)
        .args(["--steps", "4", "--sample-tokens", "0", "--resume"])
        .arg(&state));
    assert!(done.status.success(), "{stdout}\n{stderr}");
    let steps: Vec<_> = stdout.lines().filter_map(step_number).collect();
    assert_eq!(steps, [4], "{stdout}");
}

/// A model of another vocabulary than GPT-2's (a test fixture, V = 64) trains on its own token
/// ids; its samples cannot be decoded, so there are none, with a note, instead of an error at
/// the first sample that lost the run.
#[test]
fn a_model_of_another_vocabulary_trains_without_samples() {
    use train_gpt2_cuda::formats::shard::write_shard;
    let dir = tmp_dir("other-vocab");
    let tokens: Vec<u32> = (0..4000u32).map(|i| (i * 7 + i / 13) % 64).collect();
    write_shard(&dir.join("train.bin"), &tokens).unwrap();
    write_shard(&dir.join("val.bin"), &tokens[..1000]).unwrap();
    let model = root().join("tests/fixtures/ref_tiny_model.bin");
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --batch 2 --seq 8 --steps 4 --sample-every 2 --sample-tokens 4",
        ))
        .arg("--model")
        .arg(&model)
        .arg("--train")
        .arg(dir.join("train.bin"))
        .arg("--val")
        .arg(dir.join("val.bin"))
        .arg("--out-dir")
        .arg(dir.join("out")));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "note: no text samples: the model's vocabulary has 64 tokens, the GPT-2 tokenizer 50257"
        ),
        "{stderr}"
    );
    assert!(!stdout.contains("sample after"), "{stdout}");
    assert_eq!(
        stdout.lines().filter_map(step_number).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{stdout}"
    );
    assert!(dir.join("out/model_000004.bin").is_file());
}

/// `--sample-tokens 0` (its help says "0: none"): no sample at the end, printed or logged.
#[test]
fn no_sample_tokens_end_the_run_without_a_sample() {
    let dir = tmp_dir("no-sample");
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 16 --steps 1 --sample-tokens 0",
        ))
        .arg("--out-dir")
        .arg(&dir));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("val loss"), "{stdout}");
    assert!(!stdout.contains("sample after"), "{stdout}");
    let log = run_log(&dir);
    assert!(!log.is_empty());
    assert!(log.iter().all(|r| r.get("sample").is_none()), "{log:?}");
}

/// `verify --dump` refuses to overwrite what it reads (the model, the reference state, the
/// expected losses), before any work: it used to replace the model with a debug state.
#[test]
fn verify_dump_never_overwrites_its_inputs() {
    let dir = tmp_dir("verify-dump");
    let fixtures = root().join("tests/fixtures");
    for f in [
        "ref_tiny_model.bin",
        "ref_tiny_state.bin",
        "ref_tiny_losses.txt",
    ] {
        std::fs::copy(fixtures.join(f), dir.join(f)).unwrap();
    }
    let before = std::fs::read(dir.join("ref_tiny_model.bin")).unwrap();
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let verify = |dump: &str| {
        run(bin().args([
            "verify",
            "--device",
            "cpu",
            "--model",
            &d("ref_tiny_model.bin"),
            "--state",
            &d("ref_tiny_state.bin"),
            "--steps",
            "2",
            "--expect-losses",
            &d("ref_tiny_losses.txt"),
            "--dump",
            dump,
        ]))
    };
    for (file, what) in [
        ("ref_tiny_model.bin", "the model"),
        ("ref_tiny_state.bin", "the reference state"),
        ("ref_tiny_losses.txt", "the expected losses"),
    ] {
        let (out, stdout, stderr) = verify(&d(file));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("--dump {} would overwrite {what}", d(file))),
            "{stderr}"
        );
        assert!(stdout.is_empty(), "no work before the refusal: {stdout}");
    }
    assert_eq!(
        std::fs::read(dir.join("ref_tiny_model.bin")).unwrap(),
        before
    );
    // a folder, named with or without one
    let (out, _, stderr) = verify(&d("sub/"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("names a folder (it ends in '/'): --dump takes a file name"),
        "{stderr}"
    );
    // another file is written, its folder made
    let (out, stdout, stderr) = verify(&d("new/dump.bin"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(dir.join("new/dump.bin").is_file());
    // a Hugging Face model as the hub's cache keeps it: a snapshot folder of links to blobs (the
    // dump named through the link, or the blob itself)
    #[cfg(unix)]
    {
        let hub = dir.join("hub");
        std::fs::create_dir_all(hub.join("blobs")).unwrap();
        std::fs::create_dir_all(hub.join("snapshot")).unwrap();
        for (file, blob) in [("config.json", "b1"), ("model.safetensors", "b2")] {
            std::fs::copy(
                root().join("tests/fixtures/hf_tiny").join(file),
                hub.join("blobs").join(blob),
            )
            .unwrap();
            std::os::unix::fs::symlink(format!("../blobs/{blob}"), hub.join("snapshot").join(file))
                .unwrap();
        }
        let blob = std::fs::read(hub.join("blobs/b2")).unwrap();
        for dump in [hub.join("snapshot/model.safetensors"), hub.join("blobs/b2")] {
            let (out, stdout, stderr) = run(bin()
                .args(["verify", "--device", "cpu", "--model"])
                .arg(hub.join("snapshot"))
                .arg("--state")
                .arg(root().join("tests/fixtures/hf_tiny_state.bin"))
                .arg("--dump")
                .arg(&dump));
            assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
            assert!(stderr.contains("would overwrite the model"), "{stderr}");
        }
        assert_eq!(std::fs::read(hub.join("blobs/b2")).unwrap(), blob);
    }
}

/// `--resume` refuses a checkpoint with a NaN parameter, and a training state whose AdamW moments
/// no run writes (NaN, or a negative second moment), naming what is wrong: it trained a step on
/// them, wrote a checkpoint of NaN, and blamed the learning rate.
#[test]
fn a_damaged_state_is_refused_on_resume() {
    use train_gpt2_cuda::formats::HEADER_BYTES;
    let dir = tmp_dir("damaged-state");
    let out = dir.join("out").to_string_lossy().into_owned();
    let common =
        flags("--device cpu --model d1 --batch 2 --seq 16 --val-every 0 --sample-tokens 0");
    let (done, stdout, stderr) = run(bin()
        .args(&common)
        .args(["--steps", "2", "--out-dir", &out]));
    assert!(done.status.success(), "{stdout}\n{stderr}");
    let (model, state) = (
        dir.join("out/model_000002.bin"),
        dir.join("out/state_000002.bin"),
    );
    let (model_bytes, state_bytes) = (
        std::fs::read(&model).unwrap(),
        std::fs::read(&state).unwrap(),
    );
    let n = (model_bytes.len() - HEADER_BYTES) / 4; // (d1's parameters)
    let resume = || {
        run(bin()
            .args(&common)
            .args(["--steps", "3", "--out-dir", &out, "--resume"])
            .arg(&state))
    };
    let put = |bytes: &[u8], at: usize, x: f32| {
        let mut b = bytes.to_vec();
        b[HEADER_BYTES + 4 * at..HEADER_BYTES + 4 * at + 4].copy_from_slice(&x.to_le_bytes());
        b
    };
    let cases = [
        (
            &model,
            put(&model_bytes, n - 1, f32::NAN),
            "the model holds 1 parameter that is not finite, the first NaN in lnfb[",
        ),
        (
            &state,
            put(&state_bytes, 10, f32::NAN),
            "AdamW's m holds 1 value not finite, the first NaN at element 10",
        ),
        (
            &state,
            put(&state_bytes, n + 3, -1.0),
            "AdamW's v holds 1 value not finite or negative, the first -1 at element 3",
        ),
    ];
    for (file, bytes, want) in cases {
        write(file, &bytes);
        let (done, stdout, stderr) = resume();
        assert_eq!(done.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(!stdout.contains("step 3/3"), "no step trained: {stdout}");
        write(&model, &model_bytes);
        write(&state, &state_bytes);
    }
    let (done, stdout, stderr) = resume();
    assert!(done.status.success(), "{stdout}\n{stderr}");
}

/// A model with a NaN or infinite parameter is refused where it is read, naming the tensor:
/// `eval` printed "loss NaN" with success, `sample` one token over and over.
#[test]
fn a_model_with_a_non_finite_parameter_is_refused() {
    let dir = tmp_dir("nan-model");
    let mut bytes = std::fs::read(root().join("tests/fixtures/ref_gpt2vocab_model.bin")).unwrap();
    // the last parameters are lnfb's: two of them
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    bytes[n - 8..n - 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let model = dir.join("nan.bin");
    write(&model, &bytes);
    let m = model.to_string_lossy().into_owned();
    for args in [
        vec![
            "eval", "--device", "cpu", "--model", &m, "--batch", "1", "--seq", "8",
        ],
        vec!["sample", "--device", "cpu", "--model", &m, "--tokens", "2"],
        vec!["--device", "cpu", "--model", &m, "--steps", "1"],
    ] {
        let (out, stdout, stderr) = run(bin().args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(
                "the model holds 2 parameters that are not finite, the first inf in lnfb["
            ),
            "{args:?}: {stderr}"
        );
    }
}

/// `eval`'s perplexity reads as a number: fixed decimals for a model that predicts, the
/// exponent form from 1e6 up (a diverged model's was 35 digits), and inf past f64's range. The
/// models: the fixture, and the same with its final layernorm's weights and biases scaled up
/// (logits that large make the loss large).
#[test]
fn eval_prints_a_large_perplexity_in_exponent_form() {
    use train_gpt2_cuda::formats::checkpoint::{
        read_checkpoint, write_checkpoint, CheckpointPrecision,
    };
    let dir = tmp_dir("perplexity");
    let fixture_model = root().join("tests/fixtures/ref_gpt2vocab_model.bin");
    let ck = read_checkpoint(&fixture_model).unwrap();
    let c = ck.config.channels;
    let eval = |model: &Path| -> (f32, String) {
        let (out, stdout, stderr) = run(bin()
            .args([
                "eval",
                "--device",
                "cpu",
                "--model",
                &model.to_string_lossy(),
            ])
            .args(flags("--batch 1 --seq 8 --batches 2")));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let line = stdout.lines().find(|l| l.starts_with("loss ")).unwrap();
        let loss = line["loss ".len()..].split(' ').next().unwrap();
        let perplexity = line.split("(perplexity ").nth(1).unwrap().split(')').next();
        (loss.parse().unwrap(), perplexity.unwrap().to_string())
    };
    let (loss, perplexity) = eval(&fixture_model);
    assert!((loss as f64).exp() < 1e6, "{loss}");
    assert_eq!(perplexity, format!("{:.3}", (loss as f64).exp()));
    // scaled 300 times: a loss whose perplexity is past 1e6; 30000 times: past f64's range
    for (scale, large) in [(300.0, true), (30000.0, false)] {
        let mut params = ck.params.clone();
        let n = params.len();
        for p in &mut params[n - 2 * c..] {
            *p *= scale;
        }
        let model = dir.join(format!("x{scale}.bin"));
        write_checkpoint(&model, &ck.config, &params, CheckpointPrecision::Fp32).unwrap();
        let (loss, perplexity) = eval(&model);
        let p = (loss as f64).exp();
        if large {
            assert!((1e6..f64::MAX).contains(&p), "{loss}");
            assert_eq!(perplexity, format!("{p:.3e}"));
        } else {
            assert!(p.is_infinite(), "{loss}");
            assert_eq!(perplexity, "inf");
        }
    }
}

/// A prompt may start with a hyphen (clap took it for a flag), and a negative number reaches the
/// flag's own check.
#[test]
fn a_prompt_may_start_with_a_hyphen() {
    let model = fixture("ref_gpt2vocab_model.bin");
    let sample = |extra: &[&str]| {
        run(bin()
            .args([
                "sample", "--device", "cpu", "--model", &model, "--tokens", "2",
            ])
            .args(extra))
    };
    let (out, stdout, stderr) = sample(&["--prompt", "-- hello"]);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("-- hello"), "{stdout}");
    let (out, _, stderr) = sample(&["--temperature", "-1"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--temperature must be a finite number above 0, got -1"),
        "{stderr}"
    );
}

/// A resumed run given another --steps than the run had follows another learning-rate curve
/// from there: a note says so, from the rate its log records for the step resumed at. The
/// validation set smaller than --val-batches, and --train without --val, are noted too.
#[test]
fn notes_for_a_changed_schedule_and_the_validation_data() {
    let dir = tmp_dir("schedule-note");
    let out = dir.join("out").to_string_lossy().into_owned();
    let common = flags(
        "--device cpu --model d1 --batch 1 --seq 8 --warmup 2 --lr 1e-3 --val-every 0 \
         --val-batches 1 --sample-tokens 0",
    );
    let (done, stdout, stderr) = run(bin().args(&common).args([
        "--steps",
        "6",
        "--checkpoint-every",
        "3",
        "--out-dir",
        &out,
    ]));
    assert!(done.status.success(), "{stdout}\n{stderr}");
    let resume = |steps: &str, at: &str| {
        run(bin()
            .args(&common)
            .args(["--steps", steps, "--out-dir", &out, "--resume"])
            .arg(dir.join(format!("out/state_00000{at}.bin"))))
    };
    // the run's own flags, resumed at step 3: no note (the curve is the run's)
    let (done, stdout, stderr) = resume("6", "3");
    assert!(done.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("learning rate"), "{stderr}");
    // a longer run: cosine over 12 steps, where step 6 had 1e-4 (the final rate of 6)
    let (done, stdout, stderr) = resume("12", "6");
    assert!(done.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "note: the learning rate of step 6 was 1.000e-4 in the run resumed, 7.750e-4 with \
             these flags: the schedule has changed"
        ),
        "{stderr}"
    );
    // a step of d1 with `extra` flags, the last of which names `data`: its stderr
    let one_step = |extra: &str, data: &Path, out: &str| {
        let (done, stdout, stderr) = run(bin()
            .args(flags(
                "--device cpu --model d1 --steps 1 --sample-tokens 0 --no-state",
            ))
            .args(flags(extra))
            .arg(data)
            .arg("--out-dir")
            .arg(dir.join(out)));
        assert!(done.status.success(), "{extra}: {stdout}\n{stderr}");
        stderr
    };
    // the bundled validation set at B x T = 64 x 64: 44 batches, not 1000
    let train = root().join("data/shakespeare/train.bin");
    let stderr = one_step(
        "--batch 64 --seq 64 --val-batches 1000 --train",
        &train,
        "val",
    );
    assert!(
        stderr.contains("each validation averages those, not --val-batches 1000"),
        "{stderr}"
    );
    assert!(
        stderr.contains("note: --train without --val: the validation loss is measured on the"),
        "{stderr}"
    );
    // a validation set of one batch of 2x16 (40 tokens)
    let one = dir.join("one-batch.bin");
    train_gpt2_cuda::formats::shard::write_shard(&one, &(0..40).collect::<Vec<u32>>()).unwrap();
    let stderr = one_step("--batch 2 --seq 16 --val-batches 3 --val", &one, "val-one");
    assert!(
        stderr.contains(
            "note: the validation data holds 1 batch of 2x16: each validation averages it, not \
             --val-batches 3"
        ),
        "{stderr}"
    );
}

#[test]
fn a_resume_goes_on_in_its_folder_and_checks_its_model_and_settings() {
    let dir = tmp_dir("resume-folder");
    let run_dir = dir.join("run");
    let common = flags(
        "--device cpu --model d1 --batch 1 --seq 8 --lr 1e-3 --val-every 0 --sample-tokens 0",
    );
    let train = |extra: &[&str]| run(bin().current_dir(&dir).args(&common).args(extra));
    let (done, stdout, stderr) = train(&[
        "--steps",
        "4",
        "--checkpoint-every",
        "2",
        "--out-dir",
        "run",
    ]);
    assert!(done.status.success(), "{stdout}\n{stderr}");
    let whole = std::fs::read(run_dir.join("model_000004.bin")).unwrap();
    // set the run's end aside, and resume it from its folder without --out-dir: it goes on
    // there (no ./out), and writes the same model
    let aside = dir.join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    for f in ["model_000004.bin", "state_000004.bin"] {
        std::fs::rename(run_dir.join(f), aside.join(f)).unwrap();
    }
    let (done, stdout, stderr) = train(&["--steps", "4", "--resume", "run"]);
    assert!(done.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("log: run/log.jsonl"), "{stdout}");
    assert!(!dir.join("out").exists(), "{stdout}");
    assert_eq!(
        std::fs::read(run_dir.join("model_000004.bin")).unwrap(),
        whole
    );
    assert!(!stderr.contains("note: the run resumed"), "{stderr}");
    // from a state file: its folder; other optimizer settings are named, each
    let (done, stdout, stderr) = train(&[
        "--steps",
        "4",
        "--resume",
        "run/state_000002.bin",
        "--weight-decay",
        "0.5",
        "--eps",
        "1e-6",
    ]);
    assert!(done.status.success(), "{stdout}\n{stderr}");
    assert!(!dir.join("out").exists(), "{stdout}");
    for note in [
        "note: the run resumed from run/state_000002.bin took its steps with --weight-decay 0, \
         these flags give 0.5: the steps from here use the new value",
        "took its steps with --eps 1e-8, these flags give 1e-6",
    ] {
        assert!(stderr.contains(note), "{note}:\n{stderr}");
    }
    assert!(
        !stderr.contains("--beta1") && !stderr.contains("--grad-clip"),
        "{stderr}"
    );
    assert_ne!(
        std::fs::read(run_dir.join("model_000004.bin")).unwrap(),
        whole
    );
    // another model in the state's model's place is refused, naming both files
    std::fs::copy(
        aside.join("model_000004.bin"),
        run_dir.join("model_000002.bin"),
    )
    .unwrap();
    let (done, stdout, stderr) = train(&["--steps", "4", "--resume", "run/state_000002.bin"]);
    assert_eq!(done.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "error: run/model_000002.bin: these are not the weights written with \
             run/state_000002.bin (their fingerprint differs)"
        ),
        "{stderr}"
    );
    // --out-dir given: the run goes on there
    std::fs::copy(
        aside.join("model_000004.bin"),
        run_dir.join("model_000004.bin"),
    )
    .unwrap();
    std::fs::copy(
        aside.join("state_000004.bin"),
        run_dir.join("state_000004.bin"),
    )
    .unwrap();
    let (done, stdout, stderr) = train(&["--steps", "5", "--resume", "run", "--out-dir", "more"]);
    assert!(done.status.success(), "{stdout}\n{stderr}");
    assert!(dir.join("more/model_000005.bin").is_file(), "{stdout}");
    assert!(!run_dir.join("model_000005.bin").exists(), "{stdout}");
}

#[test]
fn tokenizer_command_writes_gpt2_vocabulary() {
    let dir = tmp_dir("tok");
    // (into a folder that does not exist yet: made, as convert's --out)
    let path = dir.join("new/gpt2_tokenizer.bin");
    let (out, stdout, _) = run(bin().args(["tokenizer", "--out", path.to_str().unwrap()]));
    assert!(out.status.success(), "{stdout}");
    let f = train_gpt2_cuda::formats::tokenizer_file::read_tokenizer_file(&path).unwrap();
    assert_eq!(f.tokens.len(), 50257);
    assert_eq!(f.eot, Some(50256));
    assert_eq!(f.tokens[15496], b"Hello");
    assert_eq!(f.tokens[995], b" world");
}

/// Sets `path`'s permission bits.
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `path`'s permission bits.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// An output written again keeps its permissions (a private model stays private); a read-only
/// one (`chmod 444`) is refused before any work, by every command that writes a file the user
/// names, and by a resumed run whose `model_best.bin` or `log.jsonl` is read-only.
#[test]
fn a_rewritten_output_keeps_its_permissions_and_a_read_only_one_is_refused() {
    let dir = tmp_dir("read-only");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let model = fixture("ref_tiny_model.bin");
    let convert = |out: &str| run(bin().args(["convert", "--model", &model, "--out", out]));
    let (out, stdout, stderr) = convert(&d("p.bin"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    chmod(&dir.join("p.bin"), 0o600);
    let (out, stdout, stderr) = convert(&d("p.bin"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(mode(&dir.join("p.bin")), 0o600, "not private any more");
    // read-only: refused, unchanged, nothing done
    write(&dir.join("p.bin"), b"kept");
    chmod(&dir.join("p.bin"), 0o444);
    std::fs::create_dir(dir.join("hf")).unwrap();
    write(&dir.join("hf/config.json"), b"kept");
    chmod(&dir.join("hf/config.json"), 0o444);
    let verify = ["verify", "--model", &model, "--state"];
    let state = fixture("ref_tiny_state.bin");
    for (args, file) in [
        (
            &["convert", "--model", &model, "--out", &d("p.bin")][..],
            "p.bin",
        ),
        (&["tokenizer", "--out", &d("p.bin")][..], "p.bin"),
        (
            &[&verify[..], &[&state, "--dump", &d("p.bin")]].concat()[..],
            "p.bin",
        ),
        (
            &[
                "convert",
                "--model",
                &model,
                "--format",
                "hf",
                "--out",
                &d("hf"),
            ][..],
            "hf/config.json",
        ),
        // before the model is read: refused so even when there is no model
        (
            &[
                "convert",
                "--model",
                &d("missing.bin"),
                "--format",
                "hf",
                "--out",
                &d("hf"),
            ][..],
            "hf/config.json",
        ),
    ] {
        let (out, stdout, stderr) = run(bin().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}\n{stderr}");
        let want = format!("{} is read-only", d(file));
        assert!(stderr.contains(&want), "{args:?}: {stderr}");
        assert!(
            stdout.is_empty(),
            "{args:?}: work before the refusal: {stdout}"
        );
    }
    assert_eq!(std::fs::read(dir.join("p.bin")).unwrap(), b"kept");
    assert_eq!(std::fs::read(dir.join("hf/config.json")).unwrap(), b"kept");
    assert_eq!(std::fs::read_dir(dir.join("hf")).unwrap().count(), 1);
    // a run resumed in its folder, whose model_best.bin is read-only, stops before its first step,
    // and before it sets aside the checkpoints of the attempt it replaces (step 2's)
    let train = |extra: &str| {
        run(bin()
            .args(flags(
                "--device cpu --batch 2 --seq 16 --val-every 1 --val-batches 1",
            ))
            .args(flags("--sample-tokens 0 --keep-best"))
            .args(["--out-dir", &d("run")])
            .args(flags(extra)))
    };
    let (out, stdout, stderr) = train("--model d1 --steps 2 --checkpoint-every 1");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    chmod(&dir.join("run/model_best.bin"), 0o444);
    // (no flag names these files: the way out is to make them writable, or not to write them)
    for (file, advice) in [
        (
            "model_best.bin",
            "make it writable (chmod u+w), or drop --keep-best",
        ),
        (
            "log.jsonl",
            "make it writable (chmod u+w), or resume into another --out-dir",
        ),
    ] {
        chmod(&dir.join("run/model_best.bin"), 0o644);
        chmod(&dir.join("run").join(file), 0o444);
        let state = d("run/state_000001.bin");
        let (out, stdout, stderr) = train(&format!("--resume {state} --steps 2"));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(!dir.join("run/earlier_run_1").exists(), "{stdout}");
        assert!(dir.join("run/model_000002.bin").is_file(), "{stdout}");
        let want = format!(
            "{} is read-only (no one may write it): it is not replaced; {advice}\n",
            d(&format!("run/{file}"))
        );
        assert!(stderr.contains(&want), "{stderr}");
        assert!(
            !stdout.contains("step 2"),
            "a step before the refusal: {stdout}"
        );
    }
}

/// Runs the engine with `args` under an address-space limit of `kib` KiB ([`limited`]).
fn run_limited(kib: u64, args: &[&str]) -> (Output, String, String) {
    run(limited(kib).args(args))
}

/// A model or a state given through a pipe (`<(cat model.bin)`) or as a device is refused by
/// name: a pipe's first bytes went to telling its format, and the rest read as a "bad magic
/// number"; `/dev/zero` as a state was read until the memory ran out (4 GB and growing).
#[test]
fn a_pipe_or_a_device_is_refused_where_a_model_or_a_state_is_read() {
    let dir = tmp_dir("not-regular");
    let out = dir.join("out.bin").to_string_lossy().into_owned();
    let model = fixture("ref_tiny_model.bin");
    let refused = "is not a regular file (a pipe or a device): give the file itself";
    // an llm.c checkpoint, or a Hugging Face file (refused before its format is told, not as a
    // file without its config.json)
    let torch = fixture("hf_tiny_torch/pytorch_model.bin");
    let safetensors = fixture("hf_tiny/model.safetensors");
    for piped in [&model, &torch, &safetensors] {
        let (o, stdout, stderr) = run(Command::new("bash")
            .args([
                "-c",
                "exec \"$0\" sample --model <(cat \"$1\") --device cpu --tokens 3",
            ])
            .arg(engine_bin::engine())
            .arg(piped));
        assert_eq!(o.status.code(), Some(1), "{piped}: {stdout}\n{stderr}");
        assert!(
            stderr.contains("/dev/fd/") && stderr.contains(refused),
            "{piped}: {stderr}"
        );
    }
    let cases = [
        "sample --model /dev/zero --device cpu --tokens 3".to_string(),
        "eval --model /dev/null --device cpu".into(),
        format!("convert --model /dev/zero --out {out}"),
        format!("verify --model {model} --state /dev/zero"),
        "--model /dev/zero --device cpu --batch 2 --seq 16".into(),
        "--resume /dev/zero --device cpu --batch 2 --seq 16".into(),
    ];
    for line in &cases {
        let (o, stdout, stderr) = run_limited(2_000_000, &flags(line));
        assert_eq!(o.status.code(), Some(1), "{line}: {stdout}\n{stderr}");
        assert!(stderr.contains(refused), "{line}: {stderr}");
        assert!(stderr.contains("/dev/"), "{line}: {stderr}");
    }
    assert!(!dir.join("out.bin").exists());
}

/// A debug state far larger than its header says is refused by its size, before it is read (it
/// was read whole first: 8 GiB here, sparse on the disk).
#[test]
fn a_state_far_larger_than_its_header_says_is_not_read() {
    let dir = tmp_dir("large-state");
    let big = dir.join("big.bin");
    std::fs::copy(fixture("ref_tiny_state.bin"), &big).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    file.set_len(8 << 30).unwrap();
    let model = fixture("ref_tiny_model.bin");
    let args = [
        "verify",
        "--model",
        &model,
        "--state",
        big.to_str().unwrap(),
    ];
    let (o, stdout, stderr) = run_limited(2_000_000, &args);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    let want = format!("{}: debug state has ", big.display());
    assert!(
        stderr.contains(&want) && stderr.contains("trailing bytes"),
        "{stderr}"
    );
}

/// Parameters that cannot be allocated (under `ulimit -v`) are an error naming them, as the
/// activations' are: a new d12 (475 MiB of parameters) ended in the allocator's abort ("memory
/// allocation of 497903616 bytes failed", exit status 134), and so did a checkpoint's read.
#[test]
fn parameters_that_cannot_be_allocated_are_an_error() {
    let dir = tmp_dir("no-memory");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let new = "--model d12 --batch 1 --seq 16 --steps 1 --device cpu --sample-tokens 0";
    let run_dir = d("run");
    let args = [&flags(new)[..], &["--out-dir", &run_dir]].concat();
    let (o, stdout, stderr) = run_limited(400_000, &args);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    let want = "the parameters: could not allocate 474.8 MiB (124475904 elements)";
    assert!(stderr.contains(want), "{stderr}");
    // a d12 checkpoint (a sparse file: its header, then zeros)
    use train_gpt2_cuda::formats::{new_header, put_header, HEADER_BYTES};
    let mut h = new_header(20240326, 3);
    h[2..8].copy_from_slice(&[1024, 50257, 12, 12, 768, 50304]);
    let mut bytes = Vec::new();
    put_header(&mut bytes, &h);
    write(&dir.join("d12.bin"), &bytes);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("d12.bin"));
    file.unwrap()
        .set_len(HEADER_BYTES as u64 + 4 * 124475904)
        .unwrap();
    let args = [
        "sample",
        "--model",
        &d("d12.bin"),
        "--device",
        "cpu",
        "--tokens",
        "1",
    ];
    let (o, stdout, stderr) = run_limited(400_000, &args);
    assert_eq!(o.status.code(), Some(1), "{stdout}\n{stderr}");
    let want = format!("{}: {want}", d("d12.bin"));
    assert!(stderr.contains(&want), "{stderr}");
}

/// An `--out-dir` that is a file, or a symbolic link to nothing, is named as what it is (it was
/// "cannot create the output folder: File exists"), for a run and for prepro (which said "cannot
/// list the directory: Not a directory").
#[test]
fn an_out_dir_that_is_a_file_is_named_as_one() {
    let dir = tmp_dir("out-dir-file");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    write(&dir.join("afile"), b"kept");
    std::os::unix::fs::symlink("nowhere/x", dir.join("dangling")).unwrap();
    let train = "--model d1 --batch 2 --seq 16 --steps 1 --device cpu --sample-tokens 0";
    for (out_dir, want) in [
        (
            d("afile"),
            format!("--out-dir {} is a file, not a folder", d("afile")),
        ),
        (
            d("dangling"),
            format!(
                "--out-dir {} is a symbolic link to nowhere/x, which is not there",
                d("dangling")
            ),
        ),
    ] {
        let args = [&flags(train)[..], &["--out-dir", &out_dir]].concat();
        expect_error(&args, &[&want]);
        let text = d("play.txt");
        write(Path::new(&text), b"To be, or not to be.");
        expect_error(&["prepro", &text, "--out-dir", &out_dir], &[&want]);
    }
    assert_eq!(std::fs::read(dir.join("afile")).unwrap(), b"kept");
}

/// A folder an output goes in that cannot be made because it, or a folder above it, is a file or
/// a link to nothing is named, as is what cannot be made, before any work: a run's and prepro's
/// `--out-dir`, convert's `--out` (a folder for hf, a file for llmc), tokenizer's `--out` and
/// verify's `--dump` (they said "File exists" or "Not a directory", naming neither).
#[test]
fn an_output_under_a_file_is_named() {
    let dir = tmp_dir("output-under-file");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    write(&dir.join("afile"), b"kept");
    std::os::unix::fs::symlink("nowhere", dir.join("dangling")).unwrap();
    let text = d("play.txt");
    write(Path::new(&text), b"To be, or not to be.");
    let (model, state) = (fixture("ref_tiny_model.bin"), fixture("ref_tiny_state.bin"));
    let hf = fixture("hf_tiny");
    let train = "--model d1 --batch 2 --seq 16 --steps 1 --device cpu --sample-tokens 0";
    let under = |at: &str, flag: &str, out: &str, made: &str| {
        format!(
            "{at} is a file, not a folder, so {flag} {out} cannot be {made}: give another {flag}"
        )
    };
    let (sub, x) = (d("afile/sub"), d("afile/sub/x.bin"));
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            [&flags(train)[..], &["--out-dir", &sub]].concat(),
            under(&d("afile"), "--out-dir", &sub, "made"),
        ),
        (
            vec!["prepro", &text, "--out-dir", &sub],
            under(&d("afile"), "--out-dir", &sub, "made"),
        ),
        (
            vec!["convert", "--model", &hf, "--format", "hf", "--out", &sub],
            under(&d("afile"), "--out", &sub, "made"),
        ),
        (
            vec!["convert", "--model", &hf, "--out", &x],
            under(&d("afile"), "--out", &x, "written"),
        ),
        (
            vec!["tokenizer", "--out", &x],
            under(&d("afile"), "--out", &x, "written"),
        ),
        (
            vec!["verify", "--model", &model, "--state", &state, "--dump", &x],
            under(&d("afile"), "--dump", &x, "written"),
        ),
    ];
    for (args, want) in &cases {
        let (out, stdout, stderr) = run(bin().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("error: {want}\n"), "{args:?}");
        // (verify's check comes before its work, whose table would be on stdout)
        assert_eq!(stdout, "", "{args:?}");
    }
    // the folder itself a file, or a link to nothing
    let convert = ["convert", "--model", &hf, "--format", "hf", "--out"];
    let not_a_folder = format!(
        "--out {} is a file, not a folder: give a folder's name for the output files",
        d("afile")
    );
    expect_error(&[&convert[..], &[&d("afile")]].concat(), &[&not_a_folder]);
    // (before the model is read: a model that is not there is not what the error names)
    let missing = d("missing.bin");
    let args = ["convert", "--model", &missing, "--format", "hf", "--out"];
    expect_error(&[&args[..], &[&d("afile")]].concat(), &[&not_a_folder]);
    expect_error(
        &[&convert[..], &[&d("dangling/sub")]].concat(),
        &[&format!(
            "{} is a symbolic link to nowhere, which is not there, so --out {} cannot be made: \
             make that folder, or give another --out",
            d("dangling"),
            d("dangling/sub")
        )],
    );
    assert_eq!(std::fs::read(dir.join("afile")).unwrap(), b"kept");
    assert!(!dir.join("nowhere").exists());
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tmp_dir("bad");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();

    // flags out of bounds
    expect_error(
        &["--device", "cpu", "--batch", "0"],
        &["--batch and --seq must be at least 1"],
    );
    // a negative number is the flag's value, refused by its own check (clap took it for a flag)
    expect_error(
        &["--device", "cpu", "--lr", "-1"],
        &["--lr must be a positive number, got -1"],
    );
    expect_error(
        &["--device", "cpu", "--seq", "0"],
        &["--batch and --seq must be at least 1"],
    );
    expect_error(
        &["--device", "cpu", "--steps", "0"],
        &["--steps must be at least 1"],
    );
    // eval's range is the model's: B and T of 1 (and T = maxT) are read, 0 and maxT + 1 refused
    let model = fixture("ref_gpt2vocab_model.bin"); // maxT = 8
    let eval = [
        "eval",
        "--device",
        "cpu",
        "--model",
        &model,
        "--batches",
        "1",
    ];
    for (b, t) in [("0", "4"), ("1", "0"), ("1", "9")] {
        let want = format!(
            "--batch must be at least 1 and --seq in 1..=8 (the model's maxT); got B={b}, T={t}"
        );
        expect_error(&[&eval[..], &["--batch", b, "--seq", t]].concat(), &[&want]);
    }
    for t in ["1", "8"] {
        let (out, stdout, stderr) = run(bin().args(eval).args(["--batch", "1", "--seq", t]));
        assert!(out.status.success(), "T={t}: {stdout}\n{stderr}");
    }
    // so is sample's --window: 1 and maxT sample, 0 and maxT + 1 are refused
    let sample = [
        "sample", "--device", "cpu", "--model", &model, "--tokens", "3",
    ];
    for w in ["0", "9"] {
        let want = format!("--window must be in 1..=8 (the model's maxT), got {w}");
        expect_error(&[&sample[..], &["--window", w]].concat(), &[&want]);
    }
    for w in ["1", "8"] {
        let (out, stdout, stderr) = run(bin().args(sample).args(["--window", w]));
        assert!(out.status.success(), "window {w}: {stdout}\n{stderr}");
    }
    expect_error(
        &["--device", "cpu", "--lr=-1"],
        &["--lr must be a positive number"],
    );
    // (as typed, not 30 digits)
    expect_error(
        &["--device", "cpu", "--lr=-1e-30"],
        &["--lr must be a positive number, got -1e-30\n"],
    );
    expect_error(
        &["--device", "cpu", "--model", "d1", "--seq", "2000"],
        &["T=2000 exceeds the model's maximum sequence length maxT=1024"],
    );
    expect_error(
        &["--device", "cpu", "--model", "d0"],
        &["unknown model descriptor 'd0'"],
    );
    expect_error(
        &["--device", "cpu", "--kernels", "fused", "--steps", "1"],
        &["the CPU engine has one path"],
    );
    expect_error(
        &["--device", "cpu", "--classifier-chunk", "2", "--steps", "1"],
        &["--classifier-chunk splits the CUDA engine's classifier"],
    );
    expect_error(
        &["--device", "cpu", "--keep-every", "0"],
        &["--keep-every must be at least 1 step"],
    );
    // a batch larger than the machine's memory: an error before anything is allocated (not the
    // allocator's abort, exit status 134); d1's activations at B x T = 100000 x 64 are 4.75 TiB
    // for the forward and as much for the backward
    expect_error(
        &["--device", "cpu", "--model", "d1", "--batch", "100000"],
        &[
            "not enough memory: the model (L=1, C=64, 3.3M parameters, fp32, on the CPU) at \
             B=100000, T=64 needs 4864.93 GiB (parameters, gradients and AdamW state 50.9 MiB, \
             activations and their gradients 4864.84 GiB), the machine has ",
            "use a smaller batch (-b) or sequence length (-t)",
        ],
    );
    // a model whose parameters and AdamW state alone do not fit (d96: 43.6B parameters, 16 bytes
    // each): refused before its weights are drawn (which would take hours), a smaller batch
    // not suggested
    expect_error(
        &[
            "--device", "cpu", "--model", "d96", "--batch", "1", "--seq", "8",
        ],
        &[
            // 43809.6M parameters x 16 bytes
            "the parameters and their gradients and AdamW state alone take 652.81 GiB, whatever \
             the batch: use a smaller model",
        ],
    );
    // and one whose activations overflow the address space (not a panic, exit status 101)
    expect_error(
        &["--device", "cpu", "--model", "d1", "--batch", "1000000000000000"],
        &["the activations of B=1000000000000000, T=64 do not fit in this machine's address space"],
    );
    // the same check comes first for a new model too large for the machine in any case (d96):
    // before its footprint is added up, and before its weights are drawn
    expect_error(
        &[
            "--device",
            "cpu",
            "--model",
            "d96",
            "--batch",
            "1000000000000000",
            "--seq",
            "8",
        ],
        &["the activations of B=1000000000000000, T=8 do not fit in this machine's address space"],
    );
    expect_error(
        &["--device", "cpu", "--classifier-chunk", "0"],
        &["--classifier-chunk must be at least 1 sequence"],
    );
    // verify on the CPU alone (its default) with a flag for the GPU's kernels
    let (model, state) = (fixture("ref_tiny_model.bin"), fixture("ref_tiny_state.bin"));
    for (flag, value, message) in [
        ("--kernels", "plain", "--kernels chooses the GPU's kernels"),
        (
            "--recompute",
            "gelu",
            "--recompute changes the GPU's backward pass: it needs --device cuda or both (the \
             CPU keeps every activation, so it would pass without checking the recomputation)",
        ),
    ] {
        expect_error(
            &["verify", "--model", &model, "--state", &state, flag, value],
            &[message],
        );
    }

    // a missing checkpoint, one with a wrong magic number, a truncated one
    expect_error(
        &["--device", "cpu", "--model", &d("none.bin")],
        &["none.bin"],
    );
    let good = std::fs::read(fixture("ref_tiny_model.bin")).unwrap();
    let mut wrong_magic = good.clone();
    wrong_magic[0] ^= 1;
    write(&dir.join("magic.bin"), &wrong_magic);
    expect_error(
        &["--device", "cpu", "--model", &d("magic.bin")],
        &["magic.bin", "magic"],
    );
    write(&dir.join("short.bin"), &good[..good.len() - 8]);
    expect_error(
        &["--device", "cpu", "--model", &d("short.bin")],
        &["short.bin", "truncated"],
    );
    let mut wrong_version = good.clone();
    wrong_version[4] = 9;
    write(&dir.join("version.bin"), &wrong_version);
    expect_error(
        &["--device", "cpu", "--model", &d("version.bin")],
        &["version.bin", "version 9"],
    );

    // data: no shard matches, a shard too short, a token id out of range for the model
    expect_error(
        &[
            "--device",
            "cpu",
            "--model",
            "d1",
            "--train",
            &d("nothing_*.bin"),
        ],
        &["nothing_*.bin"],
    );
    train_gpt2_cuda::formats::shard::write_shard(&dir.join("short_shard.bin"), &[1, 2, 3, 4, 5])
        .unwrap();
    expect_error(
        &[
            "--device",
            "cpu",
            "--model",
            "d1",
            "--batch",
            "2",
            "--seq",
            "8",
            "--train",
            &d("short_shard.bin"),
        ],
        &["short_shard.bin", "17"],
    );
    let tokens: Vec<u32> = (0..100).map(|i| if i == 37 { 60000 } else { i }).collect();
    train_gpt2_cuda::formats::shard::write_shard(&dir.join("oob.bin"), &tokens).unwrap();
    expect_error(
        &[
            "--device",
            "cpu",
            "--model",
            "d1",
            "--batch",
            "1",
            "--seq",
            "8",
            "--train",
            &d("oob.bin"),
        ],
        &["oob.bin", "60000", "50257"],
    );

    // verify and sample with missing files
    expect_error(
        &[
            "verify",
            "--model",
            &fixture("ref_tiny_model.bin"),
            "--state",
            &d("nostate.bin"),
        ],
        &["nostate.bin"],
    );
    expect_error(&["sample", "--model", &d("none.bin")], &["none.bin"]);
    for (flag, value, message) in [
        (
            "--temperature",
            "0",
            "--temperature must be a finite number above 0",
        ),
        ("--top-p", "1.5", "--top-p must be in (0, 1], got 1.5"),
        ("--top-p", "0", "--top-p must be in (0, 1], got 0"),
    ] {
        let model = fixture("ref_tiny_model.bin");
        let args = ["sample", "--device", "cpu", "--model", &model, flag, value];
        expect_error(&args, &[message]);
    }
    // the tiny fixture's vocabulary is not GPT-2's: its samples cannot be decoded
    expect_error(
        &[
            "sample",
            "--device",
            "cpu",
            "--model",
            &fixture("ref_tiny_model.bin"),
        ],
        &["vocabulary has 64 tokens"],
    );
    // prepro of a missing file
    expect_error(
        &[
            "prepro",
            &d("missing.txt"),
            &d("missing2.txt"),
            "--out-dir",
            &d("pp"),
        ],
        &["missing.txt", "cannot read"],
    );
    // a missing file or a folder is named as one, before the split counts the files
    expect_error(
        &["prepro", &d("missing.txt"), "--out-dir", &d("pp")],
        &["missing.txt: cannot read: No such file"],
    );
    expect_error(
        &["prepro", dir.to_str().unwrap(), "--out-dir", &d("pp")],
        &["is a directory: prepro takes text files", "/*.txt"],
    );
    write(&dir.join("one.txt"), b"one");
    expect_error(
        &["prepro", &d("one.txt"), "--out-dir", &d("pp")],
        &[
            "train and val must both get at least one file",
            "--val-fraction 0.1",
        ],
    );
}

#[test]
fn out_must_name_a_file_and_may_be_a_device_or_a_link() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tmp_dir("out_file");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let model = fixture("ref_tiny_model.bin");
    for out in [d("sub"), d("sub/"), d(".")] {
        expect_error(
            &["tokenizer", "--out", &out],
            &["is a directory: --out takes a file name"],
        );
        expect_error(
            &["convert", "--model", &model, "--out", &out],
            &["is a directory: --out takes a file name"],
        );
    }
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["sub"], "a temporary file was left");
    assert_eq!(std::fs::read_dir(dir.join("sub")).unwrap().count(), 0);
    // /dev/null stays the device
    for args in [
        &["tokenizer", "--out", "/dev/null"][..],
        &["convert", "--model", &model, "--out", "/dev/null"][..],
    ] {
        let (out, stdout, stderr) = run(bin().args(args));
        assert!(out.status.success(), "{args:?}: {stdout} {stderr}");
    }
    let null = std::fs::metadata("/dev/null").unwrap();
    assert!(null.file_type().is_char_device());
    // a link stays a link to the file written
    std::os::unix::fs::symlink("real.bin", dir.join("link.bin")).unwrap();
    let (out, _, stderr) = run(bin().args(["tokenizer", "--out", &d("link.bin")]));
    assert!(out.status.success(), "{stderr}");
    let link = std::fs::symlink_metadata(dir.join("link.bin")).unwrap();
    assert!(link.file_type().is_symlink());
    let f = train_gpt2_cuda::formats::tokenizer_file::read_tokenizer_file(&dir.join("real.bin"));
    assert_eq!(f.unwrap().tokens.len(), 50257);
    // links that lead to each other lead to no file: named as such, and left as they were
    std::os::unix::fs::symlink("loop_b.bin", dir.join("loop_a.bin")).unwrap();
    std::os::unix::fs::symlink("loop_a.bin", dir.join("loop_b.bin")).unwrap();
    expect_error(
        &["tokenizer", "--out", &d("loop_a.bin")],
        &[&format!(
            "{}: too many levels of symbolic links",
            d("loop_a.bin")
        )],
    );
    for (link, to) in [("loop_a.bin", "loop_b.bin"), ("loop_b.bin", "loop_a.bin")] {
        assert_eq!(std::fs::read_link(dir.join(link)).unwrap(), Path::new(to));
    }
    // convert --out its own --model
    std::fs::copy(&model, dir.join("same.bin")).unwrap();
    let same = d("same.bin");
    expect_error(
        &["convert", "--model", &same, "--out", &same],
        &["would overwrite the model being converted"],
    );
    assert_eq!(
        std::fs::read(&same).unwrap(),
        std::fs::read(&model).unwrap()
    );
}

/// An output (`convert --out`, `tokenizer --out`, `verify --dump`) replaces an existing file only
/// where it holds the kind written (or nothing): a typo such as `--out out/state_000001.bin`
/// would otherwise destroy the state a `--resume` needs. A file of another kind is refused before
/// any work, named with what it holds, and left byte for byte as it was.
#[test]
fn an_output_does_not_replace_a_file_of_another_kind() {
    let dir = tmp_dir("other-kind");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --model d1 --batch 1 --seq 8 --steps 1 --sample-tokens 0 --out-dir",
        ))
        .arg(d("run")));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    write(&dir.join("notes.txt"), b"my notes\n");
    let (model, state, notes) = (
        d("run/model_000001.bin"),
        d("run/state_000001.bin"),
        d("notes.txt"),
    );
    let before: Vec<Vec<u8>> = [&model, &state, &notes]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let (tiny, tiny_state) = (fixture("ref_tiny_model.bin"), fixture("ref_tiny_state.bin"));
    let verify = [
        "verify",
        "--device",
        "cpu",
        "--model",
        &tiny,
        "--state",
        &tiny_state,
    ];
    let a_state = "a training state (for --resume)";
    for (args, flag, victim, holds, writes) in [
        (
            &["convert", "--model", &model, "--out", &state][..],
            "--out",
            &state,
            a_state,
            "a model checkpoint",
        ),
        (
            &["convert", "--model", &model, "--out", &notes][..],
            "--out",
            &notes,
            "text",
            "a model checkpoint",
        ),
        (
            &["tokenizer", "--out", &model][..],
            "--out",
            &model,
            "a model checkpoint",
            "a tokenizer file",
        ),
        (
            &[&verify[..], &["--dump", &state]].concat()[..],
            "--dump",
            &state,
            a_state,
            "a debug state",
        ),
    ] {
        let (out, stdout, stderr) = run(bin().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}\n{stderr}");
        let want = format!(
            "{flag} {victim} holds {holds}, not {writes}: it is not replaced; remove it first, or \
             give another {flag}"
        );
        assert!(stderr.contains(&want), "{args:?}: {stderr}");
        assert!(
            stdout.is_empty(),
            "{args:?}: work before the refusal: {stdout}"
        );
    }
    for (path, bytes) in [&model, &state, &notes].iter().zip(&before) {
        assert!(&std::fs::read(path).unwrap() == bytes, "{path} changed");
    }
    // an empty file is replaced, and so is one of the kind written
    write(&dir.join("empty.bin"), b"");
    for _ in 0..2 {
        let (out, stdout, stderr) = run(bin().args(["tokenizer", "--out", &d("empty.bin")]));
        assert!(out.status.success(), "{stdout}\n{stderr}");
    }
    let f = train_gpt2_cuda::formats::tokenizer_file::read_tokenizer_file(&dir.join("empty.bin"));
    assert_eq!(f.unwrap().tokens.len(), 50257);
}

/// `--out /dev/stdout` and `--dump /dev/stdout` where stdout is a pipe (`| wc -c`; `output()`
/// pipes it too): the file's bytes come through the pipe, and nothing else (what the command
/// says goes to stderr). (The path's links end in `/proc`'s `pipe:[N]`, which names no file:
/// writing there failed with "No such file or directory"; then the "wrote" line, and verify's
/// table, came through the pipe too.)
#[test]
fn an_output_to_dev_stdout_goes_through_a_pipe() {
    let dir = tmp_dir("dev-stdout");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let tiny = fixture("ref_tiny_model.bin");
    let verify = [
        "verify",
        "--device",
        "cpu",
        "--model",
        &tiny,
        "--state",
        &fixture("ref_tiny_state.bin"),
        "--dump",
    ];
    for (args, file) in [
        (&["tokenizer", "--out"][..], "tok.bin"),
        (&["convert", "--model", &tiny, "--out"][..], "model.bin"),
        (&verify[..], "dump.bin"),
    ] {
        let (out, _, stderr) = run(bin().args(args).arg(d(file)));
        assert!(out.status.success(), "{args:?}: {stderr}");
        let want = std::fs::read(dir.join(file)).unwrap();
        let out = bin().args(args).arg("/dev/stdout").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?} /dev/stdout: {stderr}");
        assert!(
            out.stdout == want,
            "{args:?} /dev/stdout: the {} bytes of {file}, and nothing else, did not come \
             through the pipe ({} bytes did): {stderr}",
            want.len(),
            out.stdout.len()
        );
        assert!(stderr.contains("wrote /dev/stdout"), "{args:?}: {stderr}");
    }
}

/// A small file of another kind (a run's log, shorter than a header) where a model, a training
/// state, a debug state or a token shard is read is named by its magic number, as a larger one
/// is, not as a truncated file; a Hugging Face model's `config.json` points to its folder.
#[test]
fn a_small_file_of_another_kind_is_not_called_truncated() {
    let dir = tmp_dir("small-other-kind");
    let log = dir.join("log.jsonl");
    write(
        &log,
        "{\"step\": 1, \"loss\": 10.98}\n".repeat(20).as_bytes(),
    );
    let log = log.to_string_lossy().into_owned();
    let tiny = fixture("ref_tiny_model.bin");
    let hf = fixture("hf_tiny");
    let config = format!("{hf}/config.json");
    let x = dir.join("x.bin").to_string_lossy().into_owned();
    for (args, want) in [
        (
            &["sample", "--model", &log][..],
            "20240326 for a model checkpoint",
        ),
        (
            &["eval", "--model", &tiny, "--data", &log][..],
            "20240520 for a token shard",
        ),
        (
            &["verify", "--model", &tiny, "--state", &log][..],
            "20240327 for a debug state",
        ),
        (
            &["--device", "cpu", "--resume", &log][..],
            "20261202 for a training state",
        ),
        (
            &["convert", "--model", &config, "--out", &x][..],
            "20240326 for a model checkpoint",
        ),
    ] {
        let (out, _, stderr) = run(bin().args(args));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(": bad magic number "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("(expected {want})")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("truncated"), "{args:?}: {stderr}");
    }
    expect_error(
        &["convert", "--model", &config, "--out", &x],
        &[&format!(
            "this is a file of the Hugging Face model in {hf}, which is read from its folder: give \
             the folder instead (--model {hf})"
        )],
    );
    assert!(!dir.join("x.bin").exists());
}

/// Ctrl-C during prepro: it stops, removes the shards it wrote, and exits 130.
/// prepro's notes on what does nothing: a --text-field for text files only, an empty text file
/// (its document is the end-of-text token alone).
#[test]
fn prepro_notes_a_flag_and_a_file_that_add_nothing() {
    let dir = tmp_dir("prepro_notes");
    std::fs::write(dir.join("a.txt"), "to be").unwrap();
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let (out, _, stderr) = run(bin().current_dir(&dir).args([
        "prepro",
        "a.txt",
        "empty.txt",
        "--text-field",
        "body",
        "--out-dir",
        "o",
    ]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "note: --text-field body does nothing here: it names the field of JSON Lines records \
             and the column of Parquet files, and these inputs are text files"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("note: empty.txt is empty: its document is the end-of-text token alone"),
        "{stderr}"
    );
    // no notes where the flag reads a field and no file is empty
    std::fs::write(dir.join("r.jsonl"), "{\"body\": \"x\"}\n").unwrap();
    let (out, _, stderr) = run(bin().current_dir(&dir).args([
        "prepro",
        "a.txt",
        "r.jsonl",
        "--text-field",
        "body",
        "--out-dir",
        "o",
    ]));
    assert!(out.status.success() && !stderr.contains("note"), "{stderr}");
}

#[test]
fn prepro_interrupted_leaves_the_folder_as_it_was() {
    let dir = tmp_dir("prepro_ctrl_c");
    let plays = root().join("data/shakespeare");
    // a corpus of the plays several times over, in shards of 100 tokens: thousands of shards,
    // written long after the first
    let mut inputs = Vec::new();
    for copy in 0..6 {
        for entry in std::fs::read_dir(&plays).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "txt") {
                let to = dir.join(format!(
                    "{copy}_{}",
                    path.file_name().unwrap().to_string_lossy()
                ));
                std::fs::copy(&path, &to).unwrap();
                inputs.push(to);
            }
        }
    }
    interrupt_prepro(&inputs, &["--shard-tokens", "100"], &dir.join("out"));
    // one document (a play) in shards of one token, split by tokens: tens of thousands of shards
    // from a single document, which prepro went on writing and naming after the interrupt, then
    // exited 0
    let play = std::fs::read_dir(&plays)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "txt"))
        .unwrap();
    let one_token = ["--shard-tokens", "1", "--val-fraction", "0.1"];
    interrupt_prepro(&[play], &one_token, &dir.join("out1"));
}

/// Runs prepro of `inputs` with `flags` into `out` (not there yet), sends it SIGINT once it has
/// written a shard, and checks that it stops with 130 and removes `out`.
fn interrupt_prepro(inputs: &[PathBuf], flags: &[&str], out: &Path) {
    let mut child = bin()
        .arg("prepro")
        .args(inputs)
        .args(flags)
        .arg("--out-dir")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = |out: &Path| {
        std::fs::read_dir(out).is_ok_and(|mut d| {
            d.any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
            })
        })
    };
    while !partial(out) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "prepro ended before writing a shard"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(kill.unwrap().success());
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{flags:?}: {stderr}");
    assert!(stderr.contains("interrupted (Ctrl-C)"), "{stderr}");
    // (the folder was not there before: prepro made it, and removes it)
    let left: Vec<_> = std::fs::read_dir(out)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty() && !out.exists(), "left behind: {left:?}");
}

/// A prepro that fails (a bad record in its last file) removes the folder it made, and leaves
/// one that was there before it, even an empty one, as it was.
#[test]
fn a_failed_prepro_removes_only_the_folder_it_made() {
    let dir = tmp_dir("prepro_failed");
    write(&dir.join("a.txt"), b"Hello world");
    write(
        &dir.join("bad.jsonl"),
        b"{\"text\": \"ok\"}\n{\"text\": 5}\n",
    );
    for there in [false, true] {
        let out_dir = dir.join(format!("out-{there}"));
        if there {
            std::fs::create_dir(&out_dir).unwrap();
        }
        let (out, stdout, stderr) = run(bin()
            .arg("prepro")
            .arg(dir.join("a.txt"))
            .arg(dir.join("bad.jsonl"))
            .arg("--out-dir")
            .arg(&out_dir));
        assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
        assert!(stderr.contains("bad.jsonl: line 2"), "{stderr}");
        assert_eq!(out_dir.is_dir(), there, "{}", out_dir.display());
        if there {
            let left = names_in(&out_dir);
            assert!(left.is_empty(), "{left:?}");
        }
    }
}

#[test]
fn prepro_tokenizes_text_files_into_shards() {
    let dir = tmp_dir("prepro");
    write(&dir.join("a.txt"), b"Hello world");
    write(&dir.join("b.txt"), b" the end");
    let (out, stdout, stderr) = run(bin().args([
        "prepro",
        dir.join("a.txt").to_str().unwrap(),
        dir.join("b.txt").to_str().unwrap(),
        "--out-dir",
        dir.join("out").to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{stdout} {stderr}");
    let train = train_gpt2_cuda::formats::shard::read_shard(&dir.join("out/train.bin")).unwrap();
    let val = train_gpt2_cuda::formats::shard::read_shard(&dir.join("out/val.bin")).unwrap();
    // EOT before each document; "Hello world" = [15496, 995]; " the end" = [262, 886]
    assert_eq!(train, vec![50256, 15496, 995]);
    assert_eq!(val, vec![50256, 262, 886]);
    // (one shard each: their names are the defaults, nothing to say)
    assert!(!stdout.contains("train on them with"), "{stdout}");
    // --val-files 2: the last two files are val; all three, none left for train, are refused
    write(&dir.join("c.txt"), b"Hello world");
    let abc = ["a.txt", "b.txt", "c.txt"].map(|f| dir.join(f));
    let (out, stdout, stderr) = run(bin()
        .arg("prepro")
        .args(&abc)
        .args(["--val-files", "2", "--out-dir"])
        .arg(dir.join("out2")));
    assert!(out.status.success(), "{stdout} {stderr}");
    let train = train_gpt2_cuda::formats::shard::read_shard(&dir.join("out2/train.bin")).unwrap();
    let val = train_gpt2_cuda::formats::shard::read_shard(&dir.join("out2/val.bin")).unwrap();
    assert_eq!(train, vec![50256, 15496, 995]);
    assert_eq!(val, vec![50256, 262, 886, 50256, 15496, 995]);
    let abc = abc.map(|p| p.to_string_lossy().into_owned());
    expect_error(
        &[
            "prepro",
            &abc[0],
            &abc[1],
            &abc[2],
            "--val-files",
            "3",
            "--out-dir",
            dir.join("out3").to_str().unwrap(),
        ],
        &["prepro: cannot put the last 3 of 3 input files in val"],
    );

    // in shards of 2 tokens: numbered shards, and the patterns to train on them
    let (a, b, out_dir) = (dir.join("a.txt"), dir.join("b.txt"), dir.join("out"));
    let args = format!(
        "prepro {} {} --out-dir {} --shard-tokens 2",
        a.display(),
        b.display(),
        out_dir.display()
    );
    let (out, stdout, stderr) = run(bin().args(args.split(' ')));
    assert!(out.status.success(), "{stdout} {stderr}");
    let hint = format!(
        "--train '{0}/train_??????.bin' --val '{0}/val_??????.bin'",
        out_dir.display()
    );
    assert!(stdout.contains(&hint), "{stdout}");
    assert!(!out_dir.join("train.bin").exists());
    let shard = train_gpt2_cuda::formats::shard::read_shard(&out_dir.join("train_000001.bin"));
    assert_eq!(shard.unwrap(), vec![995]);
    // each shard's own count: the full one's, then the last one's
    for (name, count) in [
        ("train_000000.bin", "2 tokens"),
        ("train_000001.bin", "1 token"),
    ] {
        let wrote = format!("prepro: wrote {} ({count})\n", out_dir.join(name).display());
        assert!(stdout.contains(&wrote), "{wrote}: {stdout}");
    }
    // numbered shards on one side only (6 tokens in shards of 3, beside 3): its pattern, the
    // other's file
    write(&dir.join("long.txt"), b"Hello world, hello world");
    for (inputs, train, val) in [
        (["long.txt", "b.txt"], "train_??????.bin", "val.bin"),
        (["b.txt", "long.txt"], "train.bin", "val_??????.bin"),
    ] {
        let out_dir = dir.join(format!("out-{}", inputs[0]));
        let (out, stdout, stderr) = run(bin()
            .arg("prepro")
            .args(inputs.map(|f| dir.join(f)))
            .args(["--shard-tokens", "3", "--out-dir"])
            .arg(&out_dir));
        assert!(out.status.success(), "{stdout} {stderr}");
        let hint = format!(
            "train on them with --train '{0}/{train}' --val '{0}/{val}'\n",
            out_dir.display()
        );
        assert!(stdout.ends_with(&hint), "{stdout}");
    }

    // JSON Lines: a document per record, from the field --text-field names
    let jsonl = dir.join("c.jsonl");
    write(
        &jsonl,
        b"{\"body\": \"Hello world\"}\n{\"body\": \" the end\"}\n",
    );
    let args = format!(
        "prepro {} --out-dir {} --val-fraction 0.5 --text-field body",
        jsonl.display(),
        out_dir.display()
    );
    let (out, stdout, stderr) = run(bin().args(args.split(' ')));
    assert!(out.status.success(), "{stdout} {stderr}");
    assert!(
        stdout.contains("c.jsonl: 2 documents, 45 bytes -> 6 tokens"),
        "{stdout}"
    );
    let val = train_gpt2_cuda::formats::shard::read_shard(&out_dir.join("val.bin"));
    assert_eq!(val.unwrap(), vec![50256, 262, 886]);
    // without it, the record's fields are named
    let args = format!(
        "prepro {} --out-dir {} --val-fraction 0.5",
        jsonl.display(),
        out_dir.display()
    );
    let (out, _, stderr) = run(bin().args(args.split(' ')));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("c.jsonl: line 1: no \"text\" field (the record's fields: body)"),
        "{stderr}"
    );

    // Parquet: each file's line says how many rows of null text it skipped, if any
    let parquet = root().join("tests/fixtures/parquet");
    let args = format!(
        "prepro {} {} --out-dir {} --val-fraction 0.5",
        parquet.join("nulls_gzip_groups.parquet").display(),
        parquet.join("columns.parquet").display(),
        out_dir.display()
    );
    let (out, stdout, stderr) = run(bin().args(args.split(' ')));
    assert!(out.status.success(), "{stdout} {stderr}");
    for line in [
        "nulls_gzip_groups.parquet: 33 documents (7 rows of null text skipped), ",
        "columns.parquet: 40 documents, ",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
}

/// `--device cpu --model MODEL --hellaswag DATA`.
fn cpu_hellaswag<'a>(model: &'a str, data: &'a str) -> [&'a str; 6] {
    ["--device", "cpu", "--model", model, "--hellaswag", data]
}

/// A HellaSwag eval whose loss is not finite on some examples (a model whose final layernorm
/// overflows: its weights and biases 3e38) prints the accuracies with those counted wrong, then
/// fails: on one example as on all.
#[test]
fn eval_hellaswag_fails_where_the_loss_is_not_finite() {
    let dir = tmp_dir("hellaswag-overflow");
    let mut bytes = std::fs::read(root().join("tests/fixtures/ref_gpt2vocab_model.bin")).unwrap();
    // the last parameters are lnfw's and lnfb's: C = 8 each
    let n = bytes.len();
    for p in bytes[n - 2 * 8 * 4..].chunks_exact_mut(4) {
        p.copy_from_slice(&3e38f32.to_le_bytes());
    }
    let model = dir.join("overflow.bin");
    write(&model, &bytes);
    let (model, data) = (model.to_string_lossy(), fixture("hellaswag_tiny.jsonl"));
    for (k, examples) in [("1", "1 example"), ("5", "5 examples")] {
        let (out, stdout, stderr) = run(bin()
            .arg("eval")
            .args(cpu_hellaswag(&model, &data))
            .args(["--examples", k]));
        assert_eq!(out.status.code(), Some(1), "{k}: {stdout}\n{stderr}");
        let line = format!(
            "hellaswag: acc_norm 0.0000 (0/{k}), acc 0.0000 (0/{k}) ({k} of {examples} with a \
             loss that is not finite, counted wrong)\n"
        );
        assert!(stdout.ends_with(&line), "{k}: {stdout}");
        let error = format!(
            "error: the model's loss was not finite (NaN or inf) on {k} of {examples}: the \
             accuracies count them as wrong\n"
        );
        assert_eq!(stderr, error, "{k}");
    }
}

#[test]
fn eval_hellaswag_prints_the_accuracies() {
    // tests/hellaswag.rs checks these scores against transformers: acc_norm 1/5, acc 3/5
    let model = fixture("ref_gpt2vocab_model.bin");
    let data = fixture("hellaswag_tiny.jsonl");
    let args = [&["eval"][..], &cpu_hellaswag(&model, &data)].concat();
    for (extra, want) in [
        (
            &[][..],
            "hellaswag: acc_norm 0.2000 (1/5), acc 0.6000 (3/5)",
        ),
        (
            &["--batch", "8"][..],
            "hellaswag: acc_norm 0.2000 (1/5), acc 0.6000 (3/5)",
        ),
        (
            &["--examples", "2"][..],
            "hellaswag: acc_norm 0.5000 (1/2), acc 1.0000 (2/2)",
        ),
        // all of the file's 5, asked for
        (
            &["--examples", "5"][..],
            "hellaswag: acc_norm 0.2000 (1/5), acc 0.6000 (3/5)",
        ),
        // a batch beyond the examples is theirs: 5 examples, 20 rows (2^64 - 4 rows overflowed
        // the activations' sizes)
        (
            &["--batch", "18446744073709551612"][..],
            "5 examples a forward (batches of 20x8)",
        ),
    ] {
        let (out, stdout, stderr) = run(bin().args(&args).args(extra));
        assert!(out.status.success(), "{stdout} {stderr}");
        assert!(stdout.contains(want), "{extra:?}: {stdout}");
    }
    expect_error(
        &[&args[..], &["--batch", "6"]].concat(),
        &["with --hellaswag, --batch must be a positive multiple of 4 (each example is 4 sequences, one per ending); got 6"],
    );
    expect_error(
        &[&args[..], &["--examples", "6"]].concat(),
        &["hellaswag_tiny.jsonl: 6 examples asked for, of the file's 5: ask for 1 to 5"],
    );
    // --examples without --hellaswag is a usage error, also beside the flags of a loss eval
    // (which clap alone let through: the examples went unused)
    for extra in [&[][..], &["--batches", "1"], &["--seq", "16"]] {
        let loss = [
            "eval",
            "--device",
            "cpu",
            "--model",
            &model,
            "--examples",
            "3",
        ];
        let (out, _, stderr) = run(bin().args(loss).args(extra));
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("--hellaswag <HELLASWAG>"),
            "{extra:?}: {stderr}"
        );
    }
    let tiny = fixture("ref_tiny_model.bin");
    expect_error(
        &[
            "eval",
            "--device",
            "cpu",
            "--model",
            &tiny,
            "--hellaswag",
            &data,
        ],
        &["HellaSwag is tokenized with GPT-2's vocabulary (V = 50257); this model has V = "],
    );
    expect_error(
        &[
            "eval",
            "--device",
            "cpu",
            "--model",
            &model,
            "--hellaswag",
            "/nonexistent.jsonl",
        ],
        &["/nonexistent.jsonl: cannot read"],
    );
}

#[test]
fn training_reports_hellaswag_at_each_validation() {
    let dir = tmp_dir("train-hellaswag");
    let out_dir = dir.join("out");
    let model = fixture("ref_gpt2vocab_model.bin");
    let data = fixture("hellaswag_tiny.jsonl");
    let args = [
        &cpu_hellaswag(&model, &data)[..],
        &[
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--sample-tokens",
            "0",
        ][..],
    ]
    .concat();
    let train = [
        "--batch",
        "4",
        "--seq",
        "8",
        "--steps",
        "2",
        "--val-every",
        "1",
        "--lr",
        "0.1",
    ];
    let (out, stdout, stderr) = run(bin().args(&args).args(train));
    assert!(out.status.success(), "{stdout} {stderr}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("hellaswag acc_norm "))
        .collect();
    // before steps 1 and 2, and at the end
    assert_eq!(lines.len(), 3, "{stdout}");
    // the untrained model: transformers' acc_norm (tests/hellaswag.rs)
    assert_eq!(lines[0], "hellaswag acc_norm 0.2000 (1/5)");
    // and the run's log.jsonl has them beside the validation losses
    let logged: Vec<String> = run_log(&out_dir)
        .iter()
        .filter_map(|r| r.get("hellaswag_acc_norm"))
        .map(|a| format!("hellaswag acc_norm {:.4}", a.as_f64().unwrap()))
        .collect();
    let printed: Vec<&str> = lines.iter().map(|l| &l[..l.find(" (").unwrap()]).collect();
    assert_eq!(logged, printed);
    // the end: what eval finds on the checkpoint
    let ckpt = out_dir.join("model_000002.bin");
    let (out, eval, stderr) = run(bin().args([
        "eval",
        "--device",
        "cpu",
        "--model",
        ckpt.to_str().unwrap(),
        "--hellaswag",
        &data,
    ]));
    assert!(out.status.success(), "{eval} {stderr}");
    let acc = lines[2].strip_prefix("hellaswag ").unwrap();
    assert!(
        eval.contains(&format!("hellaswag: {acc}, acc ")),
        "{acc} vs {eval}"
    );
    // and HellaSwag's forwards between the steps changed nothing: the run without it trains to
    // the same checkpoint, bit for bit
    let plain_dir = dir.join("plain");
    let plain = [
        "--device",
        "cpu",
        "--model",
        &model,
        "--out-dir",
        plain_dir.to_str().unwrap(),
        "--sample-tokens",
        "0",
    ];
    let (out, stdout, stderr) = run(bin().args(plain).args(train));
    assert!(out.status.success(), "{stdout} {stderr}");
    assert!(!stdout.contains("hellaswag acc_norm"), "{stdout}");
    assert_same_files(
        &out_dir,
        &plain_dir,
        &["model_000002.bin", "state_000002.bin"],
        "the runs with and without --hellaswag",
    );

    expect_error(
        &[&args[..], &["--batch", "2", "--seq", "8"]].concat(),
        &["--hellaswag needs --batch of at least 4 (an example is 4 sequences), got 2"],
    );
    expect_error(
        &[&args[..], &["--batch", "4", "--seq", "6"]].concat(),
        &["--hellaswag: ", "hellaswag_tiny.jsonl: HellaSwag example 1 has a row of 7 tokens (context and ending), more than --seq = 6"],
    );
}

/// A run's `--hellaswag-examples N` scores the file's first N examples at each validation (2 of
/// hellaswag_tiny's 5: the untrained model's acc_norm is eval's for `--examples 2`), more than
/// the file holds is refused before the run, and the flag without `--hellaswag` is a usage error.
#[test]
fn training_s_hellaswag_examples_are_the_file_s_first() {
    let dir = tmp_dir("train-hellaswag-examples");
    let out_dir = dir.join("out");
    let model = fixture("ref_gpt2vocab_model.bin");
    let data = fixture("hellaswag_tiny.jsonl");
    let train = [
        "--batch",
        "4",
        "--seq",
        "8",
        "--steps",
        "1",
        "--sample-tokens",
        "0",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ];
    let args = [&cpu_hellaswag(&model, &data)[..], &train[..]].concat();
    let (out, stdout, stderr) = run(bin().args(&args).args(["--hellaswag-examples", "2"]));
    assert!(out.status.success(), "{stdout} {stderr}");
    let first = stdout
        .lines()
        .find(|l| l.starts_with("hellaswag acc_norm "));
    assert_eq!(first, Some("hellaswag acc_norm 0.5000 (1/2)"), "{stdout}");
    expect_error(
        &[&args[..], &["--hellaswag-examples", "6"]].concat(),
        &["hellaswag_tiny.jsonl: 6 examples asked for, of the file's 5: ask for 1 to 5"],
    );
    let plain = [&["--device", "cpu", "--model", &model][..], &train[..]].concat();
    let (out, _, stderr) = run(bin().args(&plain).args(["--hellaswag-examples", "2"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--hellaswag <FILE>"), "{stderr}");
}

/// The `key` ("lr", "loss") of each step of a run's log.jsonl.
fn log_values(dir: &Path, key: &str) -> Vec<f64> {
    run_log(dir)
        .iter()
        .filter_map(|r| r.get(key).and_then(|x| x.as_f64()))
        .collect()
}

/// llm.c's training flags, each against what it must equal: `--total-batch` (its `-d`) trains as
/// the same micro-batches through `--grad-accum`, bit for bit, and logs each step's loss as one
/// micro-batch of the same tokens does; `--lr-schedule` (its `-k`) gives the rates computed here
/// by hand; `--sample-every` (its `-s`) prints and logs what `sample` draws from that step's
/// checkpoint, and changes nothing else; `--overfit-batch` (its `-a 1`) trains as a corpus of
/// that one batch does; and their bad values are refused.
#[test]
fn llmc_training_flags() {
    let dir = tmp_dir("llmc-flags");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // the runs' flags at a batch of `b`: 2 but for one run (clap takes a flag once)
    let base_line = |b: usize| {
        format!(
            "--device cpu --model d1 --batch {b} --seq 16 --val-every 0 --val-batches 1 --seed 3"
        )
    };
    let base_2 = base_line(2); // (`flags` borrows from it)
    let base = flags(&base_2);
    // a run with `extra` into the folder `out`
    let train = |extra: &str, out: &str| {
        let (status, stdout, stderr) = run(bin()
            .args(&base)
            .args(flags(extra))
            .args(["--out-dir", &d(out)]));
        assert!(status.status.success(), "{extra}:\n{stdout}\n{stderr}");
        stdout
    };

    // --total-batch 64 at B x T = 2 x 16: two micro-batches a step
    train(
        "--lr 1e-2 --steps 3 --sample-tokens 0 --grad-accum 2",
        "accum",
    );
    let total = train(
        "--lr 1e-2 --steps 3 --sample-tokens 0 --total-batch 64",
        "total",
    );
    assert!(
        total.contains("3 steps of 64 tokens (2 micro-batches of 2x16)"),
        "{total}"
    );
    // and no progress line within a step: one comes only after 10 s of a step's micro-batches,
    // and d1's take milliseconds
    assert!(!total.contains(" micro-batches)"), "{total}");
    assert_same_files(
        &dir.join("accum"),
        &dir.join("total"),
        &["model_000003.bin", "state_000003.bin"],
        "--grad-accum 2 and --total-batch 64",
    );
    // a step's loss is its whole batch's: the mean over its micro-batches, as one micro-batch of
    // 4 x 16 (the same 64 tokens) gives it, to within rounding
    let (status, stdout, stderr) = run(bin()
        .args(flags(&base_line(4)))
        .args(flags("--lr 1e-2 --steps 3 --sample-tokens 0"))
        .args(["--out-dir", &d("whole")]));
    assert!(status.status.success(), "{stdout}\n{stderr}");
    let (accum, whole) = (
        log_values(&dir.join("accum"), "loss"),
        log_values(&dir.join("whole"), "loss"),
    );
    assert_eq!(accum.len(), 3, "{accum:?}");
    assert_eq!(whole.len(), 3, "{whole:?}");
    for (a, w) in accum.iter().zip(&whole) {
        assert!((a - w).abs() < 1e-5 * w, "{accum:?} {whole:?}");
    }

    // the schedules, by hand
    let schedule = |name: &str, extra: &str| {
        train(&format!("--sample-tokens 0 --lr 1e-3 {extra}"), name);
        log_values(&dir.join(name), "lr")
    };
    let near = |got: &[f64], want: &[f64]| {
        got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(g, w)| (g - w).abs() <= 1e-6 * w.abs() + 1e-12)
    };
    // linear: the peak after 1 warm-up step, then down by (1 - 0.2) / 4 of it a step
    let linear = schedule(
        "linear",
        "--steps 6 --warmup 1 --lr-schedule linear --lr-final-frac 0.2",
    );
    let want = [1e-3, 1e-3, 0.8e-3, 0.6e-3, 0.4e-3, 0.2e-3];
    assert!(near(&linear, &want), "{linear:?}");
    // wsd: 2 warm-up steps, the peak to step 7 (the last 3 of 10 steps decay), 1 - sqrt(k / 2)
    let wsd = schedule(
        "wsd",
        "--steps 10 --warmup 2 --lr-schedule wsd --lr-decay-frac 0.3 --lr-final-frac 0",
    );
    let want = [
        0.5e-3,
        1e-3,
        1e-3,
        1e-3,
        1e-3,
        1e-3,
        1e-3,
        1e-3,
        (1.0 - 0.5f64.sqrt()) * 1e-3,
        0.0,
    ];
    assert!(near(&wsd, &want), "{wsd:?}");
    let constant = schedule("constant", "--steps 3 --warmup 2 --lr-schedule constant");
    assert!(near(&constant, &[0.5e-3, 1e-3, 1e-3]), "{constant:?}");
    // the default stays the cosine: 1, its middle (1 + 0.1) / 2, 0.1
    let cosine = schedule("cosine", "--steps 3");
    assert!(near(&cosine, &[1e-3, 0.55e-3, 0.1e-3]), "{cosine:?}");

    // --sample-every 1: a sample after every step from the first (a_resumed_run_continues_exactly
    // has every 2nd), after step 2 what `sample` draws from that step's checkpoint; training as
    // without it
    let sampled = train(
        "--lr 1e-2 --steps 4 --sample-tokens 6 --sample-every 1 --checkpoint-every 2",
        "sampled",
    );
    let (out, drawn, stderr) = run(bin().args([
        "sample",
        "--device",
        "cpu",
        "--model",
        &d("sampled/model_000002.bin"),
        "--tokens",
        "6",
        "--top-k",
        "40",
        "--seed",
        "3",
        "--window",
        "16",
    ]));
    assert!(out.status.success(), "{stderr}");
    let after2 = sampled
        .split("sample after step 2 (6 tokens, top-k 40):\n---\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no sample after step 2:\n{sampled}"));
    assert!(
        after2.starts_with(&format!("{drawn}---\n")),
        "{drawn:?} vs {sampled}"
    );
    assert!(
        sampled.contains("sample after step 4 (6 tokens"),
        "{sampled}"
    );
    let logged: Vec<u64> = run_log(&dir.join("sampled"))
        .iter()
        .filter(|r| r.get("sample").is_some())
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(logged, [1, 2, 3, 4]);
    train(
        "--lr 1e-2 --steps 4 --sample-tokens 6 --checkpoint-every 2",
        "unsampled",
    );
    assert_same_files(
        &dir.join("sampled"),
        &dir.join("unsampled"),
        &["model_000004.bin", "state_000004.bin"],
        "the runs with and without --sample-every",
    );

    // --overfit-batch on the corpus trains as a corpus of its first batch alone (2 x 16 + 1
    // tokens, served again and again), and that batch's loss falls fast
    let first: Vec<u32> =
        train_gpt2_cuda::formats::shard::read_shard(&root().join("data/shakespeare/train.bin"))
            .unwrap()[..33]
            .iter()
            .map(|&x| x as u32)
            .collect();
    let one = dir.join("one_batch.bin");
    train_gpt2_cuda::formats::shard::write_shard(&one, &first).unwrap();
    let steps = "--lr 1e-2 --steps 8 --sample-tokens 0";
    let overfit = train(&format!("--overfit-batch {steps}"), "overfit");
    assert!(
        overfit.contains("8 steps of 32 tokens; overfitting the first batch"),
        "{overfit}"
    );
    let alone = train(&format!("--train {} {steps}", one.display()), "alone");
    assert_eq!(
        log_lines(&overfit, &["step "]),
        log_lines(&alone, &["step "])
    );
    assert_same_files(
        &dir.join("overfit"),
        &dir.join("alone"),
        &["model_000008.bin"],
        "--overfit-batch and a corpus of one batch",
    );
    let losses = log_values(&dir.join("overfit"), "loss");
    assert!(losses[7] < losses[0] - 3.0, "{losses:?}");
    // the batch was taken and the loader put back: the run's state has served no data, and a
    // resume says so
    let resumed = train(
        &format!(
            "--overfit-batch --lr 1e-2 --steps 9 --sample-tokens 0 --resume {}",
            d("overfit/state_000008.bin")
        ),
        "overfit",
    );
    assert!(
        resumed.contains("at step 8 (0 batches of the training data served)"),
        "{resumed}"
    );

    for (extra, needle) in [
        (
            "--total-batch 100",
            "--total-batch 100 is not a multiple of a micro-batch's B x T = 2 x 16 = 32 tokens \
             (try 96 or 128)",
        ),
        (
            "--total-batch 16",
            "--total-batch 16 is not a multiple of a micro-batch's B x T = 2 x 16 = 32 tokens \
             (try 32 or 64)",
        ),
        // (no multiple above the largest number)
        (
            "--total-batch 18446744073709551615",
            "--total-batch 18446744073709551615 is not a multiple of a micro-batch's B x T = 2 x \
             16 = 32 tokens (try 18446744073709551584)",
        ),
        (
            "--grad-accum 18446744073709551615",
            "a step of B x T x --grad-accum = 2 x 16 x 18446744073709551615 tokens is too large",
        ),
        (
            "--lr-decay-frac 1.5",
            "--lr-decay-frac must be in [0, 1], got 1.5",
        ),
        (
            "--sample-every 2 --sample-tokens 0",
            "--sample-every needs --sample-tokens of at least 1",
        ),
        (
            "--sample-every 1 --sample-tokens 0",
            "--sample-every needs --sample-tokens of at least 1",
        ),
    ] {
        expect_error(&[&base[..], &flags(extra)[..]].concat(), &[needle]);
    }
    expect_error(
        &flags("--device cpu --model d1 --batch 4294967296 --seq 4294967296 --total-batch 8"),
        &["B x T = 4294967296 x 4294967296 is too large"],
    );
    // what clap refuses, as a usage error (status 2)
    for (extra, needle) in [
        (
            "--total-batch 64 --grad-accum 2",
            "'--total-batch <TOKENS>' cannot be used with '--grad-accum <K>'",
        ),
        (
            "--lr-schedule step",
            "invalid value 'step' for '--lr-schedule",
        ),
    ] {
        let (out, _, stderr) = run(bin().args(&base).args(flags(extra)));
        assert_eq!(out.status.code(), Some(2), "{extra}: {stderr}");
        assert!(stderr.contains(needle), "{extra}: {stderr}");
    }
}

/// `--skip-loss-z` and `--skip-norm-z` (llm.c's `-sl`, `-sg`): on a corpus of one repeated
/// pattern with a batch of random tokens at step 101, that step's update (and only it) is left
/// out: its model is byte for byte the one before it. Its logged z-score is the one computed here
/// from the logged losses of the 64 steps before it. A resumed run judges exactly as the whole one
/// (the windows travel in the training state). (Losses and norms that are not finite:
/// `tests/divergence.rs`.)
#[test]
fn outlier_steps_are_skipped() {
    let dir = tmp_dir("outliers");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // 105 batches of 2 x 16 of the pattern 10 11 12 13 ..., batch 100's targets random
    engine_bin::write_spike_corpus(&dir, 105, 100..101);
    let base = format!(
        "--device cpu --batch 2 --seq 16 --val-every 0 --val-batches 1 --seed 3 --lr 3e-3 \
         --lr-schedule constant --sample-tokens 0 --val {}",
        d("pattern.bin")
    );
    let spike = format!("--train {}", d("spike.bin"));
    let train = |extra: &str, out: &str| {
        let (status, stdout, stderr) = run(bin()
            .args(flags(&base))
            .args(flags(&spike))
            .args(["--model", "d1"])
            .args(flags(extra))
            .args(["--out-dir", &d(out)]));
        assert!(status.status.success(), "{extra}:\n{stdout}\n{stderr}");
        stdout
    };
    let step_line = |log: &str, n: usize| -> String {
        log.lines()
            .find(|l| step_number(l) == Some(n))
            .unwrap_or_else(|| panic!("no step {n}:\n{log}"))
            .to_string()
    };

    // the whole run, skipping on the loss
    let whole = train(
        "--steps 105 --checkpoint-every 100 --skip-loss-z 5",
        "whole",
    );
    assert!(
        step_line(&whole, 101).contains(" | update skipped: loss z +"),
        "{whole}"
    );
    assert!(step_line(&whole, 100).contains(" | z loss -"), "{whole}");
    assert!(
        step_line(&whole, 64).ends_with(" | z loss - norm -"),
        "{whole}"
    );
    assert!(
        whole.contains("updates skipped (outliers): 1 of 105 steps (step 101)"),
        "{whole}"
    );
    let log = run_log(&dir.join("whole"));
    let steps: Vec<&serde_json::Value> = log.iter().filter(|r| r.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 105);
    for r in &steps {
        let step = r["step"].as_u64().unwrap();
        assert_eq!(r["skipped"].as_bool(), Some(step == 101), "{r}");
        assert_eq!(r["outlier"].as_bool(), Some(step == 101), "{r}");
        assert_eq!(r["loss_z"].is_null(), step <= 64, "{r}");
    }
    // the z-scores of steps 101 and 102, from the logged losses of steps 37 to 100 (the 64
    // taken before each: 101's stays out)
    let loss = |i: usize| steps[i]["loss"].as_f64().unwrap() as f32 as f64;
    let window: Vec<f64> = (36..100).map(loss).collect();
    let mean = window.iter().sum::<f64>() / 64.0;
    let sd = (window.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 64.0).sqrt();
    for i in [100, 101] {
        let (want, z) = ((loss(i) - mean) / sd, steps[i]["loss_z"].as_f64().unwrap());
        assert!(
            (want - z).abs() <= 1e-5 * want.abs(),
            "step {}: {z} vs {want}",
            i + 1
        );
    }
    let z = steps[100]["loss_z"].as_f64().unwrap();
    assert!(z > 5.0 && steps[99]["loss_z"].as_f64().unwrap() < 5.0);

    // the skipped update changed no weight; without skipping it does
    train(
        "--steps 101 --checkpoint-every 100 --no-state --skip-loss-z 5",
        "to101",
    );
    let model = |run: &str, step: usize| {
        std::fs::read(dir.join(run).join(format!("model_{step:06}.bin"))).unwrap()
    };
    assert!(
        model("to101", 100) == model("to101", 101),
        "step 101 updated the model"
    );
    let plain = train("--steps 101 --checkpoint-every 100 --no-state", "plain");
    assert!(model("plain", 100) != model("plain", 101));
    assert!(!step_line(&plain, 101).contains(" | z "), "{plain}");
    assert!(run_log(&dir.join("plain"))
        .iter()
        .all(|r| r.get("loss_z").is_none() && r.get("skipped").is_none()));
    // the norm's flag alone skips it too
    let norm = train("--steps 101 --no-state --skip-norm-z 5", "norm");
    assert!(
        step_line(&norm, 101).contains(" | update skipped: norm z +"),
        "{norm}"
    );

    // resumed at step 100, the run skips step 101 as the whole run did
    let (out, resumed, stderr) = run(bin()
        .args(flags(&base))
        .args(flags(&spike))
        .args(flags("--steps 105 --skip-loss-z 5"))
        .args(["--resume", &d("whole/state_000100.bin")])
        .args(["--out-dir", &d("resumed")]));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        log_lines(&resumed, &["step "]),
        log_lines(&whole, &["step "])[100..]
    );
    assert_eq!(run_log(&dir.join("resumed")), log);
    assert_same_files(
        &dir.join("whole"),
        &dir.join("resumed"),
        &["model_000105.bin", "state_000105.bin"],
        "the whole run and the one resumed at step 100",
    );

    assert!(
        resumed.contains("updates skipped (outliers): 1 of 105 steps (step 101)"),
        "{resumed}"
    );
    // resumed after the skipped step, the run's summary still counts it (from the log)
    let (out, after, stderr) = run(bin()
        .args(flags(&base))
        .args(flags(&spike))
        .args(flags("--steps 106 --skip-loss-z 5"))
        .args(["--resume", &d("whole/state_000105.bin")])
        .args(["--out-dir", &d("after")]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        after.contains("updates skipped (outliers): 1 of 106 steps (step 101)"),
        "{after}"
    );
    assert!(!plain.contains("updates skipped"), "{plain}");

    for (extra, flag) in [
        ("--skip-loss-z=-1", "--skip-loss-z"),
        ("--skip-norm-z nan", "--skip-norm-z"),
    ] {
        expect_error(
            &[&flags(&base)[..], &flags(extra)[..]].concat(),
            &[&format!("{flag} must be a number of at least 0 (0: off)")],
        );
    }
}

/// After two skipped steps the third outlier in a row is taken (a level that stays up is the new
/// normal), and its step line and log record say so, not only its z-scores: on a corpus whose
/// batches 100 to 102 are random tokens, steps 101 and 102 are skipped and 103 is taken.
#[test]
fn the_third_outlier_in_a_row_is_taken_and_marked() {
    let dir = tmp_dir("outliers-in-a-row");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    engine_bin::write_spike_corpus(&dir, 104, 100..103);
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 16 --val-every 0 --val-batches 1 --seed 3 \
             --lr 3e-3 --lr-schedule constant --sample-tokens 0 --no-state --steps 104 \
             --skip-loss-z 5",
        ))
        .args(["--train", &d("spike.bin"), "--val", &d("pattern.bin")])
        .args(["--out-dir", &d("out")]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = |n: usize| {
        stdout
            .lines()
            .find(|l| step_number(l) == Some(n))
            .unwrap_or_else(|| panic!("no step {n}:\n{stdout}"))
    };
    for n in [101, 102] {
        assert!(
            line(n).contains(" | update skipped: loss z +"),
            "{}",
            line(n)
        );
    }
    let taken = line(103);
    let z = taken
        .split(" | z loss ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|z| z.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no loss z: {taken}"));
    assert!(z > 5.0, "{taken}");
    assert!(
        taken.ends_with(" | update taken: the third outlier in a row"),
        "{taken}"
    );
    for n in [100, 104] {
        assert!(!line(n).contains("update"), "{}", line(n));
    }
    assert!(
        stdout.contains("updates skipped (outliers): 2 of 104 steps (steps 101, 102)"),
        "{stdout}"
    );
    // the log: skipped as the lines say, and the three outliers marked
    for r in run_log(&dir.join("out"))
        .iter()
        .filter(|r| r.get("loss").is_some())
    {
        let step = r["step"].as_u64().unwrap();
        assert_eq!(
            r["skipped"].as_bool(),
            Some(step == 101 || step == 102),
            "{r}"
        );
        assert_eq!(
            r["outlier"].as_bool(),
            Some((101..=103).contains(&step)),
            "{r}"
        );
    }
}

/// `--epochs F` (llm.c's `-x -1` is `--epochs 1`): F passes over the training data, as steps of a
/// step's micro-batches, rounded down; a resumed run counts them the same way.
#[test]
fn epochs_count_the_steps() {
    use train_gpt2_cuda::formats::shard::write_shard;
    let dir = tmp_dir("epochs");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // 10 batches of 2 x 16 (and 20 tokens more: not a batch)
    let tokens: Vec<u32> = (0..10 * 32 + 21).map(|i| (i * 7 % 1000) as u32).collect();
    write_shard(&dir.join("ten.bin"), &tokens).unwrap();
    let base = format!(
        "--device cpu --batch 2 --seq 16 --val-every 0 --val-batches 1 --seed 3 --lr 1e-3 \
         --sample-tokens 0 --train {} --val {}",
        d("ten.bin"),
        d("ten.bin")
    );
    let train = |extra: &str, out: &str| {
        let (status, stdout, stderr) = run(bin()
            .args(flags(&base))
            .args(flags(extra))
            .args(["--out-dir", &d(out)]));
        (status.status.code(), stdout, stderr)
    };
    let last_step = |log: &str| log.lines().rev().find_map(step_number);
    // one epoch: 10 steps; 2.5 epochs of 2 micro-batches: 25 / 2 = 12 steps
    let (code, one, _) = train("--model d1 --epochs 1 --no-state", "one");
    assert_eq!(code, Some(0));
    assert!(
        one.contains("; 10 steps (--epochs 1) of 32 tokens"),
        "{one}"
    );
    assert_eq!(last_step(&one), Some(10));
    assert!(one.contains("step    10/10 |"), "{one}");
    let (code, accum, _) = train("--model d1 --epochs 2.5 --grad-accum 2 --no-state", "accum");
    assert_eq!(code, Some(0));
    assert!(
        accum.contains("; 12 steps (--epochs 2.5) of 64 tokens"),
        "{accum}"
    );
    assert_eq!(last_step(&accum), Some(12));
    // where the run is in its epochs, on the step line and in the log: 2 micro-batches of the
    // 10 an epoch holds a step, so 1.2 after step 6 and 2.4 after step 12
    assert!(accum.contains("MFU - | epoch 1.20\n"), "{accum}");
    assert!(accum.contains("MFU - | epoch 2.40\n"), "{accum}");
    let epochs: Vec<f64> = run_log(&dir.join("accum"))
        .iter()
        .filter_map(|r| r.get("epoch").and_then(|e| e.as_f64()))
        .collect();
    assert_eq!(epochs.len(), 12, "{epochs:?}");
    for (i, e) in epochs.iter().enumerate() {
        assert!(
            (e - 0.2 * (i + 1) as f64).abs() < 1e-6,
            "step {}: {e}",
            i + 1
        );
    }
    let (code, _, stderr) = train(
        "--model d1 --epochs 1 --overfit-batch --no-state",
        "overfit",
    );
    assert_eq!(code, Some(0), "{stderr}");
    // (the batch overfitted is no pass over the data)
    let log = std::fs::read_to_string(dir.join("overfit/log.jsonl")).unwrap();
    assert!(
        log.contains("\"loss\": ") && !log.contains("epoch"),
        "{log}"
    );
    assert!(
        stderr.contains(
            "note: --epochs counts passes over the training data, but --overfit-batch trains on \
             its first batch only"
        ),
        "{stderr}"
    );
    // 0.29 x 100 batches is 29 steps (28.999999999999996 in f64)
    let hundred: Vec<u32> = (0..100 * 32 + 1).map(|i| (i * 7 % 1000) as u32).collect();
    write_shard(&dir.join("hundred.bin"), &hundred).unwrap();
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 16 --val-every 0 --val-batches 1 \
             --sample-tokens 0 --no-state --epochs 0.29",
        ))
        .args(["--train", &d("hundred.bin"), "--val", &d("ten.bin")])
        .args(["--out-dir", &d("hundred")]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("; 29 steps (--epochs 0.29) of 32 tokens"),
        "{stdout}"
    );

    // --epochs 2 resumed at step 10 ends as the whole run; at step 20, one epoch is done already
    let (code, _, _) = train("--model d1 --epochs 2 --checkpoint-every 10", "whole");
    assert_eq!(code, Some(0));
    let (code, resumed, stderr) = train(
        &format!("--epochs 2 --resume {}", d("whole/state_000010.bin")),
        "resumed",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(last_step(&resumed), Some(20));
    assert_same_files(
        &dir.join("whole"),
        &dir.join("resumed"),
        &["model_000020.bin", "state_000020.bin"],
        "--epochs 2, whole and resumed at step 10",
    );
    let resume20 = format!("--epochs 1 --resume {}", d("whole/state_000020.bin"));
    let (code, _, stderr) = train(&resume20, "again");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the run is at step 20 and --steps is 10 (--epochs 1): nothing left"),
        "{stderr}"
    );

    for (extra, needle) in [
        (
            "--epochs 0.05",
            "--epochs 0.05 is less than one step: an epoch of",
        ),
        ("--epochs=-1", "--epochs must be a positive number, got -1"),
        ("--epochs 0", "--epochs must be a positive number, got 0"),
        (
            "--epochs inf",
            "--epochs must be a positive number, got inf",
        ),
        (
            "--epochs 1e9",
            "--epochs 1e9 makes 1.000e10 steps: at most 2147483647 (a training state records \
             the step in 32 bits)",
        ),
        ("--epochs 1e300", "--epochs 1e300 makes 1.000e301 steps"),
        // (as typed, not 300 digits)
        (
            "--epochs 1e-300",
            "--epochs 1e-300 is less than one step: an epoch of",
        ),
        (
            "--epochs=-1e-300",
            "--epochs must be a positive number, got -1e-300\n",
        ),
        ("--steps 2147483648", "--steps 2147483648 is too many"),
        (
            "--total-batch 0",
            "--total-batch must be at least one micro-batch's",
        ),
        ("--eps 0", "--eps must be a positive number, got 0"),
        (
            "--weight-decay=-0.1",
            "--weight-decay must be a number of at least 0, got -0.1",
        ),
        (
            "--grad-clip inf",
            "--grad-clip must be a number of at least 0",
        ),
        (
            "--grad-clip NaN",
            "--grad-clip must be a number of at least 0",
        ),
    ] {
        let (code, _, stderr) = train(&format!("--model d1 {extra}"), "bad");
        assert_eq!(code, Some(1), "{extra}: {stderr}");
        assert!(stderr.contains(needle), "{extra}: {stderr}");
    }
    // a number the flag's type cannot hold is a usage error, as typed (it read as 0 or inf,
    // and the checks after said "got 0")
    for (extra, needle) in [
        (
            "--eps 1e-46",
            "invalid value '1e-46' for '--eps <EPS>': 1e-46 is too small for this flag's f32: \
             it would read as 0",
        ),
        (
            "--epochs 1e400",
            "invalid value '1e400' for '--epochs <F>': 1e400 is beyond the range of this flag's \
             f64",
        ),
    ] {
        let (code, _, stderr) = train(&format!("--model d1 {extra}"), "bad");
        assert_eq!(code, Some(2), "{extra}: {stderr}");
        assert!(stderr.contains(needle), "{extra}: {stderr}");
    }
    let (code, _, stderr) = train("--model d1 --epochs 1 --steps 5", "bad");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("'--epochs <F>' cannot be used with '--steps <N>'"),
        "{stderr}"
    );
}

/// Shards that hold no whole batch are passed over, with one note for the set: a run and eval
/// count the other shards' batches; a set none of whose shards holds one is an error.
#[test]
fn shards_without_a_batch_are_passed_over() {
    use train_gpt2_cuda::formats::shard::write_shard;
    let dir = tmp_dir("short-shards");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let ramp = |n: u32| (0..n).map(|i| i * 7 % 1000).collect::<Vec<u32>>();
    // batches of 2 x 16 (33 tokens): train_0 holds 10, train_1 none; val_0 one, val_1 none
    write_shard(&dir.join("train_0.bin"), &ramp(10 * 32 + 1)).unwrap();
    write_shard(&dir.join("train_1.bin"), &ramp(20)).unwrap();
    write_shard(&dir.join("val_0.bin"), &ramp(40)).unwrap();
    write_shard(&dir.join("val_1.bin"), &ramp(10)).unwrap();
    let (train, val) = (d("train_?.bin"), d("val_?.bin"));
    let note = |pattern: &str, short: &str, n: usize| {
        format!(
            "note: 1 of the 2 shards of '{pattern}' holds fewer than B*T+1 = 33 tokens, no whole \
             batch of 2x16, and is passed over: {} ({n} tokens)\n",
            d(short)
        )
    };
    let (out, stdout, stderr) = run(bin()
        .args(flags(
            "--device cpu --model d1 --batch 2 --seq 16 --val-every 0 --sample-tokens 0 \
             --no-state --epochs 1",
        ))
        .args(["--train", &train, "--val", &val, "--out-dir", &d("run")]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "data: train {train} (10 batches of 2x16), val {val} (1 batch); 10 steps \
             (--epochs 1)"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("step    10/10 |"), "{stdout}");
    assert!(
        stderr.contains(&note(&train, "train_1.bin", 20)),
        "{stderr}"
    );
    assert!(stderr.contains(&note(&val, "val_1.bin", 10)), "{stderr}");

    let model = d("run/model_000010.bin");
    let eval = ["eval", "--model", &model, "--data", &val, "--device", "cpu"];
    let (out, stdout, stderr) = run(bin().args(eval).args(flags("--batch 2 --seq 16")));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(": 1 of 1 batch of 2x16"), "{stdout}");
    assert_eq!(stderr, note(&val, "val_1.bin", 10));
    // no shard holds a batch of 2 x 32
    expect_error(
        &[&eval[..], &flags("--batch 2 --seq 32")].concat(),
        &[&format!(
            "no shard of '{val}' holds one batch: the largest of its 2, {}, has 40 tokens, \
             fewer than B*T+1 = 65 needed for one batch (B=2, T=32)",
            d("val_0.bin")
        )],
    );
}

/// A step of more micro-batches than the training data holds (GPT-2's --total-batch 524288 on a
/// small corpus) gets a note saying how many times over each step reads it; one of fewer, none.
#[test]
fn a_step_larger_than_the_training_data_gets_a_note() {
    use train_gpt2_cuda::formats::shard::write_shard;
    let dir = tmp_dir("large-step");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // 10 batches of 2 x 16 (33 tokens)
    write_shard(&dir.join("train.bin"), &(0..321).collect::<Vec<u32>>()).unwrap();
    let base = flags(
        "--device cpu --model d1 --batch 2 --seq 16 --steps 1 --val-every 0 --sample-tokens 0 \
         --no-state",
    );
    let train = d("train.bin");
    let note = "note: a step's 25 micro-batches are more than the 10 batches the training data \
                holds: each step reads it 2.5 times over (a smaller --total-batch or --grad-accum, \
                or more data)\n";
    for (extra, expected) in [
        ("--grad-accum 25", note),
        ("--total-batch 800", note),
        ("--grad-accum 10", ""),
        ("--grad-accum 25 --overfit-batch", ""),
    ] {
        let out_dir = d(&format!("run-{}", extra.replace(' ', "")));
        let (out, _, stderr) = run(bin()
            .args(&base)
            .args(["--train", &train, "--val", &train])
            .args(flags(extra))
            .args(["--out-dir", &out_dir]));
        assert!(out.status.success(), "{extra}: {stderr}");
        let notes: String = stderr
            .lines()
            .filter(|l| l.contains("micro-batches"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(notes, expected, "{extra}");
    }
}

/// Flags that a run cannot act on get a note on stderr, not an error (one command line runs on
/// either engine), and a run without them gets none.
#[test]
fn notes_for_flags_that_do_nothing() {
    let dir = tmp_dir("notes");
    let base = flags(
        "--device cpu --model d1 --batch 2 --seq 16 --steps 2 --val-batches 1 --sample-tokens 0 \
         --no-state",
    );
    for (extra, want) in [
        ("", &[][..]),
        (
            "--tf32 --no-cuda-graphs --recompute gelu",
            &[
                "note: --tf32 does nothing on the CPU engine",
                "note: --no-cuda-graphs does nothing on the CPU engine",
                "note: --recompute does nothing on the CPU engine (it keeps every activation)",
            ][..],
        ),
        ("--recompute none", &[]),
        (
            "--lr-decay-frac 0.5",
            &["note: --lr-decay-frac is for --lr-schedule wsd; the cosine schedule ignores it"],
        ),
        // (its 2 steps leave wsd's decay 1, which does not fall)
        (
            "--lr-decay-frac 0.5 --lr-schedule wsd",
            &["note: the learning rate never decays: the run's 2 steps leave its decay fewer than 2"],
        ),
        ("--lr-decay-frac 1 --lr-schedule wsd", &[]),
        (
            "--lr-schedule constant --lr-final-frac 0",
            &["note: --lr-final-frac does nothing with --lr-schedule constant"],
        ),
        // step 2 of a 4-step warm-up: 2/4 of 1e-3
        (
            "--warmup 4 --lr 1e-3",
            &[
                "note: --warmup 4 is longer than the run's 2 steps: the learning rate never \
               reaches --lr (it ends at 5.00e-4)",
            ],
        ),
        ("--warmup 2", &[]),
        (
            "--keep-best --val-every 0",
            &[
                "note: --keep-best with --val-every 0: the run validates only at its end, so \
               model_best.bin is the final model",
            ],
        ),
        ("--keep-best --val-every 1", &[]),
        (
            "--keep-every 2",
            &["note: --keep-every does nothing without --keep-checkpoints (every checkpoint is kept)"],
        ),
        ("--keep-every 2 --keep-checkpoints 1", &[]),
    ] {
        let (out, _, stderr) = run(bin()
            .args(&base)
            .args(flags(extra))
            .args(["--out-dir", &dir.join("out").to_string_lossy()]));
        assert!(out.status.success(), "{extra}: {stderr}");
        let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note:")).collect();
        assert_eq!(notes.len(), want.len(), "{extra}: {stderr}");
        for w in want {
            assert!(stderr.contains(w), "{extra}: {stderr}");
        }
    }
    // verify: the CPU alone has no use for them either; each note names a flag given
    let tf32 = "note: --tf32 does nothing with --device cpu (the CPU's products are plain fp32)";
    let graphs = "note: --no-cuda-graphs does nothing with --device cpu";
    for (extra, want) in [
        ("--tf32", &[tf32][..]),
        ("--no-cuda-graphs", &[graphs]),
        ("--tf32 --no-cuda-graphs", &[tf32, graphs]),
    ] {
        let (out, _, stderr) = run(bin()
            .args(["verify", "--model", &fixture("ref_tiny_model.bin")])
            .args(["--state", &fixture("ref_tiny_state.bin")])
            .args(flags(extra)));
        assert!(out.status.success(), "{extra}: {stderr}");
        let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note:")).collect();
        assert_eq!(notes, want, "{extra}");
    }
}

/// `--precision bf16` where `--device auto` finds no GPU (hidden here with CUDA_VISIBLE_DEVICES)
/// is a note, not an error, and the command computes in fp32: training writes what the same run
/// in fp32 writes, byte for byte (an fp32 checkpoint, a state without master weights), so a
/// resumed run sees an fp32 run; `sample` and `eval` print what fp32 prints. `--device cpu`
/// still refuses it.
#[test]
fn bf16_without_a_gpu_is_a_note_under_auto() {
    let dir = tmp_dir("bf16-auto");
    let note =
        "note: --precision bf16 needs the GPU: the CPU engine computes in fp32, and so does \
                this run";
    let no_gpu = |args: &[&str]| {
        let (out, stdout, stderr) = run(bin().env("CUDA_VISIBLE_DEVICES", "").args(args));
        assert!(out.status.success(), "{args:?}: {stderr}");
        (stdout, stderr)
    };
    let base = "--model d1 --batch 2 --seq 16 --steps 2 --val-batches 1 --sample-tokens 8";
    let out = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (bf16, stderr) = no_gpu(
        &[
            &flags(base)[..],
            &["--precision", "bf16", "--out-dir", &out("bf16")],
        ]
        .concat(),
    );
    assert!(stderr.contains("note: running on the CPU"), "{stderr}");
    assert!(stderr.contains(note), "{stderr}");
    let (fp32, stderr) = no_gpu(
        &[
            &flags(base)[..],
            &["--precision", "fp32", "--out-dir", &out("fp32")],
        ]
        .concat(),
    );
    assert!(!stderr.contains("--precision bf16"), "{stderr}");
    assert_eq!(
        log_lines(&bf16, &["step ", "val "]),
        log_lines(&fp32, &["step ", "val "])
    );
    assert_same_files(
        &dir.join("bf16"),
        &dir.join("fp32"),
        &["model_000002.bin", "state_000002.bin"],
        "a bf16 run on the CPU and an fp32 one",
    );
    let model = dir.join("bf16/model_000002.bin");
    use train_gpt2_cuda::formats::checkpoint::{read_checkpoint_config, CheckpointPrecision};
    let (_, precision) = read_checkpoint_config(&model).unwrap();
    assert_eq!(precision, CheckpointPrecision::Fp32);
    let model = model.to_string_lossy().into_owned();
    for command in [
        &["sample", "--model", &model, "--tokens", "4"][..],
        &[
            "eval",
            "--model",
            &model,
            "--batch",
            "1",
            "--seq",
            "8",
            "--batches",
            "2",
        ],
    ] {
        let (bf16, stderr) = no_gpu(&[command, &["--precision", "bf16"]].concat());
        assert!(stderr.contains(note), "{command:?}: {stderr}");
        let (fp32, _) = no_gpu(&[command, &["--precision", "fp32"]].concat());
        assert_eq!(bf16, fp32, "{command:?}");
        // --device cpu asks for the CPU: bf16 there is refused
        let (out, _, stderr) =
            run(bin().args([command, &["--device", "cpu", "--precision", "bf16"]].concat()));
        assert_eq!(out.status.code(), Some(1), "{command:?}: {stderr}");
        assert!(
            stderr.contains(
                "--precision bf16 needs the CUDA engine: the CPU engine computes in fp32 only"
            ),
            "{command:?}: {stderr}"
        );
    }
}

/// A count of one takes the singular: "1 batch", "1 token", "1 step" (it said "1 batches").
#[test]
fn a_count_of_one_is_singular() {
    let dir = tmp_dir("singular");
    let d = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // an epoch of one batch
    expect_error(
        &flags(&format!(
            "--device cpu --model d1 --batch 2 --seq 8 --epochs 0.5 --train {}",
            fixture("shard_small.bin")
        )),
        &["' is 1 batch of 2x8, a step 1"],
    );
    // prepro: an empty file is one token (EOT), and the validation shard
    write(&dir.join("a.txt"), b"some text to train on");
    write(&dir.join("b.txt"), b"");
    let (out, stdout, stderr) = run(bin()
        .args(["prepro", &d("a.txt"), &d("b.txt"), "--out-dir", &d("data")])
        .current_dir(&dir));
    assert!(out.status.success(), "{stderr}");
    for want in [
        "b.txt: 0 bytes -> 1 token\n",
        &format!("prepro: wrote {} (1 token)\n", d("data/val.bin")),
        ", 1 val token -> ",
        "2 documents: ",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    // a run of one step and a sample of one token, resumed after one batch
    let train = |extra: &str| {
        let (out, stdout, stderr) = run(bin()
            .args(flags(
                "--device cpu --model d1 --batch 2 --seq 16 --val-batches 1 --sample-tokens 1",
            ))
            .args(["--out-dir", &d("run")])
            .args(flags(extra)));
        assert!(out.status.success(), "{extra}: {stderr}");
        stdout
    };
    let stdout = train("--steps 1");
    for want in [
        "; 1 step of 32 tokens\n",
        "sample after step 1 (1 token, top-k 40):",
    ] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    let stdout = train(&format!("--steps 2 --resume {}", d("run")));
    assert!(
        stdout.contains("at step 1 (1 batch of the training data served)"),
        "{stdout}"
    );
}

/// `--help` groups the training flags under headings, each flag under its own.
#[test]
fn help_groups_the_flags() {
    let (out, help, _) = run(bin().arg("--help"));
    assert!(out.status.success());
    let at = |s: &str| {
        help.find(s)
            .unwrap_or_else(|| panic!("no '{s}' in:\n{help}"))
    };
    let headings = [
        "Model and data:",
        "Steps and optimizer:",
        "Validation and samples:",
        "Checkpoints:",
        "GPU:",
    ];
    let flags = [
        &[
            "--model <MODEL>",
            "--batch <B>",
            "--total-batch <TOKENS>",
            "--shuffle",
        ][..],
        &[
            "--steps <N>",
            "--lr-schedule <LR_SCHEDULE>",
            "--beta2 <BETA2>",
            "--skip-norm-z <Z>",
        ],
        &[
            "--val-every <N>",
            "--hellaswag <FILE>",
            "--sample-every <N>",
        ],
        &[
            "--resume <STATE_OR_DIR>",
            "--no-state",
            "--keep-best",
            "--keep-every <N>",
        ],
        &[
            "--precision <PRECISION>",
            "--classifier-chunk <SEQUENCES>",
            "--recompute <WHAT>",
            "--profile",
        ],
    ];
    for (i, (h, fs)) in headings.iter().zip(flags).enumerate() {
        let end = headings.get(i + 1).map_or(help.len(), |n| at(n));
        for f in fs {
            assert!(
                (at(h)..end).contains(&at(f)),
                "{f} is not under {h}:\n{help}"
            );
        }
    }
}

/// `--precision`'s values are described for what each command does with them: training (and
/// `verify`, whose engine trains) keeps gradients and AdamW's moments, `eval` and `sample` run
/// forwards only, `convert` stores a file; and each command parses its values alike.
#[test]
fn precision_values_are_described_for_each_command() {
    let values = |command: &[&str]| -> String {
        let (out, help, _) = run(bin().args(command).arg("--help"));
        assert!(out.status.success(), "{command:?}");
        let at = help.find("--precision <PRECISION>").expect("--precision");
        let end = help[at..].find("\n  -").map_or(help.len(), |e| at + e);
        help[at..end].to_string()
    };
    let training =
        "- bf16: bfloat16 parameters, activations and gradients, with fp32 sums, master \
                    weights and AdamW moments (GPU only)";
    for command in [&[][..], &["verify"]] {
        let text = values(command);
        assert!(text.contains(training), "{command:?}: {text}");
    }
    for command in ["eval", "sample"] {
        let text = values(&[command]);
        assert!(
            text.contains("- bf16: bfloat16 weights and activations, with fp32 sums (GPU only)"),
            "{command}: {text}"
        );
        assert!(
            !text.contains("gradients") && !text.contains("AdamW"),
            "{command}: {text}"
        );
    }
    let text = values(&["convert"]);
    for want in [
        "- fp32: 4 bytes a parameter (an llm.c checkpoint of version 3; F32 safetensors)",
        "- bf16: 2 bytes a parameter, rounded to nearest even (an llm.c checkpoint of version 5; \
         BF16 safetensors)",
    ] {
        assert!(text.contains(want), "convert: {text}");
    }
    assert!(
        !text.contains("computes") && !text.contains("GPU"),
        "convert: {text}"
    );
    // the values parse as before, and a wrong one is a usage error naming them
    for command in ["eval", "sample", "convert"] {
        let (out, _, stderr) = run(bin().args([command, "--precision", "bf17"]));
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains("invalid value 'bf17' for '--precision <PRECISION>'")
                && stderr.contains("[possible values: fp32, bf16]"),
            "{command}: {stderr}"
        );
    }
}

/// The progress lines in `stdout`, those that start with `prefix` and hold `marker`, checked to
/// come after the counts (of batches or examples) `want`.
fn progress_lines<'a>(stdout: &'a str, prefix: &str, marker: &str, want: &[&str]) -> Vec<&'a str> {
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(marker))
        .collect();
    let done: Vec<&str> = lines
        .iter()
        .map(|l| l[prefix.len()..].split('/').next().unwrap())
        .collect();
    assert_eq!(done, want, "{stdout}");
    lines
}

/// About every tenth of 25: after 3, 6, ..., 24.
const TENTHS_OF_25: [&str; 8] = ["3", "6", "9", "12", "15", "18", "21", "24"];

/// `eval` prints its progress about every tenth of the way, each line the loss of the batches so
/// far: what `eval --batches K` reports for the first K.
#[test]
fn eval_shows_its_progress() {
    let eval = |batches: &str| {
        let (out, stdout, stderr) = run(bin().args([
            "eval",
            "--device",
            "cpu",
            "--model",
            &fixture("ref_gpt2vocab_model.bin"),
            "--batch",
            "2",
            "--seq",
            "8",
            "--batches",
            batches,
        ]));
        assert!(out.status.success(), "{stderr}");
        stdout
    };
    let loss_of = |stdout: &str| -> String {
        let line = stdout.lines().find(|l| l.starts_with("loss ")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_string()
    };
    let marker = " batches, loss so far ";
    let all = eval("25");
    let progress = progress_lines(&all, "eval: ", marker, &TENTHS_OF_25);
    for (k, line) in [(3, progress[0]), (12, progress[3])] {
        let so_far = line.rsplit_once("loss so far ").unwrap().1;
        assert_eq!(so_far, loss_of(&eval(&k.to_string())), "{line}");
    }
    // fewer than 10 batches: a line after each but the last
    progress_lines(&eval("5"), "eval: ", marker, &["1", "2", "3", "4"]);
    // 11: a tenth rounded up, every 2nd
    progress_lines(&eval("11"), "eval: ", marker, &["2", "4", "6", "8", "10"]);
}

/// HellaSwag's progress too: about every tenth of the examples, each line the accuracy of the
/// examples so far, what `--examples K` reports for the first K (the fixture's 5 examples five
/// times over: 25); with fewer than 10 examples, a line after each.
#[test]
fn eval_hellaswag_shows_its_progress() {
    let dir = tmp_dir("hellaswag-progress");
    let data = dir.join("hellaswag_25.jsonl");
    let five = std::fs::read_to_string(fixture("hellaswag_tiny.jsonl")).unwrap();
    std::fs::write(&data, five.repeat(5)).unwrap();
    let model = fixture("ref_gpt2vocab_model.bin");
    let data = data.to_string_lossy().into_owned();
    let eval = |examples: &str| {
        let (out, stdout, stderr) = run(bin()
            .arg("eval")
            .args(cpu_hellaswag(&model, &data))
            .args(["--examples", examples]));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let all = eval("25");
    let marker = " examples, acc_norm ";
    let progress = progress_lines(&all, "hellaswag: ", marker, &TENTHS_OF_25);
    for (k, line) in [(3, progress[0]), (12, progress[3])] {
        let so_far = line.rsplit_once("acc_norm ").unwrap().1;
        let whole = eval(&k.to_string());
        assert!(
            whole.contains(&format!("hellaswag: acc_norm {so_far} (")),
            "{line}\n{whole}"
        );
    }
    // fewer than 10 examples: a line after each but the last
    progress_lines(&eval("5"), "hellaswag: ", marker, &["1", "2", "3", "4"]);
    // 11: a tenth rounded up, every 2nd
    progress_lines(
        &eval("11"),
        "hellaswag: ",
        marker,
        &["2", "4", "6", "8", "10"],
    );
}

/// `eval`'s sequences are the model's maxT long, but at most 1024 (GPT-2's): a model of maxT 1100
/// is evaluated at 1024 unless `--seq` says.
#[test]
fn eval_reads_at_most_1024_tokens_a_sequence() {
    use train_gpt2_cuda::config::GPT2Config;
    use train_gpt2_cuda::formats::checkpoint::{write_checkpoint, CheckpointPrecision};
    let dir = tmp_dir("eval-long-model");
    let model = dir.join("long.bin");
    let cfg = GPT2Config::new(1100, 50257, 50304, 1, 1, 8).unwrap();
    let params = train_gpt2_cuda::params::init_params(&cfg, 1);
    write_checkpoint(&model, &cfg, &params, CheckpointPrecision::Fp32).unwrap();
    for (extra, want) in [(&[][..], "1x1024"), (&["--seq", "1100"], "1x1100")] {
        let (out, stdout, stderr) = run(bin()
            .args([
                "eval",
                "--device",
                "cpu",
                "--batch",
                "1",
                "--batches",
                "1",
                "--model",
            ])
            .arg(&model)
            .args(extra));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let line = stdout.lines().find(|l| l.starts_with("eval: "));
        let line = line.unwrap_or_default();
        assert!(
            line.ends_with(&format!(" batches of {want}")),
            "{extra:?}: {stdout}"
        );
    }
}
