//! Generation with a key/value cache on the CPU: the logits of the next token after a context,
//! computing only the positions that the previous call did not.
//!
//! Sampling asks for the logits at the last position of a context that grows by one token a
//! call. A full forward over the context costs a whole window's work for every token; the
//! [`Decoder`] instead keeps each block's q, k and v (its `qkv` activation) for every position it
//! has computed, and runs the blocks on the new positions only, whose queries attend to the cached
//! keys and values (`attention_forward_cached`). Every layer computes a row from that row alone
//! (the attention from the cached rows, which are the same bits), and in the same order as the
//! full forward, so the logits equal the full forward's at the same position bit for bit, in
//! fp32 and when emulating bf16 storage (tests/decode.rs).
//!
//! GPT-2's positions are absolute: once the context outgrows the window and slides, every token
//! moves to another position, nothing cached holds any more, and each call is a full forward of
//! the window again (as without a cache).

use super::attention::attention_forward_cached;
use super::encoder::encoder_forward;
use super::layernorm::layernorm_forward;
use super::matmul::matmul_forward;
use super::model::{check_tokens, layer_forward, Gpt2Cpu};
use crate::activations::{act_sizes, split_sizes_mut, Acts, LayerActs};
use crate::config::GPT2Config;
use crate::params;
use anyhow::{bail, Result};

/// A generation's cache over a model it borrows (so the weights cannot change under it).
pub struct Decoder<'m> {
    model: &'m Gpt2Cpu,
    /// W: the most positions a context may have.
    capacity: usize,
    tokens: Vec<u32>, // (P) the tokens at the cached positions
    /// How many positions the last call computed (the others came from the cache).
    computed: usize,
    cache: Vec<f32>, // (L, W, 3*C) each block's q, k, v at positions 0..P
    x: Vec<f32>,     // (T, C) the new positions' residual stream: a block's input
    y: Vec<f32>,     // (T, C) and its output
    acts: Vec<f32>,  // one block's activations for the T new positions (see `layer_acts`)
}

impl<'m> Decoder<'m> {
    /// A decoder for contexts of up to `capacity` tokens (at most the model's maxT).
    pub fn new(model: &'m Gpt2Cpu, capacity: usize) -> Result<Self> {
        let cfg = &model.config;
        if capacity == 0 || capacity > cfg.max_seq_len {
            bail!(
                "the context window must be in 1..={} (the model's maxT), got {capacity}",
                cfg.max_seq_len
            );
        }
        Ok(Decoder {
            model,
            capacity,
            tokens: Vec::with_capacity(capacity),
            computed: 0,
            // zeroed allocations: pages only count once written
            cache: vec![0.0; cfg.num_layers * capacity * 3 * cfg.channels],
            x: Vec::new(),
            y: Vec::new(),
            acts: Vec::new(),
        })
    }

    /// How many positions the last [`next_logits`](Self::next_logits) computed; the others of
    /// its context came from the cache.
    pub fn computed(&self) -> usize {
        self.computed
    }

    /// The logits (Vp) at the last position of `ctx` (B = 1, T = ctx.len()), as the model's full
    /// forward over `ctx` computes them. The positions `ctx` shares with the previous call's
    /// context (its longest common prefix) come from the cache; the rest are computed, the last
    /// always.
    pub fn next_logits(&mut self, ctx: &[u32]) -> Result<Vec<f32>> {
        let model = self.model;
        let cfg = model.config;
        let n_ctx = ctx.len();
        if n_ctx == 0 || n_ctx > self.capacity {
            bail!(
                "a context must hold 1..={} tokens (the decoder's window), got {n_ctx}",
                self.capacity
            );
        }
        check_tokens(&cfg, ctx, n_ctx, "input")?;
        let (l_count, nh, c, vp) = (
            cfg.num_layers,
            cfg.num_heads,
            cfg.channels,
            cfg.padded_vocab_size,
        );
        let shared = self.tokens.iter().zip(ctx).take_while(|(a, b)| a == b);
        // the cached positions kept (at least the last one is computed: its logits are wanted)
        let p = shared.count().min(n_ctx - 1);
        let t = n_ctx - p;
        self.computed = t;
        self.tokens.truncate(p);
        self.tokens.extend_from_slice(&ctx[p..]);

        let w = params::split(&cfg, &model.params);
        let s = model.storage();
        self.x.resize(t * c, 0.0);
        self.y.resize(t * c, 0.0);
        // positions p..p+t: the wpe rows from p on
        encoder_forward(&mut self.x, &ctx[p..], w.wte, &w.wpe[p * c..], 1, t, c);
        s.round(&mut self.x);
        let c3 = 3 * c;
        for l in 0..l_count {
            let la = layer_acts(&mut self.acts, &cfg, t, p + t);
            let cache = &mut self.cache[l * self.capacity * c3..][..(p + t) * c3];
            let attend = |atty: &mut [f32], preatt: &mut [f32], att: &mut [f32], qkv: &[f32]| {
                cache[p * c3..].copy_from_slice(qkv);
                attention_forward_cached(atty, preatt, att, cache, 1, p, t, c, nh);
            };
            layer_forward(
                la,
                &w.block(l, l_count),
                &self.x,
                &mut self.y,
                1,
                t,
                c,
                s,
                attend,
            );
            std::mem::swap(&mut self.x, &mut self.y);
        }
        // the final layernorm and the logits of the last position only
        let last = &self.x[(t - 1) * c..];
        let (mut lnf, mut mean, mut rstd) = (vec![0.0; c], [0.0], [0.0]);
        layernorm_forward(
            &mut lnf, &mut mean, &mut rstd, last, w.lnfw, w.lnfb, 1, 1, c,
        );
        s.round(&mut lnf);
        let mut logits = vec![0.0; vp];
        matmul_forward(&mut logits, &lnf, w.wte, None, 1, 1, c, vp);
        s.round(&mut logits);
        Ok(logits)
    }
}

/// One block's activations for T new positions of a context of S = P + T, cut from the front of
/// `buf` (grown as needed): training's layout of one layer for B = 1, but with the attention's
/// scores and probabilities (NH, T, S), each new query against every position, and none of the
/// tensors outside the blocks.
fn layer_acts<'b>(
    buf: &'b mut Vec<f32>,
    cfg: &GPT2Config,
    t: usize,
    s: usize,
) -> LayerActs<&'b mut [f32]> {
    let scores = cfg.num_heads * t * s;
    let one_layer = GPT2Config {
        num_layers: 1,
        ..*cfg
    };
    let sizes = Acts {
        preatt: scores,
        att: scores,
        // the tensors outside the blocks: none
        encoded: 0,
        residual3: 0,
        lnf: 0,
        lnf_mean: 0,
        lnf_rstd: 0,
        logits: 0,
        probs: 0,
        losses: 0,
        ..act_sizes(&one_layer, 1, t)
    };
    let total: usize = sizes.into_array().iter().sum();
    if buf.len() < total {
        buf.resize(total, 0.0);
    }
    let (mut layers, _) = split_sizes_mut(sizes, &mut buf[..]).by_layer(1);
    layers.next().expect("one layer")
}
