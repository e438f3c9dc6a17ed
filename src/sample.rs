//! Text generation: temperature and top-k sampling from the logits of any [`Engine`], seeded.

use crate::engine::Engine;
use crate::rng::Rng;
use anyhow::{bail, Result};

/// How to pick the next token.
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    /// Divides the logits; must be > 0. Lower is more conservative.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 keeps all).
    pub top_k: usize,
}

impl SampleOptions {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            bail!(
                "temperature must be a positive number, got {}",
                self.temperature
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
    let weights: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i as usize] - max) / opts.temperature) as f64).exp())
        .collect();
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

/// Continues `prompt` (at least one token) by `n` tokens; the model sees at most the last `window`
/// tokens. Calls `on_token` with each new token as it is produced. The CPU engine runs only the
/// new position of each context (its `decoder`, a key/value cache); other engines a full forward
/// of the context. Both give the same logits, hence the same tokens.
pub fn generate(
    engine: &mut dyn Engine,
    prompt: &[u32],
    n: usize,
    window: usize,
    opts: &SampleOptions,
    seed: u64,
    on_token: impl FnMut(u32),
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
    mut on_token: impl FnMut(u32),
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
        on_token(next);
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
            temperature: 1.0,
            top_k: 1,
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
        let opts = SampleOptions {
            temperature: 1.0,
            top_k: 0,
        };
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
            temperature: 1.0,
            top_k: 2,
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

    #[test]
    fn bad_temperature_is_an_error() {
        for t in [0.0, -1.0, f32::NAN] {
            let o = SampleOptions {
                temperature: t,
                top_k: 0,
            };
            assert!(o
                .validate()
                .unwrap_err()
                .to_string()
                .contains("temperature"));
        }
    }
}
