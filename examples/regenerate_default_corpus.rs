//! Rewrites the committed default corpus, data/shakespeare/train.bin and val.bin, from the plays
//! beside them (after changing the texts or the tokenizer): not a test, since it writes into the
//! repository. `tests/data.rs::prepro_reproduces_the_committed_default_corpus` checks that the
//! committed files are what this makes.
//! Run: `cargo run --release --example regenerate_default_corpus`
use std::process::ExitCode;
use train_gpt2_cuda::data::default_corpus_dir;
use train_gpt2_cuda::prepro::prepro_default_corpus;

fn main() -> ExitCode {
    let dir = default_corpus_dir();
    match prepro_default_corpus(&dir) {
        Ok(summary) => {
            println!("{}: {summary:?}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
