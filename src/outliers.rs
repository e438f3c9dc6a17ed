//! Skipping the update of a step whose loss or gradient norm is an outlier (`--skip-loss-z`,
//! `--skip-norm-z`; llm.c's `-sl` and `-sg`, `llmc/outlier_detector.h`). A long run now and then
//! meets a batch that throws its loss, or its gradient, far above the recent ones; the update of
//! such a step can set the model back by many steps, or start a divergence. Leaving it out costs
//! one batch.
//!
//! Each quantity keeps a window of the last [`WINDOW`] values taken. A new value's z-score is its
//! distance from the window's mean in the window's (population) standard deviations; a value more
//! than the threshold above the mean is an outlier: the step's update is skipped, and the value
//! stays out of the window, so that spikes do not widen what counts as normal. Up to
//! [`MAX_SKIPPED_IN_A_ROW`] outliers in a row are skipped; the next one is taken, update and
//! window both (a level that stays up is the new normal, and a run must not stall on it). Nothing
//! is judged while the window fills (the run's first [`WINDOW`] steps taken) or when all its
//! values are equal.
//!
//! A loss or norm that is not finite (inf, NaN) is an outlier too when its flag is given (kept out
//! of the window, and a run of them longer than [`MAX_SKIPPED_IN_A_ROW`] ends the run as diverged);
//! without the flag it ends the run at once, as without skipping.
//!
//! The windows are kept whether or not skipping is on, and travel in the training state, so a
//! resumed run judges exactly as the run that never stopped, and `--skip-*-z` may be turned on
//! when resuming.

use std::collections::VecDeque;

/// The values a window holds (llm.c's `OUTLIER_DETECTOR_WINDOW_SIZE`).
pub const WINDOW: usize = 64;
/// Outliers skipped in a row at most; the next one is taken.
pub const MAX_SKIPPED_IN_A_ROW: usize = 2;

/// The recent values of one quantity (the loss, or the gradient norm).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutlierWindow {
    /// The last values taken (at most [`WINDOW`]), oldest first.
    values: VecDeque<f32>,
    /// Outliers skipped in a row, just before now.
    skipped_in_a_row: usize,
}

/// What [`OutlierWindow::judge`] made of a value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Taken into the window; its z-score when the window could judge it.
    Taken { z: Option<f64> },
    /// An outlier, left out (the step's update is to be skipped); its z-score, or None for a value
    /// that is not finite.
    Skipped { z: Option<f64> },
    /// Not finite, and either skipping is off or the outliers before it in a row are already
    /// [`MAX_SKIPPED_IN_A_ROW`]: the run cannot go on.
    Diverged,
}

impl Verdict {
    /// The value's z-score, where it was judged.
    pub fn z(&self) -> Option<f64> {
        match *self {
            Verdict::Taken { z } | Verdict::Skipped { z } => z,
            Verdict::Diverged => None,
        }
    }
}

impl OutlierWindow {
    /// A window holding `values` (oldest first; the last [`WINDOW`] of them) with
    /// `skipped_in_a_row` outliers just skipped.
    pub fn from_parts(values: &[f32], skipped_in_a_row: usize) -> OutlierWindow {
        let start = values.len().saturating_sub(WINDOW);
        OutlierWindow {
            values: values[start..].iter().copied().collect(),
            skipped_in_a_row,
        }
    }

    /// The values taken, oldest first.
    pub fn values(&self) -> impl ExactSizeIterator<Item = f32> + '_ {
        self.values.iter().copied()
    }

    /// Outliers skipped in a row, just before now.
    pub fn skipped_in_a_row(&self) -> usize {
        self.skipped_in_a_row
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

    /// Judges `x` with `threshold` (None: nothing is an outlier) and takes it into the window
    /// unless it is skipped (see the module's doc).
    pub fn judge(&mut self, x: f32, threshold: Option<f32>) -> Verdict {
        if !x.is_finite() {
            if threshold.is_none() || self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW {
                return Verdict::Diverged;
            }
            self.skipped_in_a_row += 1;
            return Verdict::Skipped { z: None };
        }
        let z = self.z_score(x);
        let outlier = matches!((z, threshold), (Some(z), Some(t)) if z > t as f64);
        if outlier && self.skipped_in_a_row < MAX_SKIPPED_IN_A_ROW {
            self.skipped_in_a_row += 1;
            return Verdict::Skipped { z };
        }
        self.skipped_in_a_row = 0;
        if self.values.len() == WINDOW {
            self.values.pop_front();
        }
        self.values.push_back(x);
        Verdict::Taken { z }
    }
}

/// The two windows of a run: its steps' losses and gradient norms (before clipping).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outliers {
    pub loss: OutlierWindow,
    pub norm: OutlierWindow,
}

impl Outliers {
    /// Judges a step's loss and gradient norm with `--skip-loss-z` and `--skip-norm-z` (None:
    /// off). The norm is judged only when the loss is taken.
    pub fn judge_step(
        &mut self,
        loss: f32,
        norm: f32,
        loss_z: Option<f32>,
        norm_z: Option<f32>,
    ) -> StepVerdict {
        let loss_verdict = self.loss.judge(loss, loss_z);
        let norm_verdict = match loss_verdict {
            Verdict::Taken { .. } => Some(self.norm.judge(norm, norm_z)),
            Verdict::Skipped { .. } | Verdict::Diverged => None,
        };
        StepVerdict {
            loss: (loss, loss_z, loss_verdict),
            norm: (norm, norm_z, norm_verdict),
        }
    }
}

/// What became of a step: for the loss and the norm, (the value, its threshold, its verdict:
/// None for a norm left unjudged).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepVerdict {
    pub loss: (f32, Option<f32>, Verdict),
    pub norm: (f32, Option<f32>, Option<Verdict>),
}

impl StepVerdict {
    /// Why the run cannot go on after step `step` (from 1), if it cannot: "the loss became NaN
    /// at step 4, after 2 steps skipped in a row".
    pub fn diverged(&self, step: usize) -> Option<String> {
        let ((loss, loss_z, lv), (norm, norm_z, nv)) = (self.loss, self.norm);
        let in_a_row = |threshold: Option<f32>| match threshold {
            Some(_) => format!(", after {MAX_SKIPPED_IN_A_ROW} steps skipped in a row"),
            None => String::new(),
        };
        if lv == Verdict::Diverged {
            Some(format!(
                "the loss became {loss} at step {step}{}",
                in_a_row(loss_z)
            ))
        } else if nv == Some(Verdict::Diverged) {
            Some(format!(
                "the gradient norm became {norm} at step {step} (its loss {loss}){}",
                in_a_row(norm_z)
            ))
        } else {
            None
        }
    }

    /// Why the step's update is left out, if it is: "loss z +7.31 > 5", "norm not finite".
    pub fn skipped(&self) -> Option<String> {
        let why = |what: &str, z: Option<f64>, threshold: Option<f32>| match (z, threshold) {
            (Some(z), Some(t)) => format!("{what} z {z:+.2} > {t}"),
            _ => format!("{what} not finite"),
        };
        match (self.loss.2, self.norm.2) {
            (Verdict::Skipped { z }, _) => Some(why("loss", z, self.loss.1)),
            (_, Some(Verdict::Skipped { z })) => Some(why("norm", z, self.norm.1)),
            _ => None,
        }
    }

    /// Whether skipping is on at all (either flag).
    pub fn judging(&self) -> bool {
        self.loss.1.is_some() || self.norm.1.is_some()
    }

    /// The loss's and the norm's z-scores, where they were judged.
    pub fn z_scores(&self) -> (Option<f64>, Option<f64>) {
        (self.loss.2.z(), self.norm.2.and_then(|v| v.z()))
    }

    /// The end of the step's line when skipping is on: " | z loss -0.55 norm +0.10" (`-` where
    /// there is no z-score) or " | update skipped: loss z +7.31 > 5"; empty when it is off.
    pub fn line_suffix(&self) -> String {
        let z = |z: Option<f64>| z.map_or("-".into(), |z| format!("{z:+.2}"));
        match (self.judging(), self.skipped()) {
            (false, _) => String::new(),
            (true, Some(why)) => format!(" | update skipped: {why}"),
            (true, None) => {
                let (l, n) = self.z_scores();
                format!(" | z loss {} norm {}", z(l), z(n))
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
        OutlierWindow::from_parts(&values, 0)
    }

    #[test]
    fn z_scores_against_the_window_by_hand() {
        let w = window();
        assert_eq!(w.z_score(1.5), Some(0.0));
        assert_eq!(w.z_score(4.0), Some(5.0)); // (4 - 1.5) / 0.5
        assert_eq!(w.z_score(0.5), Some(-2.0));
        // not yet full, or no spread: no judgement
        let short = OutlierWindow::from_parts(&[1.0, 2.0, 1.0], 0);
        assert_eq!(short.z_score(100.0), None);
        let flat = OutlierWindow::from_parts(&[3.0; WINDOW], 0);
        assert_eq!(flat.z_score(100.0), None);
        // from_parts keeps the last WINDOW values
        let long: Vec<f32> = (0..WINDOW + 5).map(|i| i as f32).collect();
        let w = OutlierWindow::from_parts(&long, 0);
        assert_eq!(w.values().next(), Some(5.0));
        assert_eq!(w.values().len(), WINDOW);
    }

    #[test]
    fn outliers_are_skipped_and_kept_out_two_in_a_row_at_most() {
        let mut w = window();
        // z = 5 is not above 5: taken (the oldest value, 1, drops out)
        assert_eq!(w.judge(4.0, Some(5.0)), Verdict::Taken { z: Some(5.0) });
        assert_eq!(w.values().next(), Some(2.0));
        assert_eq!(w.values().last(), Some(4.0));
        let mut w = window();
        let before = w.clone();
        // z = 7: skipped twice, and the window does not change
        assert_eq!(w.judge(5.0, Some(5.0)), Verdict::Skipped { z: Some(7.0) });
        assert_eq!(w.judge(5.0, Some(5.0)), Verdict::Skipped { z: Some(7.0) });
        assert_eq!(
            w.values().collect::<Vec<_>>(),
            before.values().collect::<Vec<_>>()
        );
        assert_eq!(w.skipped_in_a_row(), 2);
        // the third in a row is taken, and the count starts again
        assert_eq!(w.judge(5.0, Some(5.0)), Verdict::Taken { z: Some(7.0) });
        assert_eq!(w.skipped_in_a_row(), 0);
        assert_eq!(w.values().last(), Some(5.0));
        // a normal value between two outliers restarts the count
        let mut w = window();
        assert!(matches!(w.judge(5.0, Some(5.0)), Verdict::Skipped { .. }));
        assert!(matches!(w.judge(1.0, Some(5.0)), Verdict::Taken { .. }));
        assert!(matches!(w.judge(6.0, Some(5.0)), Verdict::Skipped { .. }));
        assert!(matches!(w.judge(6.0, Some(5.0)), Verdict::Skipped { .. }));
        // off: everything is taken, and judged
        let mut w = window();
        assert_eq!(w.judge(5.0, None), Verdict::Taken { z: Some(7.0) });
        // below the mean is never an outlier
        let mut w = window();
        assert_eq!(
            w.judge(-100.0, Some(1.0)),
            Verdict::Taken { z: Some(-203.0) }
        );
    }

    #[test]
    fn a_steps_verdict_and_how_it_reads() {
        let full = Outliers {
            loss: window(),
            norm: window(),
        };
        // off: nothing to say
        let v = full.clone().judge_step(5.0, 5.0, None, None);
        assert_eq!(
            (v.skipped(), v.diverged(7), v.line_suffix()),
            (None, None, String::new())
        );
        // taken: both z-scores
        let v = full.clone().judge_step(1.5, 2.5, Some(5.0), None);
        assert_eq!(v.line_suffix(), " | z loss +0.00 norm +2.00");
        // the loss skipped: the norm not judged (and left out of its window)
        let mut o = full.clone();
        let v = o.judge_step(5.0, 5.0, Some(5.0), Some(5.0));
        assert_eq!(v.skipped().as_deref(), Some("loss z +7.00 > 5"));
        assert_eq!(v.z_scores(), (Some(7.0), None));
        assert_eq!(o.norm, full.norm);
        assert_eq!(o.loss.skipped_in_a_row(), 1);
        assert_eq!(v.line_suffix(), " | update skipped: loss z +7.00 > 5");
        // the norm skipped, the loss taken
        let mut o = full.clone();
        let v = o.judge_step(1.0, f32::INFINITY, Some(5.0), Some(5.0));
        assert_eq!(v.skipped().as_deref(), Some("norm not finite"));
        assert_eq!(o.loss.values().last(), Some(1.0));
        // diverged
        let v = full.clone().judge_step(f32::NAN, 1.0, None, None);
        assert_eq!(
            v.diverged(3).as_deref(),
            Some("the loss became NaN at step 3")
        );
        let v = full.clone().judge_step(1.0, f32::NAN, Some(5.0), None);
        assert_eq!(
            v.diverged(3).as_deref(),
            Some("the gradient norm became NaN at step 3 (its loss 1)")
        );
    }

    #[test]
    fn values_that_are_not_finite() {
        for bad in [f32::NAN, f32::INFINITY] {
            // without the flag, at once
            assert_eq!(window().judge(bad, None), Verdict::Diverged);
            // with it, skipped twice (even while the window fills), then the run has diverged
            for mut w in [window(), OutlierWindow::default()] {
                assert_eq!(w.judge(bad, Some(5.0)), Verdict::Skipped { z: None });
                assert_eq!(w.judge(bad, Some(5.0)), Verdict::Skipped { z: None });
                assert_eq!(w.judge(bad, Some(5.0)), Verdict::Diverged);
            }
        }
        // a finite outlier after two skipped is taken; a non-finite one is not
        let mut w = window();
        assert!(matches!(
            w.judge(f32::NAN, Some(5.0)),
            Verdict::Skipped { .. }
        ));
        assert!(matches!(w.judge(9.0, Some(5.0)), Verdict::Skipped { .. }));
        assert_eq!(w.judge(f32::NAN, Some(5.0)), Verdict::Diverged);
    }
}
