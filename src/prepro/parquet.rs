//! Parquet inputs (`*.parquet`, as the Hugging Face Hub serves datasets: FineWeb, The Pile's
//! mirrors, most others): each row's text column (`"text"` unless `--text-field` names another)
//! one document, read by [`crate::formats::parquet`]; rows whose text is null are skipped.

use crate::outln;
use anyhow::Result;
use std::path::Path;

use super::records::RecordBatches;
use crate::formats::parquet::read_text_column;
use crate::text::count;
use crate::tokenizer::Tokenizer;

/// Reads the Parquet file at `path` (`size` bytes) and hands each row's document, the end-of-text
/// token then its text's ids, to `on_doc` in the file's order, tokenized in parallel batches of
/// about `batch_bytes` of text, with a progress line after each batch. Returns the number of
/// documents.
pub(super) fn encode_parquet(
    tok: &Tokenizer,
    path: &Path,
    size: u64,
    field: &str,
    batch_bytes: usize,
    mut on_doc: impl FnMut(&[u16]) -> Result<()>,
) -> Result<usize> {
    let mut batches = RecordBatches::new(tok, path, size, batch_bytes, &mut on_doc);
    let mut text_bytes = 0u64;
    let summary = read_text_column(path, field, |text| {
        if let Some(text) = text {
            text_bytes += text.len() as u64;
            batches.push(text.to_owned(), text_bytes)?;
        }
        Ok(())
    })?;
    let (documents, tokens) = batches.finish()?;
    let nulls = match summary.nulls {
        0 => String::new(),
        n => format!(" ({} of null text skipped)", count(n, "row", "rows")),
    };
    outln!(
        "prepro: {}: {}{nulls}, {} of text -> {}",
        path.display(),
        count(documents, "document", "documents"),
        count(text_bytes, "byte", "bytes"),
        count(tokens, "token", "tokens")
    );
    Ok(documents)
}
