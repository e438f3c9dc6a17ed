//! HellaSwag (Zellers et al., 2019): which of four endings of a short scene does the model find
//! most likely? The validation set's 10,042 examples (`hellaswag_val.jsonl`, one JSON record a
//! line with its `ctx`, four `endings` and the right one's `label`) are the usual yardstick of
//! small GPT-2s, and llm.c reports it while training: GPT-2 124M scores 29.55% (acc_norm).
//!
//! An example is rendered as llm.c's `dev/data/hellaswag.py` renders it: one row per ending, the
//! context's tokens then the ending's (encoded with a space before it). Each position predicts
//! the next token; a row's score is the cross-entropy of its ending's tokens, summed, and
//! averaged over them. The model's answer is the ending of the lowest average (acc_norm, the
//! figure usually quoted) or of the lowest sum (acc); a tie goes to the first ending, as
//! `torch.argmin` breaks it.
//!
//! The rows of a batch are padded to one length T (the longest row of the file), so that every
//! forward has the same shape; a row's padding comes after it, where the causal mask keeps it
//! from changing the row's losses, and its losses are not counted.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, Read};
use std::path::Path;

use crate::engine::Engine;
use crate::tokenizer::Tokenizer;

/// The endings of an example.
pub const ENDINGS: usize = 4;

/// One example: a context, four endings, and which ending is right.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ctx: String,
    pub endings: [String; ENDINGS],
    /// The right ending (0..4).
    pub label: usize,
}

/// The longest line read from a HellaSwag file, in bytes: a record is 2 to 5 KB, so a longer
/// line means a file of another kind, or a device that never ends a line (`/dev/zero`), which is
/// refused here rather than read until the memory runs out.
pub const MAX_LINE: usize = 1 << 20;

/// Reads the examples of a HellaSwag JSON Lines file (blank lines skipped). The label may be a
/// number or a string of one (as some copies of the dataset store it). A `*.gz` or `*.zst` file
/// is decompressed as it is read; a pipe is read as a stream. An error names the line.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    let mut reader = std::io::BufReader::new(crate::prepro::open_input(path)?);
    let mut examples = Vec::new();
    let mut line = Vec::new();
    for number in 1.. {
        let at = || format!("{}: line {number}", path.display());
        if !read_line(&mut reader, &mut line).with_context(at)? {
            break;
        }
        let line = std::str::from_utf8(&line)
            .map_err(|e| anyhow!("not UTF-8 text (byte {})", e.valid_up_to() + 1))
            .with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        examples.push(parse_example(line).with_context(at)?);
    }
    if examples.is_empty() {
        bail!("{}: no examples", path.display());
    }
    Ok(examples)
}

/// Reads the next line of `reader` into `line` (its newline kept); false at the end of the
/// input. An error where the line is longer than [`MAX_LINE`], read no further.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool> {
    line.clear();
    let limit = MAX_LINE as u64 + 1; // (the line, and its newline)
    let n = reader
        .take(limit)
        .read_until(b'\n', line)
        .context("cannot read")?;
    if line.len() as u64 == limit && line.last() != Some(&b'\n') {
        bail!(
            "longer than {} without a line's end: not a HellaSwag JSON Lines file (one record a \
             line, a few KB each)",
            crate::host_memory::size_text(MAX_LINE as f64)
        );
    }
    Ok(n > 0)
}

fn parse_example(line: &str) -> Result<Example> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| anyhow!("not a JSON record: {e}"))?;
    let ctx = v
        .get("ctx")
        .and_then(|c| c.as_str())
        .ok_or_else(|| anyhow!("no \"ctx\" string (the context)"))?;
    if ctx.is_empty() {
        bail!("an empty \"ctx\": the first token of an ending would have nothing to follow");
    }
    let endings = v
        .get("endings")
        .and_then(|e| e.as_array())
        .ok_or_else(|| anyhow!("no \"endings\" array"))?;
    let endings: Vec<String> = endings
        .iter()
        .map(|e| e.as_str().map(String::from))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("an ending that is not a string"))?;
    let n = endings.len();
    let endings: [String; ENDINGS] = endings
        .try_into()
        .map_err(|_| anyhow!("{n} endings, not {ENDINGS}"))?;
    let label = match v.get("label") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|&l| l < ENDINGS as u64)
    .ok_or_else(|| anyhow!("no \"label\" in 0..{ENDINGS} (the right ending)"))?;
    Ok(Example {
        ctx: ctx.to_string(),
        endings,
        label: label as usize,
    })
}

/// An example's rows: the context's tokens, then one ending's.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub rows: [Vec<u32>; ENDINGS],
    /// The context's tokens, at the start of every row.
    pub ctx_len: usize,
    pub label: usize,
}

/// Renders `ex` as llm.c's `hellaswag.py` does: the context encoded alone, each ending encoded
/// with a space before it.
pub fn render(tok: &Tokenizer, ex: &Example) -> Rendered {
    let ctx = tok.encode(&ex.ctx);
    let rows = ex.endings.clone().map(|ending| {
        let mut row = ctx.clone();
        row.extend(tok.encode(&format!(" {ending}")));
        row
    });
    Rendered {
        rows,
        ctx_len: ctx.len(),
        label: ex.label,
    }
}

/// One example's scores.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// Each ending's summed cross-entropy (nats), over `count` of its tokens.
    pub sum: [f64; ENDINGS],
    pub count: [usize; ENDINGS],
    /// The ending of the lowest sum (acc).
    pub pred_sum: usize,
    /// The ending of the lowest average (acc_norm).
    pub pred_norm: usize,
    /// Whether every ending's loss is finite; an example where one is not counts as wrong.
    pub finite: bool,
}

impl Scored {
    /// Each ending's average cross-entropy.
    pub fn avg(&self) -> [f64; ENDINGS] {
        std::array::from_fn(|i| self.sum[i] / self.count[i] as f64)
    }
}

/// Scores `r` from the losses (4, T) of its rows, row i at `losses[i * t..]`, where position p's
/// loss is the cross-entropy of token p + 1. The ending's tokens are those at ctx_len.., so
/// positions ctx_len - 1 .. len - 1 count.
pub fn score(r: &Rendered, losses: &[f32], t: usize) -> Scored {
    let mut sum = [0.0f64; ENDINGS];
    let mut count = [0usize; ENDINGS];
    for (i, row) in r.rows.iter().enumerate() {
        for p in r.ctx_len - 1..row.len() - 1 {
            sum[i] += losses[i * t + p] as f64;
            count[i] += 1;
        }
    }
    // (a NaN loss never wins: comparisons with it are false)
    let key = |x: f64| if x.is_nan() { f64::INFINITY } else { x };
    let argmin = |x: [f64; ENDINGS]| {
        (1..ENDINGS).fold(0, |best, i| if key(x[i]) < key(x[best]) { i } else { best })
    };
    let mut scored = Scored {
        sum,
        count,
        pred_sum: argmin(sum),
        pred_norm: 0,
        finite: sum.iter().all(|x| x.is_finite()),
    };
    scored.pred_norm = argmin(scored.avg());
    scored
}

/// What [`evaluate`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HellaSwag {
    pub examples: usize,
    /// Right by the lowest average loss (acc_norm).
    pub correct_norm: usize,
    /// Right by the lowest summed loss (acc).
    pub correct_sum: usize,
    /// Examples with a loss that is NaN or infinite (an overflow), counted as wrong.
    pub non_finite: usize,
}

impl HellaSwag {
    pub fn acc_norm(&self) -> f64 {
        self.correct_norm as f64 / self.examples as f64
    }
    pub fn acc(&self) -> f64 {
        self.correct_sum as f64 / self.examples as f64
    }
    /// What to add to a line of results: nothing, or how many examples had a non-finite loss.
    pub fn non_finite_note(&self) -> String {
        match self.non_finite {
            0 => String::new(),
            _ => format!(
                " ({} with a loss that is not finite, counted wrong)",
                self.non_finite_share()
            ),
        }
    }
    /// "1 of 1 example", "2 of 5 examples": how many had a non-finite loss, of how many.
    pub fn non_finite_share(&self) -> String {
        format!("{} of {}", self.non_finite, count_text(self.examples))
    }
}

/// "1 example", "5 examples".
pub fn count_text(n: usize) -> String {
    crate::text::count(n, "example", "examples")
}

/// How the examples are batched: `per_batch` examples of 4 rows of `t` tokens a forward.
pub fn batches_text(per_batch: usize, t: usize) -> String {
    format!(
        "{} a forward (batches of {}x{t})",
        count_text(per_batch),
        per_batch * ENDINGS
    )
}

/// The row length every batch is padded to: the longest row of `examples`; an error when it is
/// longer than `max_t` (`what_max`: "the model's maxT", say), naming the example (from 1) and its
/// length.
pub fn row_length(examples: &[Rendered], max_t: usize, what_max: &str) -> Result<usize> {
    let mut t = 0;
    for (i, r) in examples.iter().enumerate() {
        let longest = r.rows.iter().map(Vec::len).max().unwrap_or(0);
        if longest > max_t {
            bail!(
                "HellaSwag example {} has a row of {longest} tokens (context and ending), more \
                 than {what_max} = {max_t}",
                i + 1
            );
        }
        t = t.max(longest);
    }
    Ok(t)
}

/// The examples of `path` (the first `limit` of them, if given) rendered for a model of `config`,
/// and their row length, at most `max_t` (`what_max` names it in the error). The model must have
/// GPT-2's vocabulary.
pub fn load(
    path: &Path,
    limit: Option<usize>,
    config: &crate::config::GPT2Config,
    max_t: usize,
    what_max: &str,
) -> Result<(Vec<Rendered>, usize)> {
    let v = crate::config::GPT2_VOCAB_SIZE;
    if config.vocab_size != v {
        bail!(
            "HellaSwag is tokenized with GPT-2's vocabulary (V = {v}); this model has V = {}",
            config.vocab_size
        );
    }
    let mut examples = read_examples(path)?;
    if let Some(n) = limit {
        if n == 0 || n > examples.len() {
            bail!(
                "{}: {n} examples asked for, of the file's {}: ask for 1 to {}",
                path.display(),
                examples.len(),
                examples.len()
            );
        }
        examples.truncate(n);
    }
    let tok = Tokenizer::gpt2()?;
    let rendered: Vec<Rendered> = examples.iter().map(|ex| render(&tok, ex)).collect();
    let t =
        row_length(&rendered, max_t, what_max).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((rendered, t))
}

/// Scores `examples` with `engine`, `per_batch` examples (4 * per_batch rows of `t` tokens, see
/// [`row_length`]) a forward; `on_batch` gets the totals after each batch. Returns the totals
/// and each example's scores.
pub fn evaluate(
    engine: &mut dyn Engine,
    examples: &[Rendered],
    per_batch: usize,
    t: usize,
    mut on_batch: impl FnMut(&HellaSwag),
) -> Result<(HellaSwag, Vec<Scored>)> {
    let pad = crate::config::GPT2_EOT;
    let mut total = HellaSwag::default();
    let mut scores = Vec::with_capacity(examples.len());
    for batch in examples.chunks(per_batch.max(1)) {
        let b = ENDINGS * batch.len();
        let mut inputs = vec![pad; b * t]; // (B, T)
        let mut targets = vec![pad; b * t]; // (B, T)
        for (j, row) in batch.iter().flat_map(|r| r.rows.iter()).enumerate() {
            inputs[j * t..j * t + row.len()].copy_from_slice(row);
            targets[j * t..j * t + row.len() - 1].copy_from_slice(&row[1..]);
        }
        engine.forward(&inputs, Some(&targets), b, t)?;
        let losses = engine.losses()?; // (B, T)
        for (k, r) in batch.iter().enumerate() {
            let s = score(r, &losses[k * ENDINGS * t..(k + 1) * ENDINGS * t], t);
            total.examples += 1;
            total.correct_norm += usize::from(s.finite && s.pred_norm == r.label);
            total.correct_sum += usize::from(s.finite && s.pred_sum == r.label);
            total.non_finite += usize::from(!s.finite);
            scores.push(s);
        }
        on_batch(&total);
    }
    Ok((total, scores))
}
