//! The parameter layout: all 16 parameter tensors of GPT-2 live in one allocation, in llm.c's
//! checkpoint order, so the checkpoint layout is the memory layout. Gradients and the AdamW moments
//! use the same layout. [`Params`] holds one named slice (or view) per tensor.

use crate::config::GPT2Config;

/// The number of parameter tensors.
pub const NUM_PARAMETER_TENSORS: usize = 16;

/// The tensors' names, in checkpoint order (also the order of gradients in a debug state).
pub const PARAM_NAMES: [&str; NUM_PARAMETER_TENSORS] = [
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b", "fcw",
    "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
];

/// Whether each tensor (checkpoint order) is a matrix or an embedding (2-D: wte, wpe, qkvw,
/// attprojw, fcw, fcprojw) rather than a bias or a LayerNorm parameter (1-D per layer): the
/// tensors GPT-2's recipe applies weight decay to.
pub const IS_MATRIX: [bool; NUM_PARAMETER_TENSORS] = [
    true, true, false, false, true, false, true, false, false, false, true, false, true, false,
    false, false,
];

/// One value per parameter tensor, by name. `Params<&[f32]>` is a set of named slices into one
/// allocation; `Params<usize>` holds sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params<S> {
    pub wte: S,      // (Vp, C)
    pub wpe: S,      // (maxT, C)
    pub ln1w: S,     // (L, C)
    pub ln1b: S,     // (L, C)
    pub qkvw: S,     // (L, 3*C, C)
    pub qkvb: S,     // (L, 3*C)
    pub attprojw: S, // (L, C, C)
    pub attprojb: S, // (L, C)
    pub ln2w: S,     // (L, C)
    pub ln2b: S,     // (L, C)
    pub fcw: S,      // (L, 4*C, C)
    pub fcb: S,      // (L, 4*C)
    pub fcprojw: S,  // (L, C, 4*C)
    pub fcprojb: S,  // (L, C)
    pub lnfw: S,     // (C)
    pub lnfb: S,     // (C)
}

impl<S> Params<S> {
    /// Builds the set from 16 values in checkpoint order.
    pub fn from_array(a: [S; NUM_PARAMETER_TENSORS]) -> Self {
        let [wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb, lnfw, lnfb] =
            a;
        Params {
            wte,
            wpe,
            ln1w,
            ln1b,
            qkvw,
            qkvb,
            attprojw,
            attprojb,
            ln2w,
            ln2b,
            fcw,
            fcb,
            fcprojw,
            fcprojb,
            lnfw,
            lnfb,
        }
    }

    /// The 16 values in checkpoint order.
    pub fn into_array(self) -> [S; NUM_PARAMETER_TENSORS] {
        let Params {
            wte,
            wpe,
            ln1w,
            ln1b,
            qkvw,
            qkvb,
            attprojw,
            attprojb,
            ln2w,
            ln2b,
            fcw,
            fcb,
            fcprojw,
            fcprojb,
            lnfw,
            lnfb,
        } = self;
        [
            wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw,
            fcprojb, lnfw, lnfb,
        ]
    }
}

/// One transformer block's parameters (or gradients): the l-th slice of each (L, ...) tensor.
pub struct Block<S> {
    pub ln1w: S,     // (C)
    pub ln1b: S,     // (C)
    pub qkvw: S,     // (3*C, C)
    pub qkvb: S,     // (3*C)
    pub attprojw: S, // (C, C)
    pub attprojb: S, // (C)
    pub ln2w: S,     // (C)
    pub ln2b: S,     // (C)
    pub fcw: S,      // (4*C, C)
    pub fcb: S,      // (4*C)
    pub fcprojw: S,  // (C, 4*C)
    pub fcprojb: S,  // (C)
}

/// A read-only view of an (L, ...) tensor that can be cut into its L equal per-layer pieces: a
/// host slice, or a device view (`gpu`).
pub trait LayerSlice: Sized {
    /// The l-th of `num_layers` equal pieces.
    fn nth(&self, l: usize, num_layers: usize) -> Self;
}

impl<T> LayerSlice for &[T] {
    fn nth(&self, l: usize, num_layers: usize) -> Self {
        let n = self.len() / num_layers;
        &self[l * n..(l + 1) * n]
    }
}

/// The l-th of `num_layers` equal slices of `x`, mutable.
fn nth_mut<T>(x: &mut [T], l: usize, num_layers: usize) -> &mut [T] {
    let n = x.len() / num_layers;
    &mut x[l * n..(l + 1) * n]
}

impl<S: LayerSlice> Params<S> {
    /// Block l of `num_layers`.
    pub fn block(&self, l: usize, num_layers: usize) -> Block<S> {
        let f = |x: &S| x.nth(l, num_layers);
        Block {
            ln1w: f(&self.ln1w),
            ln1b: f(&self.ln1b),
            qkvw: f(&self.qkvw),
            qkvb: f(&self.qkvb),
            attprojw: f(&self.attprojw),
            attprojb: f(&self.attprojb),
            ln2w: f(&self.ln2w),
            ln2b: f(&self.ln2b),
            fcw: f(&self.fcw),
            fcb: f(&self.fcb),
            fcprojw: f(&self.fcprojw),
            fcprojb: f(&self.fcprojb),
        }
    }
}

impl<T> Params<&mut [T]> {
    /// Block l of `num_layers`, mutable.
    pub fn block_mut(&mut self, l: usize, num_layers: usize) -> Block<&mut [T]> {
        Block {
            ln1w: nth_mut(self.ln1w, l, num_layers),
            ln1b: nth_mut(self.ln1b, l, num_layers),
            qkvw: nth_mut(self.qkvw, l, num_layers),
            qkvb: nth_mut(self.qkvb, l, num_layers),
            attprojw: nth_mut(self.attprojw, l, num_layers),
            attprojb: nth_mut(self.attprojb, l, num_layers),
            ln2w: nth_mut(self.ln2w, l, num_layers),
            ln2b: nth_mut(self.ln2b, l, num_layers),
            fcw: nth_mut(self.fcw, l, num_layers),
            fcb: nth_mut(self.fcb, l, num_layers),
            fcprojw: nth_mut(self.fcprojw, l, num_layers),
            fcprojb: nth_mut(self.fcprojb, l, num_layers),
        }
    }
}

/// The number of elements of each parameter tensor.
pub fn param_sizes(cfg: &GPT2Config) -> Params<usize> {
    let GPT2Config {
        max_seq_len: maxt,
        padded_vocab_size: vp,
        num_layers: l,
        channels: c,
        ..
    } = *cfg;
    Params {
        wte: vp * c,
        wpe: maxt * c,
        ln1w: l * c,
        ln1b: l * c,
        qkvw: l * 3 * c * c,
        qkvb: l * 3 * c,
        attprojw: l * c * c,
        attprojb: l * c,
        ln2w: l * c,
        ln2b: l * c,
        fcw: l * 4 * c * c,
        fcb: l * 4 * c,
        fcprojw: l * c * 4 * c,
        fcprojb: l * c,
        lnfw: c,
        lnfb: c,
    }
}

/// The total number of parameters (wte counted with its Vp rows, as in the checkpoint).
pub fn num_parameters(cfg: &GPT2Config) -> usize {
    param_sizes(cfg).into_array().iter().sum()
}

/// A number of parameters as a person reads it: "124.5M", "59.9K", or the number itself below
/// 10,000.
pub fn count_text(n: usize) -> String {
    match n {
        1_000_000.. => format!("{:.1}M", n as f64 / 1e6),
        10_000.. => format!("{:.1}K", n as f64 / 1e3),
        _ => n.to_string(),
    }
}

/// Splits one allocation of `num_parameters` elements into the 16 named tensors.
pub fn split<'a, T>(cfg: &GPT2Config, mut buf: &'a [T]) -> Params<&'a [T]> {
    assert_eq!(buf.len(), num_parameters(cfg), "parameter buffer size");
    let sizes = param_sizes(cfg).into_array();
    Params::from_array(sizes.map(|n| {
        let (head, tail) = buf.split_at(n);
        buf = tail;
        head
    }))
}

/// Splits one mutable allocation of `num_parameters` elements into the 16 named tensors.
pub fn split_mut<'a, T>(cfg: &GPT2Config, mut buf: &'a mut [T]) -> Params<&'a mut [T]> {
    assert_eq!(buf.len(), num_parameters(cfg), "parameter buffer size");
    let sizes = param_sizes(cfg).into_array();
    Params::from_array(sizes.map(|n| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(n);
        buf = tail;
        head
    }))
}

/// GPT-2's random initialisation, seeded and reproducible: weights N(0, 0.02), the two residual
/// projections (attprojw, fcprojw) scaled by 1/sqrt(2L), layernorm weights 1, biases 0, and the
/// padded wte rows V..Vp zero. Allocated as `vec!` does, which aborts where the memory is short:
/// for tests and small models; a model the user names goes through [`try_init_params`].
pub fn init_params(cfg: &GPT2Config, seed: u64) -> Vec<f32> {
    let mut buf = vec![0f32; num_parameters(cfg)];
    fill_init_params(cfg, seed, &mut buf);
    buf
}

/// [`init_params`], or an error naming the parameters where they cannot be allocated (under a
/// memory limit, `ulimit -v`), not the allocator's abort.
pub fn try_init_params(cfg: &GPT2Config, seed: u64) -> anyhow::Result<Vec<f32>> {
    let mut buf = crate::host_memory::zeroed(num_parameters(cfg), "the parameters")?;
    fill_init_params(cfg, seed, &mut buf);
    Ok(buf)
}

/// Writes [`init_params`]' values into `buf` (num_parameters zeros).
fn fill_init_params(cfg: &GPT2Config, seed: u64, buf: &mut [f32]) {
    let mut rng = crate::rng::Rng::new(seed);
    let std = 0.02f32;
    let residual_std = std / (2.0 * cfg.num_layers as f32).sqrt();
    let p = split_mut(cfg, buf);
    rng.fill_normal(&mut p.wte[..cfg.vocab_size * cfg.channels], std);
    rng.fill_normal(p.wpe, std);
    rng.fill_normal(p.qkvw, std);
    rng.fill_normal(p.attprojw, residual_std);
    rng.fill_normal(p.fcw, std);
    rng.fill_normal(p.fcprojw, residual_std);
    for w in [p.ln1w, p.ln2w, p.lnfw] {
        w.fill(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_124m_has_124m_parameters() {
        let cfg = GPT2Config::from_descriptor("d12").unwrap();
        // 124,475,904 with wte padded to Vp = 50304 rows (llm.c prints this number).
        assert_eq!(num_parameters(&cfg), 124_475_904);
    }

    /// d24, d36 and d48 are llm.c's (and OpenAI's) GPT-2 medium, large and XL: without the
    /// vocabulary padding their parameters are the totals Hugging Face publishes for gpt2,
    /// gpt2-medium, gpt2-large and gpt2-xl.
    #[test]
    fn the_gpt2_family_has_the_published_parameter_counts() {
        for (desc, published) in [
            ("d12", 124_439_808),
            ("d24", 354_823_168),
            ("d36", 774_030_080),
            ("d48", 1_557_611_200),
        ] {
            let cfg = GPT2Config::from_descriptor(desc).unwrap();
            let unpadded = GPT2Config {
                padded_vocab_size: cfg.vocab_size,
                ..cfg
            };
            assert_eq!(num_parameters(&unpadded), published, "{desc}");
        }
    }

    #[test]
    fn split_is_in_checkpoint_order() {
        let cfg = GPT2Config::new(8, 10, 16, 2, 2, 4).unwrap();
        let n = num_parameters(&cfg);
        let buf: Vec<usize> = (0..n).collect();
        let p = split(&cfg, &buf);
        assert_eq!(p.wte.len(), 16 * 4);
        assert_eq!(p.wpe[0], 64);
        assert_eq!(p.lnfb[p.lnfb.len() - 1], n - 1);
        let mut buf2 = vec![0usize; n];
        let pm = split_mut(&cfg, &mut buf2);
        pm.lnfb[3] = 7;
        assert_eq!(buf2[n - 1], 7);
    }

    #[test]
    fn init_follows_gpt2() {
        let cfg = GPT2Config::new(64, 300, 384, 4, 2, 32).unwrap();
        let a = init_params(&cfg, 3);
        assert_eq!(a, init_params(&cfg, 3), "same seed, same weights");
        assert_ne!(a, init_params(&cfg, 4));
        let p = split(&cfg, &a);
        let std = |x: &[f32]| {
            let n = x.len() as f64;
            (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n).sqrt()
        };
        // 9600 samples: the sample std is within 3% of 0.02 with overwhelming probability.
        assert!((std(&p.wte[..300 * 32]) - 0.02).abs() < 0.0006);
        assert!(
            p.wte[300 * 32..].iter().all(|&v| v == 0.0),
            "padded rows are zero"
        );
        let r = 0.02 / (8f64).sqrt();
        assert!((std(p.fcprojw) - r).abs() < 0.03 * r);
        assert!((std(p.attprojw) - r).abs() < 0.03 * r);
        assert!(p.ln1w.iter().chain(p.ln2w).chain(p.lnfw).all(|&v| v == 1.0));
        for bias in [p.ln1b, p.qkvb, p.attprojb, p.ln2b, p.fcb, p.fcprojb, p.lnfb] {
            assert!(bias.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn blocks_slice_each_layer() {
        let cfg = GPT2Config::new(8, 10, 16, 3, 2, 4).unwrap();
        let n = num_parameters(&cfg);
        let buf: Vec<usize> = (0..n).collect();
        let p = split(&cfg, &buf);
        let b2 = p.block(2, 3);
        assert_eq!(b2.qkvw.len(), 3 * 4 * 4);
        assert_eq!(b2.qkvw[0], p.qkvw[2 * 48]);
        assert_eq!(*b2.fcprojb.last().unwrap(), *p.fcprojb.last().unwrap());
        // the mutable blocks are the same slices, layer by layer
        let mut same = buf.clone();
        let mut m = split_mut(&cfg, &mut same);
        for l in 0..3 {
            let (w, g) = (p.block(l, 3), m.block_mut(l, 3));
            let want = [
                w.ln1w, w.ln1b, w.qkvw, w.qkvb, w.attprojw, w.attprojb, w.ln2w, w.ln2b, w.fcw,
                w.fcb, w.fcprojw, w.fcprojb,
            ];
            let got: [&[usize]; 12] = [
                g.ln1w, g.ln1b, g.qkvw, g.qkvb, g.attprojw, g.attprojb, g.ln2w, g.ln2b, g.fcw,
                g.fcb, g.fcprojw, g.fcprojb,
            ];
            assert_eq!(got, want, "layer {l}");
        }
        let mut buf2 = vec![0usize; n];
        let mut g = split_mut(&cfg, &mut buf2);
        g.block_mut(1, 3).ln2b[0] = 5;
        assert_eq!(g.ln2b, &[0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
    }
}
