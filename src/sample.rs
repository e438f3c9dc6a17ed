//! Text generation: temperature, top-k and top-p (nucleus) sampling from the logits of any
//! [`Engine`], seeded.

use crate::engine::Engine;
use crate::rng::Rng;
use anyhow::{bail, Result};
use std::ops::ControlFlow;

/// How to pick the next token.
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    /// Divides the logits; must be > 0. Lower is more conservative.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    pub top_k: usize,
    /// Then keep only the most likely tokens whose probabilities first add up to top_p (nucleus
    /// sampling; at least one token); must be in (0, 1], 1 keeps all.
    pub top_p: f32,
}

impl Default for SampleOptions {
    /// Plain sampling from the softmax: temperature 1, every token.
    fn default() -> Self {
        SampleOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl SampleOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!(
                "--temperature must be a finite number above 0, got {}",
                crate::text::typed(self.temperature)
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!(
                "--top-p must be in (0, 1], got {}",
                crate::text::typed(self.top_p)
            );
        }
        Ok(())
    }
}

/// Picks a token from the first `v` logits (the padded columns are never chosen).
pub fn sample_token(logits: &[f32], v: usize, opts: &SampleOptions, rng: &mut Rng) -> u32 {
    let logits = &logits[..v];
    let mut idx: Vec<u32> = (0..v as u32).collect();
    if opts.top_k > 0 && opts.top_k < v {
        // partial sort: the k largest logits first (ties broken by the lower id)
        idx.select_nth_unstable_by(opts.top_k - 1, |&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        idx.truncate(opts.top_k);
        idx.sort_unstable();
    }
    let max = idx
        .iter()
        .map(|&i| logits[i as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut weights: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i as usize] - max) / opts.temperature) as f64).exp())
        .collect();
    if opts.top_p < 1.0 {
        (idx, weights) = nucleus(idx, weights, opts.top_p as f64);
    }
    let total: f64 = weights.iter().sum();
    let mut r = rng.uniform_f64() * total;
    for (&i, &w) in idx.iter().zip(&weights) {
        r -= w;
        if r < 0.0 {
            return i;
        }
    }
    *idx.last().unwrap()
}

/// The most likely of the tokens `idx` (in increasing order, with unnormalised probabilities
/// `weights`) whose probabilities first add up to `top_p` of the total, ties taken by the lower
/// id: at least one token, in increasing order, with their weights.
fn nucleus(idx: Vec<u32>, weights: Vec<f64>, top_p: f64) -> (Vec<u32>, Vec<f64>) {
    let mut order: Vec<usize> = (0..idx.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    let target = top_p * weights.iter().sum::<f64>();
    let mut sum = 0.0;
    let reached = order.iter().position(|&j| {
        sum += weights[j];
        sum >= target
    });
    // the kept places, back in increasing order (idx is)
    let mut kept = order[..reached.map_or(order.len(), |k| k + 1)].to_vec();
    kept.sort_unstable();
    kept.iter().map(|&j| (idx[j], weights[j])).unzip()
}

/// Continues `prompt` (at least one token) by `n` tokens; the model sees at most the last `window`
/// tokens. Calls `on_token` with each new token as it is produced; its `Break` ends the
/// generation there (its output closed, a signal), with the tokens so far. The CPU engine runs only the
/// new position of each context (its `decoder`, a key/value cache); other engines a full forward
/// of the context. Both give the same logits, hence the same tokens.
pub fn generate(
    engine: &mut dyn Engine,
    prompt: &[u32],
    n: usize,
    window: usize,
    opts: &SampleOptions,
    seed: u64,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Vec<u32>> {
    let v = engine.config().vocab_size;
    let args = (prompt, n, window, opts, seed);
    if let Some(mut decoder) = engine.decoder(window.max(1))? {
        return generate_with(|ctx| decoder.next_logits(ctx), v, args, on_token);
    }
    let full_forward = |ctx: &[u32]| {
        let t = ctx.len();
        engine.forward(ctx, None, 1, t)?;
        engine.position_logits(0, t - 1)
    };
    generate_with(full_forward, v, args, on_token)
}

/// [`generate`] with the logits at the last position of a context from `next_logits`, for a
/// vocabulary of `v` tokens; `args` are generate's (prompt, n, window, opts, seed).
pub fn generate_with(
    mut next_logits: impl FnMut(&[u32]) -> Result<Vec<f32>>,
    v: usize,
    (prompt, n, window, opts, seed): (&[u32], usize, usize, &SampleOptions, u64),
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Vec<u32>> {
    opts.validate()?;
    if prompt.is_empty() {
        bail!("the prompt must hold at least one token");
    }
    if window == 0 {
        bail!("the context window must be at least 1 token");
    }
    let mut rng = Rng::new(seed);
    let mut tokens = prompt.to_vec();
    for _ in 0..n {
        let ctx = &tokens[tokens.len().saturating_sub(window)..];
        let next = sample_token(&next_logits(ctx)?, v, opts, &mut rng);
        tokens.push(next);
        if on_token(next).is_break() {
            break;
        }
    }
    Ok(tokens[prompt.len()..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_one_is_argmax_and_padding_is_never_sampled() {
        let logits = [0.1, 3.0, -1.0, 2.9, 100.0];
        let mut rng = Rng::new(1);
        let greedy = SampleOptions {
            top_k: 1,
            ..Default::default()
        };
        // column 4 is padding (v = 4): never chosen even though its logit is largest
        for _ in 0..20 {
            assert_eq!(sample_token(&logits, 4, &greedy, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        // logits ln(1), ln(2), ln(3), ln(4): probabilities 0.1, 0.2, 0.3, 0.4
        let logits: Vec<f32> = [1f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let opts = SampleOptions::default();
        let mut rng = Rng::new(5);
        let mut counts = [0usize; 4];
        let n = 100_000;
        for _ in 0..n {
            counts[sample_token(&logits, 4, &opts, &mut rng) as usize] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let p = (i + 1) as f64 / 10.0;
            // 5 standard deviations of a binomial count
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((c as f64 - n as f64 * p).abs() < 5.0 * sd, "{counts:?}");
        }
        // top-k 2 keeps ids 2 and 3 with probabilities 3/7 and 4/7
        let opts = SampleOptions {
            top_k: 2,
            ..Default::default()
        };
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample_token(&logits, 4, &opts, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[0] + counts[1], 0);
        let p = 3.0 / 7.0;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (counts[2] as f64 - n as f64 * p).abs() < 5.0 * sd,
            "{counts:?}"
        );
    }

    /// How often each of the first `v` ids is drawn in `n` samples.
    fn counts(logits: &[f32], opts: &SampleOptions, n: usize, seed: u64) -> Vec<usize> {
        let mut rng = Rng::new(seed);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[sample_token(logits, logits.len(), opts, &mut rng) as usize] += 1;
        }
        counts
    }

    /// A temperature divides the logits: probabilities 0.1, 0.2, 0.3, 0.4 become, at 0.5, their
    /// squares over their sum (1, 4, 9, 16 of 30), and at 2 their square roots over theirs.
    #[test]
    fn the_temperature_divides_the_logits() {
        let logits: Vec<f32> = [1f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let n = 100_000;
        let roots: Vec<f64> = (1..=4).map(|x| (x as f64).sqrt()).collect();
        let root_sum: f64 = roots.iter().sum();
        for (temperature, want) in [
            (0.5, [1.0, 4.0, 9.0, 16.0].map(|x| x / 30.0)),
            (2.0, [0, 1, 2, 3].map(|i| roots[i] / root_sum)),
        ] {
            let opts = SampleOptions {
                temperature,
                ..Default::default()
            };
            let c = counts(&logits, &opts, n, 11);
            for (i, (&c, &p)) in c.iter().zip(&want).enumerate() {
                let sd = (n as f64 * p * (1.0 - p)).sqrt();
                let dev = (c as f64 - n as f64 * p).abs();
                assert!(
                    dev < 5.0 * sd,
                    "temperature {temperature}, id {i}: {c} of {n}, want p = {p}"
                );
            }
        }
    }

    #[test]
    fn top_p_keeps_the_most_likely_tokens_up_to_p() {
        // probabilities 0.1, 0.2, 0.3, 0.4; by hand, the nucleus of p is the fewest most likely
        // tokens adding up to p: 0.5 -> {3, 2} (0.7), 0.85 -> {3, 2, 1} (0.9), 0.95 -> all four,
        // tiny -> {3}
        let logits: Vec<f32> = [1f32, 2.0, 3.0, 4.0].iter().map(|x| x.ln()).collect();
        let n = 100_000;
        for (top_p, top_k, want) in [
            (0.5, 0, [0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]),
            (0.85, 0, [0.0, 2.0 / 9.0, 3.0 / 9.0, 4.0 / 9.0]),
            (0.95, 0, [0.1, 0.2, 0.3, 0.4]),
            (1e-6, 0, [0.0, 0.0, 0.0, 1.0]),
            // top-k first: {1, 2, 3} with 2/9, 3/9, 4/9, whose nucleus of 0.5 is {3, 2} (7/9)
            (0.5, 3, [0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]),
        ] {
            let opts = SampleOptions {
                top_p,
                top_k,
                ..Default::default()
            };
            let c = counts(&logits, &opts, n, 9);
            for (i, (&c, &p)) in c.iter().zip(&want).enumerate() {
                if p == 0.0 {
                    assert_eq!(c, 0, "top-p {top_p}, id {i}: {c:?}");
                    continue;
                }
                let sd = (n as f64 * p * (1.0 - p)).sqrt().max(1.0);
                let dev = (c as f64 - n as f64 * p).abs();
                assert!(
                    dev < 5.0 * sd,
                    "top-p {top_p}, id {i}: {c} of {n}, want p = {p}"
                );
            }
        }
        // equal probabilities: the nucleus of 0.5 is two tokens, the lower ids
        let opts = SampleOptions {
            top_p: 0.5,
            ..Default::default()
        };
        let c = counts(&[0.0; 4], &opts, 1000, 3);
        assert!(c[0] > 400 && c[1] > 400 && c[2] + c[3] == 0, "{c:?}");
    }

    #[test]
    fn top_p_of_one_changes_nothing() {
        // the same draws, hence the same tokens, as before top-p existed: no sorting, no cut
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let plain = counts(&logits, &SampleOptions::default(), 2000, 4);
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let w: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
        let mut rng = Rng::new(4);
        let mut again = vec![0; 50];
        for _ in 0..2000 {
            let mut r = rng.uniform_f64() * w.iter().sum::<f64>();
            let i = w.iter().position(|&x| {
                r -= x;
                r < 0.0
            });
            again[i.unwrap_or(49)] += 1;
        }
        assert_eq!(plain, again);
    }

    #[test]
    fn bad_top_p_is_an_error() {
        for p in [0.0, -0.5, 1.5, f32::NAN] {
            let o = SampleOptions {
                top_p: p,
                ..Default::default()
            };
            let err = o.validate().unwrap_err().to_string();
            assert!(err.contains("top-p must be in (0, 1]"), "{err}");
        }
    }

    /// `generate_with` (a library entry point: `sample` and `train` check their flags first)
    /// refuses bad options, an empty prompt and a window of 0 before it asks for any logits.
    #[test]
    fn generate_with_refuses_bad_arguments_before_any_logits() {
        let never = |_: &[u32]| -> Result<Vec<f32>> { panic!("logits asked for") };
        let run = |prompt: &[u32], window: usize, opts: SampleOptions| {
            let args = (prompt, 4, window, &opts, 1);
            generate_with(never, 8, args, |_| ControlFlow::Continue(()))
                .unwrap_err()
                .to_string()
        };
        let zero_t = SampleOptions {
            temperature: 0.0,
            ..Default::default()
        };
        let e = run(&[1], 8, zero_t);
        assert!(
            e.contains("--temperature must be a finite number above 0"),
            "{e}"
        );
        let wide = SampleOptions {
            top_p: 1.5,
            ..Default::default()
        };
        let e = run(&[1], 8, wide);
        assert!(e.contains("--top-p must be in (0, 1]"), "{e}");
        let e = run(&[], 8, SampleOptions::default());
        assert!(e.contains("the prompt must hold at least one token"), "{e}");
        let e = run(&[1], 0, SampleOptions::default());
        assert!(
            e.contains("the context window must be at least 1 token"),
            "{e}"
        );
    }

    #[test]
    fn bad_temperature_is_an_error() {
        for t in [0.0, -1.0, f32::NAN] {
            let o = SampleOptions {
                temperature: t,
                ..Default::default()
            };
            assert!(o
                .validate()
                .unwrap_err()
                .to_string()
                .contains("temperature"));
        }
    }
}
