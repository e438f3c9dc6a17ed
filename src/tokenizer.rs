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
            let bytes = self
                .token_bytes(id)
                .ok_or_else(|| self.out_of_range(id, pos))?;
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

    /// A decoder for ids that come one at a time (a sample as it is generated).
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            decoder: self,
            text: String::new(),
            pending: Vec::new(),
            ids: 0,
            error: None,
        }
    }

    /// The error for token `id` at position `pos`, out of range.
    fn out_of_range(&self, id: u32, pos: usize) -> anyhow::Error {
        anyhow!(
            "tokenizer: token id {id} at position {pos} is out of range for vocabulary size {}",
            self.vocab_size()
        )
    }
}

/// Decodes ids one at a time into whole characters: the bytes of a character split between
/// tokens wait for the token that completes it. Pushed id by id and finished, its text is
/// [`Decoder::decode`]'s of all the ids, in time linear in their length.
pub struct TextStream<'a> {
    decoder: &'a Decoder,
    /// The text of the bytes decoded so far.
    text: String,
    /// The bytes of a character not yet complete (at most 3).
    pending: Vec<u8>,
    /// The number of ids pushed.
    ids: usize,
    /// The first id out of range, and its position.
    error: Option<(u32, usize)>,
}

impl TextStream<'_> {
    /// Adds token `id`; returns the text it completes (empty while a character waits for its
    /// last bytes). An id out of range adds nothing, and [`finish`](Self::finish) names it.
    pub fn push(&mut self, id: u32) -> &str {
        let pos = self.ids;
        self.ids += 1;
        let Some(bytes) = self.decoder.token_bytes(id) else {
            self.error.get_or_insert((id, pos));
            return "";
        };
        let start = self.text.len();
        self.pending.extend_from_slice(bytes);
        let mut rest = self.pending.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // (valid up to there, so this cannot fail)
                    self.text
                        .push_str(std::str::from_utf8(valid).unwrap_or_default());
                    // None: the end of the bytes cuts a character short; it waits
                    let Some(bad) = e.error_len() else {
                        rest = after;
                        break;
                    };
                    self.text.push(char::REPLACEMENT_CHARACTER);
                    rest = &after[bad..];
                }
            }
        }
        // (what is left waits: a character's first bytes)
        let done = self.pending.len() - rest.len();
        self.pending.drain(..done);
        &self.text[start..]
    }

    /// Ends the text: returns what that adds (U+FFFD for a character still cut short, else
    /// nothing), or an error if an id was out of range.
    pub fn finish(&mut self) -> Result<&str> {
        if let Some((id, pos)) = self.error {
            return Err(self.decoder.out_of_range(id, pos));
        }
        let start = self.text.len();
        if !std::mem::take(&mut self.pending).is_empty() {
            self.text.push(char::REPLACEMENT_CHARACTER);
        }
        Ok(&self.text[start..])
    }

    /// The text so far (whole characters; all of it once finished).
    pub fn text(&self) -> &str {
        &self.text
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

    /// [`encode`](Self::encode) of a large text in pieces of about `piece_bytes` bytes (see
    /// [`split_for_encoding`]), encoded in parallel: the same ids.
    pub fn encode_parallel(&self, text: &str, piece_bytes: usize) -> Vec<u32> {
        use rayon::prelude::*;
        let pieces = split_for_encoding(text, piece_bytes);
        let ids: Vec<Vec<u32>> = pieces.par_iter().map(|p| self.encode(p)).collect();
        ids.concat()
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

/// Cuts `text` into consecutive pieces of at least `piece_bytes` bytes (the last may be shorter;
/// one piece when there is nowhere to cut) whose ids, encoded one by one and concatenated, are the
/// ids of the whole text.
///
/// A cut goes just before a single space between two characters that are not whitespace, as in
/// "word word". GPT-2's pre-tokenizer (the regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
/// ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, which splits the text into words before the byte-pair
/// merges, and no merge crosses its words) always has a word end there: no word that takes the
/// character on the left can take a space, and the word on the right begins with the space
/// (" word"), whatever came before. The one lookahead, `(?!\S)`, ends whitespace runs, and the
/// cut ends none. Cutting inside a run of spaces, or after a newline, is not safe:
/// "a  b" is the words "a", " ", " b", but "a " alone is "a", " ".
pub fn split_for_encoding(text: &str, piece_bytes: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    while text.len() - start > piece_bytes.max(1) {
        let Some(cut) = next_cut(text, start + piece_bytes.max(1)) else {
            break;
        };
        pieces.push(&text[start..cut]);
        start = cut;
    }
    pieces.push(&text[start..]);
    pieces
}

/// The first place at or after byte `from` of `text` where [`split_for_encoding`] may cut: a
/// single space between two characters that are not whitespace. A space at the very end is no
/// such place (what follows it is not known).
fn next_cut(text: &str, from: usize) -> Option<usize> {
    let cut_ok = |i: usize| {
        // a byte 0x20 is always the character ' ' (UTF-8 never uses it inside another one)
        let before = text[..i].chars().next_back();
        let after = text[i + 1..].chars().next();
        matches!((before, after), (Some(b), Some(a)) if !b.is_whitespace() && !a.is_whitespace())
    };
    text.as_bytes()
        .get(from..)?
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b' ')
        .map(|(k, _)| from + k)
        .find(|&i| cut_ok(i))
}

/// The most bytes [`for_each_text_part`] reads at a time.
const READ_BLOCK_BYTES: usize = 8 << 20;

/// Reads UTF-8 text from `reader` and hands it to `on_part` in the pieces that
/// [`split_for_encoding`]`(whole text, part_bytes)` cuts (empty pieces skipped), while holding
/// only about one part and one read (at most 8 MiB) of it in memory, not the whole text. (A
/// stretch of text with no place to cut, such as Chinese without spaces, is one piece however
/// long: only so are its ids the whole text's.)
///
/// Every piece but the last is cut where [`split_for_encoding`] cuts the whole text: a cut depends
/// only on the characters beside it, and a piece is handed on only once the text read so far has
/// a cut after it. `what` names the input in errors; the offset of an invalid byte is counted
/// from the start of the input, as `std::str::from_utf8` of the whole would give it. Returns the
/// text's length in bytes.
pub fn for_each_text_part(
    mut reader: impl std::io::Read,
    part_bytes: usize,
    what: &dyn std::fmt::Display,
    mut on_part: impl FnMut(&str) -> Result<()>,
) -> Result<u64> {
    use std::io::Read;
    let block_bytes = part_bytes.clamp(1, READ_BLOCK_BYTES) as u64;
    // text[..] is the text read and not yet handed on; it starts at byte `handed` of the input
    let mut text = String::new();
    let mut handed: u64 = 0;
    // text[part_bytes..scan] holds no cut: the search resumes there after the next read, so
    // that a long stretch without one is searched once, not again after every read
    let mut scan = 0;
    // the bytes of a character the last read cut in two (at most 3)
    let mut bytes: Vec<u8> = Vec::new();
    loop {
        let n = reader
            .by_ref()
            .take(block_bytes)
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow!("{what}: cannot read: {e}"))?;
        // a read shorter than asked for is the end of the input
        let end = (n as u64) < block_bytes;
        let valid = match std::str::from_utf8(&bytes) {
            Ok(s) => {
                text.push_str(s);
                bytes.len()
            }
            Err(e) => {
                let valid = e.valid_up_to();
                text.push_str(std::str::from_utf8(&bytes[..valid]).expect("checked just now"));
                if e.error_len().is_some() || end {
                    bail!(
                        "{what}: not UTF-8 text (invalid byte at offset {})",
                        handed + text.len() as u64
                    );
                }
                valid
            }
        };
        bytes.drain(..valid);
        // the pieces split_for_encoding cuts, as far as the text read so far has a cut after them
        let part = part_bytes.max(1);
        let mut done = 0;
        while text.len() - done > part {
            let Some(cut) = next_cut(&text, (done + part).max(scan)) else {
                // none up to the last byte, which may become one when the next character comes
                scan = text.len() - 1;
                break;
            };
            on_part(&text[done..cut])?;
            done = cut;
            scan = 0;
        }
        if end {
            if done < text.len() {
                on_part(&text[done..])?;
            }
            return Ok(handed + text.len() as u64);
        }
        handed += done as u64;
        text.drain(..done);
        scan = scan.saturating_sub(done);
    }
}
