//! GPT-2 on the CPU: the layers of `cpu::*` composed into the forward pass, the backward pass (the
//! forward read in reverse) and the AdamW update. Parameters, gradients, AdamW moments, activations
//! and their gradients each live in one allocation, sized once for the largest batch; a step
//! allocates nothing.

use super::adamw::{adamw_update, global_norm, AdamW};
use super::attention::{attention_backward, attention_forward};
use super::classifier::{crossentropy_forward, crossentropy_softmax_backward, softmax_forward};
use super::encoder::{encoder_backward, encoder_forward};
use super::gelu::{gelu_backward, gelu_forward};
use super::layernorm::{layernorm_backward, layernorm_forward};
use super::matmul::{matmul_backward, matmul_forward};
use super::residual::{residual_backward, residual_forward};
use crate::activations::{self, num_activations};
use crate::config::GPT2Config;
use crate::params::{self, num_parameters};
use anyhow::{bail, Result};

pub struct Gpt2Cpu {
    pub config: GPT2Config,
    /// The largest batch the activation arenas hold.
    pub max_b: usize,
    pub max_t: usize,
    pub params: Vec<f32>, // (num_parameters)
    pub grads: Vec<f32>,  // (num_parameters)
    m: Vec<f32>,          // (num_parameters) AdamW first moment
    v: Vec<f32>,          // (num_parameters) AdamW second moment
    acts: Vec<f32>,       // (num_activations(max_b, max_t))
    grad_acts: Vec<f32>,  // (num_activations(max_b, max_t))
    inputs: Vec<u32>,     // (B, T) of the last forward
    targets: Vec<u32>,    // (B, T) of the last forward
    /// (B, T) of the last forward.
    pub b: usize,
    pub t: usize,
}

impl Gpt2Cpu {
    /// A model with the given parameters whose arenas hold batches up to max_b x max_t.
    pub fn new(config: GPT2Config, params: Vec<f32>, max_b: usize, max_t: usize) -> Result<Self> {
        config.validate()?;
        if params.len() != num_parameters(&config) {
            bail!(
                "parameter count {} does not match the config's {}",
                params.len(),
                num_parameters(&config)
            );
        }
        check_batch(&config, max_b, max_t)?;
        let n = params.len();
        let na = num_activations(&config, max_b, max_t);
        Ok(Gpt2Cpu {
            config,
            max_b,
            max_t,
            params,
            grads: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
            acts: vec![0.0; na],
            grad_acts: vec![0.0; na],
            inputs: vec![0; max_b * max_t],
            targets: vec![0; max_b * max_t],
            b: 0,
            t: 0,
        })
    }

    /// Runs the forward pass on inputs (B, T); with targets also the loss, which it returns (the
    /// mean over B*T). The logits of the last forward are in `logits()`.
    pub fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<f32>> {
        let cfg = self.config;
        check_batch(&cfg, b, t)?;
        if b > self.max_b || t > self.max_t {
            bail!(
                "batch {b}x{t} is larger than the {}x{} the model was sized for",
                self.max_b,
                self.max_t
            );
        }
        check_tokens(&cfg, inputs, b * t, "input")?;
        if let Some(tg) = targets {
            check_tokens(&cfg, tg, b * t, "target")?;
        }
        self.b = b;
        self.t = t;
        self.inputs[..b * t].copy_from_slice(inputs);
        let (l_count, nh, c, v, vp) = (
            cfg.num_layers,
            cfg.num_heads,
            cfg.channels,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let p = params::split(&cfg, &self.params);
        let a = activations::split_mut(&cfg, b, t, &mut self.acts);
        let (btc, bt, att_n) = (b * t * c, b * t, b * nh * t * t);

        encoder_forward(a.encoded, inputs, p.wte, p.wpe, b, t, c);
        for l in 0..l_count {
            // this layer's input (the encoding or the previous layer's output) and its output
            let (below, this) = a.residual3.split_at_mut(l * btc);
            let residual: &[f32] = if l == 0 {
                &*a.encoded
            } else {
                &below[(l - 1) * btc..]
            };
            let residual3 = &mut this[..btc];
            let ln1 = &mut a.ln1[l * btc..(l + 1) * btc];
            let ln1_mean = &mut a.ln1_mean[l * bt..(l + 1) * bt];
            let ln1_rstd = &mut a.ln1_rstd[l * bt..(l + 1) * bt];
            let qkv = &mut a.qkv[l * 3 * btc..(l + 1) * 3 * btc];
            let atty = &mut a.atty[l * btc..(l + 1) * btc];
            let preatt = &mut a.preatt[l * att_n..(l + 1) * att_n];
            let att = &mut a.att[l * att_n..(l + 1) * att_n];
            let attproj = &mut a.attproj[l * btc..(l + 1) * btc];
            let residual2 = &mut a.residual2[l * btc..(l + 1) * btc];
            let ln2 = &mut a.ln2[l * btc..(l + 1) * btc];
            let ln2_mean = &mut a.ln2_mean[l * bt..(l + 1) * bt];
            let ln2_rstd = &mut a.ln2_rstd[l * bt..(l + 1) * bt];
            let fch = &mut a.fch[l * 4 * btc..(l + 1) * 4 * btc];
            let fch_gelu = &mut a.fch_gelu[l * 4 * btc..(l + 1) * 4 * btc];
            let fcproj = &mut a.fcproj[l * btc..(l + 1) * btc];
            let (c1, c3, c4) = (c, 3 * c, 4 * c);

            layernorm_forward(
                ln1,
                ln1_mean,
                ln1_rstd,
                residual,
                &p.ln1w[l * c1..(l + 1) * c1],
                &p.ln1b[l * c1..(l + 1) * c1],
                b,
                t,
                c,
            );
            matmul_forward(
                qkv,
                ln1,
                &p.qkvw[l * c3 * c..(l + 1) * c3 * c],
                Some(&p.qkvb[l * c3..(l + 1) * c3]),
                b,
                t,
                c,
                c3,
            );
            attention_forward(atty, preatt, att, qkv, b, t, c, nh);
            matmul_forward(
                attproj,
                atty,
                &p.attprojw[l * c * c..(l + 1) * c * c],
                Some(&p.attprojb[l * c1..(l + 1) * c1]),
                b,
                t,
                c,
                c,
            );
            residual_forward(residual2, residual, attproj);
            layernorm_forward(
                ln2,
                ln2_mean,
                ln2_rstd,
                residual2,
                &p.ln2w[l * c1..(l + 1) * c1],
                &p.ln2b[l * c1..(l + 1) * c1],
                b,
                t,
                c,
            );
            matmul_forward(
                fch,
                ln2,
                &p.fcw[l * c4 * c..(l + 1) * c4 * c],
                Some(&p.fcb[l * c4..(l + 1) * c4]),
                b,
                t,
                c,
                c4,
            );
            gelu_forward(fch_gelu, fch);
            matmul_forward(
                fcproj,
                fch_gelu,
                &p.fcprojw[l * c * c4..(l + 1) * c * c4],
                Some(&p.fcprojb[l * c1..(l + 1) * c1]),
                b,
                t,
                c4,
                c,
            );
            residual_forward(residual3, residual2, fcproj);
        }
        let last = &a.residual3[(l_count - 1) * btc..l_count * btc];
        layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, b, t, c);
        matmul_forward(a.logits, a.lnf, p.wte, None, b, t, c, vp);
        softmax_forward(a.probs, a.logits, b, t, v, vp);

        let Some(targets) = targets else {
            return Ok(None);
        };
        self.targets[..bt].copy_from_slice(targets);
        crossentropy_forward(a.losses, a.probs, targets, b, t, vp);
        let mean = a.losses.iter().map(|&x| x as f64).sum::<f64>() / bt as f64;
        Ok(Some(mean as f32))
    }

    /// The logits (B, T, Vp) of the last forward.
    pub fn logits(&mut self) -> &[f32] {
        let (b, t) = (self.b, self.t);
        let a = activations::split_mut(&self.config, b, t, &mut self.acts);
        a.logits
    }

    /// The probabilities (B, T, Vp) of the last forward (zero in the padded columns).
    pub fn probs(&mut self) -> &[f32] {
        let (b, t) = (self.b, self.t);
        let a = activations::split_mut(&self.config, b, t, &mut self.acts);
        a.probs
    }

    /// Sets every parameter gradient to zero (before the first micro-batch of a step).
    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    /// The backward pass of the last forward (which must have had targets): adds the gradient of
    /// `loss_scale * mean loss` to `grads`. Gradient accumulation over k micro-batches uses
    /// loss_scale = 1/k.
    pub fn backward(&mut self, loss_scale: f32) {
        let cfg = self.config;
        let (b, t) = (self.b, self.t);
        assert!(b > 0, "backward before forward");
        let (l_count, nh, c, v, vp) = (
            cfg.num_layers,
            cfg.num_heads,
            cfg.channels,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let (btc, bt, att_n) = (b * t * c, b * t, b * nh * t * t);
        let p = params::split(&cfg, &self.params);
        let g = params::split_mut(&cfg, &mut self.grads);
        let a = activations::split_mut(&cfg, b, t, &mut self.acts);
        let na = num_activations(&cfg, b, t);
        self.grad_acts[..na].fill(0.0);
        let d = activations::split_mut(&cfg, b, t, &mut self.grad_acts);
        let inputs = &self.inputs[..bt];
        let targets = &self.targets[..bt];

        // the loss is the mean over B*T: each position's loss gets 1/(B*T)
        d.losses.fill(loss_scale / bt as f32);
        crossentropy_softmax_backward(d.logits, d.losses, a.probs, targets, b, t, v, vp);
        matmul_backward(d.lnf, g.wte, None, d.logits, a.lnf, p.wte, b, t, c, vp);
        let last = (l_count - 1) * btc;
        layernorm_backward(
            &mut d.residual3[last..last + btc],
            g.lnfw,
            g.lnfb,
            d.lnf,
            &a.residual3[last..last + btc],
            p.lnfw,
            a.lnf_mean,
            a.lnf_rstd,
            b,
            t,
            c,
        );
        for l in (0..l_count).rev() {
            let (c1, c3, c4) = (c, 3 * c, 4 * c);
            let residual: &[f32] = if l == 0 {
                &*a.encoded
            } else {
                &a.residual3[(l - 1) * btc..l * btc]
            };
            // this layer's output gradient, and the gradient of its input (the layer below's output)
            let (below, this) = d.residual3.split_at_mut(l * btc);
            let dresidual3 = &this[..btc];
            let dresidual: &mut [f32] = if l == 0 {
                &mut *d.encoded
            } else {
                &mut below[(l - 1) * btc..]
            };
            let dresidual2 = &mut d.residual2[l * btc..(l + 1) * btc];
            let dfcproj = &mut d.fcproj[l * btc..(l + 1) * btc];
            let dfch_gelu = &mut d.fch_gelu[l * 4 * btc..(l + 1) * 4 * btc];
            let dfch = &mut d.fch[l * 4 * btc..(l + 1) * 4 * btc];
            let dln2 = &mut d.ln2[l * btc..(l + 1) * btc];
            let dattproj = &mut d.attproj[l * btc..(l + 1) * btc];
            let datty = &mut d.atty[l * btc..(l + 1) * btc];
            let dpreatt = &mut d.preatt[l * att_n..(l + 1) * att_n];
            let datt = &mut d.att[l * att_n..(l + 1) * att_n];
            let dqkv = &mut d.qkv[l * 3 * btc..(l + 1) * 3 * btc];
            let dln1 = &mut d.ln1[l * btc..(l + 1) * btc];

            residual_backward(dresidual2, dfcproj, dresidual3);
            matmul_backward(
                dfch_gelu,
                &mut g.fcprojw[l * c * c4..(l + 1) * c * c4],
                Some(&mut g.fcprojb[l * c1..(l + 1) * c1]),
                dfcproj,
                &a.fch_gelu[l * 4 * btc..(l + 1) * 4 * btc],
                &p.fcprojw[l * c * c4..(l + 1) * c * c4],
                b,
                t,
                c4,
                c,
            );
            gelu_backward(dfch, &a.fch[l * 4 * btc..(l + 1) * 4 * btc], dfch_gelu);
            matmul_backward(
                dln2,
                &mut g.fcw[l * c4 * c..(l + 1) * c4 * c],
                Some(&mut g.fcb[l * c4..(l + 1) * c4]),
                dfch,
                &a.ln2[l * btc..(l + 1) * btc],
                &p.fcw[l * c4 * c..(l + 1) * c4 * c],
                b,
                t,
                c,
                c4,
            );
            layernorm_backward(
                dresidual2,
                &mut g.ln2w[l * c1..(l + 1) * c1],
                &mut g.ln2b[l * c1..(l + 1) * c1],
                dln2,
                &a.residual2[l * btc..(l + 1) * btc],
                &p.ln2w[l * c1..(l + 1) * c1],
                &a.ln2_mean[l * bt..(l + 1) * bt],
                &a.ln2_rstd[l * bt..(l + 1) * bt],
                b,
                t,
                c,
            );
            residual_backward(dresidual, dattproj, dresidual2);
            matmul_backward(
                datty,
                &mut g.attprojw[l * c * c..(l + 1) * c * c],
                Some(&mut g.attprojb[l * c1..(l + 1) * c1]),
                dattproj,
                &a.atty[l * btc..(l + 1) * btc],
                &p.attprojw[l * c * c..(l + 1) * c * c],
                b,
                t,
                c,
                c,
            );
            attention_backward(
                dqkv,
                dpreatt,
                datt,
                datty,
                &a.qkv[l * 3 * btc..(l + 1) * 3 * btc],
                &a.att[l * att_n..(l + 1) * att_n],
                b,
                t,
                c,
                nh,
            );
            matmul_backward(
                dln1,
                &mut g.qkvw[l * c3 * c..(l + 1) * c3 * c],
                Some(&mut g.qkvb[l * c3..(l + 1) * c3]),
                dqkv,
                &a.ln1[l * btc..(l + 1) * btc],
                &p.qkvw[l * c3 * c..(l + 1) * c3 * c],
                b,
                t,
                c,
                c3,
            );
            layernorm_backward(
                dresidual,
                &mut g.ln1w[l * c1..(l + 1) * c1],
                &mut g.ln1b[l * c1..(l + 1) * c1],
                dln1,
                residual,
                &p.ln1w[l * c1..(l + 1) * c1],
                &a.ln1_mean[l * bt..(l + 1) * bt],
                &a.ln1_rstd[l * bt..(l + 1) * bt],
                b,
                t,
                c,
            );
        }
        encoder_backward(g.wte, g.wpe, d.encoded, inputs, b, t, c);
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f32 {
        global_norm(&self.grads)
    }

    /// One AdamW step (step counts from 1), with the gradients first multiplied by grad_scale.
    pub fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) {
        adamw_update(
            &mut self.params,
            &self.grads,
            &mut self.m,
            &mut self.v,
            hp,
            step,
            grad_scale,
        );
    }
}

/// Checks a batch shape against the config: B and T positive, T <= maxT.
pub fn check_batch(cfg: &GPT2Config, b: usize, t: usize) -> Result<()> {
    if b == 0 || t == 0 {
        bail!("batch size B={b} and sequence length T={t} must both be at least 1");
    }
    if t > cfg.max_seq_len {
        bail!(
            "sequence length T={t} exceeds the model's maximum sequence length maxT={}",
            cfg.max_seq_len
        );
    }
    Ok(())
}

/// Checks that `tokens` holds n ids, each below the vocabulary size.
pub fn check_tokens(cfg: &GPT2Config, tokens: &[u32], n: usize, what: &str) -> Result<()> {
    if tokens.len() != n {
        bail!("expected {n} {what} tokens, got {}", tokens.len());
    }
    if let Some((i, &tok)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &x)| x as usize >= cfg.vocab_size)
    {
        bail!(
            "{what} token id {tok} at position {i} is out of range for vocabulary size {}",
            cfg.vocab_size
        );
    }
    Ok(())
}
