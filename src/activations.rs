//! The activation layout: every tensor the forward pass saves for the backward pass, in one
//! allocation with named slices, sized from the config and the batch shape (B, T). The gradients of
//! the activations use the same layout. Both engines use it, so a buffer has one name everywhere.
//! The GPU never stores the probabilities (its fused classifier works from the logits), so its
//! layout is the same with `probs` empty: see [`act_sizes_for`].

use crate::config::GPT2Config;

/// One value per activation tensor, by name; `Acts<&mut [f32]>` is a set of named slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acts<S> {
    pub encoded: S,   // (B, T, C)
    pub ln1: S,       // (L, B, T, C)
    pub ln1_mean: S,  // (L, B, T)
    pub ln1_rstd: S,  // (L, B, T)
    pub qkv: S,       // (L, B, T, 3*C)
    pub atty: S,      // (L, B, T, C)
    pub preatt: S,    // (L, B, NH, T, T)
    pub att: S,       // (L, B, NH, T, T)
    pub attproj: S,   // (L, B, T, C)
    pub residual2: S, // (L, B, T, C)
    pub ln2: S,       // (L, B, T, C)
    pub ln2_mean: S,  // (L, B, T)
    pub ln2_rstd: S,  // (L, B, T)
    pub fch: S,       // (L, B, T, 4*C)
    pub fch_gelu: S,  // (L, B, T, 4*C)
    pub fcproj: S,    // (L, B, T, C)
    pub residual3: S, // (L, B, T, C)
    pub lnf: S,       // (B, T, C)
    pub lnf_mean: S,  // (B, T)
    pub lnf_rstd: S,  // (B, T)
    pub logits: S,    // (B, T, Vp)
    pub probs: S,     // (B, T, Vp)
    pub losses: S,    // (B, T)
}

/// The number of activation tensors.
pub const NUM_ACTIVATION_TENSORS: usize = 23;

impl<S> Acts<S> {
    pub fn from_array(a: [S; NUM_ACTIVATION_TENSORS]) -> Self {
        let [encoded, ln1, ln1_mean, ln1_rstd, qkv, atty, preatt, att, attproj, residual2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu, fcproj, residual3, lnf, lnf_mean, lnf_rstd, logits, probs, losses] =
            a;
        Acts {
            encoded,
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            atty,
            preatt,
            att,
            attproj,
            residual2,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
            fcproj,
            residual3,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            probs,
            losses,
        }
    }

    /// The 23 values in layout order.
    pub fn into_array(self) -> [S; NUM_ACTIVATION_TENSORS] {
        let Acts {
            encoded,
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            atty,
            preatt,
            att,
            attproj,
            residual2,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
            fcproj,
            residual3,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            probs,
            losses,
        } = self;
        [
            encoded, ln1, ln1_mean, ln1_rstd, qkv, atty, preatt, att, attproj, residual2, ln2,
            ln2_mean, ln2_rstd, fch, fch_gelu, fcproj, residual3, lnf, lnf_mean, lnf_rstd, logits,
            probs, losses,
        ]
    }
}

/// The number of elements of each activation tensor for a batch of B x T (the CPU layout, with
/// `probs`).
pub fn act_sizes(cfg: &GPT2Config, b: usize, t: usize) -> Acts<usize> {
    act_sizes_for(cfg, b, t, true)
}

/// The number of elements of each activation tensor for a batch of B x T; without `with_probs` the
/// `probs` tensor is empty (the GPU layout). Panics where a size overflows a usize: callers with
/// sizes from user input check them first with [`checked_act_sizes`].
pub fn act_sizes_for(cfg: &GPT2Config, b: usize, t: usize, with_probs: bool) -> Acts<usize> {
    checked_act_sizes(cfg, b, t, with_probs).unwrap_or_else(|| {
        panic!("activation sizes for B={b}, T={t} overflow a usize (config {cfg:?})")
    })
}

/// [`act_sizes_for`], or None where a size or their total does not fit in a usize.
pub fn checked_act_sizes(
    cfg: &GPT2Config,
    b: usize,
    t: usize,
    with_probs: bool,
) -> Option<Acts<usize>> {
    let (l, nh, c, vp) = (
        cfg.num_layers,
        cfg.num_heads,
        cfg.channels,
        cfg.padded_vocab_size,
    );
    // the product of the factors, or None on overflow
    let m = |xs: &[usize]| xs.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x));
    let bt = m(&[b, t])?;
    let sizes = Acts {
        encoded: m(&[bt, c])?,
        ln1: m(&[l, bt, c])?,
        ln1_mean: m(&[l, bt])?,
        ln1_rstd: m(&[l, bt])?,
        qkv: m(&[l, bt, 3, c])?,
        atty: m(&[l, bt, c])?,
        preatt: m(&[l, b, nh, t, t])?,
        att: m(&[l, b, nh, t, t])?,
        attproj: m(&[l, bt, c])?,
        residual2: m(&[l, bt, c])?,
        ln2: m(&[l, bt, c])?,
        ln2_mean: m(&[l, bt])?,
        ln2_rstd: m(&[l, bt])?,
        fch: m(&[l, bt, 4, c])?,
        fch_gelu: m(&[l, bt, 4, c])?,
        fcproj: m(&[l, bt, c])?,
        residual3: m(&[l, bt, c])?,
        lnf: m(&[bt, c])?,
        lnf_mean: bt,
        lnf_rstd: bt,
        logits: m(&[bt, vp])?,
        probs: if with_probs { m(&[bt, vp])? } else { 0 },
        losses: bt,
    };
    // the total must fit too
    sizes
        .into_array()
        .iter()
        .try_fold(0usize, |acc, &x| acc.checked_add(x))?;
    Some(sizes)
}

impl Acts<usize> {
    /// The elements of all the tensors: what a layout of these sizes takes.
    pub fn total(&self) -> usize {
        self.into_array().iter().sum()
    }

    /// The sizes of a model for forwards only (`eval`, `sample`), from the sizes that training
    /// keeps: one layer's tensors, each layer overwriting the last's ([`layer_slot`]), and two
    /// layers' `residual3`, a layer's input and its output in turn ([`residual_slot`]). Nothing
    /// reads a layer's tensors after the next layer has run when there is no backward pass.
    pub fn forwards_only(self, num_layers: usize) -> Acts<usize> {
        let l = num_layers;
        let one = |x: usize| x / l;
        Acts {
            ln1: one(self.ln1),
            ln1_mean: one(self.ln1_mean),
            ln1_rstd: one(self.ln1_rstd),
            qkv: one(self.qkv),
            atty: one(self.atty),
            preatt: one(self.preatt),
            att: one(self.att),
            attproj: one(self.attproj),
            residual2: one(self.residual2),
            ln2: one(self.ln2),
            ln2_mean: one(self.ln2_mean),
            ln2_rstd: one(self.ln2_rstd),
            fch: one(self.fch),
            fch_gelu: one(self.fch_gelu),
            fcproj: one(self.fcproj),
            residual3: one(self.residual3) * l.min(2),
            ..self
        }
    }
}

/// Where layer l's tensors lie in the per-layer activations, in layers from their start: l
/// itself, or for a model for forwards only 0, each layer overwriting the last's (see
/// [`Acts::forwards_only`]).
pub fn layer_slot(l: usize, forwards_only: bool) -> usize {
    if forwards_only {
        0
    } else {
        l
    }
}

/// Where layer l's output, `residual3`, lies in its tensor, in layers: l, or for a model for
/// forwards only l % 2, so that a layer reads its input from one slot and writes its output to
/// the other (see [`Acts::forwards_only`]).
pub fn residual_slot(l: usize, forwards_only: bool) -> usize {
    if forwards_only {
        l % 2
    } else {
        l
    }
}

/// Layer l's input (`encoded` for layer 0, else layer l-1's output) and its output, each
/// (B, T, C), from the `residual3` tensor of the training layout or of the forwards-only one
/// ([`residual_slot`]); `btc` is B*T*C.
pub fn layer_io<'a, T>(
    encoded: &'a [T],
    residual3: &'a mut [T],
    l: usize,
    btc: usize,
    forwards_only: bool,
) -> (&'a [T], &'a mut [T]) {
    let out = residual_slot(l, forwards_only);
    if l == 0 {
        return (encoded, &mut residual3[out * btc..(out + 1) * btc]);
    }
    let input = residual_slot(l - 1, forwards_only);
    if input < out {
        let (below, this) = residual3.split_at_mut(out * btc);
        (&below[input * btc..(input + 1) * btc], &mut this[..btc])
    } else {
        let (below, this) = residual3.split_at_mut(input * btc);
        (&this[..btc], &mut below[out * btc..(out + 1) * btc])
    }
}

/// The total number of activation elements for a batch of B x T.
pub fn num_activations(cfg: &GPT2Config, b: usize, t: usize) -> usize {
    num_activations_for(cfg, b, t, true)
}

/// The total number of activation elements for a batch of B x T, with or without `probs` (see
/// [`act_sizes_for`]).
pub fn num_activations_for(cfg: &GPT2Config, b: usize, t: usize, with_probs: bool) -> usize {
    act_sizes_for(cfg, b, t, with_probs).total()
}

/// Splits the front of `buf` into the named activation tensors of a B x T batch. `buf` may be
/// larger (sized once for the largest batch); the layout depends only on (B, T).
pub fn split_mut<'a, T>(
    cfg: &GPT2Config,
    b: usize,
    t: usize,
    buf: &'a mut [T],
) -> Acts<&'a mut [T]> {
    split_sizes_mut(act_sizes(cfg, b, t), buf)
}

/// Splits the front of `buf` into tensors of the given sizes, in the layout's order.
pub fn split_sizes_mut<T>(sizes: Acts<usize>, mut buf: &mut [T]) -> Acts<&mut [T]> {
    let sizes = sizes.into_array();
    assert!(
        buf.len() >= sizes.iter().sum::<usize>(),
        "activation buffer too small"
    );
    Acts::from_array(sizes.map(|n| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(n);
        buf = tail;
        head
    }))
}

/// One layer's activations: the l-th slice of each (L, ...) tensor except `residual3`, which the
/// passes handle on their own (a layer reads the previous layer's `residual3` while writing its own).
pub struct LayerActs<S> {
    pub ln1: S,       // (B, T, C)
    pub ln1_mean: S,  // (B, T)
    pub ln1_rstd: S,  // (B, T)
    pub qkv: S,       // (B, T, 3*C)
    pub atty: S,      // (B, T, C)
    pub preatt: S,    // (B, NH, T, T)
    pub att: S,       // (B, NH, T, T)
    pub attproj: S,   // (B, T, C)
    pub residual2: S, // (B, T, C)
    pub ln2: S,       // (B, T, C)
    pub ln2_mean: S,  // (B, T)
    pub ln2_rstd: S,  // (B, T)
    pub fch: S,       // (B, T, 4*C)
    pub fch_gelu: S,  // (B, T, 4*C)
    pub fcproj: S,    // (B, T, C)
}

impl<T> LayerActs<&mut [T]> {
    /// The same tensors, borrowed again: a model for forwards only runs every layer in one
    /// layer's tensors.
    pub fn reborrow(&mut self) -> LayerActs<&mut [T]> {
        LayerActs {
            ln1: &mut *self.ln1,
            ln1_mean: &mut *self.ln1_mean,
            ln1_rstd: &mut *self.ln1_rstd,
            qkv: &mut *self.qkv,
            atty: &mut *self.atty,
            preatt: &mut *self.preatt,
            att: &mut *self.att,
            attproj: &mut *self.attproj,
            residual2: &mut *self.residual2,
            ln2: &mut *self.ln2,
            ln2_mean: &mut *self.ln2_mean,
            ln2_rstd: &mut *self.ln2_rstd,
            fch: &mut *self.fch,
            fch_gelu: &mut *self.fch_gelu,
            fcproj: &mut *self.fcproj,
        }
    }
}

/// The per-layer tensors of an [`Acts`], by layer.
pub struct Layers<'a, T> {
    rest: LayerActs<&'a mut [T]>,
    layers: usize,
}

impl<'a, T> Acts<&'a mut [T]> {
    /// Splits the activations into the per-layer views (a double-ended iterator over the L
    /// layers: `.rev()` walks them backward) and the tensors outside the layers (`residual3`
    /// stays whole in the returned `Acts`; the per-layer fields there are emptied).
    pub fn by_layer(self, num_layers: usize) -> (Layers<'a, T>, Acts<&'a mut [T]>) {
        let Acts {
            encoded,
            ln1,
            ln1_mean,
            ln1_rstd,
            qkv,
            atty,
            preatt,
            att,
            attproj,
            residual2,
            ln2,
            ln2_mean,
            ln2_rstd,
            fch,
            fch_gelu,
            fcproj,
            residual3,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            probs,
            losses,
        } = self;
        let layers = Layers {
            rest: LayerActs {
                ln1,
                ln1_mean,
                ln1_rstd,
                qkv,
                atty,
                preatt,
                att,
                attproj,
                residual2,
                ln2,
                ln2_mean,
                ln2_rstd,
                fch,
                fch_gelu,
                fcproj,
            },
            layers: num_layers,
        };
        let outer = Acts {
            encoded,
            ln1: Default::default(),
            ln1_mean: Default::default(),
            ln1_rstd: Default::default(),
            qkv: Default::default(),
            atty: Default::default(),
            preatt: Default::default(),
            att: Default::default(),
            attproj: Default::default(),
            residual2: Default::default(),
            ln2: Default::default(),
            ln2_mean: Default::default(),
            ln2_rstd: Default::default(),
            fch: Default::default(),
            fch_gelu: Default::default(),
            fcproj: Default::default(),
            residual3,
            lnf,
            lnf_mean,
            lnf_rstd,
            logits,
            probs,
            losses,
        };
        (layers, outer)
    }
}

impl<'a, T> Layers<'a, T> {
    /// Cuts one layer off the front (`back == false`) or the back of every tensor.
    fn cut(&mut self, back: bool) -> Option<LayerActs<&'a mut [T]>> {
        if self.layers == 0 {
            return None;
        }
        let n = self.layers;
        self.layers -= 1;
        let cut1 = |x: &mut &'a mut [T]| -> &'a mut [T] {
            let per_layer = x.len() / n;
            let whole = std::mem::take(x);
            if back {
                let (rest, last) = whole.split_at_mut(whole.len() - per_layer);
                *x = rest;
                last
            } else {
                let (first, rest) = whole.split_at_mut(per_layer);
                *x = rest;
                first
            }
        };
        let r = &mut self.rest;
        Some(LayerActs {
            ln1: cut1(&mut r.ln1),
            ln1_mean: cut1(&mut r.ln1_mean),
            ln1_rstd: cut1(&mut r.ln1_rstd),
            qkv: cut1(&mut r.qkv),
            atty: cut1(&mut r.atty),
            preatt: cut1(&mut r.preatt),
            att: cut1(&mut r.att),
            attproj: cut1(&mut r.attproj),
            residual2: cut1(&mut r.residual2),
            ln2: cut1(&mut r.ln2),
            ln2_mean: cut1(&mut r.ln2_mean),
            ln2_rstd: cut1(&mut r.ln2_rstd),
            fch: cut1(&mut r.fch),
            fch_gelu: cut1(&mut r.fch_gelu),
            fcproj: cut1(&mut r.fcproj),
        })
    }
}

impl<'a, T> Iterator for Layers<'a, T> {
    type Item = LayerActs<&'a mut [T]>;
    fn next(&mut self) -> Option<Self::Item> {
        self.cut(false)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.layers, Some(self.layers))
    }
}

impl<T> ExactSizeIterator for Layers<'_, T> {}

impl<T> DoubleEndedIterator for Layers<'_, T> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.cut(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_up() {
        let cfg = GPT2Config::new(16, 10, 128, 2, 2, 8).unwrap();
        let (b, t) = (3, 5);
        let n = num_activations(&cfg, b, t);
        // Hand count: per layer BT*(C + 2 + 3C + C + C + C + C + 2 + 4C + 4C + C + C) = BT*(18C + 4),
        // plus 2*B*NH*T*T;
        // plus BT*C + BT*C + 2*BT + 2*BT*Vp + BT.
        let bt = b * t;
        let per_layer = bt * (18 * 8 + 4) + 2 * b * 2 * t * t;
        assert_eq!(n, 2 * per_layer + bt * 8 * 2 + 2 * bt + 2 * bt * 128 + bt);
        let mut buf = vec![0f32; n + 7];
        let a = split_mut(&cfg, b, t, &mut buf);
        assert_eq!(a.qkv.len(), 2 * bt * 24);
        assert_eq!(a.losses.len(), bt);
    }

    #[test]
    fn gpu_layout_drops_only_probs() {
        let cfg = GPT2Config::new(16, 10, 128, 2, 2, 8).unwrap();
        let (b, t) = (3, 5);
        let with = act_sizes_for(&cfg, b, t, true);
        let without = act_sizes_for(&cfg, b, t, false);
        assert_eq!(with, act_sizes(&cfg, b, t));
        assert_eq!(without.probs, 0);
        assert_eq!(Acts { probs: 0, ..with }, without);
        // B*T*Vp = 15 * 128 fewer elements
        assert_eq!(
            num_activations_for(&cfg, b, t, false),
            num_activations(&cfg, b, t) - 15 * 128
        );
    }

    #[test]
    fn overflowing_sizes_are_none() {
        let cfg = GPT2Config::new(1024, 50257, 50304, 12, 12, 768).unwrap();
        assert!(checked_act_sizes(&cfg, 4, 64, false).is_some());
        assert!(checked_act_sizes(&cfg, usize::MAX / 2, 1024, false).is_none());
        // B*T fits; the per-layer tensors times L do not
        assert!(checked_act_sizes(&cfg, 1 << 40, 1024, true).is_none());
    }

    #[test]
    fn forwards_keep_one_layer_and_take_turns_in_two_residual_slots() {
        let cfg = GPT2Config::new(16, 10, 128, 3, 2, 8).unwrap();
        let (b, t) = (2, 3);
        let all = act_sizes(&cfg, b, t);
        let fo = all.forwards_only(3);
        assert_eq!(
            (fo.qkv, fo.att, fo.ln2_rstd),
            (b * t * 24, b * 2 * t * t, b * t)
        );
        assert_eq!(fo.residual3, 2 * b * t * 8);
        assert_eq!(
            (fo.encoded, fo.logits, fo.probs),
            (all.encoded, all.logits, all.probs)
        );
        // one layer: as training's
        let cfg1 = GPT2Config::new(16, 10, 128, 1, 2, 8).unwrap();
        assert_eq!(
            act_sizes(&cfg1, b, t).forwards_only(1),
            act_sizes(&cfg1, b, t)
        );
        // each layer reads where the last wrote: in training layer l-1's slot and l's; for
        // forwards only the two slots in turn (btc = 2 here)
        let encoded = [-1, -2];
        for (fo, slots) in [(false, [0, 1, 2, 3]), (true, [0, 1, 0, 1])] {
            let mut residual3: Vec<i32> = (0..8).collect();
            for (l, &out) in slots.iter().enumerate() {
                let (input, output) = layer_io(&encoded, &mut residual3[..], l, 2, fo);
                let want_in = if l == 0 {
                    vec![-1, -2]
                } else {
                    vec![100 + l as i32 - 1; 2]
                };
                assert_eq!(input, &want_in[..], "layer {l}, forwards only {fo}");
                assert_eq!(output.len(), 2);
                output.fill(100 + l as i32);
                assert_eq!(residual3[2 * out..2 * out + 2], [100 + l as i32; 2]);
            }
        }
    }

    #[test]
    fn by_layer_walks_the_layers_both_ways() {
        let cfg = GPT2Config::new(16, 10, 128, 3, 2, 8).unwrap();
        let (b, t) = (2, 3);
        let n = num_activations(&cfg, b, t);
        let mut buf: Vec<usize> = (0..n).collect();
        let whole = split_mut(&cfg, b, t, &mut buf);
        let qkv_start = whole.qkv[0];
        let per_layer = b * t * 3 * 8;
        let (layers, outer) = whole.by_layer(3);
        assert_eq!(outer.residual3.len(), 3 * b * t * 8);
        let firsts: Vec<usize> = layers.rev().map(|l| l.qkv[0]).collect();
        assert_eq!(
            firsts,
            vec![qkv_start + 2 * per_layer, qkv_start + per_layer, qkv_start]
        );
        let whole = split_mut(&cfg, b, t, &mut buf);
        let (mut layers, _) = whole.by_layer(3);
        let l0 = layers.next().unwrap();
        assert_eq!(
            (l0.qkv.len(), l0.ln1_mean.len(), l0.att.len()),
            (per_layer, b * t, b * 2 * t * t)
        );
        assert_eq!(layers.count(), 2);
    }
}
