//! The model's blueprint: GPT-2's dimensions as run-time values, and the `dN` descriptors.
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

    /// The llm.c descriptor `dN`: L=N, NH=N, C=64*N, maxT=1024, V=50257, Vp=50304.
    /// (`d12` is GPT-2 124M, `d24` 350M, `d36` 774M, `d48` 1558M.)
    pub fn from_descriptor(desc: &str) -> Result<Self> {
        let depth: usize = match desc.strip_prefix('d').map(str::parse) {
            Some(Ok(n)) if (1..=256).contains(&n) => n,
            _ => bail!(
                "unknown model descriptor '{desc}': expected dN with N in 1..=256 (d12 is GPT-2 124M), \
                 the path of a checkpoint file or a Hugging Face GPT-2 folder"
            ),
        };
        GPT2Config::new(
            1024,
            GPT2_VOCAB_SIZE,
            pad_vocab(GPT2_VOCAB_SIZE),
            depth,
            depth,
            64 * depth,
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
    }

    #[test]
    fn vocab_padding() {
        assert_eq!(pad_vocab(50257), 50304);
        assert_eq!(pad_vocab(128), 128);
        assert_eq!(pad_vocab(129), 256);
    }
}
