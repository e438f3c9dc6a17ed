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
/// plus SwapFree, total MemTotal plus SwapTotal; within the memory limits of the process's
/// cgroups where those are tighter ([`cgroup_memory`]: a container's, a Slurm job's).
pub fn host_memory() -> Option<HostMemory> {
    let mem = parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let read = |path: &str| std::fs::read_to_string(path).ok();
    Some(within(mem, cgroup_memory(&cgroups, read)))
}

/// The machine's memory `mem` within the cgroups' limits `cgroups`: the smaller of each.
fn within(mem: HostMemory, cgroups: Option<HostMemory>) -> HostMemory {
    match cgroups {
        Some(cg) => HostMemory {
            available: mem.available.min(cg.available),
            total: mem.total.min(cg.total),
        },
        None => mem,
    }
}

/// [`HostMemory`] from the text of `/proc/meminfo` (sizes in kB), or None without MemTotal and
/// MemAvailable.
pub fn parse_meminfo(text: &str) -> Option<HostMemory> {
    let field = |name| kib_field(text, name);
    let swap = |name| field(name).unwrap_or(0);
    Some(HostMemory {
        available: field("MemAvailable")?.saturating_add(swap("SwapFree")),
        total: field("MemTotal")?.saturating_add(swap("SwapTotal")),
    })
}

/// The memory the cgroups of this process (`self_cgroup`: the text of `/proc/self/cgroup`) still
/// let it allocate, through `read` (a file's text): for each cgroup from the process's up to the
/// root of the mounted hierarchy, its limit less its use, the page cache not counted as use (the
/// kernel reclaims it before it refuses memory), the tightest of them; and the tightest limit as
/// the total. cgroup v2 ("0::/PATH": `/sys/fs/cgroup/PATH/memory.max`, `memory.current` and
/// `memory.stat`'s `file`) and v1 (the memory controller's line:
/// `/sys/fs/cgroup/memory/PATH/memory.limit_in_bytes`, `memory.usage_in_bytes` and
/// `memory.stat`'s `total_cache`). None where no cgroup on the way has a limit. A cgroup
/// namespace shows its own root as "/"; a cgroup whose folder is not there is skipped.
pub fn cgroup_memory(
    self_cgroup: &str,
    read: impl Fn(&str) -> Option<String>,
) -> Option<HostMemory> {
    let mut tightest: Option<HostMemory> = None;
    for line in self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // (folder, limit file, use file, the page cache's line in memory.stat)
        let (root, limit_file, use_file, cache) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "memory.max", "memory.current", "file")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_cache",
            )
        } else {
            continue;
        };
        // the process's cgroup, then each one above it
        let mut dir = path.trim_end_matches('/').to_string();
        loop {
            let file = |name: &str| read(&format!("{root}{dir}/{name}"));
            let number = |name: &str| file(name)?.trim().parse::<u64>().ok();
            // "max" (v2) or a number near 2^63 (v1): no limit
            if let Some(limit) = number(limit_file).filter(|&l| l < 1 << 62) {
                let used = number(use_file).unwrap_or(0);
                let cached = file("memory.stat")
                    .and_then(|stat| {
                        let line = stat.lines().find(|l| l.split(' ').next() == Some(cache))?;
                        line.split_whitespace().nth(1)?.parse::<u64>().ok()
                    })
                    .unwrap_or(0);
                let left = limit.saturating_sub(used.saturating_sub(cached));
                let t = tightest.get_or_insert(HostMemory {
                    available: left,
                    total: limit,
                });
                t.available = t.available.min(left);
                t.total = t.total.min(limit);
            }
            match dir.rfind('/') {
                Some(i) => dir.truncate(i),
                None => break,
            }
        }
    }
    tightest
}

/// The bytes of the line `NAME:   N kB` of a /proc file's `text` (`/proc/meminfo`,
/// `/proc/self/status`).
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The process's peak resident memory (VmHWM in /proc/self/status), where Linux reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// The element types that [`zeroed`] allocates: those for which all-zero bytes are a value (0).
pub trait Zeroable: Copy {}
impl Zeroable for f32 {}
impl Zeroable for u32 {}
impl Zeroable for half::bf16 {}

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

    /// A fake cgroup file system: (path, text).
    fn files(entries: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = entries
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        move |path: &str| map.get(path).cloned()
    }

    #[test]
    fn cgroup_v2_limits_on_the_way_to_the_root_count_the_tightest() {
        const GIB: u64 = 1 << 30;
        let fs = files(&[
            // a Slurm job's cgroup: 8 GiB, 3 GiB used of which 1 GiB page cache
            ("/sys/fs/cgroup/slurm/job_7/memory.max", "8589934592\n"),
            ("/sys/fs/cgroup/slurm/job_7/memory.current", "3221225472\n"),
            (
                "/sys/fs/cgroup/slurm/job_7/memory.stat",
                "anon 2147483648\nfile 1073741824\nfile_mapped 0\n",
            ),
            // its parent: no limit; the root: no files
            ("/sys/fs/cgroup/slurm/memory.max", "max\n"),
            ("/sys/fs/cgroup/slurm/memory.current", "99999999999\n"),
        ]);
        let got = cgroup_memory("0::/slurm/job_7\n", &fs).unwrap();
        assert_eq!(
            got,
            HostMemory {
                available: 6 * GIB,
                total: 8 * GIB
            }
        );
        // a parent with less left than the child: its
        let fs = files(&[
            ("/sys/fs/cgroup/a/b/memory.max", "8589934592"),
            ("/sys/fs/cgroup/a/b/memory.current", "0"),
            ("/sys/fs/cgroup/a/memory.max", "4294967296"),
            ("/sys/fs/cgroup/a/memory.current", "3221225472"),
        ]);
        let got = cgroup_memory("0::/a/b\n", &fs).unwrap();
        assert_eq!(
            got,
            HostMemory {
                available: GIB,
                total: 4 * GIB
            }
        );
        // a container's namespace: "/" is its own cgroup, whose files are at the mount's root
        let fs = files(&[
            ("/sys/fs/cgroup/memory.max", "2147483648"),
            ("/sys/fs/cgroup/memory.current", "3000000000"),
        ]);
        let got = cgroup_memory("0::/\n", &fs).unwrap();
        assert_eq!(
            got,
            HostMemory {
                available: 0,
                total: 2 * GIB
            }
        );
        // a colon in the cgroup's path is part of it
        let fs = files(&[("/sys/fs/cgroup/pod:7/memory.max", "4096")]);
        assert_eq!(cgroup_memory("0::/pod:7\n", &fs), Some(mem(4096, 4096)));
        // no limit anywhere, no cgroup file system, a line of another kind
        let fs = files(&[("/sys/fs/cgroup/memory.max", "max")]);
        assert_eq!(cgroup_memory("0::/\n", &fs), None);
        assert_eq!(cgroup_memory("0::/user.slice\n", files(&[])), None);
        assert_eq!(cgroup_memory("", files(&[])), None);
        assert_eq!(cgroup_memory("garbage\n", files(&[])), None);
    }

    #[test]
    fn cgroup_v1_reads_the_memory_controllers_hierarchy() {
        const GIB: u64 = 1 << 30;
        // this machine's layout (2026-12-03): v1, the memory controller's cgroup two levels down
        let text = "9:name=systemd:/\n4:memory:/process_api/5f80\n3:cpuset:/\n0::/\n";
        let dir = "/sys/fs/cgroup/memory/process_api/5f80";
        let fs = files(&[
            (&format!("{dir}/memory.limit_in_bytes"), "17179869184\n"),
            (&format!("{dir}/memory.usage_in_bytes"), "9888473088\n"),
            (
                &format!("{dir}/memory.stat"),
                "cache 100\nrss 5\ntotal_cache 5368709120\ntotal_rss 7\n",
            ),
            // v1's "no limit": 2^63 less a page
            (
                "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        let got = cgroup_memory(text, &fs).unwrap();
        let used = 9888473088 - 5 * GIB;
        assert_eq!(
            got,
            HostMemory {
                available: 16 * GIB - used,
                total: 16 * GIB
            }
        );
        // the memory controller among others on one line
        let fs = files(&[("/sys/fs/cgroup/memory/j/memory.limit_in_bytes", "1024")]);
        let got = cgroup_memory("5:cpu,memory:/j\n", &fs).unwrap();
        assert_eq!(
            got,
            HostMemory {
                available: 1024,
                total: 1024
            }
        );
        // unlimited everywhere: none
        let fs = files(&[(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712",
        )]);
        assert_eq!(cgroup_memory("4:memory:/\n", &fs), None);
    }

    fn mem(available: u64, total: u64) -> HostMemory {
        HostMemory { available, total }
    }

    /// A cgroup's limit tightens what the machine has, never widens it.
    #[test]
    fn a_cgroup_limit_is_within_the_machine() {
        assert_eq!(within(mem(5, 10), None), mem(5, 10));
        assert_eq!(within(mem(5, 10), Some(mem(2, 4))), mem(2, 4));
        assert_eq!(within(mem(5, 10), Some(mem(7, 20))), mem(5, 10));
        assert_eq!(within(mem(5, 10), Some(mem(7, 8))), mem(5, 8));
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
