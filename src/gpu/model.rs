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

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use half::bf16;
use std::ops::Range;

use super::attention::{attention_backward_scratch_len, attention_forward_scratch_len};
use super::flash_attention::{flash_attention_backward_scratch_len, FLASH_ATTENTION_HEAD_SIZES};
use super::float::{to_device_float, to_f32_vec, DeviceFloat};
use super::graphs::{Piece, StepGraphs};
use super::launch::{buckets_len, token_buckets, FlashQueries};
use super::nvtx;
use super::profile::{GpuProfiler, METHOD};
use super::Gpu;
use crate::activations::{checked_act_sizes, layer_slot, residual_slot, Acts};
use crate::config::GPT2Config;
use crate::cpu::adamw::{update_ranges, AdamW};
use crate::cpu::model::{check_forward, check_new};
use crate::engine::{check_optimizer_array, Engine, OptimizerArray};
use crate::engine::{Kernels, Recompute};
use crate::host_memory::size_text;
use crate::out_of_memory::{Knobs, OutOfMemory, Saving};
use crate::params::{param_sizes, LayerSlice, Params};
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

/// What a model's arenas are laid out for, beyond the batch (see [`ModelOptions`]).
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// The fused path (see [`Gpt2Gpu::new_with`]).
    fused: bool,
    /// The sequences the logits hold at once.
    chunk_b: usize,
    /// What the backward pass computes again.
    recompute: Recompute,
    /// No training arenas.
    forwards_only: bool,
}

/// The activation arenas' layouts for a batch of B x T: the tensors stored in T, and the fp32
/// statistics (the layernorms' mean and rstd, the per-position losses), as two `Acts` size sets,
/// each zero where the other holds the tensor. The GPU never stores `probs` (the fused classifier
/// works from the logits), nor, with fused attention, `preatt` and `att` (B, NH, T, T): the flash
/// kernels recompute them from q, k and the saved log-sum-exp. The logits hold at most `chunk_b`
/// sequences: (min(B, chunk_b), T, Vp) (see [`Gpt2Gpu::new_with_options`]), and with
/// [`Recompute::Gelu`] `fch_gelu` holds one layer's, (B, T, 4*C). A model for forwards only
/// keeps one layer's tensors, each layer overwriting the last's, and two layers' residual3, the
/// layer's input and its output, in turn (see [`Acts::forwards_only`]). None on overflow.
fn arena_sizes(
    cfg: &GPT2Config,
    b: usize,
    t: usize,
    layout: Layout,
) -> Option<(Acts<usize>, Acts<usize>)> {
    let mut stored = checked_act_sizes(cfg, b, t, false)?;
    stored.logits = b.min(layout.chunk_b) * t * cfg.padded_vocab_size;
    let l = cfg.num_layers;
    if layout.forwards_only {
        stored = stored.forwards_only(l);
    } else if layout.recompute == Recompute::Gelu {
        stored.fch_gelu /= l;
    }
    if layout.fused {
        stored.preatt = 0;
        stored.att = 0;
    }
    let mut stats = Acts::from_array([0; crate::activations::NUM_ACTIVATION_TENSORS]);
    macro_rules! move_to_stats {
        ($($f:ident),*) => {$(
            stats.$f = stored.$f;
            stored.$f = 0;
        )*};
    }
    move_to_stats!(ln1_mean, ln1_rstd, ln2_mean, ln2_rstd, lnf_mean, lnf_rstd, losses);
    Some((stored, stats))
}

/// The lengths (elements) of a model's device arenas for batches up to B x T on its `layout`:
/// what [`Gpt2Gpu::new_with_options`] allocates, counted first so that a model that does not fit
/// is refused with what it needs ([`out_of_memory`]). Those only training uses are 0 for a model
/// for forwards only.
#[derive(Clone, Copy, Debug)]
struct Arenas {
    /// The largest batch, B x T.
    b: usize,
    t: usize,
    params: usize,    // (NP,) weights in T
    grads: usize,     // (NP,) gradients in T, and the fp32 AdamW moments m and v
    masters: bool,    // (NP,) fp32 master weights (a bf16 model that trains)
    acts: usize,      // (arena_sizes(B, T).0 total) activations in T
    stats: usize,     // (arena_sizes(B, T).1 total) fp32 means, rstds, losses
    lse: usize,       // (L, B, NH, T) fp32 log-sum-exps of flash attention (fused path)
    dlayer: usize,    // (LayerGrads total) one layer's activation gradients in T
    btc: usize,       // (B, T, C) dresidual and dlnf, each in T
    scratch: usize,   // attention scratch in T (plain path)
    scratch32: usize, // flash attention's backward scratch, fp32 (fused path)
    bt: usize,        // (B, T) inputs and targets, with the token buckets and row statistics
}

impl Arenas {
    /// The arenas of a model of `cfg` with `n` parameters (`masters`: its precision keeps fp32
    /// master weights to train) for batches up to B x T on `layout`; an error when their sizes
    /// overflow.
    fn of(
        cfg: &GPT2Config,
        n: usize,
        masters: bool,
        (b, t): (usize, usize),
        layout: Layout,
    ) -> Result<Arenas> {
        let (l, c, nh) = (cfg.num_layers, cfg.channels, cfg.num_heads);
        let too_big = || {
            anyhow!(
                "the activations of the model (L={l}, C={c}) at B={b}, T={t} do not fit in \
                 memory: use a smaller batch (-b) or sequence length (-t)"
            )
        };
        let (acts, stats) = arena_sizes(cfg, b, t, layout).ok_or_else(too_big)?;
        let dlayer = LayerGrads::sizes(cfg, b, t, layout.fused).ok_or_else(too_big)?;
        // every size below is at most the activation total, which fits a usize
        let dlayer = dlayer.total().ok_or_else(too_big)?;
        let forwards_only = layout.forwards_only;
        let lse_layers = if forwards_only { 1 } else { l };
        let (scratch, scratch32) = match (layout.fused, forwards_only) {
            (true, false) => (0, flash_attention_backward_scratch_len(b, t, c, nh)),
            (true, true) => (0, 0),
            (false, false) => (
                attention_forward_scratch_len(b, t, c).max(attention_backward_scratch_len(b, t, c)),
                0,
            ),
            (false, true) => (attention_forward_scratch_len(b, t, c), 0),
        };
        let training = |x: usize| if forwards_only { 0 } else { x };
        Ok(Arenas {
            b,
            t,
            params: n,
            grads: training(n),
            masters: masters && !forwards_only,
            acts: acts.into_array().iter().sum(),
            stats: stats.into_array().iter().sum(),
            lse: if layout.fused {
                lse_layers * b * nh * t
            } else {
                0
            },
            dlayer: training(dlayer),
            btc: training(b * t * c),
            scratch,
            scratch32,
            bt: b * t,
        })
    }

    /// Their bytes, with weights of `e` bytes each: (the parameters, their gradients and AdamW
    /// state; the activations; the activation gradients and scratch).
    fn bytes(&self, e: f64) -> (f64, f64, f64) {
        let f = |x: usize| x as f64;
        let masters = if self.masters { self.params } else { 0 };
        // T weights and gradients, fp32 moments (and master weights)
        let params = e * f(self.params + self.grads) + 4.0 * f(2 * self.grads + masters);
        let acts = e * f(self.acts) + 4.0 * (f(self.stats) + f(self.lse));
        // (the tokens' 28 bytes a position: inputs, targets, 3 of buckets, 2 row statistics)
        let grads = e * (f(self.dlayer) + f(self.btc) + f(self.btc) + f(self.scratch))
            + 4.0 * f(self.scratch32)
            + 28.0 * f(self.bt);
        (params, acts, grads)
    }
}

/// The error of a model of `cfg` in T whose `arenas` on `layout` need more than the GPU has
/// `free` (free, total bytes; or why that could not be queried): what it needs, in parts, and
/// what each flag that trades work for memory would save.
fn out_of_memory<T: ModelFloat>(
    cfg: &GPT2Config,
    arenas: &Arenas,
    layout: Layout,
    free: &std::result::Result<(usize, usize), String>,
) -> OutOfMemory {
    let (l, c) = (cfg.num_layers, cfg.channels);
    let (b, t) = (arenas.b, arenas.t);
    let e = std::mem::size_of::<T>() as f64;
    let (bytes_params, bytes_acts, bytes_grads) = arenas.bytes(e);
    let need = bytes_params + bytes_acts + bytes_grads;
    let (p, a, g) = (
        size_text(bytes_params),
        size_text(bytes_acts),
        size_text(bytes_grads),
    );
    let parts = if layout.forwards_only {
        format!("for its forwards (parameters {p}, activations {a}, scratch {g})")
    } else {
        format!(
            "(parameters, gradients and AdamW state {p}, activations {a}, activation gradients \
             and scratch {g})"
        )
    };
    let free_text = match free {
        Ok((free, total)) => format!(
            "the GPU has {} free of {}",
            size_text(*free as f64),
            size_text(*total as f64)
        ),
        Err(e) => format!("the GPU's free memory could not be queried ({e})"),
    };
    // what the flags that trade work for memory would save
    let mut savings = Vec::new();
    let chunk_b = layout.chunk_b;
    if chunk_b > 1 {
        let logits_bytes = e * (b.min(chunk_b) * t * cfg.padded_vocab_size) as f64;
        let chunk_bytes = e * (t * cfg.padded_vocab_size) as f64;
        savings.push(Saving {
            flag: "--classifier-chunk",
            text: format!(
                "the classifier in chunks (--classifier-chunk N sequences: the logits take {} for \
                 {})",
                size_text(logits_bytes),
                crate::text::count(b.min(chunk_b), "sequence", "sequences")
            ),
            bytes: logits_bytes - chunk_bytes,
        });
    }
    if layout.recompute == Recompute::None && l > 1 && !layout.forwards_only {
        let bytes = e * ((l - 1) * 4 * b * t * c) as f64;
        savings.push(Saving {
            flag: "--recompute",
            text: format!(
                "GELU recomputed (--recompute gelu: {} less)",
                size_text(bytes)
            ),
            bytes,
        });
    }
    OutOfMemory {
        what: format!(
            "not enough GPU memory: the model (L={l}, C={c}, {} parameters, {}) at B={b}, T={t} \
             needs {} {parts}, {free_text}",
            crate::params::count_text(arenas.params),
            T::PRECISION,
            size_text(need),
        ),
        need,
        fixed_alone: match free {
            Ok((free, _)) if bytes_params > *free as f64 => Some(bytes_params),
            _ => None,
        },
        savings,
        knobs: Knobs::default(),
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

    /// Runs the forward pass on inputs (B, T); with targets also the loss, which it returns (the
    /// mean over B*T, summed in f64 on the host from the (B, T) losses: the one read-back of a
    /// forward). The logits of the last forward are in `logits()` until the next backward.
    pub fn forward(
        &mut self,
        inputs: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
    ) -> Result<Option<f32>> {
        let _phase = nvtx::range(c"forward");
        self.prof.set_pass(Pass::Forward);
        let cfg = self.config;
        check_forward(&cfg, (self.max_b, self.max_t), inputs, targets, b, t)?;
        if targets.is_none() && b > self.chunk_b {
            bail!(
                "a forward without targets keeps the logits, which hold {} at once (the \
                 classifier's chunk); this batch has B = {b}",
                crate::text::count(self.chunk_b, "sequence", "sequences")
            );
        }
        self.stage = Stage::Empty;
        self.losses.clear();
        self.b = b;
        self.t = t;
        let bt = b * t;
        self.gpu
            .upload_into(inputs, &mut self.inputs_dev.slice_mut(..bt))
            .context("forward: uploading the inputs")?;
        if let Some(tg) = targets {
            self.gpu
                .upload_into(tg, &mut self.targets_dev.slice_mut(..bt))
                .context("forward: uploading the targets")?;
        }
        let with_targets = targets.is_some();
        let piece = Piece::Forward {
            b,
            t,
            targets: with_targets,
        };
        self.run_piece(piece, |m| {
            m.forward_layers(b, t)?;
            m.classifier_forward(b, t, with_targets)
        })
        .context("the GPU forward pass failed")?;
        if !with_targets {
            self.stage = Stage::Forward { targets: false };
            return Ok(None);
        }
        // for the backward's encoder (dwte): the positions grouped by token, sorted on the host
        // while the GPU runs the forward, and uploaded (after it, in stream order) so that the
        // backward pass is launches only
        self.gpu
            .upload_into(
                &token_buckets(inputs),
                &mut self.buckets_dev.slice_mut(..buckets_len(bt)),
            )
            .context("forward: uploading the token buckets")?;
        let losses = self
            .download_losses(b, t)
            .context("the GPU forward pass failed")?;
        let mean = losses.iter().map(|&x| x as f64).sum::<f64>() / bt as f64;
        self.losses = losses;
        self.stage = Stage::Forward { targets: true };
        Ok(Some(mean as f32))
    }

    /// The layers of the forward pass up to lnf (`classifier_forward` then computes the logits), for
    /// the (B, T) tokens in `inputs_dev`.
    /// On the fused path the residual add that ends a layer also computes the next layernorm (the
    /// next layer's ln1, or lnf after the last layer), the MLP's first matmul applies the bias
    /// and GELU in its epilogue, and attention is one flash kernel.
    fn forward_layers(&mut self, b: usize, t: usize) -> Result<()> {
        let (act_sizes, stat_sizes) = self.arena_sizes(b, t)?;
        let cfg = self.config;
        let fused = self.fused;
        let gpu = &self.gpu;
        let prof = &mut self.prof;
        let (l_count, nh, c) = (cfg.num_layers, cfg.num_heads, cfg.channels);
        let p = Params::from_array(views(self.params.as_view(), param_sizes(&cfg).into_array()));
        acts_mut!(a = self.acts.slice_mut(..), act_sizes);
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        let inputs = self.inputs_dev.slice(..b * t);
        let mut scratch = self.att_scratch.slice_mut(..);
        let (btc, bt, att_n, bnht) = (b * t * c, b * t, b * nh * t * t, b * nh * t);
        let (c3, c4) = (3 * c, 4 * c);
        // where each layer's tensors lie: every layer's are kept for the backward, or for
        // forwards only one layer's and two residual streams (see `arena_sizes`)
        let forwards_only = self.forwards_only;
        let slot = |l: usize| layer_slot(l, forwards_only);
        let rslot = |l: usize| residual_slot(l, forwards_only);

        prof.run(Family::Encoder, Cost::encoder_forward(b, t, c), || {
            gpu.encoder_forward(&mut a.encoded, &inputs, &p.wte, &p.wpe, b, t, c)
        })?;
        for l in 0..l_count {
            let w = p.block(l, l_count);
            let _layer = nvtx::range(nvtx::layer_name(l));
            // this layer's input (the encoding or the previous layer's output) and its output,
            // which lies above or (forwards only, in turn) below the input in the arena
            let (out, input) = (rslot(l), l.checked_sub(1).map(rslot));
            let split = match input {
                Some(i) if i > out => i * btc,
                _ => out * btc,
            };
            let (mut lo, mut hi) = a.residual3.split_at_mut(split);
            let (residual, mut residual3) = match input {
                None => (a.encoded.as_view(), hi.slice_mut(..btc)),
                Some(i) if i < out => (lo.slice(i * btc..(i + 1) * btc), hi.slice_mut(..btc)),
                Some(_) => (hi.slice(..btc), lo.slice_mut(out * btc..(out + 1) * btc)),
            };
            let k = slot(l);
            let mut qkv = a.qkv.slice_mut(k * 3 * btc..(k + 1) * 3 * btc);
            let mut atty = a.atty.slice_mut(k * btc..(k + 1) * btc);
            let mut attproj = a.attproj.slice_mut(k * btc..(k + 1) * btc);
            let mut residual2 = a.residual2.slice_mut(k * btc..(k + 1) * btc);
            let mut ln2 = a.ln2.slice_mut(k * btc..(k + 1) * btc);
            let mut ln2_mean = s.ln2_mean.slice_mut(k * bt..(k + 1) * bt);
            let mut ln2_rstd = s.ln2_rstd.slice_mut(k * bt..(k + 1) * bt);
            let mut fch = a.fch.slice_mut(k * 4 * btc..(k + 1) * 4 * btc);
            // (recomputed in the backward: every layer's in the one layer's buffer)
            let gelu_at = match self.recompute {
                Recompute::None => k * 4 * btc,
                Recompute::Gelu => 0,
            };
            let mut fch_gelu = a.fch_gelu.slice_mut(gelu_at..gelu_at + 4 * btc);
            let mut fcproj = a.fcproj.slice_mut(k * btc..(k + 1) * btc);

            // on the fused path, the previous layer's last kernel already wrote this ln1
            if !fused || l == 0 {
                let mut ln1 = a.ln1.slice_mut(k * btc..(k + 1) * btc);
                let mut ln1_mean = s.ln1_mean.slice_mut(k * bt..(k + 1) * bt);
                let mut ln1_rstd = s.ln1_rstd.slice_mut(k * bt..(k + 1) * bt);
                prof.run(Family::Layernorm, Cost::layernorm_forward(b, t, c), || {
                    gpu.layernorm_forward(
                        &mut ln1,
                        &mut ln1_mean,
                        &mut ln1_rstd,
                        &residual,
                        &w.ln1w,
                        &w.ln1b,
                        b,
                        t,
                        c,
                    )
                })?;
            }
            let ln1 = a.ln1.slice(k * btc..(k + 1) * btc);
            prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c3), || {
                matmul_forward_on(
                    gpu,
                    fused,
                    &mut qkv,
                    &ln1,
                    &w.qkvw,
                    Some(&w.qkvb),
                    b,
                    t,
                    c,
                    c3,
                )
            })?;
            if fused {
                let mut lse = self.lse.slice_mut(k * bnht..(k + 1) * bnht);
                prof.run(Family::Attention, Cost::attention_forward(b, t, c), || {
                    gpu.flash_attention_forward(&mut atty, &mut lse, &qkv.as_view(), b, t, c, nh)
                })?;
            } else {
                let mut preatt = a.preatt.slice_mut(k * att_n..(k + 1) * att_n);
                let mut att = a.att.slice_mut(k * att_n..(k + 1) * att_n);
                prof.run(Family::Attention, Cost::attention_forward(b, t, c), || {
                    gpu.attention_forward(
                        &mut atty,
                        &mut preatt,
                        &mut att,
                        &qkv.as_view(),
                        b,
                        t,
                        c,
                        nh,
                        &mut scratch,
                    )
                })?;
            }
            prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c), || {
                let (atty, wb) = (atty.as_view(), Some(&w.attprojb));
                matmul_forward_on(gpu, fused, &mut attproj, &atty, &w.attprojw, wb, b, t, c, c)
            })?;
            if fused {
                let cost = Cost::residual_layernorm_forward(b, t, c);
                prof.run(Family::Layernorm, cost, || {
                    gpu.residual_layernorm_forward(
                        &mut residual2,
                        &mut ln2,
                        &mut ln2_mean,
                        &mut ln2_rstd,
                        &residual,
                        &attproj.as_view(),
                        &w.ln2w,
                        &w.ln2b,
                        b,
                        t,
                        c,
                    )
                })?;
            } else {
                prof.run(Family::Residual, Cost::residual_forward(btc), || {
                    gpu.residual_forward(&mut residual2, &residual, &attproj.as_view())
                })?;
                prof.run(Family::Layernorm, Cost::layernorm_forward(b, t, c), || {
                    gpu.layernorm_forward(
                        &mut ln2,
                        &mut ln2_mean,
                        &mut ln2_rstd,
                        &residual2.as_view(),
                        &w.ln2w,
                        &w.ln2b,
                        b,
                        t,
                        c,
                    )
                })?;
            }
            if fused {
                prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c4), || {
                    let ln2 = ln2.as_view();
                    gpu.matmul_forward_gelu_lt(
                        &mut fch_gelu,
                        &mut fch,
                        &ln2,
                        &w.fcw,
                        &w.fcb,
                        b,
                        t,
                        c,
                        c4,
                    )
                })?;
            } else {
                prof.run(Family::Matmul, Cost::matmul_forward(b, t, c, c4), || {
                    gpu.matmul_forward(&mut fch, &ln2.as_view(), &w.fcw, Some(&w.fcb), b, t, c, c4)
                })?;
                prof.run(Family::Gelu, Cost::gelu_forward(4 * btc), || {
                    gpu.gelu_forward(&mut fch_gelu, &fch.as_view())
                })?;
            }
            prof.run(Family::Matmul, Cost::matmul_forward(b, t, c4, c), || {
                let (x, wb) = (fch_gelu.as_view(), Some(&w.fcprojb));
                matmul_forward_on(gpu, fused, &mut fcproj, &x, &w.fcprojw, wb, b, t, c4, c)
            })?;
            if fused {
                // residual3 = residual2 + fcproj, and the next layernorm of it: the next layer's
                // ln1, or lnf after the last layer
                let (mut next_ln, mut next_mean, mut next_rstd, next_w, next_b) = if l + 1 < l_count
                {
                    let (nw, nk) = (p.block(l + 1, l_count), slot(l + 1));
                    (
                        a.ln1.slice_mut(nk * btc..(nk + 1) * btc),
                        s.ln1_mean.slice_mut(nk * bt..(nk + 1) * bt),
                        s.ln1_rstd.slice_mut(nk * bt..(nk + 1) * bt),
                        nw.ln1w,
                        nw.ln1b,
                    )
                } else {
                    (
                        a.lnf.slice_mut(..),
                        s.lnf_mean.slice_mut(..),
                        s.lnf_rstd.slice_mut(..),
                        p.lnfw.slice(..),
                        p.lnfb.slice(..),
                    )
                };
                let cost = Cost::residual_layernorm_forward(b, t, c);
                prof.run(Family::Layernorm, cost, || {
                    gpu.residual_layernorm_forward(
                        &mut residual3,
                        &mut next_ln,
                        &mut next_mean,
                        &mut next_rstd,
                        &residual2.as_view(),
                        &fcproj.as_view(),
                        &next_w,
                        &next_b,
                        b,
                        t,
                        c,
                    )
                })?;
            } else {
                prof.run(Family::Residual, Cost::residual_forward(btc), || {
                    gpu.residual_forward(&mut residual3, &residual2.as_view(), &fcproj.as_view())
                })?;
            }
        }
        if !fused {
            let last = rslot(l_count - 1);
            let last = a.residual3.slice(last * btc..(last + 1) * btc);
            prof.run(Family::Layernorm, Cost::layernorm_forward(b, t, c), || {
                gpu.layernorm_forward(
                    &mut a.lnf,
                    &mut s.lnf_mean,
                    &mut s.lnf_rstd,
                    &last,
                    &p.lnfw,
                    &p.lnfb,
                    b,
                    t,
                    c,
                )
            })?;
        }
        Ok(())
    }

    /// The logits (B, T, Vp) = lnf . wte^T and, with targets, the losses (B, T) against
    /// `targets_dev` into the stats arena, with each row's softmax max and sum: chunk by chunk
    /// (one chunk when the logits hold the whole batch), so that after it the logits of the last
    /// chunk are in place.
    fn classifier_forward(&mut self, b: usize, t: usize, targets: bool) -> Result<()> {
        let cfg = self.config;
        let (c, v, vp) = (cfg.channels, cfg.vocab_size, cfg.padded_vocab_size);
        let (act_sizes, stat_sizes) = self.arena_sizes(b, t)?;
        let chunks = classifier_chunks(b, self.chunk_b);
        let p = Params::from_array(views(self.params.as_view(), param_sizes(&cfg).into_array()));
        acts_mut!(a = self.acts.slice_mut(..), act_sizes);
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        let (gpu, fused, prof) = (&self.gpu, self.fused, &mut self.prof);
        for (b0, bc) in chunks {
            let rows = b0 * t..(b0 + bc) * t;
            let mut logits = a.logits.slice_mut(..bc * t * vp);
            let lnf = a.lnf.slice(rows.start * c..rows.end * c);
            lm_head_forward(gpu, fused, prof, &mut logits, &lnf, &p.wte, bc, t, c, vp)?;
            if !targets {
                continue;
            }
            let targets = self.targets_dev.slice(rows.clone());
            let mut losses = s.losses.slice_mut(rows.clone());
            let mut row_stats = self.row_stats.slice_mut(2 * rows.start..2 * rows.end);
            prof.run(
                Family::Classifier,
                Cost::classifier_losses(bc, t, v),
                || {
                    gpu.classifier_losses(
                        &logits.as_view(),
                        &mut losses,
                        &targets,
                        bc,
                        t,
                        v,
                        vp,
                        Some(&mut row_stats),
                    )
                },
            )?;
        }
        Ok(())
    }

    /// The losses (B, T) that [`Gpt2Gpu::classifier_forward`] computed, read back to the host.
    fn download_losses(&mut self, b: usize, t: usize) -> Result<Vec<f32>> {
        let (_, stat_sizes) = self.arena_sizes(b, t)?;
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        self.gpu.download(&s.losses)
    }

    /// An error unless the logits of the last forward are still in place.
    fn check_logits(&self) -> Result<()> {
        match self.stage {
            Stage::Forward { .. } if self.b > self.chunk_b => bail!(
                "the logits of the last forward (B = {}) were computed in chunks of {} and not \
                 kept: read logits with a batch of at most that many, or without chunks",
                self.b,
                crate::text::count(self.chunk_b, "sequence", "sequences")
            ),
            Stage::Forward { .. } => Ok(()),
            Stage::Empty => bail!("no logits: run a forward pass first"),
            Stage::Backward => bail!(
                "the logits of the last forward are gone: on the GPU the backward pass overwrites \
                 them with their gradient; read them between forward and backward"
            ),
        }
    }

    /// The logits (B, T, Vp) of the last forward, in place.
    fn logits_view(&self) -> Result<CudaView<'_, T>> {
        let (act_sizes, _) = self.arena_sizes(self.b, self.t)?;
        let all = views(self.acts.as_view(), act_sizes.into_array());
        Ok(Acts::from_array(all).logits)
    }

    /// The logits (B, T, Vp) of the last forward, copied to the host (before backward).
    pub fn logits(&mut self) -> Result<Vec<f32>> {
        self.check_logits()?;
        let logits = self.logits_view()?;
        Ok(to_f32_vec(&self.gpu.download(&logits)?))
    }

    /// The logits (Vp) at batch row `bi`, position `ti` of the last forward: only that row is
    /// copied to the host (before backward).
    pub fn position_logits(&mut self, bi: usize, ti: usize) -> Result<Vec<f32>> {
        self.check_logits()?;
        let (b, t, vp) = (self.b, self.t, self.config.padded_vocab_size);
        if bi >= b || ti >= t {
            bail!("position ({bi}, {ti}) is outside the last forward's batch of {b}x{t}");
        }
        let row = bi * t + ti;
        let logits = self.logits_view()?;
        Ok(to_f32_vec(
            &self.gpu.download(&logits.slice(row * vp..(row + 1) * vp))?,
        ))
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

    /// Sets every parameter gradient to zero (before the first micro-batch of a step).
    pub fn zero_grad(&mut self) -> Result<()> {
        self.check_trains("zero_grad")?;
        let _phase = nvtx::range(c"zero_grad");
        self.gpu
            .memset_zero(&mut self.grads.slice_mut(..))
            .context("zero_grad")
    }

    /// The backward pass of the last forward (which must have had targets): adds the gradient of
    /// `loss_scale * mean loss` to the gradients. Overwrites the logits with their gradient.
    pub fn backward(&mut self, loss_scale: f32) -> Result<()> {
        self.check_trains("backward")?;
        let _phase = nvtx::range(c"backward");
        self.prof.set_pass(Pass::Backward);
        match self.stage {
            Stage::Forward { targets: true } => {}
            Stage::Forward { targets: false } => {
                bail!("backward needs a forward pass with targets; the last one had none")
            }
            Stage::Empty => bail!("backward before forward: run a forward pass with targets"),
            Stage::Backward => bail!(
                "backward ran already for this forward (it consumed the logits); run forward again"
            ),
        }
        // whatever happens below, the logits are no longer the forward's
        self.stage = Stage::Backward;
        let (b, t) = (self.b, self.t);
        let piece = Piece::Backward {
            b,
            t,
            loss_scale: loss_scale.to_bits(),
        };
        self.run_piece(piece, |m| m.backward_layers(loss_scale))
            .context("the GPU backward pass failed")
    }

    fn backward_layers(&mut self, loss_scale: f32) -> Result<()> {
        let (b, t) = (self.b, self.t);
        let (act_sizes, stat_sizes) = self.arena_sizes(b, t)?;
        let cfg = self.config;
        let fused = self.fused;
        let gpu = &self.gpu;
        let prof = &mut self.prof;
        let (l_count, nh, c, v, vp) = (
            cfg.num_layers,
            cfg.num_heads,
            cfg.channels,
            cfg.vocab_size,
            cfg.padded_vocab_size,
        );
        let (btc, bt, att_n, bnht) = (b * t * c, b * t, b * nh * t * t, b * nh * t);
        let chunks = classifier_chunks(b, self.chunk_b);
        let p = Params::from_array(views(self.params.as_view(), param_sizes(&cfg).into_array()));
        params_mut!(g = self.grads.slice_mut(..), param_sizes(&cfg));
        acts_mut!(a = self.acts.slice_mut(..), act_sizes);
        acts_mut!(s = self.stats.slice_mut(..), stat_sizes);
        let dlayer_sizes =
            LayerGrads::sizes(&cfg, b, t, fused).context("layer gradient sizes overflow")?;
        let dlayer_n = dlayer_sizes
            .total()
            .context("layer gradient sizes overflow")?;
        let buckets = self.buckets_dev.slice(..buckets_len(bt));
        let targets = self.targets_dev.slice(..bt);
        let mut scratch = self.att_scratch.slice_mut(..);
        let mut scratch32 = self.att_scratch32.slice_mut(..);
        let mut dlnf = self.dlnf.slice_mut(..btc);
        // the gradient of the residual stream, as llm.c keeps it: a residual add's backward is the
        // identity, so the products read dres directly (where dfcproj and dattproj would be copies
        // of it) and each layernorm's backward adds into it, turning the gradient of a layer's
        // output into that of residual2 and then of the layer's input, in place
        let mut dres = self.dresidual.slice_mut(..btc);

        // the loss is the mean over B*T: each position's loss gets 1/(B*T); logits -> dlogits,
        // with each row's softmax max and sum as the forward's losses saved them; then dlnf and
        // dwte. In chunks (see `new_with_options`), last chunk first: its logits are the ones the
        // forward left in place; every other chunk's are computed again.
        for (b0, bc) in chunks.into_iter().rev() {
            let rows = b0 * t..(b0 + bc) * t;
            let (rc, lnf) = (rows.start * c..rows.end * c, a.lnf.as_view());
            let lnf = lnf.slice(rc.clone());
            let mut logits = a.logits.slice_mut(..bc * t * vp);
            if b0 + bc < b {
                lm_head_forward(gpu, fused, prof, &mut logits, &lnf, &p.wte, bc, t, c, vp)?;
            }
            let row_stats = self.row_stats.slice(2 * rows.start..2 * rows.end);
            let targets = targets.slice(rows.clone());
            let mut losses = s.losses.slice_mut(rows.clone());
            prof.run(
                Family::Classifier,
                Cost::classifier_fused(bc, t, v, vp),
                || {
                    gpu.fused_classifier(
                        &mut logits,
                        &mut losses,
                        loss_scale / bt as f32,
                        &targets,
                        bc,
                        t,
                        v,
                        vp,
                        Some(&row_stats),
                    )
                },
            )?;
            let mut dlnf = dlnf.slice_mut(rc);
            prof.run(Family::Matmul, Cost::matmul_backward(bc, t, c, vp), || {
                let dlogits = logits.as_view();
                matmul_backward_on(
                    gpu, fused, &mut dlnf, &mut g.wte, None, &dlogits, &lnf, &p.wte, bc, t, c, vp,
                )
            })?;
        }
        let last = (l_count - 1) * btc;
        gpu.memset_zero(&mut dres)?;
        prof.run(Family::Layernorm, Cost::layernorm_backward(b, t, c), || {
            gpu.layernorm_backward(
                &mut dres,
                &mut g.lnfw,
                &mut g.lnfb,
                &dlnf.as_view(),
                &a.residual3.slice(last..last + btc),
                &p.lnfw,
                &s.lnf_mean.as_view(),
                &s.lnf_rstd.as_view(),
                b,
                t,
                c,
            )
        })?;
        for l in (0..l_count).rev() {
            let w = p.block(l, l_count);
            let _layer = nvtx::range(nvtx::layer_name(l));
            let (c1, c3, c4) = (c, 3 * c, 4 * c);
            let residual = if l == 0 {
                a.encoded.as_view()
            } else {
                a.residual3.slice((l - 1) * btc..l * btc)
            };
            // the products overwrite their input gradients; dfch (plain path: gelu_backward) and
            // dqkv (attention) accumulate, from zero
            let dl = self.dlayer.slice_mut(..dlayer_n);
            layer_grads_mut!(d = dl, dlayer_sizes);
            gpu.memset_zero(&mut d.qkv)?;

            // dres is the gradient of the layer's output, residual3 = residual2 + fcproj
            let fch = a.fch.slice(l * 4 * btc..(l + 1) * 4 * btc);
            let fch_gelu = match self.recompute {
                Recompute::None => a.fch_gelu.slice(l * 4 * btc..(l + 1) * 4 * btc),
                Recompute::Gelu => {
                    // fch_gelu = gelu(fch), as the forward computed it (the fused forward in its
                    // product's epilogue), into the one layer's buffer
                    let mut out = a.fch_gelu.slice_mut(..4 * btc);
                    prof.run(Family::Gelu, Cost::gelu_forward(4 * btc), || {
                        gpu.gelu_forward(&mut out, &fch)
                    })?;
                    a.fch_gelu.slice(..4 * btc)
                }
            };
            let mut dfcprojw = g.fcprojw.slice_mut(l * c * c4..(l + 1) * c * c4);
            let mut dfcprojb = g.fcprojb.slice_mut(l * c1..(l + 1) * c1);
            if fused {
                // dfch = (dres . fcprojw) * gelu'(fch), in the product's epilogue
                prof.run(Family::Matmul, Cost::matmul_backward(b, t, c4, c), || {
                    gpu.matmul_backward_dgelu_lt(
                        &mut d.fch,
                        &mut dfcprojw,
                        Some(&mut dfcprojb),
                        &dres.as_view(),
                        &fch_gelu,
                        &w.fcprojw,
                        &fch,
                        b,
                        t,
                        c4,
                        c,
                    )
                })?;
            } else {
                prof.run(Family::Matmul, Cost::matmul_backward(b, t, c4, c), || {
                    matmul_backward_on(
                        gpu,
                        fused,
                        &mut d.fch_gelu,
                        &mut dfcprojw,
                        Some(&mut dfcprojb),
                        &dres.as_view(),
                        &fch_gelu,
                        &w.fcprojw,
                        b,
                        t,
                        c4,
                        c,
                    )
                })?;
                gpu.memset_zero(&mut d.fch)?;
                prof.run(Family::Gelu, Cost::gelu_backward(4 * btc), || {
                    gpu.gelu_backward(&mut d.fch, &fch, &d.fch_gelu.as_view())
                })?;
            }
            prof.run(Family::Matmul, Cost::matmul_backward(b, t, c, c4), || {
                matmul_backward_on(
                    gpu,
                    fused,
                    &mut d.ln2,
                    &mut g.fcw.slice_mut(l * c4 * c..(l + 1) * c4 * c),
                    Some(&mut g.fcb.slice_mut(l * c4..(l + 1) * c4)),
                    &d.fch.as_view(),
                    &a.ln2.slice(l * btc..(l + 1) * btc),
                    &w.fcw,
                    b,
                    t,
                    c,
                    c4,
                )
            })?;
            // dres += ln2's input gradient: now the gradient of residual2 = residual + attproj
            prof.run(Family::Layernorm, Cost::layernorm_backward(b, t, c), || {
                gpu.layernorm_backward(
                    &mut dres,
                    &mut g.ln2w.slice_mut(l * c1..(l + 1) * c1),
                    &mut g.ln2b.slice_mut(l * c1..(l + 1) * c1),
                    &d.ln2.as_view(),
                    &a.residual2.slice(l * btc..(l + 1) * btc),
                    &w.ln2w,
                    &s.ln2_mean.slice(l * bt..(l + 1) * bt),
                    &s.ln2_rstd.slice(l * bt..(l + 1) * bt),
                    b,
                    t,
                    c,
                )
            })?;
            let atty = a.atty.slice(l * btc..(l + 1) * btc);
            prof.run(Family::Matmul, Cost::matmul_backward(b, t, c, c), || {
                matmul_backward_on(
                    gpu,
                    fused,
                    &mut d.atty,
                    &mut g.attprojw.slice_mut(l * c * c..(l + 1) * c * c),
                    Some(&mut g.attprojb.slice_mut(l * c1..(l + 1) * c1)),
                    &dres.as_view(),
                    &atty,
                    &w.attprojw,
                    b,
                    t,
                    c,
                    c,
                )
            })?;
            let qkv = a.qkv.slice(l * 3 * btc..(l + 1) * 3 * btc);
            prof.run(Family::Attention, Cost::attention_backward(b, t, c), || {
                if fused {
                    let lse = self.lse.slice(l * bnht..(l + 1) * bnht);
                    gpu.flash_attention_backward(
                        &mut d.qkv,
                        &d.atty.as_view(),
                        &qkv,
                        &atty,
                        &lse,
                        b,
                        t,
                        c,
                        nh,
                        &mut scratch32,
                    )
                } else {
                    gpu.attention_backward(
                        &mut d.qkv,
                        &mut d.preatt,
                        &mut d.att,
                        &d.atty.as_view(),
                        &qkv,
                        &a.att.slice(l * att_n..(l + 1) * att_n),
                        b,
                        t,
                        c,
                        nh,
                        &mut scratch,
                    )
                }
            })?;
            prof.run(Family::Matmul, Cost::matmul_backward(b, t, c, c3), || {
                matmul_backward_on(
                    gpu,
                    fused,
                    &mut d.ln1,
                    &mut g.qkvw.slice_mut(l * c3 * c..(l + 1) * c3 * c),
                    Some(&mut g.qkvb.slice_mut(l * c3..(l + 1) * c3)),
                    &d.qkv.as_view(),
                    &a.ln1.slice(l * btc..(l + 1) * btc),
                    &w.qkvw,
                    b,
                    t,
                    c,
                    c3,
                )
            })?;
            // dres += ln1's input gradient: now the gradient of the layer's input
            prof.run(Family::Layernorm, Cost::layernorm_backward(b, t, c), || {
                gpu.layernorm_backward(
                    &mut dres,
                    &mut g.ln1w.slice_mut(l * c1..(l + 1) * c1),
                    &mut g.ln1b.slice_mut(l * c1..(l + 1) * c1),
                    &d.ln1.as_view(),
                    &residual,
                    &w.ln1w,
                    &s.ln1_mean.slice(l * bt..(l + 1) * bt),
                    &s.ln1_rstd.slice(l * bt..(l + 1) * bt),
                    b,
                    t,
                    c,
                )
            })?;
        }
        // dres now holds the gradient of the encoding
        prof.run(Family::Encoder, Cost::encoder_backward(b, t, c), || {
            // SAFETY: the forward uploaded token_buckets of its inputs, which check_forward found
            // to be below V <= Vp, the rows of dwte.
            unsafe {
                gpu.encoder_backward_buckets(
                    &mut g.wte,
                    &mut g.wpe,
                    &dres.as_view(),
                    &buckets,
                    b,
                    t,
                    c,
                )
            }
        })?;
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
    use crate::activations;
    use crate::params;

    fn layout(fused: bool, chunk_b: usize, recompute: Recompute, forwards_only: bool) -> Layout {
        Layout {
            fused,
            chunk_b,
            recompute,
            forwards_only,
        }
    }

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

    /// The footprint counted before allocating, by hand: L = 2, NH = 1, C = 64 (a head of 64, so
    /// the fused path), Vp = 16, at B = 2, T = 4 (B*T = 8, B*T*C = 512), 1000 parameters.
    #[test]
    fn the_footprint_counts_every_arena() {
        let cfg = GPT2Config::new(16, 10, 16, 2, 1, 64).unwrap();
        let fused = layout(true, 2, Recompute::None, false);
        let (acts, stats) = arena_sizes(&cfg, 2, 4, fused).unwrap();
        let (acts, stats): (usize, usize) = (
            acts.into_array().iter().sum(),
            stats.into_array().iter().sum(),
        );
        // training in bf16 (2 bytes, fp32 master weights)
        let a = Arenas::of(&cfg, 1000, true, (2, 4), fused).unwrap();
        assert_eq!((a.grads, a.masters), (1000, true));
        // one layer's fch 2048, ln2 512, atty 512, qkv 1536, ln1 512 (no fch_gelu, preatt, att)
        assert_eq!((a.dlayer, a.btc, a.bt), (5120, 512, 8));
        // (L, B, NH, T) log-sum-exps; flash attention's backward scratch (B, NH, T), fp32
        assert_eq!((a.lse, a.scratch, a.scratch32), (16, 0, 8));
        let (params, activations, grads) = a.bytes(2.0);
        // weights and gradients 2 x 2 x 1000, m, v and master weights 3 x 4 x 1000
        assert_eq!(params, 16_000.0);
        assert_eq!(activations, (2 * acts + 4 * (stats + 16)) as f64);
        // dlayer, dresidual, dlnf 2 x (5120 + 2 x 512), scratch 4 x 8, tokens 28 x 8
        assert_eq!(grads, 12_544.0);

        // forwards only: no gradients, moments, master weights or backward scratch; one
        // layer's log-sum-exps
        let forwards = layout(true, 2, Recompute::None, true);
        let f = Arenas::of(&cfg, 1000, true, (2, 4), forwards).unwrap();
        assert_eq!((f.grads, f.masters, f.dlayer, f.btc), (0, false, 0, 0));
        assert_eq!((f.lse, f.scratch, f.scratch32), (8, 0, 0));
        assert_eq!((f.bytes(2.0).0, f.bytes(2.0).2), (2000.0, 224.0));

        // the error when it does not fit: the parameters alone do not fit 10000 bytes free; the
        // classifier in chunks of 1 would save one sequence's logits (2 x 4 x 16 bytes), GELU
        // recomputed one layer's (2 x 4 x 512)
        let oom = out_of_memory::<bf16>(&cfg, &a, fused, &Ok((10_000, 1 << 30)));
        assert_eq!(oom.need, 16_000.0 + activations + 12_544.0);
        assert_eq!(oom.fixed_alone, Some(16_000.0));
        let saved: Vec<_> = oom.savings.iter().map(|s| (s.flag, s.bytes)).collect();
        assert_eq!(
            saved,
            [("--classifier-chunk", 128.0), ("--recompute", 4096.0)]
        );
        assert!(oom.what.contains("(L=2, C=64, "), "{}", oom.what);
        assert!(
            oom.what.contains(
                "at B=2, T=4 needs 0.1 MiB (parameters, gradients and AdamW state 0.0 MiB"
            ),
            "{}",
            oom.what
        );
        assert!(
            oom.what.ends_with("the GPU has 0.0 MiB free of 1.00 GiB"),
            "{}",
            oom.what
        );
        // forwards only: nothing to recompute; free memory unknown
        let oom = out_of_memory::<bf16>(&cfg, &f, forwards, &Err("no context".into()));
        assert_eq!(oom.fixed_alone, None);
        assert_eq!(oom.savings.len(), 1);
        assert!(
            oom.what.contains("for its forwards (parameters "),
            "{}",
            oom.what
        );
        assert!(oom
            .what
            .ends_with("the GPU's free memory could not be queried (no context)"));
    }

    #[test]
    fn arena_sizes_split_the_stats_and_drop_attention_when_fused() {
        let cfg = GPT2Config::new(16, 10, 128, 2, 2, 8).unwrap();
        let (b, t) = (3, 5);
        let all = activations::act_sizes_for(&cfg, b, t, false);
        for fused in [false, true] {
            let (stored, stats) =
                arena_sizes(&cfg, b, t, layout(fused, b, Recompute::None, false)).unwrap();
            let (stored, stats, all) = (stored.into_array(), stats.into_array(), all.into_array());
            let named = |a: [usize; activations::NUM_ACTIVATION_TENSORS]| Acts::from_array(a);
            // every tensor is in exactly one arena, except attention's on the fused path
            for i in 0..all.len() {
                assert!(stored[i] == 0 || stats[i] == 0, "tensor {i}");
            }
            let (s, st, a) = (named(stored), named(stats), named(all));
            assert_eq!(st.ln1_mean, a.ln1_mean);
            assert_eq!(st.lnf_rstd, a.lnf_rstd);
            assert_eq!(st.losses, a.losses);
            assert_eq!(s.ln1_mean, 0);
            assert_eq!(s.qkv, a.qkv);
            assert_eq!(s.logits, a.logits);
            assert_eq!(s.probs, 0);
            let att = if fused {
                0
            } else {
                cfg.num_layers * b * cfg.num_heads * t * t
            };
            assert_eq!((s.preatt, s.att), (att, att));
            assert_eq!(s.fch_gelu, a.fch_gelu);
        }
    }

    #[test]
    fn recomputing_gelu_keeps_one_layers_output() {
        // L = 3, C = 8 at B = 2, T = 5: fch_gelu (L, B, T, 4C) = 3 * 2 * 5 * 32 = 960 elements
        let cfg = GPT2Config::new(16, 10, 128, 3, 2, 8).unwrap();
        let (b, t) = (2, 5);
        for fused in [false, true] {
            let (keep, keep_stats) =
                arena_sizes(&cfg, b, t, layout(fused, b, Recompute::None, false)).unwrap();
            let (re, re_stats) =
                arena_sizes(&cfg, b, t, layout(fused, b, Recompute::Gelu, false)).unwrap();
            assert_eq!(keep.fch_gelu, 960);
            assert_eq!(re.fch_gelu, 320, "one layer's (B, T, 4C)");
            assert_eq!(re_stats, keep_stats);
            // nothing else changes
            let (mut keep, mut re) = (keep, re);
            (keep.fch_gelu, re.fch_gelu) = (0, 0);
            assert_eq!(keep, re);
        }
    }

    #[test]
    fn forwards_keep_one_layer_and_two_residual_streams() {
        // L = 3, NH = 2, C = 8, V = 10, Vp = 16 at B = 2, T = 5: B*T = 10, B*T*C = 80
        let cfg = GPT2Config::new(16, 10, 16, 3, 2, 8).unwrap();
        let (b, t) = (2, 5);
        for fused in [false, true] {
            for recompute in [Recompute::None, Recompute::Gelu] {
                let (s, st) = arena_sizes(&cfg, b, t, layout(fused, b, recompute, true)).unwrap();
                let att = if fused { 0 } else { 2 * 2 * 5 * 5 }; // (B, NH, T, T)
                let want = Acts {
                    encoded: 80,
                    ln1: 80,
                    ln1_mean: 0,
                    ln1_rstd: 0,
                    qkv: 240,
                    atty: 80,
                    preatt: att,
                    att,
                    attproj: 80,
                    residual2: 80,
                    ln2: 80,
                    ln2_mean: 0,
                    ln2_rstd: 0,
                    fch: 320,
                    fch_gelu: 320,
                    fcproj: 80,
                    residual3: 160, // two layers'
                    lnf: 80,
                    lnf_mean: 0,
                    lnf_rstd: 0,
                    logits: 160,
                    probs: 0,
                    losses: 0,
                };
                assert_eq!(s, want, "fused {fused}, {recompute:?}");
                let stats = Acts {
                    ln1_mean: 10,
                    ln1_rstd: 10,
                    ln2_mean: 10,
                    ln2_rstd: 10,
                    lnf_mean: 10,
                    lnf_rstd: 10,
                    losses: 10,
                    ..Acts::from_array([0; activations::NUM_ACTIVATION_TENSORS])
                };
                assert_eq!(st, stats, "fused {fused}, {recompute:?}");
            }
        }
        // one layer: one residual stream
        let cfg = GPT2Config::new(16, 10, 16, 1, 2, 8).unwrap();
        let (s, _) = arena_sizes(&cfg, b, t, layout(true, b, Recompute::None, true)).unwrap();
        assert_eq!((s.residual3, s.qkv), (80, 240));
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
