//! The host's memory, for the CPU engine: how much a new allocation can still get (so that a batch
//! too large for the machine is a clear error before anything is allocated, as on the GPU, not an
//! abort in the allocator or the kernel's OOM killer), allocations that fail with an error instead
//! of aborting, and the process's peak.

use anyhow::{bail, Result};

/// The memory a process on this machine can still allocate, and the machine's (or its cgroup's)
/// total, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMemory {
    pub available: u64,
    pub total: u64,
}

/// This machine's memory, where Linux reports it (`/proc/meminfo`): available is MemAvailable
/// plus SwapFree, total MemTotal plus SwapTotal; within a cgroup v2 memory limit
/// (`/sys/fs/cgroup/memory.max`, as a container sees its own) the limit less the cgroup's use
/// where that is less.
pub fn host_memory() -> Option<HostMemory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let read = |name: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{name}")).ok();
    let cgroup = read("memory.max").zip(read("memory.current"));
    let mem = parse_meminfo(&meminfo)?;
    Some(match cgroup {
        Some((max, current)) => within_cgroup(mem, &max, &current),
        None => mem,
    })
}

/// [`HostMemory`] from the text of `/proc/meminfo` (sizes in kB), or None without MemTotal and
/// MemAvailable.
pub fn parse_meminfo(text: &str) -> Option<HostMemory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    };
    let swap = |name| field(name).unwrap_or(0);
    Some(HostMemory {
        available: field("MemAvailable")?.saturating_add(swap("SwapFree")),
        total: field("MemTotal")?.saturating_add(swap("SwapTotal")),
    })
}

/// `mem` within a cgroup v2 limit: `max` and `current` are the texts of its `memory.max` (bytes,
/// or "max" for none) and `memory.current`.
pub fn within_cgroup(mem: HostMemory, max: &str, current: &str) -> HostMemory {
    let (Ok(max), Ok(current)) = (max.trim().parse::<u64>(), current.trim().parse::<u64>()) else {
        return mem;
    };
    HostMemory {
        available: mem.available.min(max.saturating_sub(current)),
        total: mem.total.min(max),
    }
}

/// The process's peak resident memory (VmHWM in /proc/self/status), where Linux reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The element types that [`zeroed`] allocates: those for which all-zero bytes are a value (0).
pub trait Zeroable: Copy {}
impl Zeroable for f32 {}
impl Zeroable for u32 {}

/// `n` zeros, or an error naming `what` where the allocation fails (where `vec![0; n]` would abort
/// the process). Like `vec![0; n]` it asks the allocator for zeroed memory, whose pages the system
/// provides (and counts) only once they are written.
pub fn zeroed<T: Zeroable>(n: usize, what: &str) -> Result<Vec<T>> {
    let Ok(layout) = std::alloc::Layout::array::<T>(n) else {
        bail!("{what}: {n} elements do not fit in the address space");
    };
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout's size is not zero (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        bail!(
            "{what}: could not allocate {} ({n} elements)",
            size_text(layout.size() as f64)
        );
    }
    // SAFETY: ptr came from the global allocator with the layout of an array of n Ts (which is
    // what Vec frees it with), it is not null, and its n elements are initialised: all-zero bytes
    // are a valid T (`Zeroable`).
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// A size in bytes as text, for both engines' messages: GiB, or MiB under one GiB.
pub fn size_text(bytes: f64) -> String {
    if bytes >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_kib_with_swap_added() {
        let text = "MemTotal:       24683568 kB\nMemFree:         1000 kB\n\
                    MemAvailable:   24177332 kB\nSwapTotal:       2048 kB\nSwapFree:        1024 kB\n";
        let mem = parse_meminfo(text).unwrap();
        assert_eq!(mem.available, (24177332 + 1024) * 1024);
        assert_eq!(mem.total, (24683568 + 2048) * 1024);
        // no swap lines: none counted; no MemAvailable (kernels before 3.14): unknown
        let no_swap = "MemTotal: 100 kB\nMemAvailable: 60 kB\n";
        assert_eq!(
            parse_meminfo(no_swap),
            Some(HostMemory {
                available: 60 * 1024,
                total: 100 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 100 kB\nMemFree: 60 kB\n"), None);
        // a prefix of another field's name is not that field
        assert_eq!(
            parse_meminfo("MemTotal: 100 kB\nMemAvailableX: 1 kB\n"),
            None
        );
    }

    #[test]
    fn a_cgroup_limit_caps_what_is_available() {
        let mem = HostMemory {
            available: 20 << 30,
            total: 24 << 30,
        };
        let capped = within_cgroup(mem, "8589934592\n", "1073741824\n");
        assert_eq!(
            capped,
            HostMemory {
                available: 7 << 30,
                total: 8 << 30
            }
        );
        // no limit, or a cgroup over its limit
        assert_eq!(within_cgroup(mem, "max\n", "1073741824\n"), mem);
        assert_eq!(within_cgroup(mem, "100", "200").available, 0);
        // a limit above the machine's memory: the machine's
        assert_eq!(within_cgroup(mem, &(64u64 << 30).to_string(), "0"), mem);
    }

    #[test]
    fn zeroed_gives_zeros_or_an_error_never_an_abort() {
        let v: Vec<f32> = zeroed(1000, "test").unwrap();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x == 0.0));
        assert!(zeroed::<u32>(0, "test").unwrap().is_empty());
        // more than the address space
        let e = zeroed::<f32>(usize::MAX / 2, "the activations").unwrap_err();
        assert!(e.to_string().starts_with("the activations: "), "{e}");
        // within the address space's layout limit, beyond any machine: the allocator says no
        let e = zeroed::<f32>((isize::MAX as usize) / 8, "the gradients").unwrap_err();
        let want = format!(
            "the gradients: could not allocate 4294967296.00 GiB ({} elements)",
            isize::MAX as usize / 8
        );
        assert_eq!(e.to_string(), want);
    }

    #[test]
    fn sizes_as_text() {
        assert_eq!(size_text(512.0 * 1024.0), "0.5 MiB");
        assert_eq!(size_text(1.5 * (1u64 << 30) as f64), "1.50 GiB");
        assert_eq!(size_text(2.0 * (1u64 << 40) as f64), "2048.00 GiB");
    }
}
