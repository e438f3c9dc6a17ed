//! What a [`Gpt2Gpu`](super::Gpt2Gpu) allocates, counted before it allocates anything: the
//! activation arenas' layouts for a batch ([`arena_sizes`]), every arena's length ([`Arenas`])
//! and, for a model that does not fit, the error that says what it needs and what each flag that
//! trades work for memory would save ([`out_of_memory`]).

use anyhow::Result;

use super::{LayerGrads, ModelFloat};
use crate::activations::{checked_act_sizes, Acts};
use crate::config::GPT2Config;
use crate::engine::Recompute;
use crate::gpu::attention::{attention_backward_scratch_len, attention_forward_scratch_len};
use crate::gpu::flash_attention::flash_attention_backward_scratch_len;
use crate::host_memory::size_text;
use crate::out_of_memory::{Knobs, OutOfMemory, Saving};

/// What a model's arenas are laid out for, beyond the batch (see [`ModelOptions`]).
///
/// [`ModelOptions`]: super::ModelOptions
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    /// The fused path (see [`Gpt2Gpu::new_with`](super::Gpt2Gpu::new_with)).
    pub(super) fused: bool,
    /// The sequences the logits hold at once.
    pub(super) chunk_b: usize,
    /// What the backward pass computes again.
    pub(super) recompute: Recompute,
    /// No training arenas.
    pub(super) forwards_only: bool,
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
///
/// [`Gpt2Gpu::new_with_options`]: super::Gpt2Gpu::new_with_options
pub(super) fn arena_sizes(
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
///
/// [`Gpt2Gpu::new_with_options`]: super::Gpt2Gpu::new_with_options
#[derive(Clone, Copy, Debug)]
pub(super) struct Arenas {
    /// The largest batch, B x T.
    pub(super) b: usize,
    pub(super) t: usize,
    pub(super) params: usize,    // (NP,) weights in T
    pub(super) grads: usize,     // (NP,) gradients in T, and the fp32 AdamW moments m and v
    pub(super) masters: bool,    // (NP,) fp32 master weights (a bf16 model that trains)
    pub(super) acts: usize,      // (arena_sizes(B, T).0 total) activations in T
    pub(super) stats: usize,     // (arena_sizes(B, T).1 total) fp32 means, rstds, losses
    pub(super) lse: usize,       // (L, B, NH, T) fp32 log-sum-exps of flash attention (fused path)
    pub(super) dlayer: usize,    // (LayerGrads total) one layer's activation gradients in T
    pub(super) btc: usize,       // (B, T, C) dresidual and dlnf, each in T
    pub(super) scratch: usize,   // attention scratch in T (plain path)
    pub(super) scratch32: usize, // flash attention's backward scratch, fp32 (fused path)
    pub(super) bt: usize,        // (B, T) inputs, targets, token buckets, row statistics
}

impl Arenas {
    /// The arenas of a model of `cfg` with `n` parameters (`masters`: its precision keeps fp32
    /// master weights to train) for batches up to B x T on `layout`; an error when their sizes
    /// overflow.
    pub(super) fn of(
        cfg: &GPT2Config,
        n: usize,
        masters: bool,
        (b, t): (usize, usize),
        layout: Layout,
    ) -> Result<Arenas> {
        let (l, c, nh) = (cfg.num_layers, cfg.channels, cfg.num_heads);
        let too_big = || {
            let what = format!(
                "the activations of the model (L={l}, C={c}) at B={b}, T={t} do not fit in memory"
            );
            anyhow::Error::from(OutOfMemory::beyond_any_memory(what))
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
    pub(super) fn bytes(&self, e: f64) -> (f64, f64, f64) {
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
pub(super) fn out_of_memory<T: ModelFloat>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activations;
    use half::bf16;

    fn layout(fused: bool, chunk_b: usize, recompute: Recompute, forwards_only: bool) -> Layout {
        Layout {
            fused,
            chunk_b,
            recompute,
            forwards_only,
        }
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
}
