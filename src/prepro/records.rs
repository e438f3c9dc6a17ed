//! Documents from records (a JSON Lines file's lines, a Parquet file's rows): each record's text
//! one document, tokenized in parallel batches of about `batch_bytes` of text and handed on in
//! the file's order, with a progress line after each batch.

use anyhow::Result;
use rayon::prelude::*;
use std::path::Path;

use super::{Progress, PIECE_BYTES};
use crate::formats::shard::to_u16;
use crate::tokenizer::Tokenizer;

/// Collects records' texts and tokenizes them a batch at a time.
pub(super) struct RecordBatches<'a, F: FnMut(&[u16]) -> Result<()>> {
    tok: &'a Tokenizer,
    /// The file, for errors.
    path: &'a Path,
    batch_bytes: usize,
    progress: Progress<'a>,
    batch: Vec<String>,
    batch_text: usize,
    /// Gets each document: the end-of-text token, then its text's ids.
    on_doc: F,
    pub documents: usize,
    pub tokens: usize,
}

impl<'a, F: FnMut(&[u16]) -> Result<()>> RecordBatches<'a, F> {
    /// Batches of the records of the file at `path` (`size` bytes, for the progress lines).
    pub(super) fn new(
        tok: &'a Tokenizer,
        path: &'a Path,
        size: u64,
        batch_bytes: usize,
        on_doc: F,
    ) -> Self {
        RecordBatches {
            tok,
            path,
            batch_bytes,
            progress: Progress::new(path, size, batch_bytes),
            batch: Vec::new(),
            batch_text: 0,
            on_doc,
            documents: 0,
            tokens: 0,
        }
    }

    /// Adds one record's text, `done` bytes into the file (as its progress lines count them);
    /// a batch it fills is tokenized and handed on, and a progress line printed.
    pub(super) fn push(&mut self, text: String, done: u64) -> Result<()> {
        self.batch_text += text.len();
        self.batch.push(text);
        if self.batch_text >= self.batch_bytes {
            self.flush()?;
            self.progress.update(done);
        }
        Ok(())
    }

    /// Tokenizes and hands on what is left; returns (documents, tokens).
    pub(super) fn finish(mut self) -> Result<(usize, usize)> {
        self.flush()?;
        Ok((self.documents, self.tokens))
    }

    fn flush(&mut self) -> Result<()> {
        let (tok, path) = (self.tok, self.path);
        // each record's document (EOT, then its ids) as a shard stores it, in parallel
        let docs: Vec<Result<Vec<u16>>> = self
            .batch
            .par_iter()
            .map(|text| {
                let mut doc = vec![tok.eot()];
                doc.extend(tok.encode_parallel(text, PIECE_BYTES));
                to_u16(&doc, path)
            })
            .collect();
        for doc in docs {
            let doc = doc?;
            (self.on_doc)(&doc)?;
            self.tokens += doc.len();
            self.documents += 1;
        }
        self.batch.clear();
        self.batch_text = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch is handed on as soon as it holds `batch_bytes` of text, not kept to the end: a
    /// file of records is never all in memory.
    #[test]
    fn each_full_batch_is_handed_on_at_once() {
        let tok = Tokenizer::gpt2().unwrap();
        let mut got: Vec<Vec<u16>> = Vec::new();
        let path = Path::new("records.jsonl");
        let mut batches = RecordBatches::new(&tok, path, 0, 10, |d: &[u16]| {
            got.push(d.to_vec());
            Ok(())
        });
        batches.push("Hello".into(), 10).unwrap(); // 5 bytes: not yet a batch
        batches.push(" the".into(), 20).unwrap(); // 9: one byte short
        assert_eq!(batches.documents, 0);
        batches.push(" world".into(), 30).unwrap(); // 15: a batch of three records
        assert_eq!((batches.documents, batches.tokens), (3, 6));
        // the next batch starts empty: 9 bytes are one short again
        for text in ["!", " the", " the"] {
            batches.push(text.into(), 40).unwrap();
        }
        assert_eq!(batches.documents, 3);
        assert_eq!(batches.finish().unwrap(), (6, 12));
        // each document: the end-of-text token, then its ids, in the records' order
        let ids = [15496, 262, 995, 0, 262, 262];
        assert_eq!(got, ids.map(|id| vec![50256, id]));
    }
}
