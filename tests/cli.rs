//! The command line as a user meets it: a short training run end to end, `verify` on the PyTorch
//! fixtures, `sample`, `tokenizer`, and every bad input the user can type giving a clear error and
//! exit status 1 (never a panic, whose status would be 101).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod engine_bin;
use engine_bin::{bin, root};

fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("train-gpt2-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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
        &["ref_sharp_state.bin"],
    );
}

#[test]
fn verify_reports_failure_with_exit_status_1() {
    // the reference's loss trajectory, perturbed: the steps must fail the comparison
    let dir = tmp_dir("verify-fail");
    let bad = dir.join("losses.txt");
    let text = std::fs::read_to_string(fixture("ref_tiny_losses.txt")).unwrap();
    std::fs::write(&bad, text.replace("step 3 loss 4.08", "step 3 loss 4.18")).unwrap();
    let (out, stdout, _) = run(bin().args([
        "verify",
        "--model",
        &fixture("ref_tiny_model.bin"),
        "--state",
        &fixture("ref_tiny_state.bin"),
        "--steps",
        "5",
        "--expect-losses",
        bad.to_str().unwrap(),
    ]));
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
    // every step line carries ms, tokens/s and MFU (a percentage, given a peak)
    for line in stdout.lines().filter(|l| l.starts_with("step ")) {
        assert!(
            line.contains(" ms | ") && line.contains(" tok/s | MFU "),
            "{line}"
        );
        assert!(line.trim_end().ends_with('%'), "{line}");
    }
    assert!(stdout.contains("peak memory: "), "{stdout}");
    let losses: Vec<f32> = stdout
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| {
            l.split("loss ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 4, "{stdout}");
    // a fresh GPT-2 predicts ~uniformly over 50257 tokens: ln(50257) = 10.825
    assert!((losses[0] - 10.825).abs() < 0.3, "{losses:?}");
    assert!(stdout.matches("val loss").count() >= 3, "{stdout}");
    assert!(stdout.contains("sample (8 tokens"), "{stdout}");
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
    ]));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("ROMEO:"), "{stdout}");
    assert!(stdout.trim().len() > "ROMEO:".len(), "{stdout}");
}

#[test]
fn tokenizer_command_writes_gpt2_vocabulary() {
    let dir = tmp_dir("tok");
    let path = dir.join("gpt2_tokenizer.bin");
    let (out, stdout, _) = run(bin().args(["tokenizer", "--out", path.to_str().unwrap()]));
    assert!(out.status.success(), "{stdout}");
    let f = train_gpt2_cuda::formats::tokenizer_file::read_tokenizer_file(&path).unwrap();
    assert_eq!(f.tokens.len(), 50257);
    assert_eq!(f.eot, Some(50256));
    assert_eq!(f.tokens[15496], b"Hello");
    assert_eq!(f.tokens[995], b" world");
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
    expect_error(
        &["--device", "cpu", "--seq", "0"],
        &["--batch and --seq must be at least 1"],
    );
    expect_error(
        &["--device", "cpu", "--steps", "0"],
        &["--steps must be at least 1"],
    );
    expect_error(
        &["--device", "cpu", "--lr=-1"],
        &["--lr must be a positive number"],
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
        &["--device", "cpu", "--classifier-chunk", "0"],
        &["--classifier-chunk must be at least 1 sequence"],
    );
    expect_error(
        &[
            "verify",
            "--model",
            &fixture("ref_tiny_model.bin"),
            "--state",
            &fixture("ref_tiny_state.bin"),
            "--kernels",
            "plain",
        ],
        &["--kernels chooses the GPU's kernels"],
    );

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
    expect_error(
        &[
            "sample",
            "--device",
            "cpu",
            "--model",
            &fixture("ref_tiny_model.bin"),
            "--temperature",
            "0",
        ],
        &["temperature"],
    );
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
    expect_error(
        &["prepro", &d("missing.txt"), "--out-dir", &d("pp")],
        &["train and val must both get at least one file"],
    );
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
}
