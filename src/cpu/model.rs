//! GPT-2 on the CPU: the layers of `cpu::*` composed into the forward pass, the backward pass (the
//! forward read in reverse) and the AdamW update. Parameters, gradients, AdamW moments, activations
//! and their gradients each live in one allocation, sized once for the largest batch; a step
//! allocates nothing.

use super::adamw::{adamw_update, global_norm, update_ranges, AdamW};
use super::attention::{attention_backward, attention_forward};
use super::classifier::{crossentropy_forward, crossentropy_softmax_backward, softmax_forward};
use super::encoder::{encoder_backward, encoder_forward};
use super::gelu::{gelu_backward, gelu_forward};
use super::layernorm::{layernorm_backward, layernorm_forward};
use super::matmul::{matmul_backward, matmul_forward};
use super::residual::{residual_backward, residual_forward};
use crate::activations::{self, act_sizes, checked_act_sizes, layer_io, residual_slot};
use crate::activations::{num_activations, split_sizes_mut, Acts, LayerActs};
use crate::config::GPT2Config;
use crate::engine::{check_optimizer_array, OptimizerArray};
use crate::host_memory::{self, host_memory, size_text, HostMemory};
use crate::out_of_memory::{Knobs, OutOfMemory};
use crate::params::{self, num_parameters, Block};
use crate::precision::{round_bf16_stochastic, rounding_bits};
use anyhow::{bail, Result};

/// How the model stores its tensors. `Fp32` is the reference: nothing is rounded beyond fp32.
/// `Bf16` emulates the bf16 GPU engine's storage: the weights, and every activation, activation
/// gradient and parameter gradient where that engine stores one in bf16, are rounded to bf16
/// (round to nearest even) when written, while the arithmetic stays fp32 (as the engine's does).
/// The layernorm statistics and the losses stay fp32, as there. The update is the engine's too:
/// AdamW on fp32 master weights, then the bf16 weights written from them with seeded stochastic
/// rounding (`precision::round_bf16_stochastic`, seed = step, as `adamw_update_mixed`). The tests
/// use it to measure how far bf16 alone moves the results (what `verify::Tolerances::BF16` must
/// allow) and the loss curve (tests/loss_band.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    Fp32,
    Bf16,
}

impl Storage {
    /// Rounds `x` in place to what this storage keeps.
    pub fn round(self, x: &mut [f32]) {
        if self == Storage::Bf16 {
            x.iter_mut()
                .for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
        }
    }
}

pub struct Gpt2Cpu {
    pub config: GPT2Config,
    /// The largest batch the activation arenas hold.
    pub max_b: usize,
    pub max_t: usize,
    pub params: Vec<f32>, // (num_parameters)
    pub grads: Vec<f32>,  // (num_parameters)
    m: Vec<f32>,          // (num_parameters) AdamW first moment
    v: Vec<f32>,          // (num_parameters) AdamW second moment
    acts: Vec<f32>,       // (num_activations(max_b, max_t)), or for forwards only see `layout`
    grad_acts: Vec<f32>,  // (num_activations(max_b, max_t))
    inputs: Vec<u32>,     // (B, T) of the last forward
    targets: Vec<u32>,    // (B, T) of the last forward
    /// (B, T) of the last forward.
    pub b: usize,
    pub t: usize,
    /// Whether the last forward had targets (the activations then hold its losses).
    with_targets: bool,
    storage: Storage,
    /// (num_parameters) the fp32 master weights when emulating bf16 storage, else empty.
    master: Vec<f32>,
    /// Made for forwards only and not yet asked to train: the activations then hold one
    /// layer's tensors (see [`Acts::forwards_only`]).
    forwards_only: bool,
}

impl Gpt2Cpu {
    /// A model for training with the given parameters, whose arenas hold batches up to
    /// max_b x max_t: all of them allocated now, or an error before any is when they do not fit
    /// in the host's memory (`host_memory`).
    pub fn new(config: GPT2Config, params: Vec<f32>, max_b: usize, max_t: usize) -> Result<Self> {
        Self::with_arenas(config, params, (max_b, max_t), true)
    }

    /// A model for forwards only (`eval`, `sample`): its activations hold one layer's tensors
    /// (see [`Acts::forwards_only`]), and the arenas that training needs beyond a forward (the
    /// gradients, AdamW's moments, the activation gradients: more than half of training's
    /// footprint) are left out; [`prepare_training`](Self::prepare_training), which the
    /// [`Engine`](crate::engine::Engine) calls that train call first, allocates training's.
    pub fn for_inference(
        config: GPT2Config,
        params: Vec<f32>,
        max_b: usize,
        max_t: usize,
    ) -> Result<Self> {
        Self::with_arenas(config, params, (max_b, max_t), false)
    }

    fn with_arenas(
        config: GPT2Config,
        params: Vec<f32>,
        (max_b, max_t): (usize, usize),
        training: bool,
    ) -> Result<Self> {
        check_new(&config, &params, max_b, max_t)?;
        // (each size and their total fit in a usize: num_activations below cannot overflow)
        check_address_space(&config, max_b, max_t)?;
        let footprint = Footprint::of(&config, (max_b, max_t));
        let na = layout(&config, max_b, max_t, !training).total();
        let allocating = if training {
            Allocating::Training
        } else {
            Allocating::Forward
        };
        check_host_memory(&footprint, allocating, host_memory())?;
        let mut model = Gpt2Cpu {
            config,
            max_b,
            max_t,
            params,
            grads: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            acts: host_memory::zeroed(na, "the activations")?,
            grad_acts: Vec::new(),
            inputs: host_memory::zeroed(max_b * max_t, "the inputs")?,
            targets: host_memory::zeroed(max_b * max_t, "the targets")?,
            b: 0,
            t: 0,
            with_targets: false,
            storage: Storage::Fp32,
            master: Vec::new(),
            forwards_only: !training,
        };
        if training {
            model.allocate_training()?;
        }
        Ok(model)
    }

    /// Allocates what training needs beyond a forward, where a model made
    /// [`for_inference`](Self::for_inference) has not yet: an error when it does not fit in what
    /// the host has left. A model from [`new`](Self::new) has it all. The activations grow to
    /// every layer's, and the last forward, if any, runs again to fill them: its backward can
    /// follow.
    pub fn prepare_training(&mut self) -> Result<()> {
        if !self.forwards_only {
            return Ok(());
        }
        let footprint = Footprint::of(&self.config, (self.max_b, self.max_t));
        check_host_memory(&footprint, Allocating::TrainingAfterForward, host_memory())?;
        let na = num_activations(&self.config, self.max_b, self.max_t);
        // (the forwards' arena freed first: the peak is the new one, not both)
        self.acts = Vec::new();
        self.acts = host_memory::zeroed(na, "the activations")?;
        self.forwards_only = false;
        self.allocate_training()?;
        let (b, t) = (self.b, self.t);
        if b > 0 {
            let inputs = self.inputs[..b * t].to_vec();
            let targets = self.with_targets.then(|| self.targets[..b * t].to_vec());
            self.forward(&inputs, targets.as_deref(), b, t)?;
        }
        Ok(())
    }

    /// The activations' layout at B x T (see [`layout`]).
    fn split_acts(&mut self, b: usize, t: usize) -> Acts<&mut [f32]> {
        let sizes = layout(&self.config, b, t, self.forwards_only);
        split_sizes_mut(sizes, &mut self.acts)
    }

    /// An error for AdamW's moments of a model made for inference before [`prepare_training`].
    ///
    /// [`prepare_training`]: Self::prepare_training
    fn check_has_moments(&self, which: OptimizerArray) -> Result<()> {
        if matches!(which, OptimizerArray::M | OptimizerArray::V) && self.m.is_empty() {
            bail!(
                "a model made for inference has no AdamW moments (prepare_training allocates them)"
            );
        }
        Ok(())
    }

    /// The training calls of a model made for inference need [`prepare_training`] first (the
    /// [`Engine`](crate::engine::Engine)'s call it).
    ///
    /// [`prepare_training`]: Self::prepare_training
    fn assert_trainable(&self) {
        assert!(
            !self.grads.is_empty(),
            "a model made for inference: call prepare_training before training it"
        );
    }

    fn allocate_training(&mut self) -> Result<()> {
        let (n, na) = (self.params.len(), self.acts.len());
        let floats = |n, what| host_memory::zeroed::<f32>(n, what);
        self.grads = floats(n, "the parameter gradients")?;
        self.m = floats(n, "AdamW's first moment")?;
        self.v = floats(n, "AdamW's second moment")?;
        self.grad_acts = floats(na, "the activation gradients")?;
        Ok(())
    }

    /// The same model emulating bf16 storage (see [`Storage`]): its weights are rounded to bf16
    /// now, its activations and gradients whenever they are stored.
    pub fn emulating_bf16_storage(mut self) -> Self {
        self.storage = Storage::Bf16;
        self.master = self.params.clone();
        self.storage.round(&mut self.params);
        self
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
        check_forward(&cfg, (self.max_b, self.max_t), inputs, targets, b, t)?;
        self.b = b;
        self.t = t;
        self.with_targets = targets.is_some();
        self.inputs[..b * t].copy_from_slice(inputs);
        let (l_count, nh, c, v, vp) = (
            cfg.num_layers,
            cfg.num_heads,
            cfg.channels,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let p = params::split(&cfg, &self.params);
        let a = split_sizes_mut(layout(&cfg, b, t, self.forwards_only), &mut self.acts);
        let btc = b * t * c;

        let s = self.storage;
        encoder_forward(a.encoded, inputs, p.wte, p.wpe, b, t, c);
        s.round(a.encoded);
        // every layer's tensors, or for forwards only one layer's, which each layer overwrites
        let fo = self.forwards_only;
        let (mut layers, a) = a.by_layer(if fo { 1 } else { l_count });
        let mut only = if fo { layers.next() } else { None };
        for l in 0..l_count {
            let la = match &mut only {
                Some(one) => one.reborrow(),
                None => layers.next().expect("one slice per layer"),
            };
            let w = p.block(l, l_count);
            // this layer's input (the encoding or the previous layer's output) and its output
            let (residual, residual3) = layer_io(&*a.encoded, &mut *a.residual3, l, btc, fo);
            let attend = |atty: &mut [f32], preatt: &mut [f32], att: &mut [f32], qkv: &[f32]| {
                attention_forward(atty, preatt, att, qkv, b, t, c, nh)
            };
            layer_forward(la, &w, residual, residual3, b, t, c, s, attend);
        }
        let last_slot = residual_slot(l_count - 1, fo);
        let last = &a.residual3[last_slot * btc..(last_slot + 1) * btc];
        layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, last, p.lnfw, p.lnfb, b, t, c);
        s.round(a.lnf);
        matmul_forward(a.logits, a.lnf, p.wte, None, b, t, c, vp);
        s.round(a.logits);
        softmax_forward(a.probs, a.logits, b, t, v, vp);

        let Some(targets) = targets else {
            return Ok(None);
        };
        let bt = b * t;
        self.targets[..bt].copy_from_slice(targets);
        crossentropy_forward(a.losses, a.probs, a.logits, targets, b, t, v, vp);
        let mean = a.losses.iter().map(|&x| x as f64).sum::<f64>() / bt as f64;
        Ok(Some(mean as f32))
    }

    /// The logits (B, T, Vp) of the last forward.
    pub fn logits(&mut self) -> &[f32] {
        let (b, t) = (self.b, self.t);
        self.split_acts(b, t).logits
    }

    /// The losses (B, T) of the last forward (each position's cross-entropy of its target); an
    /// error if it had no targets.
    pub fn losses(&mut self) -> Result<&[f32]> {
        if !self.with_targets {
            bail!("the last forward had no targets, so it computed no losses");
        }
        let (b, t) = (self.b, self.t);
        Ok(self.split_acts(b, t).losses)
    }

    /// The probabilities (B, T, Vp) of the last forward (zero in the padded columns).
    pub fn probs(&mut self) -> &[f32] {
        let (b, t) = (self.b, self.t);
        self.split_acts(b, t).probs
    }

    /// Sets every parameter gradient to zero (before the first micro-batch of a step).
    pub fn zero_grad(&mut self) {
        self.assert_trainable();
        self.grads.fill(0.0);
    }

    /// The backward pass of the last forward (which must have had targets): adds the gradient of
    /// `loss_scale * mean loss` to `grads`. Gradient accumulation over k micro-batches uses
    /// loss_scale = 1/k.
    pub fn backward(&mut self, loss_scale: f32) {
        let cfg = self.config;
        let (b, t) = (self.b, self.t);
        assert!(b > 0, "backward before forward");
        self.assert_trainable();
        let (l_count, nh, c, v, vp) = (
            cfg.num_layers,
            cfg.num_heads,
            cfg.channels,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let (btc, bt) = (b * t * c, b * t);
        let p = params::split(&cfg, &self.params);
        let mut g = params::split_mut(&cfg, &mut self.grads);
        let a = activations::split_mut(&cfg, b, t, &mut self.acts);
        let na = num_activations(&cfg, b, t);
        self.grad_acts[..na].fill(0.0);
        let d = activations::split_mut(&cfg, b, t, &mut self.grad_acts);
        let inputs = &self.inputs[..bt];
        let targets = &self.targets[..bt];

        // the loss is the mean over B*T: each position's loss gets 1/(B*T)
        d.losses.fill(loss_scale / bt as f32);
        let s = self.storage;
        crossentropy_softmax_backward(d.logits, d.losses, a.probs, targets, b, t, v, vp);
        s.round(d.logits);
        matmul_backward(d.lnf, g.wte, None, d.logits, a.lnf, p.wte, b, t, c, vp);
        s.round(d.lnf);
        s.round(g.wte);
        let last = (l_count - 1) * btc;
        let (dlast, alast) = (&mut d.residual3[last..], &a.residual3[last..]);
        layernorm_backward(
            dlast, g.lnfw, g.lnfb, d.lnf, alast, p.lnfw, a.lnf_mean, a.lnf_rstd, b, t, c,
        );
        s.round(dlast);
        s.round(g.lnfw);
        s.round(g.lnfb);

        let (layers, a) = a.by_layer(l_count);
        let (dlayers, d) = d.by_layer(l_count);
        for (l, (la, dl)) in layers.zip(dlayers).enumerate().rev() {
            let (w, dw) = (p.block(l, l_count), g.block_mut(l, l_count));
            let residual: &[f32] = if l == 0 {
                &*a.encoded
            } else {
                &a.residual3[(l - 1) * btc..l * btc]
            };
            // this layer's output gradient, and the gradient of its input (the layer below's output)
            let (below, this) = d.residual3.split_at_mut(l * btc);
            let dresidual: &mut [f32] = if l == 0 {
                &mut *d.encoded
            } else {
                &mut below[(l - 1) * btc..]
            };
            layer_backward(
                dl,
                dw,
                dresidual,
                &this[..btc],
                la,
                &w,
                residual,
                b,
                t,
                c,
                nh,
                s,
            );
        }
        encoder_backward(g.wte, g.wpe, d.encoded, inputs, b, t, c);
        s.round(g.wte);
        s.round(g.wpe);
    }

    /// The global L2 norm of the gradients.
    pub fn grad_norm(&self) -> f32 {
        self.assert_trainable();
        global_norm(&self.grads)
    }

    /// One AdamW step (step counts from 1), with the gradients first multiplied by grad_scale;
    /// the weight decay on the tensors `hp.decay_on` names.
    pub fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) {
        self.assert_trainable();
        let weights = match self.storage {
            Storage::Fp32 => &mut self.params,
            Storage::Bf16 => &mut self.master,
        };
        for (r, hp) in update_ranges(&self.config, hp) {
            let (m, v) = (&mut self.m[r.clone()], &mut self.v[r.clone()]);
            adamw_update(
                &mut weights[r.clone()],
                &self.grads[r],
                m,
                v,
                &hp,
                step,
                grad_scale,
            );
        }
        match self.storage {
            Storage::Fp32 => {}
            Storage::Bf16 => {
                let seed = step as u32;
                for (i, (p, &w)) in self.params.iter_mut().zip(&self.master).enumerate() {
                    *p = round_bf16_stochastic(w, rounding_bits(seed, i as u32)).to_f32();
                }
            }
        }
    }

    /// How the model stores its tensors.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// Whether the model keeps fp32 master weights (emulating bf16 storage).
    pub fn has_master_weights(&self) -> bool {
        self.storage == Storage::Bf16
    }

    /// One of AdamW's arrays (see
    /// [`Engine::optimizer_array`](crate::engine::Engine::optimizer_array)).
    pub fn optimizer_array(&self, which: OptimizerArray) -> Result<Vec<f32>> {
        self.check_has_moments(which)?;
        Ok(match which {
            OptimizerArray::M => self.m.clone(),
            OptimizerArray::V => self.v.clone(),
            OptimizerArray::Master if self.has_master_weights() => self.master.clone(),
            OptimizerArray::Master => bail!("an fp32 model has no master weights"),
        })
    }

    /// Sets one of AdamW's arrays (see
    /// [`Engine::set_optimizer_array`](crate::engine::Engine::set_optimizer_array)).
    pub fn set_optimizer_array(&mut self, which: OptimizerArray, values: &[f32]) -> Result<()> {
        check_optimizer_array(which, values, self.params.len())?;
        self.check_has_moments(which)?;
        let dst = match which {
            OptimizerArray::M => &mut self.m,
            OptimizerArray::V => &mut self.v,
            OptimizerArray::Master if self.has_master_weights() => &mut self.master,
            OptimizerArray::Master => &mut self.params,
        };
        dst.copy_from_slice(values);
        Ok(())
    }
}

/// One transformer block forward: `residual` (B,T,C) in, `residual3` (B,T,C) out, and everything
/// the backward needs saved in `la`. `attend(atty, preatt, att, qkv)` is the attention:
/// `attention_forward` in training, the attention to the cached positions too in generation
/// (`cpu::decode`). One call per line in llm.c's order (rustfmt would stack them).
#[rustfmt::skip]
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_forward(la: LayerActs<&mut [f32]>, w: &Block<&[f32]>, residual: &[f32], residual3: &mut [f32], b: usize, t: usize, c: usize, s: Storage, attend: impl FnOnce(&mut [f32], &mut [f32], &mut [f32], &[f32])) {
    layernorm_forward(la.ln1, la.ln1_mean, la.ln1_rstd, residual, w.ln1w, w.ln1b, b, t, c);
    s.round(la.ln1);
    matmul_forward(la.qkv, la.ln1, w.qkvw, Some(w.qkvb), b, t, c, 3 * c);
    s.round(la.qkv);
    attend(la.atty, la.preatt, la.att, la.qkv);
    s.round(la.atty);
    s.round(la.att);
    matmul_forward(la.attproj, la.atty, w.attprojw, Some(w.attprojb), b, t, c, c);
    s.round(la.attproj);
    residual_forward(la.residual2, residual, la.attproj);
    s.round(la.residual2);
    layernorm_forward(la.ln2, la.ln2_mean, la.ln2_rstd, la.residual2, w.ln2w, w.ln2b, b, t, c);
    s.round(la.ln2);
    matmul_forward(la.fch, la.ln2, w.fcw, Some(w.fcb), b, t, c, 4 * c);
    s.round(la.fch);
    gelu_forward(la.fch_gelu, la.fch);
    s.round(la.fch_gelu);
    matmul_forward(la.fcproj, la.fch_gelu, w.fcprojw, Some(w.fcprojb), b, t, 4 * c, c);
    s.round(la.fcproj);
    residual_forward(residual3, la.residual2, la.fcproj);
    s.round(residual3);
}

/// One transformer block backward, the forward read in reverse: from the gradient of the block's
/// output `dresidual3` (B,T,C), adds the gradient of its input to `dresidual` (B,T,C) and of its
/// parameters to `dw`; `dl` is this block's (zeroed) activation-gradient scratch.
#[rustfmt::skip]
#[allow(clippy::too_many_arguments)]
fn layer_backward(dl: LayerActs<&mut [f32]>, dw: Block<&mut [f32]>, dresidual: &mut [f32], dresidual3: &[f32], la: LayerActs<&mut [f32]>, w: &Block<&[f32]>, residual: &[f32], b: usize, t: usize, c: usize, nh: usize, s: Storage) {
    residual_backward(dl.residual2, dl.fcproj, dresidual3);
    matmul_backward(dl.fch_gelu, dw.fcprojw, Some(dw.fcprojb), dl.fcproj, la.fch_gelu, w.fcprojw, b, t, 4 * c, c);
    s.round(dl.fch_gelu);
    gelu_backward(dl.fch, la.fch, dl.fch_gelu);
    s.round(dl.fch);
    matmul_backward(dl.ln2, dw.fcw, Some(dw.fcb), dl.fch, la.ln2, w.fcw, b, t, c, 4 * c);
    s.round(dl.ln2);
    layernorm_backward(dl.residual2, dw.ln2w, dw.ln2b, dl.ln2, la.residual2, w.ln2w, la.ln2_mean, la.ln2_rstd, b, t, c);
    s.round(dl.residual2);
    residual_backward(dresidual, dl.attproj, dl.residual2);
    s.round(dl.attproj);
    matmul_backward(dl.atty, dw.attprojw, Some(dw.attprojb), dl.attproj, la.atty, w.attprojw, b, t, c, c);
    s.round(dl.atty);
    attention_backward(dl.qkv, dl.preatt, dl.att, dl.atty, la.qkv, la.att, b, t, c, nh);
    s.round(dl.qkv);
    matmul_backward(dl.ln1, dw.qkvw, Some(dw.qkvb), dl.qkv, la.ln1, w.qkvw, b, t, c, 3 * c);
    s.round(dl.ln1);
    layernorm_backward(dresidual, dw.ln1w, dw.ln1b, dl.ln1, residual, w.ln1w, la.ln1_mean, la.ln1_rstd, b, t, c);
    s.round(dresidual);
    // every parameter gradient of the block is written once per backward: round it once
    let Block { ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb } = dw;
    for x in [ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb] {
        s.round(x);
    }
}

/// Checks a new model's arguments (both engines): the config, the parameter count, and the
/// largest batch its arenas are to hold.
pub fn check_new(cfg: &GPT2Config, params: &[f32], max_b: usize, max_t: usize) -> Result<()> {
    cfg.validate()?;
    if params.len() != num_parameters(cfg) {
        bail!(
            "parameter count {} does not match the config's {}",
            params.len(),
            num_parameters(cfg)
        );
    }
    check_batch(cfg, max_b, max_t)
}

/// The CPU engine's activation layout at B x T: every layer's tensors, or for a model for
/// forwards only one layer's ([`Acts::forwards_only`]). The CPU keeps `probs`.
fn layout(cfg: &GPT2Config, b: usize, t: usize, forwards_only: bool) -> Acts<usize> {
    let sizes = act_sizes(cfg, b, t);
    if forwards_only {
        sizes.forwards_only(cfg.num_layers)
    } else {
        sizes
    }
}

/// What the CPU engine holds at its largest batch, in bytes (all fp32).
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    /// For the message: L, C, the parameters' count, B and T.
    model: (usize, usize, usize, usize, usize),
    /// The parameters (allocated before the engine: they are its input).
    params: f64,
    /// The activations.
    acts: f64,
    /// The activations of a model for forwards only (one layer's: see [`layout`]).
    forward_acts: f64,
    /// The inputs and targets.
    tokens: f64,
    /// The parameter gradients and AdamW's two moments.
    optimizer: f64,
    /// The activation gradients.
    grad_acts: f64,
}

impl Footprint {
    /// The footprint of `cfg` at B x T (whose activation count must fit in a usize).
    pub fn of(cfg: &GPT2Config, (b, t): (usize, usize)) -> Footprint {
        let (n, na) = (num_parameters(cfg), num_activations(cfg, b, t));
        let na_forward = layout(cfg, b, t, true).total();
        Footprint {
            model: (cfg.num_layers, cfg.channels, n, b, t),
            params: 4.0 * n as f64,
            acts: 4.0 * na as f64,
            forward_acts: 4.0 * na_forward as f64,
            tokens: 8.0 * b as f64 * t as f64,
            optimizer: 12.0 * n as f64,
            grad_acts: 4.0 * na as f64,
        }
    }
}

/// An error when the activations of a batch of `b` x `t` do not fit in the address space.
fn check_address_space(cfg: &GPT2Config, b: usize, t: usize) -> Result<()> {
    if checked_act_sizes(cfg, b, t, true).is_none() {
        let what =
            format!("the activations of B={b}, T={t} do not fit in this machine's address space");
        return Err(OutOfMemory::beyond_any_memory(what).into());
    }
    Ok(())
}

/// Checks, before its parameters exist, that a model of `cfg` can train at `b` x `t` on the
/// CPU: a new model that cannot is refused before its weights are drawn (minutes for a large
/// one). Building the engine checks again, exactly ([`check_host_memory`]).
pub fn check_fits(cfg: &GPT2Config, b: usize, t: usize) -> Result<()> {
    check_address_space(cfg, b, t)?;
    let footprint = Footprint::of(cfg, (b, t));
    check_host_memory(&footprint, Allocating::Training, host_memory())
}

/// Which of a [`Footprint`]'s parts are being allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocating {
    /// A model for training: the forward's and training's parts.
    Training,
    /// A model for forwards only.
    Forward,
    /// Training's part, for a model that has the forward's.
    TrainingAfterForward,
}

/// Checks, before anything is allocated, that what is about to be (`allocating`) fits in what
/// the host has available (`mem`, from [`host_memory()`]; None: unknown, no check, and an
/// allocation that fails is still an error): an error saying what the model needs and what to
/// change when it does not.
pub fn check_host_memory(
    f: &Footprint,
    allocating: Allocating,
    mem: Option<HostMemory>,
) -> Result<()> {
    let Some(mem) = mem else {
        return Ok(());
    };
    // (fixed: what of to_allocate no batch shape changes; the parameters are held already)
    let (to_allocate, needs, held, fixed) = match allocating {
        Allocating::Training => (
            f.acts + f.tokens + f.optimizer + f.grad_acts,
            format!(
                "needs {} (parameters, gradients and AdamW state {}, activations and their \
                 gradients {})",
                size_text(f.params + f.acts + f.tokens + f.optimizer + f.grad_acts),
                size_text(f.params + f.optimizer),
                size_text(f.acts + f.grad_acts),
            ),
            String::new(),
            Some(f.optimizer),
        ),
        Allocating::Forward => (
            f.forward_acts + f.tokens,
            format!(
                "needs {} for its forwards (parameters {}, one layer's activations {})",
                size_text(f.params + f.forward_acts + f.tokens),
                size_text(f.params),
                size_text(f.forward_acts),
            ),
            String::new(),
            None,
        ),
        // (the forwards' activations are freed for every layer's)
        Allocating::TrainingAfterForward => (
            f.optimizer + f.acts - f.forward_acts + f.grad_acts,
            format!(
                "needs {} more to train (gradients and AdamW state {}, every layer's \
                 activations and their gradients {})",
                size_text(f.optimizer + f.acts - f.forward_acts + f.grad_acts),
                size_text(f.optimizer),
                size_text(f.acts - f.forward_acts + f.grad_acts),
            ),
            format!(
                " (the model holds {} of it already)",
                size_text(f.params + f.forward_acts + f.tokens)
            ),
            Some(f.optimizer),
        ),
    };
    if to_allocate <= mem.available as f64 {
        return Ok(());
    }
    let (l, c, n, b, t) = f.model;
    Err(OutOfMemory {
        what: format!(
            "not enough memory: the model (L={l}, C={c}, {} parameters, fp32, on the CPU) at \
             B={b}, T={t} {needs}, the machine has {} available of {}{held}",
            crate::params::count_text(n),
            size_text(mem.available as f64),
            size_text(mem.total as f64),
        ),
        need: to_allocate,
        fixed_alone: fixed
            .filter(|&x| x > mem.available as f64)
            .map(|x| x + f.params),
        savings: Vec::new(),
        knobs: Knobs::default(),
    }
    .into())
}

/// Checks a forward's arguments (both engines): the batch shape against the config and against
/// the largest batch the arenas were sized for, and every token id against the vocabulary.
pub fn check_forward(
    cfg: &GPT2Config,
    (max_b, max_t): (usize, usize),
    inputs: &[u32],
    targets: Option<&[u32]>,
    b: usize,
    t: usize,
) -> Result<()> {
    check_batch(cfg, b, t)?;
    if b > max_b || t > max_t {
        bail!("batch {b}x{t} is larger than the {max_b}x{max_t} the model was sized for");
    }
    check_tokens(cfg, inputs, b * t, "input")?;
    if let Some(tg) = targets {
        check_tokens(cfg, tg, b * t, "target")?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;

    fn mem(available: u64) -> Option<HostMemory> {
        Some(HostMemory {
            available,
            total: 1 << 40,
        })
    }

    /// A batch larger than the arenas in either dimension is an error that says so.
    #[test]
    fn a_batch_larger_than_the_arenas_is_an_error() {
        let cfg = GPT2Config::from_descriptor("d1").unwrap();
        for (b, t) in [(3, 3), (2, 4), (3, 4)] {
            let e = check_forward(&cfg, (2, 3), &vec![1; b * t], None, b, t).unwrap_err();
            let want = format!("batch {b}x{t} is larger than the 2x3 the model was sized for");
            assert_eq!(e.to_string(), want);
        }
        check_forward(&cfg, (2, 3), &[1; 4], None, 2, 2).unwrap();
    }

    #[test]
    fn the_memory_check_refuses_one_byte_short() {
        let cfg = GPT2Config::from_descriptor("d1").unwrap();
        let (n, na) = (num_parameters(&cfg), num_activations(&cfg, 2, 3));
        let f = Footprint::of(&cfg, (2, 3));
        // what each is about to allocate: the activations and the inputs and targets; the
        // gradients and both moments and the activation gradients; both
        let forward = (4 * na + 8 * 2 * 3) as u64;
        let training = (12 * n + 4 * na) as u64;
        for (allocating, need, says) in [
            (
                Allocating::Forward,
                forward,
                " for its forwards (parameters ",
            ),
            (
                Allocating::TrainingAfterForward,
                training,
                " more to train (gradients ",
            ),
            (
                Allocating::Training,
                forward + training,
                " (parameters, gradients and AdamW ",
            ),
        ] {
            check_host_memory(&f, allocating, mem(need)).unwrap();
            let e = check_host_memory(&f, allocating, mem(need - 1)).unwrap_err();
            let e = e.to_string();
            assert!(
                e.starts_with("not enough memory: the model (L=1, C=64, "),
                "{e}"
            );
            assert!(e.contains(" at B=2, T=3 needs "), "{e}");
            assert!(e.contains(says), "{e}");
            let held = if allocating == Allocating::TrainingAfterForward {
                " (the model holds "
            } else {
                " of 1024.00 GiB; use"
            };
            assert!(e.contains(held), "{e}");
            assert!(
                e.ends_with(
                    "; use a smaller batch (-b) or sequence length (-t), or a smaller model"
                ),
                "{e}"
            );
            // the host's memory unknown: no check (an allocation that fails is still an error)
            check_host_memory(&f, allocating, None).unwrap();
        }
    }

    /// A model built with parameters of another config, an empty batch or a T past maxT is an
    /// error that says which, whether it is to train or for forwards only.
    #[test]
    fn a_model_of_the_wrong_parameters_or_batch_is_an_error() {
        // maxT = 16, V = 10, Vp = 16, L = 1, NH = 2, C = 8
        let cfg = GPT2Config::new(16, 10, 16, 1, 2, 8).unwrap();
        let n = num_parameters(&cfg);
        for model in [Gpt2Cpu::new, Gpt2Cpu::for_inference] {
            let e = model(cfg, vec![0.0; n - 1], 2, 3).err().unwrap();
            let want = format!("parameter count {} does not match the config's {n}", n - 1);
            assert_eq!(e.to_string(), want);
            let e = model(cfg, vec![0.0; n], 0, 3).err().unwrap();
            assert!(e.to_string().contains("B=0 and sequence length T=3"), "{e}");
            let e = model(cfg, vec![0.0; n], 2, 17).err().unwrap();
            assert!(e.to_string().contains("T=17 exceeds"), "{e}");
            model(cfg, vec![0.0; n], 2, 16).unwrap();
        }
    }

    /// The GPU engine's error, as the CPU's panic: no forward has set the batch to run backward on.
    #[test]
    #[should_panic(expected = "backward before forward")]
    fn backward_before_any_forward_panics() {
        let cfg = GPT2Config::new(16, 10, 16, 1, 2, 8).unwrap();
        let mut model = Gpt2Cpu::new(cfg, vec![0.0; num_parameters(&cfg)], 2, 3).unwrap();
        model.backward(1.0);
    }

    /// A model for inference has no gradients: each training call made on it directly, not
    /// through the [`Engine`] (whose calls prepare it), names `prepare_training` rather than
    /// training on empty arenas (a norm of 0, an update that panics on a length, or worse).
    #[test]
    fn training_calls_on_a_model_for_inference_ask_for_prepare_training() {
        let cfg = GPT2Config::new(16, 10, 16, 1, 2, 8).unwrap();
        let params = params::init_params(&cfg, 5);
        for name in ["zero_grad", "backward", "grad_norm", "update"] {
            let mut model = Gpt2Cpu::for_inference(cfg, params.clone(), 1, 4).unwrap();
            model
                .forward(&[1, 2, 3, 4], Some(&[2, 3, 4, 5]), 1, 4)
                .unwrap();
            // (each named in full: the Engine's methods of the same names prepare the model first)
            let call = std::panic::AssertUnwindSafe(|| match name {
                "zero_grad" => Gpt2Cpu::zero_grad(&mut model),
                "backward" => Gpt2Cpu::backward(&mut model, 1.0),
                "grad_norm" => _ = Gpt2Cpu::grad_norm(&model),
                _ => Gpt2Cpu::update(&mut model, &crate::verify::VERIFY_ADAMW, 1, 1.0),
            });
            let panic = std::panic::catch_unwind(call).expect_err(name);
            // (a panic's message is a &str when it has no arguments to format, else a String)
            let text = panic.downcast_ref::<&str>().copied();
            let text = text.or(panic.downcast_ref::<String>().map(String::as_str));
            let text = text.unwrap_or("");
            assert!(
                text.contains(
                    "a model made for inference: call prepare_training before training it"
                ),
                "{name}: {text}"
            );
        }
    }

    /// What the model does not hold is an error, not stale or empty values: the losses of a
    /// forward without targets (those of the forward before it are still in the arena), and the
    /// master weights of an fp32 model (whose weights are their own masters: setting them sets the
    /// weights).
    #[test]
    fn what_the_model_does_not_hold_is_an_error() {
        let cfg = GPT2Config::new(16, 10, 16, 1, 2, 8).unwrap();
        let mut model = Gpt2Cpu::new(cfg, params::init_params(&cfg, 5), 2, 3).unwrap();
        let (x, y) = ([1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]);
        model.forward(&x, Some(&y), 2, 3).unwrap();
        assert_eq!(model.losses().unwrap().len(), 6);
        model.forward(&x, None, 2, 3).unwrap();
        assert_eq!(
            model.losses().unwrap_err().to_string(),
            "the last forward had no targets, so it computed no losses"
        );
        assert_eq!(
            model
                .optimizer_array(OptimizerArray::Master)
                .unwrap_err()
                .to_string(),
            "an fp32 model has no master weights"
        );
        let n = model.params.len();
        model
            .set_optimizer_array(OptimizerArray::Master, &vec![0.5; n])
            .unwrap();
        assert!(model.params.iter().all(|&w| w == 0.5));
    }

    /// The CPU twin of the GPU engine's `bad_input_is_an_error_not_a_panic`: every bad batch is
    /// refused by `forward` itself, before any layer reads it, and the model is unharmed.
    #[test]
    fn bad_input_to_forward_is_an_error_not_a_panic() {
        // V = 10, Vp = 16: ids 10..16 index rows of wte that exist but are not tokens
        let cfg = GPT2Config::new(16, 10, 16, 1, 2, 8).unwrap();
        let mut model = Gpt2Cpu::new(cfg, params::init_params(&cfg, 5), 2, 3).unwrap();
        let (x, y) = ([1, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]);
        let loss = model.forward(&x, Some(&y), 2, 3).unwrap().unwrap();
        let err = |m: &mut Gpt2Cpu, x: &[u32], y: Option<&[u32]>, b, t| {
            m.forward(x, y, b, t).unwrap_err().to_string()
        };
        let e = err(&mut model, &[1; 8], None, 2, 4);
        assert_eq!(
            e,
            "batch 2x4 is larger than the 2x3 the model was sized for"
        );
        let e = err(&mut model, &[1; 17], None, 1, 17);
        assert!(e.contains("T=17 exceeds the model's maximum"), "{e}");
        let e = err(&mut model, &[1, 2, 3, 10, 5, 6], Some(&y), 2, 3);
        assert_eq!(
            e,
            "input token id 10 at position 3 is out of range for vocabulary size 10"
        );
        let e = err(&mut model, &x, Some(&[2, 3, 4, 5, 6, u32::MAX]), 2, 3);
        assert!(
            e.starts_with("target token id 4294967295 at position 5 "),
            "{e}"
        );
        let e = err(&mut model, &x[..4], None, 2, 3);
        assert_eq!(e, "expected 6 input tokens, got 4");
        // the model is unharmed: the same batch gives the same loss, bitwise
        assert_eq!(model.forward(&x, Some(&y), 2, 3).unwrap().unwrap(), loss);
    }

    #[test]
    fn a_model_too_large_for_the_machine_is_an_error_not_an_abort() {
        let cfg = GPT2Config::from_descriptor("d1").unwrap();
        let params = vec![0.0; num_parameters(&cfg)];
        // 4.75 TiB of activations (and as much again for their gradients)
        for model in [Gpt2Cpu::new, Gpt2Cpu::for_inference] {
            let e = model(cfg, params.clone(), 100_000, 64).err().unwrap();
            assert!(e.to_string().starts_with("not enough memory"), "{e}");
            // 2^50 x 64 overflows the logits alone; 4e12 x 64 only the total, and only with the
            // probabilities (B*T*Vp, 1.29e19 elements, as the logits) counted: 2.61e19 elements
            // with them, 1.32e19 without, against 1.84e19 in a usize
            for b in [1 << 50, 4_000_000_000_000] {
                let e = model(cfg, params.clone(), b, 64).err().unwrap();
                let e = e.to_string();
                assert!(
                    e.contains("do not fit in this machine's address space"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn a_model_for_inference_allocates_training_when_it_is_asked_to_train() {
        // L = 3, NH = 2, C = 8, V = 10, Vp = 16: three layers share one layer's tensors
        let cfg = GPT2Config::new(16, 10, 16, 3, 2, 8).unwrap();
        let params = params::init_params(&cfg, 3);
        let (b, t) = (2usize, 5usize);
        let tokens: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 7 + 1) % 10).collect();
        let targets: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 5 + 2) % 10).collect();
        let mut full = Gpt2Cpu::new(cfg, params.clone(), b, t).unwrap();
        let mut lazy = Gpt2Cpu::for_inference(cfg, params, b, t).unwrap();
        assert!(lazy.grads.is_empty() && lazy.m.is_empty() && lazy.grad_acts.is_empty());
        // one layer's tensors, two layers' residual3, of the 3 that training keeps: per layer
        // B*T*(18C + 4) + 2*B*NH*T*T = 10*148 + 200 = 1680, and B*T*C = 80 in residual3
        assert_eq!(full.acts.len() - lazy.acts.len(), 2 * 1680 - 80);
        let e = lazy.optimizer_array(OptimizerArray::M).unwrap_err();
        assert!(e.to_string().contains("no AdamW moments"), "{e}");
        // a forward needs none of it, and gives the same logits, probabilities and losses at
        // the largest batch and at a smaller one (whose layout is another)
        for (b, t) in [(1, 3), (b, t)] {
            let (tokens, targets) = (&tokens[..b * t], &targets[..b * t]);
            let want = full.forward(tokens, Some(targets), b, t).unwrap();
            let got = Gpt2Cpu::forward(&mut lazy, tokens, Some(targets), b, t).unwrap();
            assert_eq!(got, want);
            assert_eq!(lazy.logits(), full.logits());
            assert_eq!(lazy.probs(), full.probs());
            assert_eq!(lazy.losses().unwrap(), full.losses().unwrap());
        }
        assert!(lazy.grads.is_empty());
        // the Engine's training calls allocate it, every layer's activations too, and run the
        // last forward again to fill them: the same gradients and update
        full.zero_grad();
        full.backward(1.0);
        Engine::zero_grad(&mut lazy).unwrap();
        Engine::backward(&mut lazy, 1.0).unwrap();
        assert_eq!(lazy.grads.len(), num_parameters(&cfg));
        assert_eq!(lazy.acts.len(), full.acts.len());
        assert_eq!(lazy.grad_acts.len(), lazy.acts.len());
        assert_eq!(lazy.grads, full.grads);
        assert_eq!(Engine::grad_norm(&mut lazy).unwrap(), full.grad_norm());
        let hp = crate::verify::VERIFY_ADAMW;
        full.update(&hp, 1, 1.0);
        Engine::update(&mut lazy, &hp, 1, 1.0).unwrap();
        assert_eq!(lazy.params, full.params);
        assert_eq!(
            Engine::optimizer_array(&mut lazy, OptimizerArray::V).unwrap(),
            full.v
        );
    }

    /// A config built past `GPT2Config::new`'s checks (its fields are public) is refused by the
    /// model's constructor, not met later as a panic or a wrong split of the heads.
    #[test]
    fn a_model_of_a_bad_config_is_refused() {
        let good = GPT2Config::new(16, 10, 16, 2, 2, 8).unwrap();
        for (bad, want) in [
            (
                GPT2Config {
                    num_heads: 3,
                    ..good
                },
                "C=8 is not divisible by heads NH=3",
            ),
            (
                GPT2Config {
                    padded_vocab_size: 9,
                    ..good
                },
                "Vp=9 is smaller than V=10",
            ),
            (
                GPT2Config {
                    num_layers: 0,
                    ..good
                },
                "every dimension must be positive",
            ),
        ] {
            let params = vec![0.0; num_parameters(&bad)];
            let e = Gpt2Cpu::new(bad, params, 1, 4).err();
            let e = e.unwrap_or_else(|| panic!("{bad:?} was taken")).to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    /// An AdamW array of the wrong length is an error that says so (not a slice copy's panic),
    /// and leaves the model's arrays as they were.
    #[test]
    fn an_optimizer_array_of_the_wrong_length_is_an_error() {
        let cfg = GPT2Config::new(16, 10, 16, 2, 2, 8).unwrap();
        let mut model = Gpt2Cpu::new(cfg, params::init_params(&cfg, 5), 1, 4).unwrap();
        let n = model.params.len();
        let before = (model.params.clone(), model.m.clone(), model.v.clone());
        for which in [OptimizerArray::M, OptimizerArray::V, OptimizerArray::Master] {
            for len in [n - 1, n + 1, 0] {
                let e = model
                    .set_optimizer_array(which, &vec![1.0; len])
                    .unwrap_err()
                    .to_string();
                let want = format!("has {len} values, the model {n} parameters");
                assert!(e.starts_with("AdamW's ") && e.contains(&want), "{e}");
            }
        }
        assert_eq!((model.params, model.m, model.v), before);
    }

    /// Each of the Engine's training calls allocates training's arenas by itself, even as the
    /// first call on a model for inference: zero gradients, AdamW moments of zeros, a gradient
    /// norm of 0, an update (weight decay alone) and a backward the same as a training model's.
    #[test]
    fn each_training_call_prepares_a_model_for_inference() {
        let cfg = GPT2Config::new(16, 10, 16, 2, 2, 8).unwrap();
        let params = params::init_params(&cfg, 5);
        let hp = crate::verify::VERIFY_ADAMW;
        let fresh = || Gpt2Cpu::for_inference(cfg, params.clone(), 1, 4).unwrap();
        let mut full = Gpt2Cpu::new(cfg, params.clone(), 1, 4).unwrap();
        full.update(&hp, 1, 1.0);
        assert_ne!(full.params, params, "the decay moves the matrices");
        let mut lazy = fresh();
        Engine::update(&mut lazy, &hp, 1, 1.0).unwrap();
        assert_eq!(lazy.params, full.params);
        let mut lazy = fresh();
        assert_eq!(Engine::grads(&mut lazy).unwrap(), vec![0.0; params.len()]);
        let mut lazy = fresh();
        let v = Engine::optimizer_array(&mut lazy, OptimizerArray::V).unwrap();
        assert_eq!(v, vec![0.0; params.len()]);
        let mut lazy = fresh();
        assert_eq!(Engine::grad_norm(&mut lazy).unwrap(), 0.0);
        assert_eq!(lazy.grads.len(), params.len());
        // a backward straight after a forward, with no zero_grad before it
        let (x, y) = ([1, 2, 3, 4], [2, 3, 4, 5]);
        let mut full = Gpt2Cpu::new(cfg, params.clone(), 1, 4).unwrap();
        full.forward(&x, Some(&y), 1, 4).unwrap();
        full.backward(1.0);
        let mut lazy = fresh();
        Gpt2Cpu::forward(&mut lazy, &x, Some(&y), 1, 4).unwrap();
        Engine::backward(&mut lazy, 1.0).unwrap();
        assert_eq!(lazy.grads, full.grads);
    }
}
