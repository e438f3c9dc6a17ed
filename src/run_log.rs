//! `<out-dir>/log.jsonl`: a training run's numbers, one JSON record a line, for plotting
//! (`pandas.read_json("out/log.jsonl", lines=True)`):
//! - after each step N (from 1): `{"step": N, "loss": .., "lr": .., "norm": .., "ms": ..,
//!   "tokens_per_s": .., "mfu": .., "epoch": ..}` (`mfu` null where the device's peak is unknown;
//!   `epoch` the passes over the training data done, absent with `--overfit-batch`), and with
//!   `--skip-loss-z` or `--skip-norm-z` also `"loss_z": .., "norm_z": .., "skipped": false,
//!   "outlier": false` (the z-scores null while their windows fill; `skipped` true where the
//!   update was left out, `outlier` where the step was judged one: skipped, or the third in a
//!   row, whose update is taken);
//! - at each validation, after N steps (from 0): `{"step": N, "val_loss": ..}`, with
//!   `"hellaswag_acc_norm": ..` when the run has `--hellaswag`;
//! - with each text sample (`--sample-every`, and the one at the end): `{"step": N, "sample":
//!   ".."}`.
//!
//! Each line is written as it comes, so the log of a run that stops is whole up to there. A
//! new run replaces the folder's log; a resumed run (`--resume`) starts from the log beside the
//! state it resumes, keeping the records of the steps before it (the steps after it, and the
//! validation and sample at it, run again) and goes on from there. That log is rewritten under a
//! temporary name and renamed, so a failure on the way (a full disk) leaves the old one whole.
//!
//! A record that cannot be written (a full disk) does not end the run, which would lose every
//! step since its last checkpoint: the log is cut back to its last whole line, a note says so
//! once, and the run goes on (the checkpoints hold what it trains; later records are written
//! when they can be).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The log's file name in the output folder.
pub const LOG_FILE: &str = "log.jsonl";

/// One training step's numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRecord {
    /// Steps done, this one included (from 1).
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    /// The gradient norm before clipping.
    pub norm: f32,
    pub ms: f64,
    pub tokens_per_s: f64,
    /// Model FLOPs utilisation, 0..1, where the device's peak is known.
    pub mfu: Option<f64>,
    /// The passes over the training data done after this step (batches served over an epoch's
    /// batches: 1.5 is halfway through the second); None with `--overfit-batch`.
    pub epoch: Option<f64>,
    /// With `--skip-loss-z` or `--skip-norm-z`: the loss's and the norm's z-scores
    /// (`crate::outliers`; None while the windows fill), and whether the step was an outlier and
    /// its update skipped.
    pub outliers: Option<StepOutliers>,
}

/// A step's outlier judgement, for its record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutliers {
    pub loss_z: Option<f64>,
    pub norm_z: Option<f64>,
    pub skipped: bool,
    /// Skipped, or the third outlier in a row, whose update is taken.
    pub outlier: bool,
}

/// The open log of a run.
pub struct RunLog {
    path: PathBuf,
    out: std::fs::File,
    /// The bytes of whole lines written: where a failed write is cut back to.
    len: u64,
    /// The records that could not be written (the first one noted at once).
    lost: usize,
    /// The steps whose update was skipped among the records copied from the earlier log.
    skipped: Vec<usize>,
    /// The learning rate the earlier log records for the step the run resumes after.
    resumed_lr: Option<f32>,
}

/// An error where the log in `out_dir` is read-only (a run resumed there rewrites it), saying
/// what to do: no flag names the file.
pub fn check_replaceable(out_dir: &Path) -> Result<()> {
    crate::formats::check_replaceable_or(
        &out_dir.join(LOG_FILE),
        "make it writable (chmod u+w), or resume into another --out-dir",
    )
}

impl RunLog {
    /// Creates `<out_dir>/log.jsonl`. A resumed run gives `resumed`: the log it continues (beside
    /// its training state; it may be this one, or missing) and the steps its state has done; the
    /// records before them are copied first.
    pub fn create(out_dir: &Path, resumed: Option<(&Path, usize)>) -> Result<RunLog> {
        let path = out_dir.join(LOG_FILE);
        let mut kept = Vec::new();
        if let Some((earlier, step)) = resumed {
            if let Ok(text) = std::fs::read_to_string(earlier) {
                kept.extend(text.lines().filter(|l| before(l, step)).map(String::from));
            }
        }
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        check_replaceable(out_dir)
            .and_then(|()| crate::formats::write_file_atomic(&path, text.as_bytes()))
            .context("cannot write the run's log")?;
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot write the run's log", path.display()))?;
        Ok(RunLog {
            path,
            out,
            len: text.len() as u64,
            lost: 0,
            skipped: kept.iter().filter_map(|l| skipped_step(l)).collect(),
            resumed_lr: resumed.and_then(|(_, step)| logged_lr(&kept, step)),
        })
    }

    /// The learning rate the earlier log records for the step a resumed run continues after
    /// (None for a new run, or a log without it).
    pub fn resumed_lr(&self) -> Option<f32> {
        self.resumed_lr
    }

    /// How many records could not be written (see the file comment).
    pub fn records_lost(&self) -> usize {
        self.lost
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The steps (from 1) the earlier log of a resumed run records as skipped, in order: the run's
    /// outlier summary counts the whole run's.
    pub fn skipped_steps(&self) -> &[usize] {
        &self.skipped
    }

    /// Logs one step.
    pub fn step(&mut self, r: &StepRecord) {
        let line = format!(
            r#"{{"step": {}, "loss": {}, "lr": {}, "norm": {}, "ms": {}, "tokens_per_s": {}, "mfu": {}}}"#,
            r.step,
            num(r.loss),
            num(r.lr),
            num(r.norm),
            num(r.ms as f32),
            num(r.tokens_per_s as f32),
            r.mfu.map_or("null".into(), |m| num(m as f32)),
        );
        let line = match r.epoch {
            None => line,
            Some(e) => format!(
                r#"{}, "epoch": {}}}"#,
                line.strip_suffix('}').expect("a record ends with }"),
                num(e as f32)
            ),
        };
        let line = match &r.outliers {
            None => line,
            Some(o) => {
                let z = |z: Option<f64>| z.map_or("null".into(), |z| num(z as f32));
                format!(
                    r#"{}, "loss_z": {}, "norm_z": {}, "skipped": {}, "outlier": {}}}"#,
                    line.strip_suffix('}').expect("a record ends with }"),
                    z(o.loss_z),
                    z(o.norm_z),
                    o.skipped,
                    o.outlier
                )
            }
        };
        self.line(&line)
    }

    /// Logs a validation after `step` steps.
    pub fn validation(&mut self, step: usize, val_loss: f32, hellaswag: Option<f64>) {
        let mut line = format!(r#"{{"step": {step}, "val_loss": {}"#, num(val_loss));
        if let Some(acc) = hellaswag {
            line += &format!(r#", "hellaswag_acc_norm": {}"#, num(acc as f32));
        }
        self.line(&(line + "}"))
    }

    /// Logs a text sample drawn after `step` steps.
    pub fn sample(&mut self, step: usize, text: &str) {
        let text = serde_json::to_string(text).expect("a string is JSON");
        self.line(&format!(r#"{{"step": {step}, "sample": {text}}}"#))
    }

    /// Appends `line` (one write, so a record is whole or cut back); see the file comment.
    fn line(&mut self, line: &str) {
        if let Some(note) = self.write_line(line) {
            crate::console::write_err(format_args!("{note}\n"));
        }
    }

    /// [`line`](Self::line)'s write: the note to give when it is the run's first record lost.
    fn write_line(&mut self, line: &str) -> Option<String> {
        let bytes = format!("{line}\n");
        match self.out.write_all(bytes.as_bytes()) {
            Ok(()) => self.len += bytes.len() as u64,
            Err(e) => {
                // (a part written is cut off, so that every line stays a record)
                let cut = self.out.set_len(self.len).is_ok();
                self.lost += 1;
                if self.lost == 1 {
                    return Some(format!(
                        "note: {}: cannot write the run's log ({e}): training goes on, and \
                         records that cannot be written are left out{}",
                        self.path.display(),
                        if cut {
                            ""
                        } else {
                            " (its last line may be cut short)"
                        }
                    ));
                }
            }
        }
        None
    }
}

/// `x` in JSON: its shortest decimal that reads back as the same f32, or null for NaN and the
/// infinities (which JSON cannot spell).
fn num(x: f32) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

/// The learning rate that `lines` (a log's records) give `step` (its last record of that step).
fn logged_lr(lines: &[String], step: usize) -> Option<f32> {
    lines.iter().rev().find_map(|line| {
        let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
        if v.get("step")?.as_u64()? != step as u64 {
            return None;
        }
        v.get("lr")?.as_f64().map(|x| x as f32)
    })
}

/// The step of a step's record whose update was skipped (`"skipped": true`).
fn skipped_step(line: &str) -> Option<usize> {
    let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
    if v.get("skipped")?.as_bool()? {
        return v.get("step")?.as_u64().map(|s| s as usize);
    }
    None
}

/// Whether the log at `path` records a step after `step`: an attempt that a run resumed after
/// `step` steps replaces, whose records [`RunLog::create`] leaves out (false when it cannot be
/// read).
pub(crate) fn logs_steps_after(path: &Path, step: usize) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    text.lines().any(|line| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
            v.get("loss").is_some()
                && v.get("step")
                    .and_then(|s| s.as_u64())
                    .is_some_and(|n| n > step as u64)
        })
    })
}

/// Whether a record of an earlier log comes before a run resumed after `step` steps: a step's
/// record up to `step`, a validation's or a sample's before it (the resumed run validates, and
/// samples, at `step` again). A line that is not such a record is dropped.
fn before(line: &str, step: usize) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return false;
    };
    let Some(n) = v.get("step").and_then(|s| s.as_u64()) else {
        return false;
    };
    if v.get("val_loss").is_some() || v.get("sample").is_some() {
        n < step as u64
    } else {
        v.get("loss").is_some() && n <= step as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record that cannot be written (a full disk: /dev/full) is counted, not an error, and the
    /// records that can be written after it are (the run's `log.jsonl` then lacks only those).
    #[test]
    fn records_that_cannot_be_written_are_counted() {
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap();
        let mut log = RunLog {
            path: PathBuf::from("/dev/full"),
            out: full,
            len: 0,
            lost: 0,
            skipped: Vec::new(),
            resumed_lr: None,
        };
        // the first record lost gives the note, the others none
        let note = log.write_line(r#"{"step": 0, "val_loss": 10.5}"#).unwrap();
        assert!(
            note.starts_with("note: /dev/full: cannot write the run's log ("),
            "{note}"
        );
        assert_eq!(log.write_line(r#"{"step": 0, "sample": "a"}"#), None);
        log.validation(0, 10.5, None);
        log.sample(0, "ROMEO:");
        assert_eq!(log.records_lost(), 4);
        assert_eq!(log.len, 0);
        // the disk has room again: written, and counted as written
        let dir = crate::test_dir("run-log");
        let path = dir.join("log.jsonl");
        std::fs::write(&path, "").unwrap();
        log.out = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        log.validation(25, 7.25, None);
        assert_eq!(log.records_lost(), 4);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\": 25, \"val_loss\": 7.25}\n");
        assert_eq!(log.len, text.len() as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What a run resumed after 5 steps keeps of the earlier log: the steps' records up to 5, the
    /// validations and samples before 5 (it gives step 5's again); not a line without a step, nor
    /// one that is not a record.
    #[test]
    fn a_resumed_log_keeps_the_records_before_its_step() {
        for (line, kept) in [
            (r#"{"step": 5, "loss": 3.5}"#, true),
            (r#"{"step": 6, "loss": 3.5}"#, false),
            (r#"{"step": 4, "val_loss": 3.5}"#, true),
            (r#"{"step": 5, "val_loss": 3.5}"#, false),
            (r#"{"step": 4, "sample": "a"}"#, true),
            (r#"{"step": 5, "sample": "a"}"#, false),
            (r#"{"step": 3}"#, false),
            (r#"{"loss": 3.5}"#, false),
            (r#"{"step": "3", "loss": 3.5}"#, false),
            (r#"{"step": 3, "loss"#, false),
        ] {
            assert_eq!(before(line, 5), kept, "{line}");
        }
    }

    /// Whether a log records a step after 5 (a replaced attempt's): a step's record past 5 does,
    /// a validation's does not; a log that is not there, or not text, records nothing.
    #[test]
    fn a_log_records_steps_after_a_resume_point_only_in_its_steps_records() {
        let dir = crate::test_dir("run-log-after");
        let path = dir.join("log.jsonl");
        let after = |text: &[u8]| {
            std::fs::write(&path, text).unwrap();
            logs_steps_after(&path, 5)
        };
        assert!(after(
            b"{\"step\": 5, \"loss\": 3.5}\n{\"step\": 6, \"loss\": 3.25}\n"
        ));
        assert!(!after(
            b"{\"step\": 5, \"loss\": 3.5}\n{\"step\": 6, \"val_loss\": 3.25}\n"
        ));
        assert!(!after(b"{\"step\": 6, \"loss\": 3.25}\n\xff\n"));
        assert!(!logs_steps_after(&dir.join("missing.jsonl"), 5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
