//! Skipping the update of a step whose loss or gradient norm is an outlier (`--skip-loss-z`,
//! `--skip-norm-z`; llm.c's `-sl` and `-sg`, `llmc/outlier_detector.h`). A long run now and then
//! meets a batch that throws its loss, or its gradient, far above the recent ones; the update of
//! such a step can set the model back by many steps, or start a divergence. Leaving it out costs
//! one batch.
//!
//! Each quantity keeps a window of its last [`WINDOW`] values taken. A new value's z-score is its
//! distance from the window's mean in the window's (population) standard deviations, the value
//! itself not counted; a value more than the threshold above the mean is an outlier. A step with
//! an outlier (either quantity, under its flag) is skipped: no update, and neither of its values
//! goes into the windows, so that spikes do not widen what counts as normal. At most
//! [`MAX_SKIPPED_IN_A_ROW`] steps in a row are skipped; the next is taken, update and windows (a
//! level that stays up is the new normal, and a run must not stall on it). Nothing is judged while
//! a window fills (the run's first [`WINDOW`] steps taken) or when all its values are equal.
//!
//! llm.c's detector counts the new value in its own window, so its z-score never exceeds
//! sqrt(63) (about 7.9) and means a little less than this one: its `-sl Z` is about
//! `--skip-loss-z` Z sqrt(64 / (63 - Z^2)) here (3 is 3.3, 5 is 6.5); and it lets a third
//! outlier into the window, but still skips its update.
//!
//! A loss or norm that is not finite (inf, NaN) cannot be taken: under its flag it makes the step
//! an outlier (the norm of a step with such a loss is not looked at); otherwise, or after
//! [`MAX_SKIPPED_IN_A_ROW`] skipped steps, the run has diverged.
//!
//! The windows are kept whether or not skipping is on, and travel in the training state, so a
//! resumed run judges exactly as the run that never stopped, and `--skip-*-z` may be turned on
//! when resuming.

use std::collections::VecDeque;

/// The values a window holds (llm.c's `OUTLIER_DETECTOR_WINDOW_SIZE`).
pub const WINDOW: usize = 64;
/// Steps skipped in a row at most; the next one is taken.
pub const MAX_SKIPPED_IN_A_ROW: usize = 2;

/// The recent values of one quantity (the loss, or the gradient norm).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutlierWindow {
    /// The last values taken (at most [`WINDOW`]), oldest first.
    values: VecDeque<f32>,
}

impl OutlierWindow {
    /// A window holding the last [`WINDOW`] of `values` (oldest first).
    pub fn from_values(values: &[f32]) -> OutlierWindow {
        let start = values.len().saturating_sub(WINDOW);
        OutlierWindow {
            values: values[start..].iter().copied().collect(),
        }
    }

    /// The values taken, oldest first.
    pub fn values(&self) -> impl ExactSizeIterator<Item = f32> + '_ {
        self.values.iter().copied()
    }

    /// `x`'s z-score against the window: None while it holds fewer than [`WINDOW`] values or when
    /// they are all equal.
    pub fn z_score(&self, x: f32) -> Option<f64> {
        if self.values.len() < WINDOW {
            return None;
        }
        let n = self.values.len() as f64;
        let mean = self.values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = self
            .values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (var > 0.0).then(|| (x as f64 - mean) / var.sqrt())
    }

    /// Takes `x` into the window (the oldest value drops out of a full one).
    fn take(&mut self, x: f32) {
        if self.values.len() == WINDOW {
            self.values.pop_front();
        }
        self.values.push_back(x);
    }
}

/// One quantity of a step, as judged: its value, its threshold (None: its flag is off) and its
/// z-score (None while its window cannot judge, or for a value that is not finite).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judged {
    pub value: f32,
    pub threshold: Option<f32>,
    pub z: Option<f64>,
}

impl Judged {
    fn of(window: &OutlierWindow, value: f32, threshold: Option<f32>) -> Judged {
        let z = if value.is_finite() {
            window.z_score(value)
        } else {
            None
        };
        Judged {
            value,
            threshold,
            z,
        }
    }

    /// Whether this value asks for its step to be skipped: under its flag, above the threshold
    /// or not finite.
    fn outlier(&self) -> bool {
        match (self.threshold, self.z) {
            (None, _) => false,
            (Some(_), _) if !self.value.is_finite() => true,
            (Some(t), Some(z)) => z > t as f64,
            (Some(_), None) => false,
        }
    }
}

/// Which quantity a step was skipped, or the run ended, for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantity {
    Loss,
    Norm,
}

/// What becomes of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Updated; its values taken into the windows.
    Taken,
    /// Not updated, for an outlier in this quantity.
    Skipped(Quantity),
    /// This quantity is not finite and cannot be skipped: the run cannot go on.
    Diverged(Quantity),
}

/// A run's outlier windows: its steps' losses and gradient norms (before clipping), and how many
/// steps were skipped just before now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outliers {
    pub loss: OutlierWindow,
    pub norm: OutlierWindow,
    /// Steps skipped in a row, just before now (at most [`MAX_SKIPPED_IN_A_ROW`]).
    pub skipped_in_a_row: usize,
}

impl Outliers {
    /// Judges a step's loss and gradient norm with `--skip-loss-z` and `--skip-norm-z` (None:
    /// off), and takes them into the windows if the step is taken (see the module's doc).
    pub fn judge_step(
        &mut self,
        loss: f32,
        norm: f32,
        loss_z: Option<f32>,
        norm_z: Option<f32>,
    ) -> StepVerdict {
        let loss_j = Judged::of(&self.loss, loss, loss_z);
        let norm_j = Judged::of(&self.norm, norm, norm_z);
        let skipped_before = self.skipped_in_a_row;
        let outcome = match outlier(&loss_j, &norm_j) {
            Some(q) if skipped_before < MAX_SKIPPED_IN_A_ROW => Outcome::Skipped(q),
            _ if !loss.is_finite() => Outcome::Diverged(Quantity::Loss),
            _ if !norm.is_finite() => Outcome::Diverged(Quantity::Norm),
            _ => Outcome::Taken,
        };
        match outcome {
            Outcome::Skipped(_) => self.skipped_in_a_row += 1,
            Outcome::Taken => {
                self.skipped_in_a_row = 0;
                self.loss.take(loss);
                self.norm.take(norm);
            }
            Outcome::Diverged(_) => {}
        }
        StepVerdict {
            loss: loss_j,
            norm: norm_j,
            outcome,
            skipped_before,
        }
    }
}

/// Which quantity makes a step an outlier, if one does. (A step with a loss that is not finite
/// is about its loss, whatever its norm.)
fn outlier(loss: &Judged, norm: &Judged) -> Option<Quantity> {
    if loss.outlier() {
        Some(Quantity::Loss)
    } else if loss.value.is_finite() && norm.outlier() {
        Some(Quantity::Norm)
    } else {
        None
    }
}

// (the step lines call the outlier taken after the skipped ones "the third")
const _: () = assert!(MAX_SKIPPED_IN_A_ROW == 2);

/// What became of a step, and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepVerdict {
    pub loss: Judged,
    pub norm: Judged,
    pub outcome: Outcome,
    /// Steps skipped in a row just before this one.
    pub skipped_before: usize,
}

impl StepVerdict {
    /// Why the run cannot go on after step `step` (from 1), if it cannot: "the loss became NaN
    /// at step 4, after 2 steps skipped in a row".
    pub fn diverged(&self, step: usize) -> Option<String> {
        let after = match self.skipped_before {
            0 => String::new(),
            1 => ", after a step skipped".to_string(),
            k => format!(", after {k} steps skipped in a row"),
        };
        let (loss, norm) = (self.loss.value, self.norm.value);
        match self.outcome {
            Outcome::Diverged(Quantity::Loss) => {
                Some(format!("the loss became {loss} at step {step}{after}"))
            }
            Outcome::Diverged(Quantity::Norm) => Some(format!(
                "the gradient norm became {norm} at step {step} (its loss {loss}){after}"
            )),
            _ => None,
        }
    }

    /// Why the step's update is left out, if it is: "loss z +7.31 > 5", "norm not finite".
    pub fn skipped(&self) -> Option<String> {
        match self.outcome {
            Outcome::Skipped(q) => Some(self.why(q)),
            _ => None,
        }
    }

    /// Whether the step is an outlier that was taken all the same: the third in a row, after
    /// [`MAX_SKIPPED_IN_A_ROW`] skipped steps.
    pub fn taken_outlier(&self) -> bool {
        self.outcome == Outcome::Taken && outlier(&self.loss, &self.norm).is_some()
    }

    /// Whether the step is an outlier, skipped or not.
    pub fn outlier(&self) -> bool {
        matches!(self.outcome, Outcome::Skipped(_)) || self.taken_outlier()
    }

    /// What makes `q` an outlier: "loss z +7.31 > 5", "norm not finite".
    fn why(&self, q: Quantity) -> String {
        let (name, j) = match q {
            Quantity::Loss => ("loss", self.loss),
            Quantity::Norm => ("norm", self.norm),
        };
        match (j.z, j.threshold) {
            (Some(z), Some(t)) if j.value.is_finite() => format!("{name} z {z:+.2} > {t}"),
            _ => format!("{name} not finite"),
        }
    }

    /// Whether skipping is on at all (either flag).
    pub fn judging(&self) -> bool {
        self.loss.threshold.is_some() || self.norm.threshold.is_some()
    }

    /// The loss's and the norm's z-scores, where their windows could judge them.
    pub fn z_scores(&self) -> (Option<f64>, Option<f64>) {
        (self.loss.z, self.norm.z)
    }

    /// The end of the step's line when skipping is on: " | z loss -0.55 norm +0.10" (`-` where
    /// there is no z-score), " | update skipped: loss z +7.31 > 5", or for an outlier taken
    /// after two skipped steps " | z loss +7.31 norm +0.10 | update taken: the third outlier in a
    /// row"; empty when it is off.
    pub fn line_suffix(&self) -> String {
        let z = |z: Option<f64>| z.map_or("-".into(), |z| format!("{z:+.2}"));
        match (self.judging(), self.skipped()) {
            (false, _) => String::new(),
            (true, Some(why)) => format!(" | update skipped: {why}"),
            (true, None) => {
                let (l, n) = self.z_scores();
                let taken = if self.taken_outlier() {
                    " | update taken: the third outlier in a row"
                } else {
                    ""
                };
                format!(" | z loss {} norm {}{taken}", z(l), z(n))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full window of 1, 2, 1, 2, ...: mean 1.5, standard deviation 0.5.
    fn window() -> OutlierWindow {
        let values: Vec<f32> = (0..WINDOW).map(|i| 1.0 + (i % 2) as f32).collect();
        OutlierWindow::from_values(&values)
    }

    /// Both windows full of 1, 2, 1, 2, ...
    fn full() -> Outliers {
        Outliers {
            loss: window(),
            norm: window(),
            skipped_in_a_row: 0,
        }
    }

    #[test]
    fn z_scores_against_the_window_by_hand() {
        let w = window();
        assert_eq!(w.z_score(1.5), Some(0.0));
        assert_eq!(w.z_score(4.0), Some(5.0)); // (4 - 1.5) / 0.5
        assert_eq!(w.z_score(0.5), Some(-2.0));
        // not yet full, or no spread: no judgement
        let short = OutlierWindow::from_values(&[1.0, 2.0, 1.0]);
        assert_eq!(short.z_score(100.0), None);
        let flat = OutlierWindow::from_values(&[3.0; WINDOW]);
        assert_eq!(flat.z_score(100.0), None);
        // from_values keeps the last WINDOW values
        let long: Vec<f32> = (0..WINDOW + 5).map(|i| i as f32).collect();
        let w = OutlierWindow::from_values(&long);
        assert_eq!(w.values().next(), Some(5.0));
        assert_eq!(w.values().len(), WINDOW);
    }

    #[test]
    fn outlier_steps_are_skipped_and_kept_out_two_in_a_row_at_most() {
        let on = Some(5.0);
        // z = 5 is not above 5: taken, both values (the oldest, 1, drops out of each window)
        let mut o = full();
        let v = o.judge_step(4.0, 1.5, on, on);
        assert_eq!(
            (v.outcome, v.z_scores()),
            (Outcome::Taken, (Some(5.0), Some(0.0)))
        );
        assert_eq!(o.loss.values().next(), Some(2.0));
        assert_eq!(o.loss.values().last(), Some(4.0));
        assert_eq!(o.norm.values().last(), Some(1.5));
        // z = 7 (loss), then 7 (norm): two steps skipped, the windows unchanged
        let mut o = full();
        let v = o.judge_step(5.0, 1.0, on, on);
        assert_eq!(v.outcome, Outcome::Skipped(Quantity::Loss));
        assert_eq!(v.skipped().as_deref(), Some("loss z +7.00 > 5"));
        let v = o.judge_step(1.0, 5.0, on, on);
        assert_eq!(v.outcome, Outcome::Skipped(Quantity::Norm));
        assert_eq!((o.loss.clone(), o.norm.clone()), (window(), window()));
        assert_eq!(o.skipped_in_a_row, 2);
        // the third outlier step in a row is taken, whichever quantity, and the count restarts
        let v = o.judge_step(5.0, 5.0, on, on);
        assert_eq!((v.outcome, v.skipped_before), (Outcome::Taken, 2));
        assert_eq!((v.taken_outlier(), v.outlier()), (true, true));
        assert_eq!(o.skipped_in_a_row, 0);
        assert_eq!(o.loss.values().last(), Some(5.0));
        assert_eq!(o.norm.values().last(), Some(5.0));
        // a normal step between two outliers restarts the count
        let mut o = full();
        assert_eq!(
            o.judge_step(5.0, 1.0, on, on).outcome,
            Outcome::Skipped(Quantity::Loss)
        );
        assert_eq!(o.judge_step(1.0, 1.0, on, on).outcome, Outcome::Taken);
        assert_eq!(
            o.judge_step(6.0, 1.0, on, on).outcome,
            Outcome::Skipped(Quantity::Loss)
        );
        assert_eq!(
            o.judge_step(6.0, 1.0, on, on).outcome,
            Outcome::Skipped(Quantity::Loss)
        );
        // off: everything is taken, and judged
        let mut o = full();
        let v = o.judge_step(5.0, 5.0, None, None);
        assert_eq!(
            (v.outcome, v.z_scores()),
            (Outcome::Taken, (Some(7.0), Some(7.0)))
        );
        // one flag judges its own quantity only; below the mean is never an outlier
        let mut o = full();
        assert_eq!(o.judge_step(1.0, 9.0, on, None).outcome, Outcome::Taken);
        assert_eq!(
            o.judge_step(-100.0, 1.0, Some(1.0), None).outcome,
            Outcome::Taken
        );
    }

    #[test]
    fn values_that_are_not_finite() {
        let on = Some(5.0);
        for bad in [f32::NAN, f32::INFINITY] {
            // without the flag, at once (the loss's first)
            let v = full().judge_step(bad, bad, None, None);
            assert_eq!(v.outcome, Outcome::Diverged(Quantity::Loss));
            let v = full().judge_step(1.0, bad, None, None);
            assert_eq!(v.outcome, Outcome::Diverged(Quantity::Norm));
            // with it, skipped twice (even while the windows fill), then the run has diverged
            for mut o in [full(), Outliers::default()] {
                for _ in 0..2 {
                    let v = o.judge_step(bad, 1.0, on, None);
                    assert_eq!(v.outcome, Outcome::Skipped(Quantity::Loss));
                    assert_eq!(v.skipped().as_deref(), Some("loss not finite"));
                }
                let v = o.judge_step(bad, 1.0, on, None);
                assert_eq!(v.outcome, Outcome::Diverged(Quantity::Loss));
            }
            // a loss that is not finite under its flag: its norm is not looked at
            let v = full().judge_step(bad, bad, on, None);
            assert_eq!(v.outcome, Outcome::Skipped(Quantity::Loss));
            // the norm's flag skips a norm that is not finite, not a loss
            let v = full().judge_step(1.0, bad, None, on);
            assert_eq!(v.outcome, Outcome::Skipped(Quantity::Norm));
            let v = full().judge_step(bad, bad, None, on);
            assert_eq!(v.outcome, Outcome::Diverged(Quantity::Loss));
        }
        // after two skipped steps a finite outlier is taken, one that is not finite is not
        let mut o = full();
        o.judge_step(f32::NAN, 1.0, Some(5.0), None);
        o.judge_step(9.0, 1.0, Some(5.0), None);
        let v = o.judge_step(1.0, f32::NAN, Some(5.0), Some(5.0));
        assert_eq!(v.outcome, Outcome::Diverged(Quantity::Norm));
    }

    #[test]
    fn how_a_verdict_reads() {
        let on = Some(5.0);
        let v = full().judge_step(5.0, 5.0, None, None);
        assert_eq!(
            (v.skipped(), v.diverged(7), v.line_suffix()),
            (None, None, String::new())
        );
        let v = full().judge_step(1.5, 2.5, on, None);
        assert_eq!(v.line_suffix(), " | z loss +0.00 norm +2.00");
        let v = Outliers::default().judge_step(1.5, 2.5, on, None);
        assert_eq!(v.line_suffix(), " | z loss - norm -");
        let v = full().judge_step(5.0, 5.0, on, on);
        assert_eq!(v.line_suffix(), " | update skipped: loss z +7.00 > 5");
        assert_eq!((v.taken_outlier(), v.outlier()), (false, true));
        // after two skipped steps (loss z +7): the third outlier in a row, taken, is marked so
        // beside its z-scores; an ordinary step, or an outlier under no flag, is not
        let third = |loss: f32, norm: f32, norm_z: Option<f32>| {
            let mut o = full();
            for _ in 0..MAX_SKIPPED_IN_A_ROW {
                assert!(o.judge_step(5.0, 1.5, on, norm_z).skipped().is_some());
            }
            o.judge_step(loss, norm, on, norm_z)
        };
        let v = third(1.5, 4.5, on);
        assert_eq!(
            v.line_suffix(),
            " | z loss +0.00 norm +6.00 | update taken: the third outlier in a row"
        );
        let v = third(1.5, 2.0, on);
        assert_eq!(v.line_suffix(), " | z loss +0.00 norm +1.00");
        assert_eq!((v.taken_outlier(), v.outlier()), (false, false));
        let v = third(1.5, 9.0, None);
        assert_eq!(v.line_suffix(), " | z loss +0.00 norm +15.00");
        let v = full().judge_step(f32::NAN, 1.0, None, None);
        assert_eq!(
            v.diverged(3).as_deref(),
            Some("the loss became NaN at step 3")
        );
        let mut o = full();
        o.judge_step(9.0, 1.0, on, None);
        let v = o.judge_step(1.0, f32::NAN, on, None);
        assert_eq!(
            v.diverged(3).as_deref(),
            Some("the gradient norm became NaN at step 3 (its loss 1), after a step skipped")
        );
    }
}
