//! The learning rate of each step (`--lr-schedule`, `--warmup`, `--lr-final-frac`,
//! `--lr-decay-frac`): a linear warm-up to the peak, then one of llm.c's four shapes (its `-k`,
//! `llmc/schedulers.h`). A decay's first step runs at the peak and its last at `lr * final_frac`
//! (llm.c's stops one step short of it), so a decay needs two steps to fall at all: a run whose
//! warm-up, or whose `wsd` stable part, leaves it fewer stays at the peak to its end.

use crate::text::decimal_f64;

/// The shape of the schedule after the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LrShape {
    /// Half a cosine from the peak down to the final rate (GPT-2's, nanoGPT's, llm.c's default).
    #[default]
    Cosine,
    /// A straight line from the peak down to the final rate.
    Linear,
    /// The peak throughout.
    Constant,
    /// Warmup-stable-decay: the peak until the last `--lr-decay-frac` of the steps, then down to the
    /// final rate as 1 - sqrt(progress) (Hägele et al. 2024, arXiv:2405.18392; llm.c's `wsd`).
    Wsd,
}

/// A run's schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub shape: LrShape,
    /// The peak rate.
    pub lr: f32,
    /// The run's steps.
    pub steps: usize,
    /// Steps of linear warm-up: step s (from 0) of them runs at lr * (s + 1) / warmup.
    pub warmup: usize,
    /// The last step's rate, as a fraction of the peak.
    pub final_frac: f32,
    /// `Wsd`: the fraction of the run's steps, at its end, over which the rate decays (the last
    /// round(decay_frac x steps) of them, halves rounded up).
    pub decay_frac: f32,
}

/// round(frac x steps), halves rounded up, of the decimal `frac` was typed as (its shortest
/// decimal, which reads back as the same f32), in integers: exact, where the f32 puts 0.7 x 5 a
/// hair under 3.5, f64 puts 0.285 x 100 under 28.5, and a nudge up to make up for either would
/// round up a product just under a half step (a relative 1e-6 took 0.11 x 91459 = 10060.49 to
/// 10061). `frac` is in [0, 1].
fn decay_steps(frac: f32, steps: usize) -> usize {
    // (Display writes no exponent: 1e-7 is "0.0000001")
    let text = format!("{frac}");
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    // frac = digits / 10^scale, with at most 9 significant digits (an f32's most); past 30
    // decimals, frac x steps < 10^9 x 2^64 / 10^31 < 0.5
    let scale = fraction.len() as u32;
    if scale > 30 {
        return 0;
    }
    let Ok(digits) = format!("{whole}{fraction}").parse::<u128>() else {
        return 0;
    };
    let den = 10u128.pow(scale);
    ((2 * digits * steps as u128 + den) / (2 * den)) as usize
}

impl LrSchedule {
    /// The rate of step `step` (from 0).
    pub fn at(&self, step: usize) -> f32 {
        // (the rates as typed: 1e-3, not the f32's 0.0010000000475, so that a warm-up step's
        // 1e-3 / 5 is the f32 nearest 2e-4, as PyTorch computes it from the same flag)
        let lr = decimal_f64(self.lr);
        if step < self.warmup {
            return (lr * (step + 1) as f64 / self.warmup as f64) as f32;
        }
        let min = lr * decimal_f64(self.final_frac);
        // where the decay starts, and how far into it this step is (0 at its first step, 1 at the
        // run's last)
        let start = match self.shape {
            LrShape::Constant => return self.lr,
            LrShape::Cosine | LrShape::Linear => self.warmup,
            LrShape::Wsd => {
                let decay = decay_steps(self.decay_frac, self.steps);
                self.steps.saturating_sub(decay).max(self.warmup)
            }
        };
        let span = self.steps.saturating_sub(start + 1);
        if step < start || span == 0 {
            return self.lr;
        }
        let progress = ((step - start) as f64 / span as f64).min(1.0);
        let coeff = match self.shape {
            LrShape::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            LrShape::Linear => 1.0 - progress,
            LrShape::Wsd => 1.0 - progress.sqrt(),
            LrShape::Constant => unreachable!("returned above"),
        };
        (min + coeff * (lr - min)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(shape: LrShape, steps: usize, warmup: usize) -> LrSchedule {
        LrSchedule {
            shape,
            lr: 1.0,
            steps,
            warmup,
            final_frac: 0.1,
            decay_frac: 0.2,
        }
    }

    fn rates(s: &LrSchedule) -> Vec<f32> {
        (0..s.steps).map(|i| s.at(i)).collect()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn cosine_warms_up_then_decays_to_the_final_fraction() {
        // 2 warm-up steps, then 8 decaying from the peak (step 2) to 0.1 (step 9): the cosine of
        // progress k/7 for k = 0..7, by hand: (1 + cos(pi k / 7)) / 2 scaled into [0.1, 1]
        let s = schedule(LrShape::Cosine, 10, 2);
        let mut want = vec![0.5, 1.0];
        want.extend((0..8).map(|k| {
            let c = 0.5 * (1.0 + (std::f64::consts::PI * k as f64 / 7.0).cos());
            (0.1 + 0.9 * c) as f32
        }));
        assert!(close(&rates(&s), &want), "{:?}", rates(&s));
        // 11 steps: the middle of the decay (progress 4/8) is step 6, at (1 + 0.1) / 2
        let mid = schedule(LrShape::Cosine, 11, 2);
        assert!((mid.at(6) - 0.55).abs() < 1e-6, "{}", mid.at(6));
    }

    #[test]
    fn linear_falls_by_equal_steps() {
        let s = schedule(LrShape::Linear, 6, 1);
        // peak at step 1, then down by 0.9 / 4 a step to 0.1 at step 5
        assert!(
            close(&rates(&s), &[1.0, 1.0, 0.775, 0.55, 0.325, 0.1]),
            "{:?}",
            rates(&s)
        );
    }

    #[test]
    fn constant_keeps_the_peak_after_warming_up() {
        let s = schedule(LrShape::Constant, 5, 2);
        assert_eq!(rates(&s), [0.5, 1.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn wsd_decays_over_the_last_fifth_as_one_minus_sqrt() {
        // 20 steps, 2 of warm-up: the peak to step 16 (the last 4 steps, 0.2 x 20, decay: 16 is
        // their first at progress 0), then 1 - sqrt(k / 3) for k = 0..3 scaled into [0.1, 1]
        let s = schedule(LrShape::Wsd, 20, 2);
        let mut want = vec![0.5, 1.0];
        want.extend([1.0; 14]);
        want.extend((0..4).map(|k| (0.1 + 0.9 * (1.0 - (k as f64 / 3.0).sqrt())) as f32));
        assert!(close(&rates(&s), &want), "{:?}", rates(&s));
        // a decay longer than what the warm-up leaves starts after the warm-up
        let long = LrSchedule {
            decay_frac: 1.0,
            ..schedule(LrShape::Wsd, 5, 2)
        };
        let want: Vec<f32> = [0.5, 1.0]
            .into_iter()
            .chain((0..3).map(|k| (0.1 + 0.9 * (1.0 - (k as f64 / 2.0).sqrt())) as f32))
            .collect();
        assert!(close(&rates(&long), &want), "{:?}", rates(&long));
        // a fraction that is half a step rounds up: 0.7 x 5 = 3.5 -> the last 4 steps decay
        let half = LrSchedule {
            decay_frac: 0.7,
            ..schedule(LrShape::Wsd, 5, 0)
        };
        assert_eq!(half.at(0), 1.0);
        assert!(half.at(1) == 1.0 && half.at(2) < 1.0, "{:?}", rates(&half));
        // no decay: the peak to the end
        let flat = LrSchedule {
            decay_frac: 0.0,
            ..schedule(LrShape::Wsd, 5, 1)
        };
        assert_eq!(rates(&flat), [1.0; 5]);
    }

    /// The steps a `wsd` decay takes, of the fraction as typed: halves round up, and nothing
    /// just under a half does; the extremes neither overflow nor lose a step.
    #[test]
    fn a_decay_is_the_fraction_as_typed_rounded() {
        let cases: [(f32, usize, usize); 13] = [
            (0.7, 5, 4),          // 3.5 (the f32 0.7 x 5 is 3.49999994)
            (0.285, 100, 29),     // 28.5 (in f64, 28.499999999999996)
            (0.4999998, 1, 0),    // 0.4999998
            (0.11, 91459, 10060), // 10060.49
            (0.8719, 121, 105),   // 105.4999
            (0.5, 1, 1),          // 0.5
            (0.5, 3, 2),          // 1.5
            (0.2, 7, 1),          // 1.4
            (0.0, 100, 0),        // none
            (1.0, 9, 9),          // all
            (1.0, usize::MAX, usize::MAX),
            (1e-30, usize::MAX, 0),
            (1e-45, usize::MAX, 0), // the least f32, 45 decimals
        ];
        for (frac, steps, want) in cases {
            assert_eq!(decay_steps(frac, steps), want, "{frac} x {steps}");
        }
        assert_eq!(decay_steps(0.1, 20_000_000_005), 2_000_000_001); // 2000000000.5
    }

    #[test]
    fn short_runs_stay_at_the_peak() {
        // a decay of one step or none has no room to fall
        for shape in [LrShape::Cosine, LrShape::Linear, LrShape::Wsd] {
            assert_eq!(rates(&schedule(shape, 1, 0)), [1.0], "{shape:?}");
            assert_eq!(rates(&schedule(shape, 3, 2)), [0.5, 1.0, 1.0], "{shape:?}");
        }
    }
}
