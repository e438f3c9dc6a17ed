//! Ctrl-C during training: the first one asks the run to stop after the step it is on, write a
//! checkpoint and its training state (so that `--resume` continues it) and exit; a second one
//! ends the process at once, as Ctrl-C does by default. During prepro the first one stops it and
//! removes the shards it wrote (`prepro::prepro_with` reads the flag between documents).
//!
//! The handler only stores to an atomic flag and restores the default action (both
//! async-signal-safe); the training loop reads the flag between steps.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
mod sys {
    use std::ffi::c_int;

    pub const SIGINT: c_int = 2;
    pub const SIG_DFL: usize = 0;
    pub const SIG_ERR: usize = usize::MAX;

    extern "C" {
        /// POSIX `signal` (libc): installs `handler` (a function's address, or SIG_DFL) for `sig`
        /// and returns the previous one, or SIG_ERR.
        pub fn signal(sig: c_int, handler: usize) -> usize;
    }

    pub extern "C" fn on_sigint(_sig: c_int) {
        super::REQUESTED.store(true, super::Ordering::SeqCst);
        // SAFETY: signal() is async-signal-safe (POSIX); SIG_DFL makes the next Ctrl-C end the
        // process as usual.
        unsafe { signal(SIGINT, SIG_DFL) };
    }
}

/// Catches Ctrl-C (SIGINT) from now on: the first one sets [`requested`]. Returns false where it
/// cannot (then Ctrl-C keeps its default action).
pub fn catch_ctrl_c() -> bool {
    #[cfg(unix)]
    {
        let handler: extern "C" fn(std::ffi::c_int) = sys::on_sigint;
        // SAFETY: the handler is an extern "C" fn of the type signal() expects, alive for the
        // whole program, and does only async-signal-safe work.
        unsafe { sys::signal(sys::SIGINT, handler as usize) != sys::SIG_ERR }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Whether Ctrl-C was pressed since [`catch_ctrl_c`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
