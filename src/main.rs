//! The `train-gpt2-cuda` command line.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("train-gpt2-cuda: not built yet");
    ExitCode::FAILURE
}
