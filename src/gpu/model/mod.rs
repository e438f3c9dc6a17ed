//! GPT-2 on the GPU: the launchers of `gpu::*` composed into the forward pass, the backward pass
//! (the forward read in reverse) and the AdamW update; the twin of `cpu::model::Gpt2Cpu`, with the
//! same structure, names and order.
//!
//! Everything lives on the device, in arenas sized once for the largest batch (max_b x max_t):
//! parameters, gradients and the AdamW moments (one allocation each, checkpoint order), the
//! activations (`activations::act_sizes_for` without `probs`: the fused classifier works from the
//! logits, so the GPU never stores probabilities), ONE layer's worth of activation gradients
//! (reused by every layer of the backward pass), one (B,T,C) buffer for the residual-stream
//! gradient (updated in place through the layers, as llm.c does), dlnf, the attention scratch and
//! the tokens. A training step allocates nothing of its own (the launchers' small reduction scratch is
//! stream-ordered) and reads back only the loss (forward with targets) and the gradient norm.
//!
//! The forward pass and the backward pass are each replayed as a CUDA graph once a shape has run
//! twice (`gpu::graphs`; off with [`Gpt2Gpu::set_cuda_graphs`], and during profiled steps): the
//! same launches in the same order, so the numbers do not change.
//!
//! The backward pass overwrites the logits with their gradient (the fused classifier), so
//! `logits()` and `position_logits()` must be called between forward and backward; after a
//! backward they are an error, as is a second backward without a new forward. With the classifier
//! in chunks ([`Gpt2Gpu::new_with_options`]) the logits of a batch larger than one chunk are never
//! kept whole: reading them is an error too.
//!
//! Views: one `CudaSlice` is split into many disjoint `CudaViewMut`s with `split_at_mut`, which
//! borrows the view it splits, so the split cannot be returned from a helper; `views_mut!`
//! expands to the chain of `let`s in the caller's body instead. Read-only views split without that
//! limit (`views`).
//!
//! Files: this one has the model's types, its constructor, the update and the [`Engine`] methods;
//! `forward.rs` the forward pass and the logits, `backward.rs` the backward pass, `footprint.rs`
//! what the arenas take, counted before they are allocated (and the error when they do not fit).

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use half::bf16;
use std::ops::Range;

use super::flash_attention::FLASH_ATTENTION_HEAD_SIZES;
use super::float::{to_device_float, to_f32_vec, DeviceFloat};
use super::graphs::{Piece, StepGraphs};
use super::launch::{buckets_len, FlashQueries};
use super::nvtx;
use super::profile::{GpuProfiler, METHOD};
use super::Gpu;
use crate::activations::Acts;
use crate::config::GPT2Config;
use crate::cpu::adamw::{update_ranges, AdamW};
use crate::cpu::model::check_new;
use crate::engine::{check_optimizer_array, Engine, OptimizerArray};
use crate::engine::{Kernels, Recompute};
use crate::params::LayerSlice;
use crate::precision::Precision;
use crate::profile::{Cost, Family, Pass, Profile};

/// Splits `$buf` (anything with `split_at_mut(mid) -> (head, tail)`: a `CudaViewMut`, or a host
/// `&mut [T]` in the tests) into consecutive views named and sized by the same-named fields of
/// `$sizes`, in the order listed, and binds `$out` to the struct `$S { .. }` of them. The list must
/// be the layout's order (the tests check each list against the host splitters). It expands to
/// `let`s in the caller's body, because every intermediate view must outlive `$out`.
macro_rules! views_mut {
    ($out:ident = $S:ident { $($f:ident),* $(,)? } from $buf:expr, sizes $sizes:expr) => {
        let sizes = $sizes;
        #[allow(unused_mut)]
        let mut rest = $buf;
        $(
            #[allow(unused_mut, unused_variables)]
            let (mut $f, mut rest) = rest.split_at_mut(sizes.$f);
        )*
        #[allow(unused_mut)]
        let mut $out = $S { $($f),* };
    };
}

/// `$out`: the activations (`Acts`) of `$buf` for the layout `$sizes`, as mutable views.
macro_rules! acts_mut {
    ($out:ident = $buf:expr, $sizes:expr) => {
        views_mut!($out = Acts {
            encoded, ln1, ln1_mean, ln1_rstd, qkv, atty, preatt, att, attproj, residual2, ln2,
            ln2_mean, ln2_rstd, fch, fch_gelu, fcproj, residual3, lnf, lnf_mean, lnf_rstd, logits,
            probs, losses,
        } from $buf, sizes $sizes);
    };
}

/// `$out`: the 16 parameter tensors (`Params`) of `$buf` (sizes `param_sizes`), as mutable views.
macro_rules! params_mut {
    ($out:ident = $buf:expr, $sizes:expr) => {
        views_mut!($out = Params {
            wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw,
            fcprojb, lnfw, lnfb,
        } from $buf, sizes $sizes);
    };
}

/// `$out`: one layer's activation gradients (`LayerGrads`) of `$buf`, as mutable views.
macro_rules! layer_grads_mut {
    ($out:ident = $buf:expr, $sizes:expr) => {
        views_mut!($out = LayerGrads {
            fch_gelu, fch, ln2, atty, preatt, att, qkv, ln1,
        } from $buf, sizes $sizes);
    };
}

mod backward;
mod footprint;
mod forward;

use footprint::{arena_sizes, out_of_memory, Arenas, Layout};

/// Splits a read-only view into consecutive views of the given sizes (their sum at most its
/// length); unlike the mutable split, the views keep the lifetime of `all`.
fn views<'a, T, const N: usize>(
    mut all: CudaView<'a, T>,
    sizes: [usize; N],
) -> [CudaView<'a, T>; N] {
    sizes.map(|n| {
        let (head, tail) = all.split_at(n);
        all = tail;
        head
    })
}

/// The gradients of one layer's activations: the per-layer tensors of `Acts` with the layer
/// dimension dropped, less those of the residual stream (residual2, fcproj, attproj: one buffer,
/// `dresidual`, holds the stream's gradient, see `backward_layers`). One arena of this layout is
/// reused by every layer of the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LayerGrads<S> {
    fch_gelu: S, // (B, T, 4*C)
    fch: S,      // (B, T, 4*C)
    ln2: S,      // (B, T, C)
    atty: S,     // (B, T, C)
    preatt: S,   // (B, NH, T, T)
    att: S,      // (B, NH, T, T)
    qkv: S,      // (B, T, 3*C)
    ln1: S,      // (B, T, C)
}

impl LayerGrads<usize> {
    /// The sizes for a batch of B x T; None on overflow. The fused path computes dfch in the
    /// product's GELU epilogue (no fch_gelu), and flash attention has no (B, NH, T, T) preatt and
    /// att.
    fn sizes(cfg: &GPT2Config, b: usize, t: usize, fused: bool) -> Option<Self> {
        let (nh, c) = (cfg.num_heads, cfg.channels);
        let btc = b.checked_mul(t)?.checked_mul(c)?;
        let btt = b.checked_mul(nh)?.checked_mul(t)?.checked_mul(t)?;
        let plain = |n: usize| if fused { 0 } else { n };
        let sizes = LayerGrads {
            fch_gelu: plain(btc.checked_mul(4)?),
            fch: btc.checked_mul(4)?,
            ln2: btc,
            atty: btc,
            preatt: plain(btt),
            att: plain(btt),
            qkv: btc.checked_mul(3)?,
            ln1: btc,
        };
        sizes.total()?;
        Some(sizes)
    }

    /// The total number of elements; None on overflow.
    fn total(&self) -> Option<usize> {
        let LayerGrads {
            fch_gelu,
            fch,
            ln2,
            atty,
            preatt,
            att,
            qkv,
            ln1,
        } = *self;
        [fch_gelu, fch, ln2, atty, preatt, att, qkv, ln1]
            .iter()
            .try_fold(0usize, |acc, &x| acc.checked_add(x))
    }
}

/// Where the last forward left the activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// No forward yet (or the last one failed).
    Empty,
    /// A forward ran; the logits are in place; `targets`: whether it computed the losses.
    Forward { targets: bool },
    /// A backward ran: the logits were overwritten by their gradient.
    Backward,
}

impl<T> LayerSlice for CudaView<'_, T> {
    fn nth(&self, l: usize, num_layers: usize) -> Self {
        let n = self.len() / num_layers;
        self.slice(l * n..(l + 1) * n)
    }
}

/// The AdamW update of weights stored in T: fp32 weights are updated in place (bitwise the CPU's
/// update); bf16 weights are the stochastically rounded copy of fp32 master weights, which the
/// fp32 update runs on.
pub trait ModelFloat: DeviceFloat {
    /// Whether the model keeps fp32 master weights beside its T weights.
    const MASTER_WEIGHTS: bool;
    /// One AdamW step (from 1) of the elements `range` of `params` (T) with `master` (fp32,
    /// None without master weights), moments `m` and `v`; `seed` seeds the stochastic rounding
    /// (of each element by its index in the whole buffer).
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        gpu: &Gpu,
        params: &mut CudaSlice<Self>,        // (num_parameters)
        master: Option<&mut CudaSlice<f32>>, // (num_parameters)
        grads: &CudaSlice<Self>,             // (num_parameters)
        m: &mut CudaSlice<f32>,              // (num_parameters)
        v: &mut CudaSlice<f32>,              // (num_parameters)
        range: Range<usize>,
        hp: &AdamW,
        step: usize,
        grad_scale: f32,
        seed: u32,
    ) -> Result<()>;
}

impl ModelFloat for f32 {
    const MASTER_WEIGHTS: bool = false;
    fn adamw(
        gpu: &Gpu,
        params: &mut CudaSlice<f32>,
        _master: Option<&mut CudaSlice<f32>>,
        grads: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        range: Range<usize>,
        hp: &AdamW,
        step: usize,
        grad_scale: f32,
        _seed: u32,
    ) -> Result<()> {
        gpu.adamw_update(
            &mut params.slice_mut(range.clone()),
            &grads.slice(range.clone()),
            &mut m.slice_mut(range.clone()),
            &mut v.slice_mut(range),
            hp,
            step,
            grad_scale,
        )
    }
}

impl ModelFloat for bf16 {
    const MASTER_WEIGHTS: bool = true;
    fn adamw(
        gpu: &Gpu,
        params: &mut CudaSlice<bf16>,
        master: Option<&mut CudaSlice<f32>>,
        grads: &CudaSlice<bf16>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        range: Range<usize>,
        hp: &AdamW,
        step: usize,
        grad_scale: f32,
        seed: u32,
    ) -> Result<()> {
        let master = master.ok_or_else(|| anyhow!("bf16 weights need fp32 master weights"))?;
        let first = range.start;
        gpu.adamw_update_mixed(
            &mut params.slice_mut(range.clone()),
            &mut master.slice_mut(range.clone()),
            &grads.slice(range.clone()),
            &mut m.slice_mut(range.clone()),
            &mut v.slice_mut(range),
            hp,
            step,
            grad_scale,
            seed,
            first,
        )
    }
}

/// The classifier's chunks of a batch of B sequences, at most `chunk_b` each: (first sequence,
/// sequences), covering 0..B in order; one chunk of B when `chunk_b` >= B.
fn classifier_chunks(b: usize, chunk_b: usize) -> Vec<(usize, usize)> {
    (0..b)
        .step_by(chunk_b)
        .map(|b0| (b0, chunk_b.min(b - b0)))
        .collect()
}

/// Whether the fused path can run this model: flash attention has kernels for head sizes
/// `FLASH_ATTENTION_HEAD_SIZES` (64 and 128), and cuBLASLt's bf16 tensor-core products need C and
/// Vp to be multiples of 8.
pub fn fused_supported(cfg: &GPT2Config) -> bool {
    let hs = cfg.channels / cfg.num_heads;
    FLASH_ATTENTION_HEAD_SIZES.contains(&hs)
        && cfg.channels.is_multiple_of(8)
        && cfg.padded_vocab_size.is_multiple_of(8)
}

/// out (B,T,OC) = inp (B,T,C) . weight^T + bias: through cuBLASLt with the bias in the epilogue
/// on the fused path, cuBLAS and the bias kernel on the plain one.
#[allow(clippy::too_many_arguments)]
fn matmul_forward_on<T: DeviceFloat>(
    gpu: &Gpu,
    fused: bool,
    out: &mut CudaViewMut<'_, T>,   // (B, T, OC)
    inp: &CudaView<'_, T>,          // (B, T, C)
    weight: &CudaView<'_, T>,       // (OC, C)
    bias: Option<&CudaView<'_, T>>, // (OC)
    b: usize,
    t: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    if fused {
        gpu.matmul_forward_lt(out, inp, weight, bias, b, t, c, oc)
    } else {
        gpu.matmul_forward(out, inp, weight, bias, b, t, c, oc)
    }
}

/// dinp (B,T,C) = dout . weight, OVERWRITTEN; dweight (OC,C) += dout^T . inp and dbias (OC) +=
/// dout summed over B*T, accumulated: cuBLASLt (beta 0 for dinp) on the fused path; on the plain
/// one dinp is zeroed and cuBLAS's accumulating product adds into it.
#[allow(clippy::too_many_arguments)]
fn matmul_backward_on<T: DeviceFloat>(
    gpu: &Gpu,
    fused: bool,
    dinp: &mut CudaViewMut<'_, T>,          // (B, T, C)
    dweight: &mut CudaViewMut<'_, T>,       // (OC, C)
    dbias: Option<&mut CudaViewMut<'_, T>>, // (OC)
    dout: &CudaView<'_, T>,                 // (B, T, OC)
    inp: &CudaView<'_, T>,                  // (B, T, C)
    weight: &CudaView<'_, T>,               // (OC, C)
    b: usize,
    t: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    if fused {
        gpu.matmul_backward_lt(dinp, false, dweight, dbias, dout, inp, weight, b, t, c, oc)
    } else {
        gpu.memset_zero(dinp)?;
        gpu.matmul_backward(dinp, dweight, dbias, dout, inp, weight, b, t, c, oc)
    }
}

/// The logits (B, T, Vp) = lnf (B, T, C) . wte^T (the tied classifier), timed as a matmul.
#[allow(clippy::too_many_arguments)]
fn lm_head_forward<T: DeviceFloat>(
    gpu: &Gpu,
    fused: bool,
    prof: &mut GpuProfiler,
    logits: &mut CudaViewMut<'_, T>, // (B, T, Vp)
    lnf: &CudaView<'_, T>,           // (B, T, C)
    wte: &CudaView<'_, T>,           // (Vp, C)
    b: usize,
    t: usize,
    c: usize,
    vp: usize,
) -> Result<()> {
    prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, vp), || {
        matmul_forward_on(gpu, fused, logits, lnf, wte, None, b, t, c, vp)
    })
}

/// GPT-2 on one CUDA GPU, its weights, activations and gradients stored in T (f32 or bf16); see
/// the file comment.
pub struct Gpt2Gpu<T: ModelFloat = f32> {
    gpu: Gpu,
    config: GPT2Config,
    /// The largest batch the arenas hold.
    max_b: usize,
    max_t: usize,
    /// "NVIDIA H100 80GB HBM3 (sm_90)", for describe().
    device: String,
    /// The fast path: flash attention, cuBLASLt with GELU and bias epilogues, residual + layernorm
    /// in one kernel (the bf16 default); off: the plain kernels, the reference (the fp32 default).
    fused: bool,
    params: CudaSlice<T>, // (num_parameters) the weights the model computes with
    master: Option<CudaSlice<f32>>, // (num_parameters) fp32 master weights (bf16 models)
    grads: CudaSlice<T>,  // (num_parameters)
    m: CudaSlice<f32>,    // (num_parameters) AdamW first moment
    v: CudaSlice<f32>,    // (num_parameters) AdamW second moment
    acts: CudaSlice<T>,   // (arena_sizes(max_b, max_t).0 total) activations stored in T
    stats: CudaSlice<f32>, // (arena_sizes(max_b, max_t).1 total) mean, rstd, losses
    lse: CudaSlice<f32>,  // (L, B, NH, T) flash attention's log-sum-exp (fused only)
    dlayer: CudaSlice<T>, // (LayerGrads total for max_b x max_t) one layer's gradients
    dresidual: CudaSlice<T>, // (B, T, C) the residual stream's gradient
    dlnf: CudaSlice<T>,   // (B, T, C)
    att_scratch: CudaSlice<T>, // attention forward/backward scratch (plain path)
    att_scratch32: CudaSlice<f32>, // flash attention backward scratch (fused path)
    inputs_dev: CudaSlice<u32>, // (B, T) of the last forward
    targets_dev: CudaSlice<u32>, // (B, T) of the last forward
    buckets_dev: CudaSlice<u32>, // (3*B*T + 1) token_buckets of the last forward's inputs
    row_stats: CudaSlice<f32>, // (B, T, 2) the classifier's softmax max and sum per row
    /// The sequences the logits hold at once (max_b: all; see [`Gpt2Gpu::new_with_options`]).
    chunk_b: usize,
    /// What the backward pass computes again instead of reading it from `acts`.
    recompute: Recompute,
    /// Built for forwards only (see [`ModelOptions::forwards_only`]): the training arenas are
    /// one-element placeholders and `master` is None.
    forwards_only: bool,
    /// (B, T) of the last forward.
    b: usize,
    t: usize,
    /// (B, T) the losses of the last forward with targets (read back for the mean); empty after
    /// one without (B * T is at least 1).
    losses: Vec<f32>,
    /// The most device memory seen in use (total - free, as the driver reports it: the context,
    /// the arenas and the stream-ordered scratch pool), sampled after each update.
    peak_used: u64,
    stage: Stage,
    /// Wraps every launcher call: NVTX ranges always, CUDA-event timing while profiling.
    prof: GpuProfiler,
    /// The forward and backward passes captured as CUDA graphs, per shape.
    graphs: StepGraphs,
}

/// How a [`Gpt2Gpu`] computes, beyond its precision: its arenas are laid out for these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// The kernels (None: the default for the precision and the model, fused for bf16 where
    /// `fused_supported`); the fused path needs a head size the flash kernels support.
    pub kernels: Option<Kernels>,
    /// The classifier in chunks of this many sequences (None: all of them). The logits then never
    /// exist for more than that many sequences at once, (chunk, T, Vp) instead of (B, T, Vp): the
    /// forward computes each chunk's logits and losses in turn (keeping each row's softmax max
    /// and sum), and the backward, last chunk first (the forward left its logits in place),
    /// computes every other chunk's logits again, then each chunk's dlogits, dlnf and dwte. That
    /// costs one more (chunk, T, C) x (C, Vp) product per chunk but the last, up to a third more
    /// work in the classifier, for (B - chunk) x T x Vp elements of memory. The logits of a
    /// forward of more than `classifier_chunk` sequences are not kept (`logits()` is an error),
    /// and a forward without targets must fit one chunk.
    pub classifier_chunk: Option<usize>,
    /// With [`Recompute::Gelu`], GELU's output is kept for one layer, (B, T, 4*C) instead of
    /// (L, B, T, 4*C): the forward writes each layer's there (the fused path from its product's
    /// epilogue), and the backward computes each layer's again with the GELU kernel from the
    /// stored input, fch, before the MLP's second product reads it for its weight gradient. One
    /// memory-bound kernel per layer for (L - 1) x B x T x 4*C elements. On the plain path the
    /// numbers are those of keeping it, bit for bit (the same kernel computes the same values);
    /// on the fused path the epilogue's GELU and the kernel's may differ in the last bits, and so
    /// the weight gradient of the second product by as much.
    pub recompute: Recompute,
    /// A model for forwards only (`eval`, `sample`): no gradients, AdamW moments, master weights
    /// or backward scratch are allocated (for d12 in bf16, 2 + 4 + 4 + 4 bytes a parameter and
    /// the activation gradients), and the calls that train are an error.
    pub forwards_only: bool,
}

impl<T: ModelFloat> Gpt2Gpu<T> {
    /// A model on `gpu` with the given parameters (checkpoint order; rounded to nearest in T,
    /// and kept exactly as the fp32 master weights of a bf16 model), its arenas sized for batches
    /// up to max_b x max_t, on the default path for T (fused for bf16, plain for fp32). An error,
    /// never a panic, when the sizes are invalid or the GPU has not enough free memory (the message
    /// says how much is needed and how much is free).
    pub fn new(
        gpu: Gpu,
        config: GPT2Config,
        params: Vec<f32>,
        max_b: usize,
        max_t: usize,
    ) -> Result<Self> {
        Self::new_with(gpu, config, params, max_b, max_t, None)
    }

    /// As [`Gpt2Gpu::new`], on the given kernels (None: the default for T and the model, fused
    /// for bf16 where `fused_supported`); the fused path needs a head size the flash kernels
    /// support.
    pub fn new_with(
        gpu: Gpu,
        config: GPT2Config,
        params: Vec<f32>,
        max_b: usize,
        max_t: usize,
        kernels: Option<Kernels>,
    ) -> Result<Self> {
        let opts = ModelOptions {
            kernels,
            ..ModelOptions::default()
        };
        Self::new_with_options(gpu, config, params, max_b, max_t, opts)
    }

    /// As [`Gpt2Gpu::new_with`], with the kernels, the classifier's chunks and what the backward
    /// computes again as `opts` says (see [`ModelOptions`]).
    pub fn new_with_options(
        gpu: Gpu,
        config: GPT2Config,
        params: Vec<f32>,
        max_b: usize,
        max_t: usize,
        opts: ModelOptions,
    ) -> Result<Self> {
        let ModelOptions {
            kernels,
            classifier_chunk,
            recompute,
            forwards_only,
        } = opts;
        let chunk_b = match classifier_chunk {
            None => max_b,
            Some(0) => bail!("the classifier chunk must be at least one sequence, got 0"),
            Some(n) => n.min(max_b),
        };
        let fused = match kernels {
            Some(k) => k == Kernels::Fused,
            None => T::PRECISION == Precision::Bf16 && fused_supported(&config),
        };
        check_new(&config, &params, max_b, max_t)?;
        if fused && !fused_supported(&config) {
            let (c, nh) = (config.channels, config.num_heads);
            bail!(
                "the fused path needs a head size of {} and C, Vp multiples of 8 (this model: \
                 HS = C/NH = {c}/{nh} = {}, Vp = {})",
                FLASH_ATTENTION_HEAD_SIZES
                    .map(|h| h.to_string())
                    .join(" or "),
                c / nh,
                config.padded_vocab_size
            );
        }
        let layout = Layout {
            fused,
            chunk_b,
            recompute,
            forwards_only,
        };
        let max_bt = (max_b, max_t);
        let arenas = Arenas::of(&config, params.len(), T::MASTER_WEIGHTS, max_bt, layout)?;
        // the whole footprint, counted before allocating, for a clear message when it does not fit
        let free = gpu.context().mem_get_info().map_err(|e| e.to_string());
        let out_of_memory = out_of_memory::<T>(&config, &arenas, layout, &free);
        if let Ok((free, _)) = free {
            if out_of_memory.need > free as f64 {
                return Err(out_of_memory.into());
            }
        }
        let oom = |e: anyhow::Error| e.context(out_of_memory.clone());

        // (an arena of no elements is one: placeholders for what this model does not use)
        let a = arenas;
        let params_dev = gpu.upload(&to_device_float::<T>(&params)).map_err(oom)?;
        let master = if a.masters {
            Some(gpu.upload(&params).map_err(oom)?)
        } else {
            None
        };
        let grads = gpu.zeros::<T>(a.grads.max(1)).map_err(oom)?;
        let m = gpu.zeros::<f32>(a.grads.max(1)).map_err(oom)?;
        let v = gpu.zeros::<f32>(a.grads.max(1)).map_err(oom)?;
        let acts = gpu.zeros::<T>(a.acts).map_err(oom)?;
        let stats = gpu.zeros::<f32>(a.stats).map_err(oom)?;
        let lse = gpu.zeros::<f32>(a.lse.max(1)).map_err(oom)?;
        let dlayer = gpu.zeros::<T>(a.dlayer.max(1)).map_err(oom)?;
        let dresidual = gpu.zeros::<T>(a.btc.max(1)).map_err(oom)?;
        let dlnf = gpu.zeros::<T>(a.btc.max(1)).map_err(oom)?;
        let att_scratch = gpu.zeros::<T>(a.scratch.max(1)).map_err(oom)?;
        let att_scratch32 = gpu.zeros::<f32>(a.scratch32.max(1)).map_err(oom)?;
        let inputs_dev = gpu.zeros::<u32>(a.bt).map_err(oom)?;
        let targets_dev = gpu.zeros::<u32>(a.bt).map_err(oom)?;
        let buckets_dev = gpu.zeros::<u32>(buckets_len(a.bt)).map_err(oom)?;
        let row_stats = gpu.zeros::<f32>(2 * a.bt).map_err(oom)?;
        gpu.synchronize()
            .context("setting up the model on the GPU failed")?;

        let name = gpu.device_name().unwrap_or_else(|_| "CUDA GPU".into());
        let device = match gpu.compute_capability() {
            Ok((major, minor)) => format!("{name} (sm_{major}{minor})"),
            Err(_) => name,
        };
        let prof = GpuProfiler::new(gpu.stream().clone(), std::mem::size_of::<T>());
        Ok(Gpt2Gpu {
            gpu,
            config,
            max_b,
            max_t,
            device,
            fused,
            params: params_dev,
            master,
            grads,
            m,
            v,
            acts,
            stats,
            lse,
            dlayer,
            dresidual,
            dlnf,
            att_scratch,
            att_scratch32,
            inputs_dev,
            targets_dev,
            buckets_dev,
            row_stats,
            chunk_b,
            recompute,
            forwards_only,
            b: 0,
            t: 0,
            losses: Vec::new(),
            peak_used: 0,
            stage: Stage::Empty,
            prof,
            graphs: StepGraphs::new(true),
        })
        .map(|mut model| {
            model.sample_memory();
            model
        })
    }

    /// The arenas' layouts for a batch of B x T on this model's path, chunks and recomputation
    /// (see [`arena_sizes`]).
    fn arena_sizes(&self, b: usize, t: usize) -> Result<(Acts<usize>, Acts<usize>)> {
        let layout = Layout {
            fused: self.fused,
            chunk_b: self.chunk_b,
            recompute: self.recompute,
            forwards_only: self.forwards_only,
        };
        arena_sizes(&self.config, b, t, layout).context("activation sizes overflow")
    }

    /// Whether the model runs the fused path (see [`Gpt2Gpu::new_with`]).
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// Updates `peak_used` from the driver's free-memory figure.
    fn sample_memory(&mut self) {
        if let Ok((free, total)) = self.gpu.context().mem_get_info() {
            self.peak_used = self.peak_used.max((total - free) as u64);
        }
    }

    /// The GPU the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Lets the matmuls use TF32 tensor cores, or not (see [`Gpu::set_tf32`]).
    pub fn set_tf32(&mut self, on: bool) -> Result<()> {
        // the graphs captured so far hold the products of the old mode
        self.graphs.clear();
        self.gpu.set_tf32(on)
    }

    /// Replays the forward and backward passes as CUDA graphs (the default), or launches every
    /// kernel from the host each time (off: what an nsys timeline of single kernels needs).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs.set_enabled(on);
    }

    /// Whether CUDA graphs are on (they turn themselves off when a capture fails).
    pub fn cuda_graphs(&self) -> bool {
        self.graphs.enabled()
    }

    /// How many pieces of a step (forward or backward, per shape) are captured as CUDA graphs.
    pub fn cuda_graphs_captured(&self) -> usize {
        self.graphs.captured()
    }

    /// Runs `work` as `piece` of a step through the graphs (see `gpu::graphs`); eager while a step
    /// is profiled.
    fn run_piece(&mut self, piece: Piece, work: impl Fn(&mut Self) -> Result<()>) -> Result<()> {
        let mut graphs = std::mem::replace(&mut self.graphs, StepGraphs::new(false));
        let stream = self.gpu.stream().clone();
        let eager = self.prof.recording();
        let done = graphs.run(&stream, piece, eager, || work(self));
        self.graphs = graphs;
        done
    }

    /// The largest batch (B, T) the arenas hold.
    pub fn max_batch(&self) -> (usize, usize) {
        (self.max_b, self.max_t)
    }

    /// (B, T) of the last forward.
    pub fn batch(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// An error for the calls that train, in a model built for forwards only.
    fn check_trains(&self, what: &str) -> Result<()> {
        if self.forwards_only {
            bail!(
                "{what}: this model was built for forwards only (eval, sample): it has no \
                 gradients or AdamW state (build it without ModelOptions::forwards_only to train)"
            );
        }
        Ok(())
    }

    /// The global L2 norm of the gradients (one read-back).
    pub fn grad_norm(&mut self) -> Result<f32> {
        self.check_trains("grad_norm")?;
        self.prof.set_pass(Pass::Update);
        let (gpu, grads) = (&self.gpu, &self.grads);
        self.prof
            .run(Family::GlobalNorm, Cost::global_norm(grads.len()), || {
                gpu.global_norm(&grads.as_view())
            })
            .context("grad_norm")
    }

    /// One AdamW step (step counts from 1) over all parameters, with the gradients first
    /// multiplied by grad_scale; the weight decay on the tensors `hp.decay_on` names (one launch
    /// per range of [`update_ranges`]).
    pub fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) -> Result<()> {
        self.check_trains("update")?;
        let _phase = nvtx::range(c"update");
        self.prof.set_pass(Pass::Update);
        let gpu = &self.gpu;
        let (params, mut master, grads) = (&mut self.params, self.master.as_mut(), &self.grads);
        let (m, v) = (&mut self.m, &mut self.v);
        // the stochastic rounding's seed: the step, hashed with each element's index
        let seed = step as u32;
        let ranges = update_ranges(&self.config, hp);
        self.prof
            .run(
                Family::Adamw,
                Cost::adamw(params.len(), T::MASTER_WEIGHTS),
                || {
                    for (r, hp) in ranges {
                        let master = master.as_deref_mut();
                        T::adamw(
                            gpu, params, master, grads, m, v, r, &hp, step, grad_scale, seed,
                        )?;
                    }
                    Ok(())
                },
            )
            .context("update")?;
        self.sample_memory();
        Ok(())
    }

    /// Starts timing a step's kernel families with CUDA events (see `gpu::profile`): every
    /// launcher call until [`Gpt2Gpu::profile_step_end`] is timed.
    pub fn profile_step_begin(&mut self) -> Result<()> {
        self.prof.begin_step()
    }

    /// Ends the profiled step: waits for the GPU and adds the step's times to the totals.
    pub fn profile_step_end(&mut self) -> Result<()> {
        self.prof.end_step()
    }

    /// Ends the profiled step without adding it to the totals (see
    /// [`Engine::profile_step_discard`]).
    pub fn profile_step_discard(&mut self) -> Result<()> {
        self.prof.discard_step()
    }

    /// The totals of the steps profiled so far.
    pub fn profile(&self) -> &Profile {
        self.prof.totals()
    }

    /// The parameters, copied to the host, in checkpoint order.
    /// (For bf16: the bf16 weights the model computes with, exactly; not the master weights.)
    pub fn params(&mut self) -> Result<Vec<f32>> {
        let p = self
            .gpu
            .download(&self.params)
            .context("reading the parameters")?;
        Ok(to_f32_vec(&p))
    }

    /// The parameter gradients, copied to the host, in checkpoint order.
    pub fn grads(&mut self) -> Result<Vec<f32>> {
        self.check_trains("reading the gradients")?;
        let g = self
            .gpu
            .download(&self.grads)
            .context("reading the gradients")?;
        Ok(to_f32_vec(&g))
    }

    /// One of AdamW's arrays, copied to the host (see [`Engine::optimizer_array`]).
    pub fn optimizer_array(&mut self, which: OptimizerArray) -> Result<Vec<f32>> {
        self.check_trains(&format!("reading AdamW's {}", which.name()))?;
        let buf = match which {
            OptimizerArray::M => &self.m,
            OptimizerArray::V => &self.v,
            OptimizerArray::Master => self
                .master
                .as_ref()
                .ok_or_else(|| anyhow!("an fp32 model has no master weights"))?,
        };
        self.gpu
            .download(buf)
            .with_context(|| format!("reading AdamW's {}", which.name()))
    }

    /// Sets one of AdamW's arrays (see [`Engine::set_optimizer_array`]): the buffers keep their
    /// addresses, so the captured CUDA graphs stay valid.
    pub fn set_optimizer_array(&mut self, which: OptimizerArray, values: &[f32]) -> Result<()> {
        check_optimizer_array(which, values, self.params.len())?;
        self.check_trains(&format!("restoring AdamW's {}", which.name()))?;
        let gpu = &self.gpu;
        match (which, self.master.as_mut()) {
            (OptimizerArray::M, _) => gpu.upload_into(values, &mut self.m),
            (OptimizerArray::V, _) => gpu.upload_into(values, &mut self.v),
            (OptimizerArray::Master, Some(master)) => gpu.upload_into(values, master),
            (OptimizerArray::Master, None) => {
                gpu.upload_into(&to_device_float::<T>(values), &mut self.params)
            }
        }
        .and_then(|()| gpu.synchronize())
        .with_context(|| format!("restoring AdamW's {}", which.name()))
    }
}

impl<T: ModelFloat> Engine for Gpt2Gpu<T> {
    fn config(&self) -> &GPT2Config {
        &self.config
    }
    fn describe(&self) -> String {
        let tf32 = if self.gpu.tf32() {
            ", TF32 matmuls"
        } else {
            ""
        };
        let path = if self.fused { "fused" } else { "plain" };
        // flash attention's queries a warp where there is a choice (TRAIN_GPT2_FLASH_QUERIES)
        let choice = self.gpu.flash_choice::<T>(self.config.head_size());
        let flash = match choice.filter(|_| self.fused) {
            Some(FlashQueries::Q16) => " (flash q16)",
            Some(FlashQueries::Q32) => " (flash q32)",
            None => "",
        };
        let graphs = if self.graphs.enabled() {
            ", CUDA graphs"
        } else {
            ""
        };
        let recompute = match self.recompute {
            Recompute::None => "",
            Recompute::Gelu => ", GELU recomputed",
        };
        let chunks = if self.chunk_b < self.max_b {
            format!(", classifier in chunks of {}", self.chunk_b)
        } else {
            String::new()
        };
        format!(
            "cuda: {}, {}{tf32}, {path} kernels{flash}{recompute}{chunks}{graphs}",
            self.device,
            T::PRECISION
        )
    }
    fn precision(&self) -> Precision {
        T::PRECISION
    }
    fn peak_tflops(&self) -> Option<f64> {
        let precision = match T::PRECISION {
            Precision::Bf16 => crate::mfu::Precision::Bf16,
            Precision::Fp32 if self.gpu.tf32() => crate::mfu::Precision::Tf32,
            Precision::Fp32 => crate::mfu::Precision::Fp32,
        };
        crate::mfu::peak_tflops(&self.device, precision)
    }
    fn peak_memory_bytes(&self) -> Option<u64> {
        (self.peak_used > 0).then_some(self.peak_used)
    }
    fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<f32>> {
        Gpt2Gpu::forward(self, inputs, targets, b, t)
    }
    fn zero_grad(&mut self) -> Result<()> {
        Gpt2Gpu::zero_grad(self)
    }
    fn backward(&mut self, loss_scale: f32) -> Result<()> {
        Gpt2Gpu::backward(self, loss_scale)
    }
    fn grad_norm(&mut self) -> Result<f32> {
        Gpt2Gpu::grad_norm(self)
    }
    fn update(&mut self, hp: &AdamW, step: usize, grad_scale: f32) -> Result<()> {
        Gpt2Gpu::update(self, hp, step, grad_scale)
    }
    fn params(&mut self) -> Result<Vec<f32>> {
        Gpt2Gpu::params(self)
    }
    fn grads(&mut self) -> Result<Vec<f32>> {
        Gpt2Gpu::grads(self)
    }
    fn has_master_weights(&self) -> bool {
        // (none in a model for forwards only)
        self.master.is_some()
    }
    fn optimizer_array(&mut self, which: OptimizerArray) -> Result<Vec<f32>> {
        Gpt2Gpu::optimizer_array(self, which)
    }
    fn set_optimizer_array(&mut self, which: OptimizerArray, values: &[f32]) -> Result<()> {
        Gpt2Gpu::set_optimizer_array(self, which, values)
    }
    fn logits(&mut self) -> Result<Vec<f32>> {
        Gpt2Gpu::logits(self)
    }
    fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>> {
        Gpt2Gpu::position_logits(self, bi, ti)
    }
    fn losses(&mut self) -> Result<Vec<f32>> {
        if self.losses.is_empty() {
            bail!("the last forward had no targets, so it computed no losses");
        }
        Ok(self.losses.clone())
    }
    fn profile_method(&self) -> Option<&'static str> {
        Some(METHOD)
    }
    fn profile_step_begin(&mut self) -> Result<()> {
        Gpt2Gpu::profile_step_begin(self)
    }
    fn profile_step_end(&mut self) -> Result<()> {
        Gpt2Gpu::profile_step_end(self)
    }
    fn profile_step_discard(&mut self) -> Result<()> {
        Gpt2Gpu::profile_step_discard(self)
    }
    fn profile(&self) -> Option<Profile> {
        let peaks = (self.peak_tflops(), self.gpu.peak_bandwidth_gbps());
        Some(Gpt2Gpu::profile(self).clone().with_peaks(peaks.0, peaks.1))
    }
}

#[cfg(test)]
mod tests {
    //! The view macros on host slices (they only need `split_at_mut`): each list of names must be
    //! its layout's order, or the GPU would read every tensor from the wrong place.
    use super::*;
    use crate::activations::{self, layer_slot, residual_slot};
    use crate::params::{self, param_sizes, Params};

    /// The offset of `x` in the allocation that starts at `base`, in elements.
    fn offset(base: *const usize, x: &[usize]) -> usize {
        (x.as_ptr() as usize - base as usize) / std::mem::size_of::<usize>()
    }

    /// (offset, length) of each tensor when `sizes` are laid out one after the other.
    fn packed<const N: usize>(sizes: [usize; N]) -> [(usize, usize); N] {
        let mut at = 0;
        sizes.map(|n| {
            at += n;
            (at - n, n)
        })
    }

    #[test]
    fn acts_mut_follows_the_activation_layout() {
        let cfg = GPT2Config::new(16, 10, 128, 2, 2, 8).unwrap();
        let (b, t) = (3, 5);
        for with_probs in [true, false] {
            let sizes = activations::act_sizes_for(&cfg, b, t, with_probs);
            let want = Acts::from_array(packed(sizes.into_array()));
            let n = activations::num_activations_for(&cfg, b, t, with_probs);
            let mut buf: Vec<usize> = (0..n + 3).collect();
            let base = buf.as_ptr();
            acts_mut!(a = &mut buf[..], sizes);
            let got = Acts::from_array(a.into_array().map(|x| (offset(base, x), x.len())));
            assert_eq!(got, want, "with_probs = {with_probs}");
            if with_probs {
                // the CPU's split of the same layout
                let mut cpu_buf = vec![0usize; n];
                let cpu_base = cpu_buf.as_ptr();
                let w = activations::split_mut(&cfg, b, t, &mut cpu_buf);
                let cpu = Acts::from_array(w.into_array().map(|x| (offset(cpu_base, x), x.len())));
                assert_eq!(got, cpu);
            } else {
                assert_eq!(got.probs, (got.logits.0 + got.logits.1, 0));
                assert_eq!(got.losses.0, got.probs.0);
            }
        }
    }

    #[test]
    fn params_mut_follows_the_checkpoint_order() {
        let cfg = GPT2Config::new(8, 10, 16, 2, 2, 4).unwrap();
        let n = params::num_parameters(&cfg);
        let mut want_buf: Vec<usize> = (0..n).collect();
        let base = want_buf.as_ptr();
        let want = params::split_mut(&cfg, &mut want_buf)
            .into_array()
            .map(|x| (offset(base, x), x.len()));
        let mut buf: Vec<usize> = (0..n).collect();
        let base2 = buf.as_ptr();
        params_mut!(g = &mut buf[..], param_sizes(&cfg));
        let got = g.into_array().map(|x| (offset(base2, x), x.len()));
        assert_eq!(got, want);
        assert_eq!(got, packed(param_sizes(&cfg).into_array()));
    }

    #[test]
    fn layer_grads_mut_is_contiguous_in_field_order() {
        let cfg = GPT2Config::new(16, 10, 128, 2, 2, 8).unwrap();
        let (b, t) = (3, 5);
        let sizes = LayerGrads::sizes(&cfg, b, t, false).unwrap();
        let n = sizes.total().unwrap();
        // hand count: BTC * (4 + 4 + 1 + 1 + 3 + 1) + 2 * B*NH*T*T
        assert_eq!(n, 15 * 8 * 14 + 2 * 3 * 2 * 25);
        let mut buf: Vec<usize> = (0..n).collect();
        let base = buf.as_ptr();
        layer_grads_mut!(d = &mut buf[..], sizes);
        let btc = 15 * 8;
        assert_eq!(offset(base, d.fch_gelu), 0);
        assert_eq!(d.fch_gelu.len(), 4 * btc);
        assert_eq!(offset(base, d.preatt), 10 * btc);
        assert_eq!(d.att.len(), 150);
        assert_eq!(offset(base, d.qkv), 10 * btc + 300);
        assert_eq!(offset(base, d.ln1) + d.ln1.len(), n);
        // the fused path keeps fch, ln2, atty, qkv and ln1 only: 4 + 1 + 1 + 3 + 1 = 10 BTC
        let fused = LayerGrads::sizes(&cfg, b, t, true).unwrap();
        assert_eq!((fused.preatt, fused.att, fused.fch_gelu), (0, 0, 0));
        assert_eq!(fused.total().unwrap(), 10 * 15 * 8);
        let mut buf: Vec<usize> = (0..fused.total().unwrap()).collect();
        let base = buf.as_ptr();
        layer_grads_mut!(d = &mut buf[..], fused);
        assert_eq!(offset(base, d.fch), 0);
        assert_eq!(offset(base, d.ln2), 4 * btc);
        assert_eq!(offset(base, d.atty), 5 * btc);
        assert_eq!(offset(base, d.qkv), 6 * btc);
        assert_eq!(offset(base, d.ln1) + d.ln1.len(), 10 * btc);
    }

    #[test]
    fn fused_path_needs_head_size_64_or_128_and_c_vp_multiples_of_8() {
        let d12 = GPT2Config::from_descriptor("d12").unwrap();
        assert!(fused_supported(&d12)); // HS 64, C 768, Vp 50304
        let cfg = |nh, c, vp| GPT2Config::new(16, 100, vp, 1, nh, c).unwrap();
        assert!(fused_supported(&cfg(2, 256, 128))); // HS 128
        assert!(!fused_supported(&cfg(4, 128, 128))); // HS 32
        assert!(!fused_supported(&cfg(2, 64, 128))); // HS 32
        assert!(!fused_supported(&cfg(1, 64, 100))); // HS 64, Vp not a multiple of 8
        assert!(fused_supported(&cfg(1, 64, 104)));
    }

    #[test]
    fn a_forward_reads_each_layer_s_input_where_the_last_wrote_it() {
        // training keeps every layer's; forwards alternate two slots, and one for the rest
        let slots = |fo: bool| -> Vec<_> {
            (0..5)
                .map(|l| (layer_slot(l, fo), residual_slot(l, fo)))
                .collect()
        };
        assert_eq!(slots(false), [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
        assert_eq!(slots(true), [(0, 0), (0, 1), (0, 0), (0, 1), (0, 0)]);
    }
}
