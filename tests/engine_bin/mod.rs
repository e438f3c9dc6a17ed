//! Where the test files that run the `train-gpt2-cuda` command find it and the project: the
//! engine cargo built, or, on a GPU machine (test executables built elsewhere and copied by
//! `../shared/gpu/pack`, where the build path does not exist), the one the pack put in
//! `.gpu/bin`; the project root from the run-time CARGO_MANIFEST_DIR when set (on-gpu.sh sets it).
//! And what those files read in its output and its files, and a reader for tests of readers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub mod pytorch_train;

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// A test's folder, removed when it is dropped unless the thread is panicking: a test that passes
/// leaves nothing behind (the runs of `tests/cli.rs` write a few GB of checkpoints, those of
/// `tests/emulated_cli.rs` over 1 GB), and a test that fails keeps its files to be looked at. Hold
/// it for as long as the folder is used: `scratch(..).join(..)` removes the folder at the end of
/// the statement.
pub struct TempFolder(PathBuf);

impl TempFolder {
    /// The folder `d`, emptied (what an earlier run of the test left there removed) or made.
    fn fresh(d: PathBuf) -> TempFolder {
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempFolder(d)
    }
}

impl std::ops::Deref for TempFolder {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for TempFolder {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempFolder {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh, empty folder `name` for a test, removed when the test passes (see `TempFolder`): under
/// the build's target/tmp, or the system's temp folder where the build path does not exist (test
/// executables copied to a GPU machine).
pub fn scratch(name: &str) -> TempFolder {
    let built = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let base = if built.is_dir() {
        built
    } else {
        std::env::temp_dir()
    };
    TempFolder::fresh(base.join(name))
}

/// A fresh, empty folder `PREFIX-PID-NAME` in the system's temp folder, for a test of this process
/// (PID), removed when the test passes (see `TempFolder`). The first call of a process for a prefix
/// also removes the folders that earlier test processes left under it and that are gone (no
/// /proc/PID): those of failed tests, or of a run that was killed.
pub fn temp_folder(prefix: &str, name: &str) -> TempFolder {
    static SWEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let tmp = std::env::temp_dir();
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    if !swept.iter().any(|p| p == prefix) {
        swept.push(prefix.to_string());
        let head = format!("{prefix}-");
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let file_name = entry.file_name();
            let pid = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(&head))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid {
                let gone = !Path::new(&format!("/proc/{pid}")).exists();
                if pid != std::process::id() && gone {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    drop(swept);
    TempFolder::fresh(tmp.join(format!("{prefix}-{}-{name}", std::process::id())))
}

/// A reader that hands out at most `step` bytes per call, a different number each time (1 to
/// `step`), so that reads end inside characters, runs of spaces and compressed blocks.
pub struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
    calls: usize,
}

impl<'a> Trickle<'a> {
    pub fn new(bytes: &'a [u8], step: usize) -> Trickle<'a> {
        Trickle {
            bytes,
            step,
            calls: 0,
        }
    }
}

/// Everything `r` reads, asked for `out` bytes at a time.
pub fn read_in_pieces(mut r: impl std::io::Read, out: usize) -> std::io::Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; out];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(all);
        }
        all.extend_from_slice(&buf[..n]);
    }
}

/// The message of the error that reading all of `r` ends with, which must be
/// `io::ErrorKind::InvalidData` (panics if it reads without one).
pub fn invalid_data_error(mut r: impl std::io::Read) -> String {
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => panic!("no error"),
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
            e.to_string()
        }
    }
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        let n = (1 + self.calls % self.step)
            .min(buf.len())
            .min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// The engine binary.
pub fn engine() -> PathBuf {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_train-gpt2-cuda"));
    if built.exists() {
        built
    } else {
        root().join(".gpu/bin/train-gpt2-cuda")
    }
}

/// A command running the engine binary.
pub fn bin() -> Command {
    Command::new(engine())
}

/// A command running the engine binary under an address-space limit of `kib` KiB (`ulimit -v`),
/// on one rayon thread: a read or an allocation that would take all the memory fails there at
/// once.
pub fn limited(kib: u64) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &format!("ulimit -v {kib} && exec \"$0\" \"$@\"")])
        .arg(engine())
        .env("RAYON_NUM_THREADS", "1");
    cmd
}

/// The words of a command line written as one string ("--batch 2 --seq 16"), as arguments.
pub fn flags(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The lines of a training log that start with one of `kinds` (e.g. "step ", "val loss"), each
/// without its timings (the fields after loss, lr and norm): what two runs of the same numbers
/// print alike.
pub fn log_lines(log: &str, kinds: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| kinds.iter().any(|k| l.starts_with(k)))
        .map(|l| l.split(" | ").take(4).collect::<Vec<_>>().join(" | "))
        .collect()
}

/// The number of a step line's field `name`, whether it comes before the number ("loss 10.8",
/// "MFU 1.4%": the % dropped) or after it ("77.8 ms", "411 tok/s"), parsed as T. Panics without
/// one.
pub fn step_field<T: std::str::FromStr>(line: &str, name: &str) -> T {
    line.split(" | ")
        .find_map(|field| {
            let field = field.trim();
            let number = field
                .strip_prefix(name)
                .or_else(|| field.strip_suffix(name))?;
            number.trim().trim_end_matches('%').parse().ok()
        })
        .unwrap_or_else(|| panic!("no number for {name:?} in {line:?}"))
}

/// The `step ... | loss X` values of a training log, in order.
pub fn step_losses(log: &str) -> Vec<f32> {
    log.lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| step_field(l, "loss"))
        .collect()
}

/// N of a step line `step N/STEPS | ...`; None for any other line.
pub fn step_number(line: &str) -> Option<usize> {
    line.strip_prefix("step ")?
        .trim_start()
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Panics unless each of `files` has the same bytes in folders `a` and `b`; `what` says which
/// runs they are.
pub fn assert_same_files(a: &Path, b: &Path, files: &[&str], what: &str) {
    for f in files {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{what}: {f} differs");
    }
}

/// The corpus of the outlier tests, in `dir`: `spike.bin`, `batches` batches of 2 x 16 tokens of
/// the repeated pattern 10 11 12 13, the targets of the batches `spikes` (from 0) random (the last
/// one's last target, the next batch's first input, stays the pattern's), and `pattern.bin`, 4
/// such batches without a spike (for validation).
pub fn write_spike_corpus(dir: &Path, batches: usize, spikes: std::ops::Range<usize>) {
    use train_gpt2_cuda::formats::shard::write_shard;
    let pattern = |n: usize| -> Vec<u32> { (0..n).map(|i| 10 + (i % 4) as u32).collect() };
    let mut tokens = pattern(batches * 32 + 1);
    let mut rng = train_gpt2_cuda::rng::Rng::new(5);
    for tok in &mut tokens[spikes.start * 32 + 1..spikes.end * 32] {
        *tok = 100 + rng.below(50_000) as u32;
    }
    write_shard(&dir.join("spike.bin"), &tokens).unwrap();
    write_shard(&dir.join("pattern.bin"), &pattern(4 * 32 + 1)).unwrap();
}
