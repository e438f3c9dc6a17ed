//! The GPT-2 BPE tokenizer: text -> token ids and token ids -> text.
//!
//! Encoding uses `tiktoken-rs`'s `r50k_base`, which is GPT-2's encoding with its 50,000 merge ranks
//! embedded in the crate (no download). Text is encoded as ordinary text: a literal
//! "<|endoftext|>" in the text is split into ordinary tokens, never turned into the end-of-text
//! token, so that no input file can forge a document boundary.
//!
//! Decoding is a table lookup: id -> the token's bytes. The table is a [`Decoder`], which can also
//! be built from a list of token byte strings (as read from llm.c's `gpt2_tokenizer.bin`), so that
//! sampling can decode with only that file.

use anyhow::{anyhow, bail, Result};

use crate::config::{GPT2_EOT, GPT2_VOCAB_SIZE};

/// Token id -> bytes, for decoding only.
pub struct Decoder {
    /// (V,) each token's bytes.
    tokens: Vec<Vec<u8>>,
    /// The end-of-text token id.
    eot: u32,
}

impl Decoder {
    /// A decoder from each token's bytes, indexed by id (id 0 first), and the end-of-text id.
    pub fn from_token_bytes(tokens: Vec<Vec<u8>>, eot: u32) -> Result<Decoder> {
        if tokens.is_empty() {
            bail!("tokenizer: the token table is empty");
        }
        if eot as usize >= tokens.len() {
            bail!(
                "tokenizer: end-of-text id {eot} is out of range for vocabulary size {}",
                tokens.len()
            );
        }
        Ok(Decoder { tokens, eot })
    }

    /// V: the number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The end-of-text token id.
    pub fn eot(&self) -> u32 {
        self.eot
    }

    /// The bytes of token `id`, or None if `id` >= V.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(|b| b.as_slice())
    }

    /// All tokens' bytes, indexed by id.
    pub fn all_token_bytes(&self) -> &[Vec<u8>] {
        &self.tokens
    }

    /// The concatenated bytes of `ids`; an id >= V is an error naming the id and its position.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (pos, &id) in ids.iter().enumerate() {
            let bytes = self.token_bytes(id).ok_or_else(|| {
                anyhow!(
                    "tokenizer: token id {id} at position {pos} is out of range for vocabulary size {}",
                    self.vocab_size()
                )
            })?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// The text of `ids`. Bytes that are not valid UTF-8 (a multibyte character cut between
    /// tokens at the ends of `ids`) become U+FFFD; decoding a whole encoded text is exact.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

/// The GPT-2 tokenizer: encoder and decoder.
pub struct Tokenizer {
    bpe: tiktoken_rs::CoreBPE,
    decoder: Decoder,
}

impl Tokenizer {
    /// GPT-2's tokenizer (tiktoken's r50k_base): V = 50257, end-of-text = 50256.
    pub fn gpt2() -> Result<Tokenizer> {
        let bpe = tiktoken_rs::r50k_base()
            .map_err(|e| anyhow!("tokenizer: cannot build the GPT-2 encoding: {e}"))?;
        let mut tokens = Vec::with_capacity(GPT2_VOCAB_SIZE);
        for id in 0..GPT2_VOCAB_SIZE as u32 {
            let bytes = bpe
                .decode_bytes(&[id])
                .map_err(|_| anyhow!("tokenizer: the GPT-2 encoding has no token {id}"))?;
            tokens.push(bytes);
        }
        let decoder = Decoder::from_token_bytes(tokens, GPT2_EOT)?;
        Ok(Tokenizer { bpe, decoder })
    }

    /// The ids of `text`, encoded as ordinary text ("<|endoftext|>" in it is not special).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// The decoding table.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// V: the number of tokens (50257).
    pub fn vocab_size(&self) -> usize {
        self.decoder.vocab_size()
    }

    /// The end-of-text token id (50256).
    pub fn eot(&self) -> u32 {
        self.decoder.eot()
    }

    /// The bytes of token `id`, or None if `id` >= V.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.decoder.token_bytes(id)
    }

    /// See [`Decoder::decode_bytes`].
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        self.decoder.decode_bytes(ids)
    }

    /// See [`Decoder::decode`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decoder.decode(ids)
    }
}
