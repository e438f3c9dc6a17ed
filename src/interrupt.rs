//! Ctrl-C (SIGINT) and SIGTERM during training: the first one asks the run to stop after the step
//! it is on, write a checkpoint and its training state (so that `--resume` continues it) and exit
//! with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM, as a shell reports a process
//! that signal ended); a second one of either, half a second or more after the first, ends the
//! process at once, as by default. During prepro the first one stops it and removes the shards it
//! wrote (`prepro::prepro_with` reads the flag between documents).
//!
//! One within half a second of the first is the same request delivered twice, and is passed
//! over: GNU `timeout` signals the process and then its process group, which holds the process
//! again, microseconds apart, and a launcher that signals both does the same. Taken as a second
//! one, it ended the run before its checkpoint (4 runs in 5 under `timeout 1.2`).
//!
//! SIGTERM is caught too because it is how a run is usually stopped without a keyboard: `kill`'s
//! and `timeout`'s default signal, and what Slurm (and Kubernetes) send before the SIGKILL at the
//! end of a job's time. Left at its default it ends the run where it stands, with no checkpoint
//! since the last one and, if it lands during a checkpoint's write, a stray `*.bin.tmp`.
//!
//! The handler only reads the monotonic clock, stores to atomics, writes a line and, for a second
//! signal, restores the default action and raises it again (all async-signal-safe); the training
//! loop reads the atomic between steps.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// The number of the first signal caught, 0 while none was.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// When the first signal was caught (the monotonic clock's nanoseconds, at least 1), 0 while none
/// was.
static FIRST_AT: AtomicU64 = AtomicU64::new(0);

/// How long after the first signal another one counts as a second, which ends the process at
/// once (nanoseconds); sooner, it is the first delivered twice.
pub const REPEAT_AFTER_NS: u64 = 500_000_000;

/// Whether a signal caught at `now_ns` is a second one, the first having been caught at
/// `first_ns` (a clock read before the first's, by another thread, is not).
pub fn is_second(first_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(first_ns) >= REPEAT_AFTER_NS
}

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
    use std::ffi::{c_int, c_long};

    pub const SIGINT: c_int = 2;
    pub const SIGTERM: c_int = 15;
    pub const SIG_DFL: usize = 0;
    pub const SIG_ERR: usize = usize::MAX;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const CLOCK_MONOTONIC: c_int = 1;
    #[cfg(target_vendor = "apple")]
    const CLOCK_MONOTONIC: c_int = 6;
    // (elsewhere CLOCK_REALTIME, 0 on every Unix: good enough for half a second)
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    const CLOCK_MONOTONIC: c_int = 0;

    /// POSIX `struct timespec` (time_t is a C long on the platforms above).
    #[repr(C)]
    struct Timespec {
        tv_sec: c_long,
        tv_nsec: c_long,
    }

    extern "C" {
        /// POSIX `signal` (libc): installs `handler` (a function's address, or SIG_DFL) for `sig`
        /// and returns the previous one, or SIG_ERR.
        pub fn signal(sig: c_int, handler: usize) -> usize;
        /// POSIX `write` (libc): async-signal-safe, unlike Rust's printing.
        pub fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
        /// POSIX `raise` (libc): sends `sig` to the calling thread; async-signal-safe.
        fn raise(sig: c_int) -> c_int;
        /// POSIX `clock_gettime` (libc): async-signal-safe.
        fn clock_gettime(clock: c_int, tp: *mut Timespec) -> c_int;
    }

    /// The monotonic clock in nanoseconds, at least 1 (0 marks "no signal yet").
    fn now_ns() -> u64 {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid, writable timespec; clock_gettime only writes it.
        unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64)
            .max(1)
    }

    /// What the first signal prints at once (the run may take a while to reach its checkpoint:
    /// a step of many micro-batches, a long sample), so that nobody presses Ctrl-C again.
    const ACK: &[u8] = b"\nstopping (a second Ctrl-C or SIGTERM ends the process at once)\n";

    pub extern "C" fn on_signal(sig: c_int) {
        let now = now_ns();
        let order = super::Ordering::SeqCst;
        match super::FIRST_AT.compare_exchange(0, now, order, order) {
            // the first (the one the run reports)
            Ok(_) => {
                super::CAUGHT.store(sig, order);
                // SAFETY: write() is async-signal-safe; ACK is a static buffer of its length, and
                // stderr (2) failing to take it changes nothing.
                unsafe { write(2, ACK.as_ptr(), ACK.len()) };
            }
            // a second one: the default action (the process ends when the handler returns)
            Err(first) if super::is_second(first, now) => {
                // SAFETY: signal() and raise() are async-signal-safe (POSIX); the raised signal
                // waits, blocked, until this handler returns, then meets SIG_DFL.
                unsafe {
                    signal(sig, SIG_DFL);
                    raise(sig);
                }
            }
            // the first delivered again (`timeout`'s to the process group)
            Err(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_within_half_a_second_of_the_first_is_the_same_one() {
        let first = 7_000_000_000;
        // timeout's second delivery, microseconds later; another thread's clock read earlier
        assert!(!is_second(first, first + 20_000));
        assert!(!is_second(first, first - 1_000));
        assert!(!is_second(first, first + REPEAT_AFTER_NS - 1));
        // a person's second Ctrl-C
        assert!(is_second(first, first + REPEAT_AFTER_NS));
        assert!(is_second(first, first + 3_000_000_000));
    }

    /// The handler itself, in a child process (this test binary again, running only this test):
    /// the first SIGINT is caught, acknowledged and only asks ([`requested`]); a second, more
    /// than half a second later, ends the process by SIGINT at once.
    #[cfg(unix)]
    #[test]
    fn a_second_signal_ends_the_process_and_the_first_only_asks() {
        use std::os::unix::process::ExitStatusExt;
        use std::time::{Duration, Instant};
        const CHILD: &str = "TRAIN_GPT2_CUDA_INTERRUPT_CHILD";
        let name = "interrupt::tests::a_second_signal_ends_the_process_and_the_first_only_asks";
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.signal(), Some(2), "{:?}: {stderr}", out.status);
            let ack = "stopping (a second Ctrl-C or SIGTERM ends the process at once)";
            assert_eq!(stderr.matches(ack).count(), 1, "{stderr}");
            return;
        }
        let interrupt_me = || {
            let me = std::process::id().to_string();
            let kill = std::process::Command::new("kill")
                .args(["-INT", &me])
                .status();
            assert!(kill.unwrap().success());
        };
        assert!(catch_ctrl_c());
        assert_eq!(requested(), None);
        interrupt_me();
        let start = Instant::now();
        while requested().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the first signal never came"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(requested(), Some(Stop::CtrlC));
        std::thread::sleep(Duration::from_nanos(REPEAT_AFTER_NS) + Duration::from_millis(100));
        interrupt_me();
        std::thread::sleep(Duration::from_secs(10));
        // (reached only if the second signal did not end the process)
        std::process::exit(3);
    }
}
