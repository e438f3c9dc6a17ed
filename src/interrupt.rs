//! Ctrl-C (SIGINT) and SIGTERM during training: the first one asks the run to stop after the step
//! it is on, write a checkpoint and its training state (so that `--resume` continues it) and exit
//! with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, as a shell reports a process
//! that signal ended); a second one of either ends the process at once, as by default. During
//! prepro the first one stops it and removes the shards it wrote (`prepro::prepro_with` reads the
//! flag between documents).
//!
//! SIGTERM is caught too because it is how a run is usually stopped without a keyboard: `kill`'s
//! and `timeout`'s default signal, and what Slurm (and Kubernetes) send before the SIGKILL at the
//! end of a job's time. Left at its default it ends the run where it stands, with no checkpoint
//! since the last one and, if it lands during a checkpoint's write, a stray `*.bin.tmp`.
//!
//! The handler only stores to an atomic and restores the default actions (all async-signal-safe);
//! the training loop reads it between steps.

use std::sync::atomic::{AtomicI32, Ordering};

/// The number of the first signal caught, 0 while none was.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// A signal that asks the run to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Ctrl-C: SIGINT.
    CtrlC,
    /// SIGTERM.
    Term,
}

impl Stop {
    /// How the run's last line names it.
    pub fn name(self) -> &'static str {
        match self {
            Stop::CtrlC => "Ctrl-C",
            Stop::Term => "SIGTERM",
        }
    }

    /// The exit status of a run it stopped: 128 + the signal's number, the shell's convention for
    /// a process a signal ended (130, 143), so that scripts and schedulers see what stopped it.
    pub fn exit_status(self) -> u8 {
        match self {
            Stop::CtrlC => 128 + 2,
            Stop::Term => 128 + 15,
        }
    }
}

#[cfg(unix)]
mod sys {
    use std::ffi::c_int;

    pub const SIGINT: c_int = 2;
    pub const SIGTERM: c_int = 15;
    pub const SIG_DFL: usize = 0;
    pub const SIG_ERR: usize = usize::MAX;

    extern "C" {
        /// POSIX `signal` (libc): installs `handler` (a function's address, or SIG_DFL) for `sig`
        /// and returns the previous one, or SIG_ERR.
        pub fn signal(sig: c_int, handler: usize) -> usize;
        /// POSIX `write` (libc): async-signal-safe, unlike Rust's printing.
        pub fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
    }

    /// What the first signal prints at once (the run may take a while to reach its checkpoint:
    /// a step of many micro-batches, a long sample), so that nobody presses Ctrl-C again.
    const ACK: &[u8] = b"\nstopping (a second Ctrl-C or SIGTERM ends the process at once)\n";

    pub extern "C" fn on_signal(sig: c_int) {
        // (the first one is the one the run reports)
        let _ = super::CAUGHT.compare_exchange(
            0,
            sig,
            super::Ordering::SeqCst,
            super::Ordering::SeqCst,
        );
        // SAFETY: signal() and write() are async-signal-safe (POSIX); SIG_DFL makes the next
        // Ctrl-C or SIGTERM end the process as usual; ACK is a static buffer of its length, and
        // stderr (2) failing to take it changes nothing.
        unsafe {
            signal(SIGINT, SIG_DFL);
            signal(SIGTERM, SIG_DFL);
            write(2, ACK.as_ptr(), ACK.len());
        }
    }
}

/// Catches Ctrl-C (SIGINT) and SIGTERM from now on: the first one sets [`requested`]. Returns
/// false where it cannot (then they keep their default action).
pub fn catch_ctrl_c() -> bool {
    #[cfg(unix)]
    {
        let handler: extern "C" fn(std::ffi::c_int) = sys::on_signal;
        // SAFETY: the handler is an extern "C" fn of the type signal() expects, alive for the
        // whole program, and does only async-signal-safe work.
        unsafe {
            [sys::SIGINT, sys::SIGTERM]
                .into_iter()
                .all(|sig| sys::signal(sig, handler as usize) != sys::SIG_ERR)
        }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// The signal that asked the run to stop since [`catch_ctrl_c`], if one did.
pub fn requested() -> Option<Stop> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        #[cfg(unix)]
        sys::SIGTERM => Some(Stop::Term),
        _ => Some(Stop::CtrlC),
    }
}
