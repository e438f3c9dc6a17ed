//! The model's blueprint: GPT-2's dimensions as run-time values, and the `dN` descriptors
//! (llm.c's, whose depths 24, 36 and 48 are GPT-2 medium, large and XL).
//!
//! Dimension names follow the math (and llm.c): V vocabulary, Vp vocabulary padded to a multiple of
//! 128, maxT longest sequence, L layers, NH heads, C channels.

use anyhow::{bail, Result};

/// The GPT-2 vocabulary size.
pub const GPT2_VOCAB_SIZE: usize = 50257;
/// The GPT-2 end-of-text token id.
pub const GPT2_EOT: u32 = 50256;
/// The vocabulary is padded up to a multiple of this in the checkpoint and the engine.
pub const VOCAB_PAD: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GPT2Config {
    /// maxT: the longest sequence the position embedding covers.
    pub max_seq_len: usize,
    /// V: the vocabulary size.
    pub vocab_size: usize,
    /// Vp: V padded up to a multiple of 128 (rows V..Vp of wte are zero and never predicted).
    pub padded_vocab_size: usize,
    /// L: the number of transformer blocks.
    pub num_layers: usize,
    /// NH: the number of attention heads.
    pub num_heads: usize,
    /// C: the channels (embedding width).
    pub channels: usize,
}

/// llm.c's GPT-2 sizes, (L, C, NH) for each depth its descriptor `dN` names
/// (`gpt2_set_hyperparameters` in llm.c's train_gpt2.cu): the four GPT-2 models OpenAI released
/// and llm.c's unofficial smaller and larger ones. Every head is 64 wide but at d72 and d84 (96).
pub const LLMC_GPT2_SIZES: [(usize, usize, usize); 8] = [
    (6, 384, 6),    // 30M (unofficial)
    (12, 768, 12),  // GPT-2 124M
    (24, 1024, 16), // GPT-2 medium, 350M
    (36, 1280, 20), // GPT-2 large, 774M
    (48, 1600, 25), // GPT-2 XL, 1558M
    (60, 1920, 30), // 2.7B (unofficial)
    (72, 2880, 30), // 7.3B (unofficial)
    (84, 3456, 36), // 12.2B (unofficial)
];

/// V padded up to a multiple of [`VOCAB_PAD`].
pub fn pad_vocab(vocab_size: usize) -> usize {
    vocab_size.div_ceil(VOCAB_PAD) * VOCAB_PAD
}

impl GPT2Config {
    /// A checked config; `padded_vocab_size` may be any value >= V (a checkpoint says which).
    pub fn new(
        max_seq_len: usize,
        vocab_size: usize,
        padded_vocab_size: usize,
        num_layers: usize,
        num_heads: usize,
        channels: usize,
    ) -> Result<Self> {
        let cfg = GPT2Config {
            max_seq_len,
            vocab_size,
            padded_vocab_size,
            num_layers,
            num_heads,
            channels,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the dimensions divide sensibly.
    pub fn validate(&self) -> Result<()> {
        let GPT2Config {
            max_seq_len: t,
            vocab_size: v,
            padded_vocab_size: vp,
            num_layers: l,
            num_heads: nh,
            channels: c,
        } = *self;
        if t == 0 || v == 0 || l == 0 || nh == 0 || c == 0 {
            bail!("invalid model config {self:?}: every dimension must be positive");
        }
        if vp < v {
            bail!("invalid model config: padded vocab size Vp={vp} is smaller than V={v}");
        }
        if c % nh != 0 {
            bail!("invalid model config: channels C={c} is not divisible by heads NH={nh}");
        }
        // Every size below must fit comfortably in the i32 header fields and in memory.
        let limit = i32::MAX as usize;
        if [t, v, vp, l, nh, c].iter().any(|&x| x > limit) {
            bail!("invalid model config {self:?}: a dimension exceeds i32::MAX");
        }
        Ok(())
    }

    /// The descriptor `dN` (N in 1..=256): L=N, maxT=1024, V=50257, Vp=50304, and C, NH from
    /// [`LLMC_GPT2_SIZES`] where llm.c names that depth (`d24` is GPT-2 medium there as here),
    /// else NH=N, C=64*N (the rule that gives d6 and d12 too, for the depths llm.c leaves out).
    pub fn from_descriptor(desc: &str) -> Result<Self> {
        let depth: usize = match desc.strip_prefix('d').map(str::parse) {
            Some(Ok(n)) if (1..=256).contains(&n) => n,
            _ => bail!(
                "unknown model descriptor '{desc}': expected dN with N in 1..=256 (d12 is GPT-2 124M), \
                 the path of a checkpoint file or a Hugging Face GPT-2 folder"
            ),
        };
        let (channels, heads) = LLMC_GPT2_SIZES
            .iter()
            .find(|&&(l, _, _)| l == depth)
            .map_or((64 * depth, depth), |&(_, c, nh)| (c, nh));
        GPT2Config::new(
            1024,
            GPT2_VOCAB_SIZE,
            pad_vocab(GPT2_VOCAB_SIZE),
            depth,
            heads,
            channels,
        )
    }

    /// The head size C / NH.
    pub fn head_size(&self) -> usize {
        self.channels / self.num_heads
    }
}

/// `L=12 NH=12 C=768 V=50257 Vp=50304 maxT=1024`, as the run's model line prints it.
impl std::fmt::Display for GPT2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "L={} NH={} C={} V={} Vp={} maxT={}",
            self.num_layers,
            self.num_heads,
            self.channels,
            self.vocab_size,
            self.padded_vocab_size,
            self.max_seq_len
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d12_is_gpt2_small() {
        let c = GPT2Config::from_descriptor("d12").unwrap();
        assert_eq!(
            (
                c.max_seq_len,
                c.vocab_size,
                c.padded_vocab_size,
                c.num_layers,
                c.num_heads,
                c.channels
            ),
            (1024, 50257, 50304, 12, 12, 768)
        );
        assert_eq!(c.head_size(), 64);
        // C / NH: 96 / 3 = 32, 128 / 2 = 64
        let hs = |nh, c| GPT2Config::new(8, 10, 16, 1, nh, c).unwrap().head_size();
        assert_eq!((hs(3, 96), hs(2, 128)), (32, 64));
    }

    /// llm.c's depths take its (C, NH); the others follow C = 64N, NH = N.
    #[test]
    fn descriptors_follow_llmc_where_it_names_the_depth() {
        let dims = |d: &str| {
            let c = GPT2Config::from_descriptor(d).unwrap();
            (c.num_layers, c.channels, c.num_heads)
        };
        assert_eq!(dims("d6"), (6, 384, 6));
        assert_eq!(dims("d24"), (24, 1024, 16));
        assert_eq!(dims("d36"), (36, 1280, 20));
        assert_eq!(dims("d48"), (48, 1600, 25));
        assert_eq!(dims("d60"), (60, 1920, 30));
        assert_eq!(dims("d72"), (72, 2880, 30));
        assert_eq!(dims("d84"), (84, 3456, 36));
        assert_eq!(dims("d1"), (1, 64, 1));
        assert_eq!(dims("d16"), (16, 1024, 16));
        assert_eq!(dims("d256"), (256, 16384, 256));
        // every depth llm.c does not name: N heads of 64 (its depths written out, not read from
        // LLMC_GPT2_SIZES: a wrong depth in the table would then pass for the rule)
        for n in (1..=256).filter(|n| ![6, 12, 24, 36, 48, 60, 72, 84].contains(n)) {
            assert_eq!(dims(&format!("d{n}")), (n, 64 * n, n), "d{n}");
        }
    }

    #[test]
    fn bad_descriptors_and_configs_are_errors() {
        for d in ["d0", "x12", "d", "dd", "d-1", "d1000"] {
            let e = GPT2Config::from_descriptor(d).unwrap_err().to_string();
            assert!(e.contains("unknown model descriptor"), "{d}: {e}");
        }
        let e = GPT2Config::new(64, 100, 128, 2, 3, 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not divisible by heads"), "{e}");
        let e = GPT2Config::new(64, 100, 64, 2, 2, 16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("smaller than V"), "{e}");
        // every dimension at least 1: all at 1 is a model (maxT = 1 too), one at 0 is refused
        // (Vp at 0 is smaller than V, above)
        assert!(GPT2Config::new(1, 1, 1, 1, 1, 1).is_ok());
        for i in [0, 1, 3, 4, 5] {
            let mut d = [1usize; 6];
            d[i] = 0;
            let e = GPT2Config::new(d[0], d[1], d[2], d[3], d[4], d[5])
                .unwrap_err()
                .to_string();
            assert!(e.contains("every dimension must be positive"), "{d:?}: {e}");
        }
        // every dimension at most i32::MAX (a checkpoint's header holds each in an i32): each at
        // that bound is a config, each one past it is refused (V with Vp >= V, NH with C, which
        // it divides)
        let limit = i32::MAX as usize;
        for i in 0..6 {
            for (x, ok) in [(limit, true), (limit + 1, false)] {
                let mut d = [1usize; 6];
                d[i] = x;
                if i == 1 {
                    d[2] = x;
                }
                if i == 4 {
                    d[5] = x;
                }
                let r = GPT2Config::new(d[0], d[1], d[2], d[3], d[4], d[5]);
                if ok {
                    assert!(r.is_ok(), "{d:?}: {r:?}");
                } else {
                    let e = r.expect_err("taken").to_string();
                    assert!(e.contains("a dimension exceeds i32::MAX"), "{d:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn vocab_padding() {
        assert_eq!(pad_vocab(50257), 50304);
        assert_eq!(pad_vocab(128), 128);
        assert_eq!(pad_vocab(129), 256);
    }
}
