//! JSON Lines inputs (`*.jsonl`, as Hugging Face datasets write them with `to_json(...,
//! lines=True)`): one JSON object per line, whose text field (`"text"` unless `--text-field`
//! names another) is one document. Blank lines are skipped; every other line must be an object
//! with that field holding a string.

use crate::outln;
use anyhow::{anyhow, bail, Context, Result};
use std::io::BufRead;
use std::path::Path;

use super::records::RecordBatches;
use crate::text::count;
use crate::tokenizer::Tokenizer;

/// Whether `path` is read as JSON Lines: its name ends in `.jsonl`, `.ndjson` or `.json` (or
/// one of them `.gz`, `.zst`). A `.json` file is read as JSON Lines too: Hugging Face `datasets`'
/// `to_json("x.json")` writes them so, and tokenized as text its braces and keys would be in
/// every document.
pub fn is_jsonl(path: &Path) -> bool {
    let ext = extension_within(path);
    ["jsonl", "ndjson", "json"]
        .iter()
        .any(|e| ext.eq_ignore_ascii_case(e))
}

/// The extension of `path`, or of its name without `.gz` or `.zst` where it is compressed.
fn extension_within(path: &Path) -> String {
    let path = if super::is_compressed(path) {
        Path::new(path.file_stem().unwrap_or_default())
    } else {
        path
    };
    path.extension()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Reads the JSON Lines file at `path` (`size` bytes, for progress lines) and hands each record's
/// document, the end-of-text token then its text's ids, to `on_doc` in the file's order. Records
/// are tokenized in parallel batches of about `batch_bytes` of text, with a progress line after
/// each batch of a file larger than one. Returns the number of documents.
pub(super) fn encode_jsonl(
    tok: &Tokenizer,
    path: &Path,
    size: u64,
    field: &str,
    batch_bytes: usize,
    mut on_doc: impl FnMut(&[u16]) -> Result<()>,
) -> Result<usize> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, super::open_input(path)?);
    let mut batches = RecordBatches::new(tok, path, size, batch_bytes, &mut on_doc);
    let mut line = Vec::new();
    let (mut line_no, mut offset) = (0, 0u64);
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = record_text(&line, field, offset).with_context(|| {
            // (a .json file may be one JSON document over many lines, which this does not read)
            let hint = if extension_within(path).eq_ignore_ascii_case("json") {
                " (a .json file is read as JSON Lines, one record a line, as datasets' to_json \
                 writes it; a JSON document over many lines, an array say, is not read: write \
                 it as JSON Lines)"
            } else {
                ""
            };
            format!("{}: line {line_no}{hint}", path.display())
        })?;
        offset += n as u64;
        if let Some(text) = text {
            batches.push(text, offset)?;
        }
    }
    let (documents, tokens) = batches.finish()?;
    outln!(
        "prepro: {}: {}, {} -> {}",
        path.display(),
        count(documents, "document", "documents"),
        count(offset, "byte", "bytes"),
        count(tokens, "token", "tokens")
    );
    Ok(documents)
}

/// The text of one line's record (None for a blank line); `offset` is the line's in the file,
/// for the place of a byte that is not UTF-8.
fn record_text(line: &[u8], field: &str, offset: u64) -> Result<Option<String>> {
    let line = std::str::from_utf8(line).map_err(|e| {
        anyhow!(
            "not UTF-8 text (invalid byte at offset {})",
            offset + e.valid_up_to() as u64
        )
    })?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        // serde's "at line 1 column N": the line is the caller's to name
        let at = format!(" at line {} column {}", e.line(), e.column());
        let what = e.to_string();
        let what = what.strip_suffix(&at).unwrap_or(&what);
        anyhow!("not a JSON record: {what} (column {})", e.column())
    })?;
    let serde_json::Value::Object(mut record) = value else {
        bail!(
            "{}, not an object with a \"{field}\" field",
            json_kind(&value)
        );
    };
    match record.remove(field) {
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(other) => bail!("\"{field}\" is {}, not a string", json_kind(&other)),
        None => {
            let fields: Vec<&str> = record.keys().map(String::as_str).collect();
            bail!(
                "no \"{field}\" field (the record's fields: {}): --text-field names the one that \
                 holds the text",
                if fields.is_empty() {
                    "none".to_string()
                } else {
                    fields.join(", ")
                }
            )
        }
    }
}

/// "a number", "an array", ... for errors.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
