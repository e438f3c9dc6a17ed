//! GPT-2's tokenizer as Hugging Face keeps it beside a model: `vocab.json` (each token's bytes,
//! spelled through GPT-2's byte-to-character table, and its id), `merges.txt` (the byte-pair
//! merges in rank order) and `tokenizer_config.json`. `convert --format hf` writes them for a
//! model with GPT-2's vocabulary, so that the folder is whole for transformers' `AutoTokenizer`
//! and `pipeline`.
//!
//! The merges are recovered from the ranks (tiktoken's r50k_base, where a token's id is its rank):
//! the merge that made token r is the last step of byte-pair encoding r's bytes with the merges of
//! lower rank only, which must leave exactly two tokens. Merge i of `merges.txt` makes token
//! 256 + i, as in GPT-2's own files.

use super::StagedFiles;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::Path;

/// The files [`write_hf_tokenizer`] writes.
pub const GPT2_TOKENIZER_FILES: [&str; 3] = ["vocab.json", "merges.txt", "tokenizer_config.json"];

/// The files of a tokenizer besides [`GPT2_TOKENIZER_FILES`] that transformers' `AutoTokenizer`
/// may read from a model's folder: a fast tokenizer's `tokenizer.json`, its companions, and the
/// vocabularies of other kinds (SentencePiece, WordPiece).
pub const OTHER_TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
];

/// GPT-2's byte-to-character table: the printable bytes `!`..`~`, `¡`..`¬` and `®`..`ÿ` stand for
/// themselves; the other 68 bytes, in order, for U+0100, U+0101, ... (so a space is `Ġ`, U+0120,
/// and a newline `Ċ`, U+010A).
pub fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut table = ['\0'; 256];
    let mut next = 0x100;
    for (b, c) in table.iter_mut().enumerate() {
        let b = b as u32;
        *c = if printable(b) {
            char::from_u32(b).expect("a Latin-1 code point")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("a code point below U+0144")
        };
    }
    table
}

/// A token's bytes spelled through [`byte_chars`].
fn spell(bytes: &[u8], chars: &[char; 256]) -> String {
    bytes.iter().map(|&b| chars[b as usize]).collect()
}

/// The merges of a byte-level BPE vocabulary whose ids are its ranks (`tokens[id]` the bytes of
/// token `id`; the 256 single bytes among them): for each token of two bytes or more, in id order,
/// the two tokens (ids) it was merged from.
pub fn recover_merges(tokens: &[Vec<u8>]) -> Result<Vec<(u32, u32)>> {
    let rank: HashMap<&[u8], u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_slice(), id as u32))
        .collect();
    let mut merges = Vec::new();
    for (id, t) in tokens.iter().enumerate().filter(|(_, t)| t.len() >= 2) {
        // byte-pair encode t with the merges ranked below it: each step joins the neighbours whose
        // join has the lowest rank; the pieces are t[cuts[i]..cuts[i + 1]]
        let mut cuts: Vec<usize> = (0..=t.len()).collect();
        let joined_rank = |cuts: &[usize], i: usize| {
            rank.get(&t[cuts[i]..cuts[i + 2]])
                .copied()
                .filter(|&r| (r as usize) < id)
        };
        while let Some((_, i)) = (0..cuts.len() - 2)
            .filter_map(|i| joined_rank(&cuts, i).map(|r| (r, i)))
            .min()
        {
            cuts.remove(i + 1);
        }
        if cuts.len() != 3 {
            bail!(
                "token {id} ({:?}) is not one merge of two lower-ranked tokens",
                String::from_utf8_lossy(t)
            );
        }
        merges.push((rank[&t[..cuts[1]]], rank[&t[cuts[1]..]]));
    }
    Ok(merges)
}

/// Writes `vocab.json`, `merges.txt` and `tokenizer_config.json` of GPT-2's tokenizer into `dir`,
/// for a model whose longest sequence is `max_len`: three of `files`, named when they are
/// committed.
pub fn write_hf_tokenizer(
    files: &mut StagedFiles,
    dir: &Path,
    tok: &Tokenizer,
    max_len: usize,
) -> Result<()> {
    let chars = byte_chars();
    let tokens = tok.decoder().all_token_bytes();
    let eot = tok.eot() as usize;
    let bpe = &tokens[..eot]; // the special token is no merge
    let mut vocab = serde_json::Map::new();
    for (id, t) in bpe.iter().enumerate() {
        vocab.insert(spell(t, &chars), id.into());
    }
    vocab.insert("<|endoftext|>".into(), eot.into());
    let mut merges = String::from("#version: 0.2\n");
    for (a, b) in recover_merges(bpe)? {
        let (a, b) = (&tokens[a as usize], &tokens[b as usize]);
        merges.push_str(&format!("{} {}\n", spell(a, &chars), spell(b, &chars)));
    }
    let config = serde_json::json!({
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": max_len,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_prefix_space": false,
    });
    let vocab = serde_json::Value::Object(vocab).to_string();
    let config = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
    let [vocab_file, merges_file, config_file] = GPT2_TOKENIZER_FILES;
    files.write(&dir.join(vocab_file), vocab.as_bytes())?;
    files.write(&dir.join(merges_file), merges.as_bytes())?;
    files.write(&dir.join(config_file), config.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_spell_as_gpt2s_characters() {
        let chars = byte_chars();
        assert_eq!(chars[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(chars[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(chars[0], 'Ā'); // U+0100
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[0xad], 'Ń'); // the soft hyphen, the last byte remapped: U+0143
        assert_eq!(chars[0xae], '®'); // and the byte after it stands for itself
        assert_eq!(chars[0xff], 'ÿ');
        // 68 bytes remapped: none past U+0143
        assert!(chars.iter().all(|&c| c <= 'Ń'));
        let mut sorted = chars.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256, "the table is one to one");
    }

    #[test]
    fn merges_are_recovered_from_ranks() {
        // a toy vocabulary: the bytes a, b, c, then ab, then abc = ab + c, then bc (ranked after
        // abc, so abc cannot come from a + bc)
        let tokens: Vec<Vec<u8>> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(
            recover_merges(&tokens).unwrap(),
            vec![(0, 1), (3, 2), (1, 2)]
        );
        // a token that no lower-ranked merges reach
        let bad: Vec<Vec<u8>> = ["a", "b", "c", "abc"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(
            recover_merges(&bad).unwrap_err().to_string(),
            "token 3 (\"abc\") is not one merge of two lower-ranked tokens"
        );
    }

    #[test]
    fn gpt2s_first_merges() {
        // GPT-2's merges.txt begins "Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he"
        let tok = Tokenizer::gpt2().unwrap();
        let tokens = tok.decoder().all_token_bytes();
        let merges = recover_merges(&tokens[..50256]).unwrap();
        assert_eq!(merges.len(), 50000);
        let chars = byte_chars();
        let first: Vec<String> = merges[..7]
            .iter()
            .map(|&(a, b)| {
                let s = |id: u32| spell(&tokens[id as usize], &chars);
                format!("{} {}", s(a), s(b))
            })
            .collect();
        assert_eq!(first, ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he"]);
    }
}
