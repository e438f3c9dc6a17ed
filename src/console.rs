//! Standard output that a closed pipe or a full disk cannot bring down.
//!
//! `println!` panics when a write to stdout fails: `train-gpt2-cuda ... | head`, a `tee` that
//! died, `> /dev/full`. A training run would end there, without its checkpoint. [`out!`] and
//! [`outln!`] write instead through [`write()`]: the first failure is noted once on stderr, later
//! output is dropped, and the work goes on (a run's `log.jsonl` still records every step).
//! Commands whose only product is their output (`sample`) ask [`is_closed`] and stop.
//!
//! `eprintln!` panics the same way when stderr fails (a batch job's error log on a full disk):
//! before anything ran, at the first note, or after a checkpoint. [`errln!`] writes through
//! [`write_err`] instead, which drops what cannot be written.
//!
//! [`out!`]: crate::out
//! [`outln!`]: crate::outln
//! [`errln!`]: crate::errln

use std::fmt;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// How the first failed write failed; once set, nothing more is written.
static FAILURE: Mutex<Option<std::io::ErrorKind>> = Mutex::new(None);

/// Whether stdout carries a command's product (see [`keep_stdout_for`]): then [`write()`]
/// writes to stderr.
static STDOUT_IS_DATA: AtomicBool = AtomicBool::new(false);

/// If `path` is the pipe or file stdout writes to (`--out /dev/stdout | wc -c`), sends what
/// [`out!`](crate::out) and [`outln!`](crate::outln) print to stderr from now on, so that the
/// file written there is all that stdout carries. (Not for a device: a terminal, or `/dev/null`
/// with stdout there too.)
pub fn keep_stdout_for(path: &Path) {
    let same = |stdout: std::fs::Metadata| {
        !stdout.file_type().is_char_device()
            && std::fs::metadata(path)
                .is_ok_and(|m| (m.dev(), m.ino()) == (stdout.dev(), stdout.ino()))
    };
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from);
    if stdout.and_then(|f| f.metadata()).is_ok_and(same) {
        STDOUT_IS_DATA.store(true, Ordering::Relaxed);
    }
}

/// Writes `args` to stdout and flushes it (the output is progress, to be seen as it comes). The
/// first failure is noted on stderr; from then on nothing is written. Returns whether the text
/// was written. (To stderr where stdout carries a file: [`keep_stdout_for`].)
pub fn write(args: fmt::Arguments) -> bool {
    if STDOUT_IS_DATA.load(Ordering::Relaxed) {
        write_err(args);
        return true;
    }
    let mut failure = FAILURE.lock().unwrap_or_else(|e| e.into_inner());
    write_to(&mut std::io::stdout().lock(), &mut failure, args)
}

/// [`write()`]'s rule on the writer `out`: nothing once `failure` is set; the first failure kept
/// there and noted on stderr. Whether the text was written.
fn write_to(
    out: &mut impl Write,
    failure: &mut Option<std::io::ErrorKind>,
    args: fmt::Arguments,
) -> bool {
    if failure.is_some() {
        return false;
    }
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) => {
            *failure = Some(e.kind());
            write_err(format_args!(
                "note: cannot write to standard output ({e}): nothing more is printed there\n"
            ));
            false
        }
    }
}

/// [`write()`], or stderr once stdout has failed: for what the user must see (how to resume).
pub fn write_or_stderr(args: fmt::Arguments) {
    if !write(args) {
        write_err(args);
    }
}

/// Writes `args` to stderr; a failure is dropped (a stderr that fails has nobody to tell, and the
/// work goes on: notes and errors are also in the exit status, the checkpoints and the log).
pub fn write_err(args: fmt::Arguments) {
    let _ = std::io::stderr().write_fmt(args);
}

/// How stdout failed, if it did: a closed pipe (`| head`) is the reader's choice; anything else
/// (a full disk) lost output that a command whose output is its result must report.
pub fn failure() -> Option<std::io::ErrorKind> {
    *FAILURE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a write to stdout has failed (see [`write()`]).
pub fn is_closed() -> bool {
    failure().is_some()
}

/// `print!` that never panics: see [`console`](crate::console).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        $crate::console::write(format_args!($($arg)*));
    }};
}

/// `println!` that never panics: see [`console`](crate::console).
#[macro_export]
macro_rules! outln {
    () => {{
        $crate::console::write(format_args!("\n"));
    }};
    ($($arg:tt)*) => {{
        $crate::console::write(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

/// `eprintln!` that never panics: see [`console`](crate::console).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        $crate::console::write_err(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// A pipe whose reader is gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `write_or_stderr` relies on: true while the text is written; false for the write
    /// that fails, whose failure is kept; false with nothing written from then on.
    #[test]
    fn the_first_failure_is_kept_and_nothing_more_is_written() {
        let (mut out, mut failure) = (Vec::new(), None);
        assert!(write_to(&mut out, &mut failure, format_args!("a{}", 1)));
        assert_eq!((&out[..], failure), (&b"a1"[..], None));
        assert!(!write_to(&mut Closed, &mut failure, format_args!("b")));
        assert_eq!(failure, Some(ErrorKind::BrokenPipe));
        assert!(!write_to(&mut out, &mut failure, format_args!("c")));
        assert_eq!(out, b"a1");
    }
}
