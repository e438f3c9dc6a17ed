//! `tools/bench` (Python, standard library only) in the modes that need no GPU: its model
//! arithmetic against the crate's (`mfu.rs`, `params.rs`), its parser on captured engine logs, its
//! table formatter on a hand-written results file (and the files it refuses), its argument errors
//! (exit status 2), the dry run, GPU runs with stand-ins for the engine, PyTorch and nvidia-smi
//! (an engine that finds no GPU among them), and a real engine-only run on the CPU with the engine
//! cargo built. A run that includes
//! PyTorch (CPU) and one on a GPU are ignored tests: `cargo test --test bench_tool --
//! --include-ignored` with PyTorch importable (`TORCH_PYTHON=/path/to/python`, else `python3`).

use std::path::Path;
use std::process::{Command, Output};
use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::mfu::{flops_per_token, peak_tflops, Precision, PEAK_TFLOPS};
use train_gpt2_cuda::params::num_parameters;

mod engine_bin;
use engine_bin::root;

/// The engine binary's path as a string (for tools/bench's --engine).
fn engine() -> String {
    engine_bin::engine().to_string_lossy().into_owned()
}

/// `python3 tools/bench ARGS`: (output, stdout, stderr).
fn bench(args: &[&str]) -> (Output, String, String) {
    bench_env(args, &[])
}

/// `python3 tools/bench ARGS` with the environment variables `env` set.
fn bench_env(args: &[&str], env: &[(&str, &str)]) -> (Output, String, String) {
    let out = Command::new("python3")
        .arg(root().join("tools/bench"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .expect("python3 runs (tools/bench needs Python 3 on the PATH)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Runs and expects exit status 0.
fn bench_ok(args: &[&str]) -> String {
    let (out, stdout, stderr) = bench(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "tools/bench {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

fn tmp_dir(name: &str) -> engine_bin::TempFolder {
    engine_bin::temp_folder("bench-tool", name)
}

/// The text after `"key": ` in a one-level JSON object, up to the next comma or brace (or the
/// closing bracket of a list).
fn json_raw<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\": ");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    let rest = &json[start..];
    let end = if rest.starts_with('[') {
        rest.find(']').unwrap() + 1
    } else {
        rest.find([',', '}', '\n']).unwrap()
    };
    rest[..end].trim()
}

fn json_f64(json: &str, key: &str) -> f64 {
    let raw = json_raw(json, key);
    raw.parse()
        .unwrap_or_else(|_| panic!("{key}: '{raw}' is not a number"))
}

fn json_list(json: &str, key: &str) -> Vec<f64> {
    let raw = json_raw(json, key);
    raw.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect()
}

/// The cells of the table's data rows (the lines after the `| --- |` rule).
fn table_rows(report: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = report.lines().filter(|l| l.starts_with('|')).collect();
    assert!(lines.len() >= 2, "no table in:\n{report}");
    assert!(
        lines[0].contains("implementation")
            && lines[0].contains("ms/step")
            && lines[0].contains("engine / this"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("| ---"), "{}", lines[1]);
    // padded: every line as wide as the header
    for l in &lines {
        assert_eq!(l.chars().count(), lines[0].chars().count(), "{l}");
    }
    lines[2..]
        .iter()
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn num(cell: &str) -> f64 {
    cell.trim_end_matches(['%', 'x'])
        .trim_end_matches(" MiB")
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("'{cell}' is not a number"))
}

#[test]
fn mfu_arithmetic_agrees_with_the_crate() {
    for depth in [1, 2, 6, 12, 24, 36, 48, 60, 72, 84, 100] {
        for t in [1, 32, 1024] {
            let model = format!("d{depth}");
            let json = bench_ok(&["--mfu-info", "--model", &model, "--seq", &t.to_string()]);
            let cfg = GPT2Config::from_descriptor(&model).unwrap();
            // the PyTorch side builds its model from these (tools/bench_pytorch.py)
            let dims = ["L", "NH", "C"].map(|k| json_f64(&json, k) as usize);
            assert_eq!(
                dims,
                [cfg.num_layers, cfg.num_heads, cfg.channels],
                "{model}"
            );
            assert_eq!(
                json_f64(&json, "params"),
                num_parameters(&cfg) as f64,
                "{model}"
            );
            assert_eq!(
                json_f64(&json, "flops_per_token"),
                flops_per_token(&cfg, t),
                "{model} T={t}"
            );
        }
    }
    // by hand: GPT-2 124M has 124,475,904 parameters; 6 * that + 6 * 12 * 768 * 1024
    let json = bench_ok(&["--mfu-info", "--model", "d12", "--seq", "1024"]);
    assert_eq!(json_f64(&json, "params"), 124_475_904.0);
    assert_eq!(json_f64(&json, "flops_per_token"), 803_478_528.0);
    // GPT-2 medium (llm.c's d24: C = 1024, 16 heads): Hugging Face's 354,823,168 parameters and
    // the 47 padding rows of wte
    let json = bench_ok(&["--mfu-info", "--model", "d24", "--seq", "1024"]);
    assert_eq!(json_f64(&json, "params"), (354_823_168 + 47 * 1024) as f64);
}

#[test]
fn peak_table_agrees_with_the_crate() {
    let mut names: Vec<String> = PEAK_TFLOPS.iter().map(|r| r.0.to_string()).collect();
    names.extend(
        [
            "NVIDIA H100 80GB HBM3",
            "NVIDIA H100 PCIe",
            "NVIDIA H200",
            "NVIDIA A100-SXM4-80GB",
            "NVIDIA GeForce RTX 4090",
            "NVIDIA H200 NVL",
            "NVIDIA H100 NVL",
        ]
        .map(String::from),
    );
    for name in &names {
        let json = bench_ok(&["--mfu-info", "--gpu-name", name]);
        for (key, p) in [
            ("fp32", Precision::Fp32),
            ("tf32", Precision::Tf32),
            ("bf16", Precision::Bf16),
        ] {
            let raw = json_raw(&json, key);
            match peak_tflops(name, p) {
                Some(v) => assert_eq!(raw.parse::<f64>().unwrap(), v, "{name} {key}"),
                None => assert_eq!(raw, "null", "{name} {key}"),
            }
        }
    }
    // and the table's rows reach every entry: H100 SXM and PCIe, H200 and A100 differ
    let json = bench_ok(&["--mfu-info", "--gpu-name", "NVIDIA H100 PCIe"]);
    assert_eq!(json_f64(&json, "tf32"), 378.0);
}

/// Step lines as the engine prints them (src/train/run.rs), on a GPU with a known peak.
const GPU_LOG: &str = "\
model: L=12 NH=12 C=768 V=50257 Vp=50304 maxT=1024 (124.5M parameters) on cuda: NVIDIA H100 80GB HBM3 (sm_90)
data: train data/shakespeare/train.bin (71 batches of 4x1024), val data/shakespeare/train.bin (71 batches); 5 steps of 4096 tokens
step     1/5 | loss 11.0123 | lr 3.00e-4 | norm 15.210 | 912.4 ms | 4489 tok/s | MFU 5.5%
step     2/5 | loss 10.1234 | lr 2.71e-4 | norm 8.123 | 101.5 ms | 40355 tok/s | MFU 48.5%
step     3/5 | loss 9.8765 | lr 1.65e-4 | norm 5.001 | 99.0 ms | 41374 tok/s | MFU 49.7%
step     4/5 | loss 9.5000 | lr 6.00e-5 | norm 4.500 | 100.5 ms | 40756 tok/s | MFU 48.9%
step     5/5 | loss 9.4000 | lr 3.00e-5 | norm 4.400 | 98.0 ms | 41796 tok/s | MFU 50.2%
wrote out/model_000005.bin
val loss 9.3000
peak memory: 5123.5 MiB
";

#[test]
fn parses_a_captured_engine_log() {
    let dir = tmp_dir("parse");
    let log = dir.join("gpu.log");
    std::fs::write(&log, GPU_LOG).unwrap();
    let json = bench_ok(&["--parse-log", log.to_str().unwrap(), "--warmup", "1"]);
    assert_eq!(json_f64(&json, "steps_run"), 5.0);
    assert_eq!(json_list(&json, "timed_ms"), [101.5, 99.0, 100.5, 98.0]);
    // the median of 98.0, 99.0, 100.5, 101.5 is (99.0 + 100.5) / 2
    assert_eq!(json_f64(&json, "ms_per_step"), 99.75);
    // the engine's MFU: the median of 48.5%, 49.7%, 48.9%, 50.2% is (48.9 + 49.7) / 2 %
    assert!(
        (json_f64(&json, "engine_mfu") - 0.493).abs() < 1e-12,
        "{json}"
    );
    assert_eq!(json_f64(&json, "peak_mem_bytes"), 5123.5 * 1048576.0);
    assert_eq!(
        json_raw(&json, "device"),
        "\"cuda: NVIDIA H100 80GB HBM3 (sm_90)\""
    );
    // no warm-up: step 1 counts; an odd count has a middle value
    let json = bench_ok(&["--parse-log", log.to_str().unwrap(), "--warmup", "0"]);
    assert_eq!(json_f64(&json, "ms_per_step"), 100.5);

    // the CPU engine prints "MFU -" and its host memory
    let cpu = dir.join("cpu.log");
    std::fs::write(
        &cpu,
        "step     1/3 | loss 10.8027 | lr 3.00e-4 | norm 2.389 | 452.9 ms | 141 tok/s | MFU -\n\
         step     2/3 | loss 10.8269 | lr 2.33e-4 | norm 2.951 | 383.2 ms | 167 tok/s | MFU -\n\
         step     3/3 | loss 10.7808 | lr 9.75e-5 | norm 2.770 | 346.8 ms | 185 tok/s | MFU -\n\
         peak memory: 135.9 MiB\n",
    )
    .unwrap();
    let json = bench_ok(&["--parse-log", cpu.to_str().unwrap(), "--warmup", "1"]);
    assert_eq!(json_f64(&json, "ms_per_step"), (383.2 + 346.8) / 2.0);
    assert_eq!(json_raw(&json, "engine_mfu"), "null");
    assert_eq!(json_raw(&json, "device"), "null");

    // a step whose update was skipped did less work: left out of the timing; a NaN loss is
    // null in the JSON (which has no NaN)
    let skipped = dir.join("skipped.log");
    std::fs::write(
        &skipped,
        "step     1/4 | loss 10.8027 | lr 3.00e-4 | norm 2.389 | 452.9 ms | 141 tok/s | MFU -\n\
         step     2/4 | loss NaN | lr 2.33e-4 | norm 2.951 | 60.5 ms | 167 tok/s | MFU - | update skipped: loss NaN\n\
         step     3/4 | loss 10.7808 | lr 9.75e-5 | norm 2.770 | 99.0 ms | 185 tok/s | MFU -\n\
         step     4/4 | loss 10.7000 | lr 9.75e-5 | norm 2.770 | 98.0 ms | 185 tok/s | MFU -\n",
    )
    .unwrap();
    let json = bench_ok(&["--parse-log", skipped.to_str().unwrap(), "--warmup", "1"]);
    assert_eq!(json_list(&json, "timed_ms"), [99.0, 98.0], "{json}");
    assert_eq!(json_f64(&json, "ms_per_step"), 98.5);
    assert!(
        json.contains("\"losses\": [10.8027, null, 10.7808, 10.7]"),
        "{json}"
    );

    // what a benchmark cannot use is an error, exit status 1, naming the file
    let (out, _, stderr) = bench(&["--parse-log", cpu.to_str().unwrap(), "--warmup", "3"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cpu.log") && stderr.contains("3 step lines"),
        "{stderr}"
    );
    let empty = dir.join("empty.log");
    std::fs::write(&empty, "error: no CUDA GPU available\n").unwrap();
    let (out, _, stderr) = bench(&["--parse-log", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no 'step N/M"), "{stderr}");
}

/// A results file as `--out` writes it, by hand: an H100, d12 at T=1024.
const RESULTS: &str = r#"{"meta": {"device": "cuda", "device_text": "NVIDIA H100 80GB HBM3, driver 580.00, 81,559 MiB",
 "gpu_name": "NVIDIA H100 80GB HBM3", "peak_tflops": null, "date": "2026-11-22 12:00 UTC",
 "command": "tools/bench --batch 4,8 --precision fp32 bf16", "ran": "train-gpt2-cuda; PyTorch",
 "model": "d12", "params": 124475904, "T": 1024, "steps": 20, "warmup": 3},
 "rows": [
  {"impl": "train-gpt2-cuda", "precision": "fp32", "B": 4, "T": 1024, "status": "ok", "ms_per_step": 100.0,
   "peak_mem_bytes": 1073741824, "peak_mem_source": "its 'peak memory' line"},
  {"impl": "pytorch-eager", "precision": "fp32", "B": 4, "T": 1024, "status": "ok", "ms_per_step": 80.0,
   "peak_mem_bytes": 3221225472, "peak_mem_source": "torch.cuda.max_memory_reserved"},
  {"impl": "pytorch-compile", "precision": "fp32", "B": 4, "T": 1024, "status": "oom", "note": "CUDA out of memory"},
  {"impl": "train-gpt2-cuda", "precision": "fp32", "B": 8, "T": 1024, "status": "error", "note": "exit status 1: boom"},
  {"impl": "pytorch-eager", "precision": "fp32", "B": 8, "T": 1024, "status": "ok", "ms_per_step": 320.0,
   "peak_mem_bytes": null},
  {"impl": "train-gpt2-cuda", "precision": "bf16", "B": 4, "T": 1024, "status": "n/a", "note": "engine has no bf16 yet"},
  {"impl": "pytorch-eager", "precision": "bf16", "B": 4, "T": 1024, "status": "ok", "ms_per_step": 50.0,
   "peak_mem_bytes": 2097152000, "peak_mem_source": "torch.cuda.max_memory_reserved"}
 ]}"#;

#[test]
fn formats_a_results_file() {
    let dir = tmp_dir("report");
    let path = dir.join("results.json");
    std::fs::write(&path, RESULTS).unwrap();
    let report = bench_ok(&["--report", path.to_str().unwrap()]);
    // tokens/s = 4 * 1024 / 0.100 s = 40,960; MFU = 40,960 * 803,478,528 / 66.9e12 = 49.19%;
    // PyTorch eager: 4096 / 0.080 = 51,200 tokens/s, 61.49%, engine / this = 40,960 / 51,200;
    // B=8: 8192 / 0.320 = 25,600 tokens/s, 30.75%, no engine figure to compare with;
    // bf16: 4096 / 0.050 = 81,920 tokens/s against the bf16 peak: 81,920 * 803,478,528 / 989.4e12
    // = 6.65%
    let rows = table_rows(&report);
    let expect: [&[&str]; 7] = [
        &[
            "train-gpt2-cuda",
            "fp32",
            "4",
            "1024",
            "100.0",
            "40,960",
            "49.2%",
            "1,024 MiB",
            "",
        ],
        &[
            "pytorch-eager",
            "fp32",
            "4",
            "1024",
            "80.0",
            "51,200",
            "61.5%",
            "3,072 MiB",
            "0.80x",
        ],
        &[
            "pytorch-compile",
            "fp32",
            "4",
            "1024",
            "OOM",
            "-",
            "-",
            "-",
            "-",
        ],
        &[
            "train-gpt2-cuda",
            "fp32",
            "8",
            "1024",
            "error (exit status 1: boom)",
            "-",
            "-",
            "-",
            "",
        ],
        &[
            "pytorch-eager",
            "fp32",
            "8",
            "1024",
            "320.0",
            "25,600",
            "30.7%",
            "-",
            "-",
        ],
        &[
            "train-gpt2-cuda",
            "bf16",
            "4",
            "1024",
            "n/a (engine has no bf16 yet)",
            "-",
            "-",
            "-",
            "",
        ],
        &[
            "pytorch-eager",
            "bf16",
            "4",
            "1024",
            "50.0",
            "81,920",
            "6.7%",
            "2,000 MiB",
            "-",
        ],
    ];
    assert_eq!(rows.len(), expect.len(), "{report}");
    for (row, want) in rows.iter().zip(expect) {
        assert_eq!(row, want, "{report}");
    }
    // header lines: device, date, command
    assert!(report.starts_with(
        "- device: NVIDIA H100 80GB HBM3, driver 580.00, 81,559 MiB\n- date: 2026-11-22 12:00 UTC\n\
         - command: `tools/bench --batch 4,8 --precision fp32 bf16`\n"
    ));
    assert!(report.contains("803,478,528 FLOPs/token"), "{report}");
    assert!(
        report.contains("peak 66.9 / 494.7 / 989.4 TFLOP/s"),
        "{report}"
    );

    // --peak-tflops (recorded in the results) replaces the table
    let fixed = RESULTS.replace("\"peak_tflops\": null", "\"peak_tflops\": 100.0");
    std::fs::write(&path, fixed).unwrap();
    let rows = table_rows(&bench_ok(&["--report", path.to_str().unwrap()]));
    // 40,960 * 803,478,528 / 100e12 = 32.9%
    assert_eq!(rows[0][6], "32.9%");

    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"rows\": []}").unwrap();
    let (out, _, stderr) = bench(&["--report", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.json") && stderr.contains("not a results file"),
        "{stderr}"
    );
}

/// `--report` on JSON that is not what `--out` writes: one line naming the file and what is wrong
/// (exit status 2, as for a bad argument), never a traceback.
#[test]
fn report_names_what_is_wrong_with_a_results_file() {
    let dir = tmp_dir("bad-report");
    let meta_only = &RESULTS[..RESULTS.find("\"rows\"").unwrap()];
    let cases = [
        (
            r#"{"meta": {}, "rows": []}"#.to_string(),
            "meta: no 'device'",
        ),
        (
            RESULTS.replace("\"model\": \"d12\", ", ""),
            "meta: no 'model'",
        ),
        (
            RESULTS.replace("\"model\": \"d12\"", "\"model\": \"gpt2\""),
            "meta: 'model' is \"gpt2\", expected a descriptor dN",
        ),
        (
            RESULTS.replacen("\"status\": \"ok\", ", "", 1),
            "rows[0]: no 'status'",
        ),
        (
            format!("{meta_only}\"rows\": [1, 2]}}"),
            "rows[0] is 1, not an object",
        ),
        (format!("{meta_only}\"rows\": []}}"), "'rows' is empty"),
        (
            RESULTS.replacen("\"B\": 4", "\"B\": \"x\"", 1),
            "rows[0]: 'B' is \"x\", expected a positive integer",
        ),
        (
            RESULTS.replacen("\"ms_per_step\": 100.0", "\"ms_per_step\": 0", 1),
            "rows[0]: 'ms_per_step' is 0, expected a number > 0",
        ),
        (
            RESULTS.replace("\"note\": \"exit status 1: boom\"", "\"note\": 7"),
            "rows[3]: 'note' is 7, expected a string or null",
        ),
        ("[1, 2]".to_string(), "not a JSON object"),
        ("{\"meta\": ".to_string(), "not JSON"),
    ];
    let path = dir.join("results.json");
    let file = path.to_str().unwrap();
    for (json, what) in &cases {
        std::fs::write(&path, json).unwrap();
        let (out, stdout, stderr) = bench(&["--report", file]);
        let want = format!("error: {file}: not a results file of tools/bench: {what}");
        assert_eq!(out.status.code(), Some(2), "{json}\n{stdout}{stderr}");
        assert!(
            stderr.starts_with(&want),
            "{json}\nwant '{want}' in:\n{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
    // a file that is not there cannot be read, which is another error
    let missing = dir.join("missing.json");
    let (out, _, stderr) = bench(&["--report", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing.json: cannot read"), "{stderr}");
}

/// `--report A B`: one table of two runs' rows (a sweep split over two device calls), the
/// engine/PyTorch ratio taken across the files; files of different configurations are refused.
#[test]
fn merges_results_files_into_one_table() {
    let dir = tmp_dir("merge");
    let engine_run = r#"{"meta": {"device": "cuda", "device_text": "NVIDIA H200, driver 580.00, 143,771 MiB",
 "gpu_name": "NVIDIA H200", "peak_tflops": null, "date": "2026-12-02 10:00 UTC",
 "command": "tools/bench --precision bf16 --batch 8 --pytorch none", "ran": "train-gpt2-cuda",
 "model": "d12", "params": 124475904, "T": 1024, "steps": 20, "warmup": 3},
 "rows": [{"impl": "train-gpt2-cuda", "precision": "bf16", "B": 8, "T": 1024, "status": "ok",
   "ms_per_step": 16.0, "peak_mem_bytes": null}]}"#;
    let torch_run = engine_run
        .replace("10:00 UTC", "10:05 UTC")
        .replace("--pytorch none", "--engine none --pytorch compile")
        .replace("\"ran\": \"train-gpt2-cuda\"", "\"ran\": \"PyTorch 2.9\"")
        .replace(
            "train-gpt2-cuda\", \"precision",
            "pytorch-compile\", \"precision",
        )
        .replace("16.0", "20.0");
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    std::fs::write(&a, engine_run).unwrap();
    std::fs::write(&b, &torch_run).unwrap();
    let report = bench_ok(&["--report", a.to_str().unwrap(), b.to_str().unwrap()]);
    let rows = table_rows(&report);
    // 8 * 1024 / 0.016 s = 512,000 tokens/s; 8 * 1024 / 0.020 s = 409,600; ratio 1.25
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!(
        rows[0][..6],
        ["train-gpt2-cuda", "bf16", "8", "1024", "16.0", "512,000"]
    );
    assert_eq!(rows[1][0], "pytorch-compile");
    assert_eq!(rows[1][5], "409,600");
    assert_eq!(rows[1][8], "1.25x", "{report}");
    assert!(
        report.contains(
            "- date: 2026-12-02 10:00 UTC to 2026-12-02 10:05 UTC\n- command: `tools/bench \
             --precision bf16 --batch 8 --pytorch none` and `tools/bench --precision bf16 --batch \
             8 --engine none --pytorch compile`\n- ran: train-gpt2-cuda; then PyTorch 2.9\n"
        ),
        "{report}"
    );
    // a variant of the engine (--kernels plain) is named in its row, and the ratio is the
    // default engine's in either order of the files
    let plain_run = engine_run
        .replace("--pytorch none", "--pytorch none --kernels plain")
        .replace(
            "\"ms_per_step\": 16.0",
            "\"ms_per_step\": 24.0, \"variant\": \"plain kernels\"",
        );
    let p = dir.join("plain.json");
    std::fs::write(&p, &plain_run).unwrap();
    for files in [[&p, &a, &b], [&a, &p, &b], [&b, &p, &a]] {
        let args: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
        let report = bench_ok(&[&["--report"][..], &args].concat());
        let rows = table_rows(&report);
        let plain = rows.iter().find(|r| r[4] == "24.0").expect("the plain row");
        assert_eq!(plain[0], "train-gpt2-cuda (plain kernels)", "{report}");
        let torch = rows.iter().find(|r| r[0] == "pytorch-compile").unwrap();
        assert_eq!(torch[8], "1.25x", "{files:?}: {report}");
    }
    // with the plain variant alone, the ratio is its own
    let report = bench_ok(&["--report", p.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(table_rows(&report)[1][8], "0.83x", "{report}");

    // `--report first` with a file `name` of `text`: refused as not one table (exit status 2);
    // its stderr
    let refused = |first: &Path, name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let (out, _, stderr) =
            bench(&["--report", first.to_str().unwrap(), path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        stderr
    };

    // on the CPU, another machine's run (its description) is another table
    let cpu_run = engine_run.replace("\"device\": \"cuda\"", "\"device\": \"cpu\"");
    let c1 = dir.join("cpu1.json");
    std::fs::write(&c1, &cpu_run).unwrap();
    let stderr = refused(
        &c1,
        "cpu2.json",
        cpu_run.replace("NVIDIA H200, driver", "another CPU, driver"),
    );
    assert!(stderr.contains("cpu2.json: device_text is"), "{stderr}");

    // another T is another table
    let stderr = refused(
        &a,
        "other.json",
        torch_run.replace("\"T\": 1024, \"steps", "\"T\": 512, \"steps"),
    );
    assert!(
        stderr.contains("other.json: T is 512, but") && stderr.contains("not one table"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_with_status_2() {
    let eng = engine();
    let cases: &[(&[&str], &str)] = &[
        (&["--batch", "0"], "--batch '0'"),
        (&["--batch", "4,x"], "got 'x'"),
        (&["--batch", "-4"], "positive integer"),
        (&["--precision", "fp16"], "unknown precision 'fp16'"),
        (&["--precision", "fp32,int8"], "unknown precision 'int8'"),
        (&["--seq", "2048"], "T must be at most 1024"),
        (&["--seq", "0"], "--seq '0'"),
        (&["--model", "d0"], "expected a descriptor dN"),
        (&["--model", "gpt2.bin"], "expected a descriptor dN"),
        (&["--pytorch", "jit"], "unknown mode 'jit'"),
        (&["--steps", "0"], "--steps '0'"),
        (&["--warmup", "x"], "--warmup 'x'"),
        (&["--device", "cpu", "--precision", "tf32"], "tf32"),
        (
            &["--device", "cpu", "--kernels", "plain"],
            "--kernels chooses",
        ),
        (
            &["--device", "cpu", "--recompute", "gelu"],
            "--recompute changes the CUDA engine's backward pass",
        ),
        (&["--kernels", "flash"], "invalid choice"),
        (&["--peak-tflops", "-3"], "--peak-tflops"),
        (
            &["--peak-tflops", "0"],
            "--peak-tflops must be a positive number, got '0'",
        ),
        (
            &["--peak-tflops", "inf"],
            "--peak-tflops must be a positive number, got 'inf'",
        ),
        (
            &["--peak-tflops", "nan"],
            "--peak-tflops must be a positive number, got 'nan'",
        ),
        (
            &["--peak-tflops", "x"],
            "--peak-tflops must be a positive number, got 'x'",
        ),
        (&["--device", "tpu"], "invalid choice"),
        (&["--engine", "none", "--pytorch", "none"], "nothing to run"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--engine", eng.as_str(), "--device", "cpu", "--dry-run"];
        all.extend_from_slice(args);
        let (out, stdout, stderr) = bench(&all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(needle),
            "{all:?}: stderr lacks '{needle}': {stderr}"
        );
        assert!(stdout.is_empty(), "{all:?}: {stdout}");
    }
    // --mfu-info checks --peak-tflops as a run does (and gives it as the peak of every precision)
    for bad in ["0", "-1", "inf", "1e999", "nan"] {
        let (out, stdout, stderr) = bench(&["--mfu-info", "--peak-tflops", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!(
                "--peak-tflops must be a positive number, got '{bad}'"
            )),
            "{bad}: {stderr}"
        );
        assert!(stdout.is_empty(), "{bad}: {stdout}");
    }
    let json = bench_ok(&["--mfu-info", "--peak-tflops", "100"]);
    assert_eq!(json_f64(&json, "bf16"), 100.0, "{json}");
    // a missing engine binary: an error when it would run, a warning in a dry run
    let missing = root().join("no/such/train-gpt2-cuda");
    let missing = missing.to_str().unwrap();
    let (out, _, stderr) = bench(&["--engine", missing, "--device", "cpu", "--pytorch", "none"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(missing) && stderr.contains("missing"),
        "{stderr}"
    );
    let (out, stdout, stderr) = bench(&["--engine", missing, "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning") && stdout.contains(missing));
}

#[test]
fn dry_run_prints_the_commands_and_runs_nothing() {
    let dir = tmp_dir("dry");
    let results = dir.join("results.json");
    let eng = engine();
    let stdout = bench_ok(&[
        "--dry-run",
        "--engine",
        &eng,
        "--batch",
        "4,8",
        "--precision",
        "fp32",
        "tf32,bf16",
        "--steps",
        "7",
        "--warmup",
        "2",
        "--out",
        results.to_str().unwrap(),
    ]);
    assert!(!results.exists(), "a dry run wrote {}", results.display());
    let engine_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&eng)).collect();
    let torch_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("bench_pytorch.py"))
        .collect();
    // engine: fp32, tf32 and bf16 at B=4 and 8. PyTorch: eager and compile, 3 x 2
    assert_eq!(engine_lines.len(), 6, "{stdout}");
    assert_eq!(torch_lines.len(), 12, "{stdout}");
    assert!(!stdout.contains("not run"), "{stdout}");
    // warm-up + timed steps for the engine, each flag as the engine's TrainArgs names it
    let first = engine_lines[0];
    for flag in [
        "--device cuda",
        "--model d12",
        "--batch 4",
        "--seq 1024",
        "--steps 9",
        "--val-every 0",
        "--sample-tokens 0",
        "--no-state",
    ] {
        assert!(first.contains(flag), "{first} lacks {flag}");
    }
    assert!(!first.contains("--tf32") && engine_lines[2].ends_with("--precision fp32 --tf32"));
    assert!(first.ends_with("--precision fp32"), "{first}");
    assert!(
        engine_lines[4].ends_with("--precision bf16"),
        "{}",
        engine_lines[4]
    );
    assert!(engine_lines[5].contains("--batch 8"), "{}", engine_lines[5]);
    assert!(
        torch_lines[0].ends_with("--steps 7 --warmup 2"),
        "{}",
        torch_lines[0]
    );
    assert!(torch_lines[1].ends_with("--compile"), "{}", torch_lines[1]);
    assert!(torch_lines[11].ends_with("--compile --bf16"));

    // --kernels, --no-cuda-graphs and --recompute go to the engine only
    let stdout = bench_ok(&[
        "--dry-run",
        "--engine",
        &eng,
        "--batch",
        "8",
        "--precision",
        "bf16",
        "--kernels",
        "plain",
        "--no-cuda-graphs",
        "--recompute",
        "gelu",
    ]);
    let engine_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&eng)).collect();
    assert_eq!(engine_lines.len(), 1, "{stdout}");
    assert!(
        engine_lines[0]
            .ends_with("--precision bf16 --kernels plain --no-cuda-graphs --recompute gelu"),
        "{stdout}"
    );
    assert!(!stdout.lines().any(|l| l.contains("bench_pytorch.py")
        && (l.contains("--kernels") || l.contains("graphs") || l.contains("recompute"))));
}

/// `--batch 4,4` runs B=4 once, with a note, as `--precision` and `--pytorch` do with a repeat.
#[test]
fn a_value_given_twice_runs_once() {
    let eng = engine();
    let (out, stdout, stderr) = bench(&[
        "--dry-run",
        "--engine",
        &eng,
        "--batch",
        "4,8,4,8,16",
        "--precision",
        "fp32,bf16",
        "FP32",
        "--pytorch",
        "eager,eager",
    ]);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let engine_batches: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with(&eng))
        .map(|l| {
            l.split("--batch ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(engine_batches, ["4", "8", "16", "4", "8", "16"], "{stdout}");
    let torch_lines = stdout.lines().filter(|l| l.contains("bench_pytorch.py"));
    assert_eq!(torch_lines.count(), 6, "{stdout}");
    for note in [
        "note: --batch: 4, 8 given more than once, run once",
        "note: --precision: fp32 given more than once, run once",
        "note: --pytorch: eager given more than once, run once",
    ] {
        assert!(stderr.contains(note), "no '{note}' in:\n{stderr}");
    }
}

#[test]
fn bf16_on_the_cpu_is_a_note_not_a_run() {
    let eng = engine();
    let stdout = bench_ok(&[
        "--dry-run",
        "--device",
        "cpu",
        "--engine",
        &eng,
        "--batch",
        "2",
        "--precision",
        "fp32,bf16",
        "--pytorch",
        "none",
    ]);
    let engine_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&eng)).collect();
    assert_eq!(engine_lines.len(), 1, "{stdout}");
    assert!(engine_lines[0].ends_with("--precision fp32"), "{stdout}");
    assert!(
        stdout.contains("bf16 B=2: not run (the CPU engine computes in fp32 only)"),
        "{stdout}"
    );
}

/// The table's rows of a CPU run, with the checks every run gets: the engine row's tokens/s is
/// B*T over its ms/step, and --report re-prints the same table from the --out file.
fn check_cpu_run(stdout: &str, results: &Path) -> Vec<Vec<String>> {
    assert!(stdout.starts_with("- device: "), "{stdout}");
    assert!(stdout.contains("\n- date: 20"), "{stdout}");
    assert!(
        stdout.contains("\n- command: `tools/bench --device cpu --model d1 --seq 32 --batch 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("median ms/step over 3 timed steps after 1 warm-up step;"),
        "{stdout}"
    );
    let rows = table_rows(stdout);
    let e = &rows[0];
    assert_eq!(e[..4], ["train-gpt2-cuda", "fp32", "2", "32"], "{stdout}");
    let ms = num(&e[4]);
    assert!(ms > 0.0, "{stdout}");
    // ms/step has one decimal, tokens/s none: 64 tokens / (ms / 1000), within that rounding
    let tok_s = num(&e[5]);
    let lo = 64e3 / (ms + 0.05);
    let hi = 64e3 / (ms - 0.05).max(1e-3);
    assert!(tok_s >= lo - 0.5 && tok_s <= hi + 0.5, "{stdout}");
    assert_eq!(e[6], "-", "no MFU on the CPU: {stdout}");
    assert!(e[7].ends_with(" MiB") && num(&e[7]) > 0.0, "{stdout}");
    assert_eq!(e[8], "");

    let json = std::fs::read_to_string(results).unwrap();
    // 1 warm-up + 3 timed steps run, the median over the 3 timed ones
    assert_eq!(json_f64(&json, "steps_run"), 4.0, "{json}");
    let mut timed = json_list(&json, "timed_ms");
    assert_eq!(timed.len(), 3, "{json}");
    timed.sort_by(f64::total_cmp);
    assert_eq!(json_f64(&json, "ms_per_step"), timed[1], "{json}");
    let again = bench_ok(&["--report", results.to_str().unwrap()]);
    assert_eq!(again, stdout);
    rows
}

#[test]
fn engine_only_run_on_the_cpu() {
    let dir = tmp_dir("cpu");
    let results = dir.join("results.json");
    let eng = engine();
    let stdout = bench_ok(&[
        "--device",
        "cpu",
        "--model",
        "d1",
        "--seq",
        "32",
        "--batch",
        "2",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--pytorch",
        "none",
        "--engine",
        &eng,
        "--out",
        results.to_str().unwrap(),
    ]);
    let rows = check_cpu_run(&stdout, &results);
    assert_eq!(rows.len(), 1, "{stdout}");
    assert!(
        stdout.contains("PyTorch: not run (--pytorch none)"),
        "{stdout}"
    );
    eprintln!(
        "bench_tool: ran the engine on the CPU (PyTorch part: see the ignored test)\n{stdout}"
    );
}

/// Writes an executable shell script.
fn script(path: &Path, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// A stand-in for the Python with PyTorch: answers tools/bench's probe (`-c "import torch..."`)
/// with a version and CUDA availability, and a benchmark run (bench_pytorch.py ARGS) with `line`.
fn fake_python(dir: &Path, cuda: bool, line: &str) -> String {
    let cuda = if cuda { "True" } else { "False" };
    script(
        &dir.join("python"),
        &format!(
            "case \"$2\" in *'import torch'*) echo '2.99.0 {cuda}'; exit 0;; esac\n\
             case \"$1\" in -c) exit 1;; esac\n\
             echo 'some log line'\necho '{line}'\n"
        ),
    )
}

#[test]
fn out_of_memory_on_either_side_is_an_oom_row() {
    let dir = tmp_dir("oom");
    let eng = script(
        &dir.join("engine"),
        "echo 'model: L=1 NH=1 C=64 (3.3M parameters) on cpu (2 threads)'\n\
         echo 'error: not enough GPU memory: the model needs 90 GiB, the GPU has 79 GiB free' >&2\n\
         exit 1\n",
    );
    let py = fake_python(
        &dir,
        false,
        r#"{"impl": "pytorch-eager", "B": 2, "T": 32, "error": "out of memory", "message": "CUDA out of memory"}"#,
    );
    let (out, stdout, stderr) = bench(&[
        "--device",
        "cpu",
        "--model",
        "d1",
        "--seq",
        "32",
        "--batch",
        "2",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--pytorch",
        "eager",
        "--engine",
        &eng,
        "--python",
        &py,
    ]);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let rows = table_rows(&stdout);
    assert_eq!(rows.len(), 2, "{stdout}");
    assert_eq!(rows[0][..5], ["train-gpt2-cuda", "fp32", "2", "32", "OOM"]);
    assert_eq!(rows[1][..5], ["pytorch-eager", "fp32", "2", "32", "OOM"]);
    assert_eq!(rows[1][5..], ["-", "-", "-", "-"]);

    // any other failure is an error row and exit status 1, the table printed all the same
    let eng = script(
        &dir.join("engine2"),
        "echo 'error: something else' >&2\nexit 1\n",
    );
    let (out, stdout, stderr) = bench(&[
        "--device",
        "cpu",
        "--model",
        "d1",
        "--seq",
        "32",
        "--batch",
        "2",
        "--pytorch",
        "none",
        "--engine",
        &eng,
    ]);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let rows = table_rows(&stdout);
    assert_eq!(
        rows[0][4], "error (exit status 1: error: something else)",
        "{stdout}"
    );
}

/// An engine that cannot run on a GPU (no GPU, no driver): the benchmark stops at its first run
/// with one line that holds the engine's whole error line, exit status 1, no table (so no MFU line
/// about a GPU called 'None'); nothing else runs, PyTorch included, and no --out file is written.
#[test]
fn an_engine_without_a_gpu_stops_the_benchmark_at_its_first_run() {
    let dir = tmp_dir("nogpu");
    let runs = dir.join("runs");
    let error = "error: no CUDA GPU available: the CUDA driver library (libcuda.so) could not be \
                 loaded; is the NVIDIA driver installed?";
    let eng = script(
        &dir.join("engine"),
        &format!(
            "echo run >> '{}'\necho 'model: L=12 NH=12 C=768'\necho '{error}' >&2\nexit 1\n",
            runs.display()
        ),
    );
    let py = fake_python(&dir, true, "{}");
    let results = dir.join("results.json");
    let no_smi = dir.join("no-nvidia-smi");
    let (out, stdout, stderr) = bench_env(
        &[
            "--device",
            "cuda",
            "--batch",
            "4,8",
            "--precision",
            "fp32",
            "bf16",
            "--pytorch",
            "eager",
            "--engine",
            &eng,
            "--python",
            &py,
            "--out",
            results.to_str().unwrap(),
        ],
        &[("BENCH_NVIDIA_SMI", no_smi.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "no table: {stdout}");
    // 2 precisions x 2 batch sizes x (the engine, PyTorch eager): 7 runs after the first
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!(
            "error: train-gpt2-cuda cannot run on a GPU here, so tools/bench stopped (7 other runs \
             skipped): train-gpt2-cuda fp32 B=4 ended with exit status 1: {error}"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("peak table") && !stderr.contains("[2/8]"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    assert!(!results.exists());

    // The engine itself, d1 on --device cuda: where it cannot run on a GPU (a build without
    // kernels, a machine without a GPU), its error is one tools/bench knows; elsewhere it runs.
    let eng = engine();
    let args = [
        "--device",
        "cuda",
        "--model",
        "d1",
        "--seq",
        "32",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--pytorch",
        "none",
        "--engine",
        &eng,
    ];
    let (out, stdout, stderr) = bench(&args);
    if stderr.contains("cannot run on a GPU here") {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains("ended with exit status 1: error: this build has no CUDA kernels")
                || stderr.contains("ended with exit status 1: error: no CUDA GPU available"),
            "{stderr}"
        );
    } else {
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    }
}

/// Any other engine failure is an error row, its cell cut to fit the table; the engine's whole
/// error line (its first 'error:' line, not the last line it printed) follows the table on
/// stderr. With no GPU name from nvidia-smi or a run, the MFU line says so (not 'None').
#[test]
fn an_engine_error_is_told_whole_after_the_table() {
    let dir = tmp_dir("engine-error");
    let error = format!(
        "error: cannot read data/x.bin: {}the end",
        "one reason after another, ".repeat(6)
    );
    let eng = script(
        &dir.join("engine"),
        &format!(
            "echo 'note: a note' >&2\necho '{error}' >&2\necho 'hint: see above' >&2\nexit 1\n"
        ),
    );
    let no_smi = dir.join("no-nvidia-smi");
    let (out, stdout, stderr) = bench_env(
        &[
            "--device",
            "cuda",
            "--batch",
            "4",
            "--pytorch",
            "none",
            "--engine",
            &eng,
        ],
        &[("BENCH_NVIDIA_SMI", no_smi.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let rows = table_rows(&stdout);
    assert!(
        rows[0][4].starts_with("error (exit status 1: error: cannot read data/x.bin: one reason")
            && rows[0][4].ends_with("...)"),
        "{stdout}"
    );
    assert_eq!(
        stderr.lines().last().unwrap(),
        format!("error: train-gpt2-cuda fp32 B=4 T=1024: exit status 1: {error}"),
        "{stderr}"
    );
    assert!(
        stdout.contains("- MFU: not computed: the GPU's name is unknown")
            && !stdout.contains("'None'"),
        "{stdout}"
    );
}

/// `tools/bench --device cuda` for d12, B=4, T=1024, with a stand-in engine printing `engine_log`,
/// a stand-in PyTorch answering 80 ms/step, and `smi` as nvidia-smi; (exit status, stdout, stderr).
fn stand_in_gpu_run(dir: &Path, engine_log: &str, smi: &str) -> (Option<i32>, String, String) {
    stand_in_gpu_run_with(dir, engine_log, None, TORCH_LINE, smi)
}

/// The stand-in PyTorch's result line: 80 ms/step at B=4, T=1024 in fp32.
const TORCH_LINE: &str = r#"{"impl": "pytorch-eager", "precision": "fp32", "B": 4, "T": 1024, "params": 124475904, "ms_per_step": 80.0, "peak_mem_bytes": 3221225472, "peak_mem_source": "torch.cuda.max_memory_reserved"}"#;

/// [`stand_in_gpu_run`] with a stand-in engine that also writes `jsonl` as its run's log.jsonl,
/// and a stand-in PyTorch printing `torch_line`.
fn stand_in_gpu_run_with(
    dir: &Path,
    engine_log: &str,
    jsonl: Option<&str>,
    torch_line: &str,
    smi: &str,
) -> (Option<i32>, String, String) {
    let log = dir.join("gpu.log");
    std::fs::write(&log, engine_log).unwrap();
    let mut body = "sleep 1\n".to_string();
    if let Some(jsonl) = jsonl {
        let j = dir.join("gpu.jsonl");
        std::fs::write(&j, jsonl).unwrap();
        body += &format!(
            "while [ $# -gt 0 ]; do [ \"$1\" = --out-dir ] && mkdir -p \"$2\" && cp '{}' \"$2/log.jsonl\"; \
             shift; done\n",
            j.display()
        );
    }
    body += &format!("cat '{}'\n", log.display());
    let eng = script(&dir.join("engine"), &body);
    let py = fake_python(dir, true, torch_line);
    let args = [
        "--device",
        "cuda",
        "--model",
        "d12",
        "--seq",
        "1024",
        "--batch",
        "4",
        "--steps",
        "4",
        "--warmup",
        "1",
        "--pytorch",
        "eager",
        "--engine",
        &eng,
        "--python",
        &py,
    ];
    let out = Command::new("python3")
        .arg(root().join("tools/bench"))
        .args(args)
        .env("BENCH_NVIDIA_SMI", smi)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stdout, stderr)
}

/// The PyTorch row of both stand-in runs: 4096 / 0.080 = 51,200 tokens/s, 61.5% of 66.9 TFLOP/s,
/// engine / this = 41,062.66 / 51,200 = 0.80.
const TORCH_ROW: [&str; 9] = [
    "pytorch-eager",
    "fp32",
    "4",
    "1024",
    "80.0",
    "51,200",
    "61.5%",
    "3,072 MiB",
    "0.80x",
];

#[test]
fn a_gpu_run_with_stand_ins_for_the_engine_and_pytorch() {
    // The whole --device cuda path without a GPU. No nvidia-smi: the GPU's name comes from the
    // engine's log, the memory from its 'peak memory' line.
    let dir = tmp_dir("fakegpu");
    let missing = dir.join("no-nvidia-smi");
    let (code, stdout, stderr) = stand_in_gpu_run(&dir, GPU_LOG, missing.to_str().unwrap());
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let rows = table_rows(&stdout);
    // the engine: median of 101.5, 99.0, 100.5, 98.0 = 99.75 ms -> 4096 / 0.09975 = 41,063
    // tokens/s; MFU 41,062.66 * 803,478,528 / 66.9e12 = 49.3%; its 'peak memory' line 5,123.5 MiB
    let engine_row = [
        "train-gpt2-cuda",
        "fp32",
        "4",
        "1024",
        "99.8",
        "41,063",
        "49.3%",
        "5,124 MiB",
        "",
    ];
    assert_eq!(rows, [engine_row, TORCH_ROW], "{stdout}");
    assert!(
        stdout.starts_with("- device: NVIDIA H100 80GB HBM3 (driver unknown: no nvidia-smi)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("PyTorch 2.99.0"), "{stdout}");

    // With nvidia-smi (a stand-in: an H200; 500 MiB used before the engine starts, 2,548 MiB
    // while it runs) and an engine that prints no peak memory: the header names the GPU and its
    // driver, and the engine's memory is what nvidia-smi saw above the idle level, 2,048 MiB.
    let seen = dir.join("seen");
    let smi = script(
        &dir.join("nvidia-smi"),
        &format!(
            "case \"$1\" in\n\
             *memory.used*) if [ -f '{0}' ]; then echo 2548; else touch '{0}'; echo 500; fi;;\n\
             *name*) echo 'NVIDIA H200, 580.00, 143771';;\n\
             *) exit 1;;\n\
             esac\n",
            seen.display()
        ),
    );
    let log: String = GPU_LOG
        .lines()
        .filter(|l| !l.starts_with("peak memory"))
        .map(|l| format!("{l}\n"))
        .collect();
    let (code, stdout, stderr) = stand_in_gpu_run(&dir, &log, &smi);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("- device: NVIDIA H200, driver 580.00, 143,771 MiB\n"),
        "{stdout}"
    );
    let rows = table_rows(&stdout);
    // the H200's fp32 peak is the H100's: the same MFU
    let engine_row = [
        "train-gpt2-cuda",
        "fp32",
        "4",
        "1024",
        "99.8",
        "41,063",
        "49.3%",
        "2,048 MiB (smi)",
        "",
    ];
    assert_eq!(rows, [engine_row, TORCH_ROW], "{stdout}");
    assert!(
        stdout.contains("train-gpt2-cuda: (smi) nvidia-smi's memory.used above"),
        "{stdout}"
    );

    // The run's log.jsonl gives the step times unrounded (the step lines round to 0.1 ms):
    // the median of 101.46, 99.04, 100.54, 97.96 is 99.79 ms -> 4096 / 0.09979 = 41,046 tokens/s
    let jsonl: String = [912.43, 101.46, 99.04, 100.54, 97.96]
        .iter()
        .enumerate()
        .map(|(i, ms)| format!("{{\"step\": {}, \"loss\": 10.0, \"ms\": {ms}}}\n", i + 1))
        .collect();
    let (code, stdout, stderr) = stand_in_gpu_run_with(
        &dir,
        GPU_LOG,
        Some(&jsonl),
        TORCH_LINE,
        missing.to_str().unwrap(),
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let rows = table_rows(&stdout);
    assert_eq!(rows[0][4..6], ["99.8", "41,046"], "{stdout}");
}

/// A run whose figures are of another configuration than its row's is an error row, not
/// figures under the wrong heading: an engine whose model line says it ran in bf16 where the
/// row is fp32 (as a fallback would), and a PyTorch result line for another B.
#[test]
fn figures_of_another_configuration_are_not_put_in_a_row() {
    let dir = tmp_dir("otherconfig");
    let smi = dir.join("no-nvidia-smi");
    let smi = smi.to_str().unwrap();
    let said = |p: &str| {
        GPU_LOG.replace(
            "HBM3 (sm_90)\n",
            &format!("HBM3 (sm_90), {p}, fused kernels, CUDA graphs\n"),
        )
    };
    // the model line agrees with the row (fp32, the default): figures as before
    let (code, stdout, stderr) = stand_in_gpu_run_with(&dir, &said("fp32"), None, TORCH_LINE, smi);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(table_rows(&stdout)[0][4], "99.8", "{stdout}");
    // it ran bf16
    let (code, stdout, stderr) = stand_in_gpu_run_with(&dir, &said("bf16"), None, TORCH_LINE, smi);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let rows = table_rows(&stdout);
    assert!(
        rows[0][4].starts_with("error (the engine ran bf16, fused kernels, not fp32"),
        "{stdout}"
    );
    // PyTorch's line is for B=8
    let b8 = TORCH_LINE.replace("\"B\": 4", "\"B\": 8");
    let (code, stdout, stderr) = stand_in_gpu_run_with(&dir, GPU_LOG, None, &b8, smi);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let rows = table_rows(&stdout);
    assert_eq!(
        rows[1][4], "error (PyTorch's result line has B 8, not 4)",
        "{stdout}"
    );
}

/// The Python with PyTorch: $TORCH_PYTHON, else python3.
fn torch_python() -> String {
    let py = std::env::var("TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import torch"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "'{py}' cannot import torch: set TORCH_PYTHON to a Python with PyTorch"
    );
    py
}

#[test]
#[ignore = "needs PyTorch: TORCH_PYTHON=/path/to/python (else python3) and --include-ignored"]
fn engine_and_pytorch_eager_on_the_cpu() {
    let py = torch_python();
    let dir = tmp_dir("cpu-torch");
    let results = dir.join("results.json");
    let eng = engine();
    let stdout = bench_ok(&[
        "--device",
        "cpu",
        "--model",
        "d1",
        "--seq",
        "32",
        "--batch",
        "2",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--pytorch",
        "eager",
        "--engine",
        &eng,
        "--python",
        &py,
        "--out",
        results.to_str().unwrap(),
    ]);
    let rows = check_cpu_run(&stdout, &results);
    assert_eq!(rows.len(), 2, "{stdout}");
    let p = &rows[1];
    assert_eq!(p[..4], ["pytorch-eager", "fp32", "2", "32"], "{stdout}");
    let (engine_tok, torch_tok) = (num(&rows[0][5]), num(&p[5]));
    assert!(torch_tok > 0.0 && num(&p[7]) > 0.0, "{stdout}");
    // engine / this, from the rounded cells: within their rounding of the printed ratio
    let ratio = num(&p[8]);
    let want = engine_tok / torch_tok;
    assert!(
        (ratio - want).abs() <= 0.005 + want * 1.0 / torch_tok.min(engine_tok),
        "{stdout}"
    );
    assert!(stdout.contains("PyTorch 2."), "{stdout}");
    eprintln!("bench_tool: ran the engine and PyTorch eager on the CPU\n{stdout}");
}

#[test]
#[ignore = "needs a CUDA GPU and PyTorch with CUDA"]
fn engine_and_pytorch_on_the_gpu() {
    let py = torch_python();
    let dir = tmp_dir("gpu");
    let results = dir.join("results.json");
    let eng = engine();
    let stdout = bench_ok(&[
        "--device",
        "cuda",
        "--model",
        "d2",
        "--seq",
        "64",
        "--batch",
        "2,4",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--precision",
        "fp32,tf32,bf16",
        "--pytorch",
        "eager",
        "--engine",
        &eng,
        "--python",
        &py,
        "--out",
        results.to_str().unwrap(),
    ]);
    eprintln!("{stdout}");
    let rows = table_rows(&stdout);
    // per precision and B: the engine, then PyTorch eager
    assert_eq!(rows.len(), 3 * 2 * 2, "{stdout}");
    let known_gpu = ["A100", "H100", "H200"].iter().any(|g| stdout.contains(g));
    for r in &rows {
        assert!(num(&r[4]) > 0.0, "{r:?}\n{stdout}");
        // the engine's memory comes from nvidia-smi samples, which a short run can miss
        assert!(r[7].contains("MiB") || r[0] == "train-gpt2-cuda", "{r:?}");
        if known_gpu {
            assert!(r[6].ends_with('%'), "{r:?}");
        }
        if r[0] == "pytorch-eager" && r[1] != "bf16" {
            assert!(r[8].ends_with('x'), "{r:?}");
        }
    }
}
