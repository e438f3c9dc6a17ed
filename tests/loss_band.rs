//! tools/loss_band.py (does a bf16 run track the fp32 run?) on hand-made logs: window means and
//! validation losses compared by hand, a run that drifts fails, bad input is exit status 2.

use std::path::PathBuf;
use std::process::Command;

fn root() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

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
    let out = Command::new("python3")
        .arg(format!("{}/tools/loss_band.py", root()))
        .args(args)
        .output()
        .expect("python3 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
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
        out.contains("the runs differ in length: 4 vs 3 steps"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
