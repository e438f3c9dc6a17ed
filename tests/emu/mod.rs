//! The host emulation of the CUDA kernels: builds `kernels/<file>.cu` with g++ against the CUDA
//! shim in this folder (`cuda_shim.h`, `cuda_bf16.h`, `runtime.cpp`) into a shared library under
//! the target dir, loads it, and launches its kernels on the CPU with cuLaunchKernel's argument
//! convention. See `runtime.cpp` for what a launch checks (barriers, warp-wide exchanges, faults)
//! and `docs/verification.md` for what the emulation can and cannot tell.
//!
//! Building: `$CXX`, else `c++`, else `g++` (a missing compiler is a test failure, never a skip).
//! Each library is cached by a hash of everything that goes into it (sources, headers, flags,
//! compiler version), so reruns only load it. Before compiling, a kernel file is copied with one
//! mechanical rewrite: `extern __shared__ T name[];` (which no host compiler accepts next to the
//! shim's `#define __shared__ static`) becomes a pointer to the launch's dynamic shared memory.
//! The kernels are found by preprocessing the file (so macro-generated ones count) and scanning for
//! `extern "C" __global__`.
//!
//! Memory: every buffer is a guarded allocation (its end against a PROT_NONE page, canary bytes in
//! the slack on both sides): a read or write past the end faults and fails the launch with the
//! buffer and offset; a write into the slack is caught by the canary check after every launch.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use half::bf16;
use train_gpt2_cuda::gpu::launch::Grid;
use train_gpt2_cuda::rng::Rng;

pub mod device;

/// The project root: the run-time CARGO_MANIFEST_DIR when set (a GPU machine runs test binaries
/// built elsewhere, with it set to the copy of the project there), else the build's.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub(crate) fn emu_dir() -> PathBuf {
    root().join("tests/emu")
}

pub(crate) fn kernel_dir() -> PathBuf {
    root().join("kernels")
}
const SHIM_FILES: [&str; 4] = [
    "cuda_shim.h",
    "cuda_bf16.h",
    "emu_register.h",
    "runtime.cpp",
];

/// IEEE fp32 semantics: no fast math, no FMA contraction; no strict aliasing (the kernels
/// reinterpret T* as 16-byte packs, which nvcc allows and g++ -O2 might exploit).
const CXXFLAGS: [&str; 9] = [
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-strict-aliasing",
    "-fvisibility=hidden",
    "-D__CUDACC__",
    "-Wno-unknown-pragmas",
];

// ---- building --------------------------------------------------------------------------------

/// The C++ compiler and its version line, or a panic that says how to get one.
pub(crate) fn compiler() -> &'static (String, String) {
    static CXX: OnceLock<(String, String)> = OnceLock::new();
    CXX.get_or_init(|| {
        let mut tried = Vec::new();
        let candidates: Vec<String> = std::env::var("CXX")
            .ok()
            .filter(|s| !s.is_empty())
            .into_iter()
            .chain(["c++".to_string(), "g++".to_string()])
            .collect();
        for cxx in candidates {
            match Command::new(&cxx).arg("--version").output() {
                Ok(out) if out.status.success() => {
                    let version = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    return (cxx, version);
                }
                _ => tried.push(cxx),
            }
        }
        panic!(
            "the kernel emulation needs a C++17 compiler and none was found (tried {tried:?}): \
             install g++ (e.g. `apt-get install g++`) or set CXX"
        )
    })
}

pub(crate) fn out_dir() -> PathBuf {
    // the build's target/tmp, or (test binaries copied to another machine) the system's temp
    let built = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let base = if built.is_dir() {
        built
    } else {
        std::env::temp_dir()
    };
    let d = base.join("kernel-emu");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

pub(crate) fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Runs the compiler with `args`; panics with its output on failure.
pub(crate) fn cxx(args: &[&str], what: &str) -> String {
    let (cc, _) = compiler();
    let out = Command::new(cc)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed: {cc} {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `extern __shared__ T name[];` -> `T* name = reinterpret_cast<T*>(emu_dynamic_smem());` on the
/// same line (line numbers unchanged).
fn rewrite_extern_shared(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find("extern __shared__") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "extern __shared__".len()..];
        let end = after.find(';').expect("extern __shared__ without a ';'");
        let mut decl = after[..end].trim().to_string();
        if let Some(a) = decl.find("__align__(") {
            let close = a + decl[a..].find(')').expect("__align__( without ')'");
            decl.replace_range(a..=close, "");
        }
        let decl = decl.trim().trim_end_matches("[]").trim();
        let split = decl
            .rfind(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
            .expect("extern __shared__: no type before the name");
        let (ty, name) = (decl[..split].trim(), &decl[split + 1..]);
        out.push_str(&format!(
            "{ty}* {name} = reinterpret_cast<{ty}*>(emu_dynamic_smem());"
        ));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The `extern "C" __global__` kernels of preprocessed source: (name, launch bound expression or
/// "0").
fn find_kernels(pre: &str) -> Vec<(String, String)> {
    let mut kernels = Vec::new();
    let mut rest = pre;
    while let Some(i) = rest.find("extern \"C\"") {
        rest = &rest[i + "extern \"C\"".len()..];
        let mut toks = rest.trim_start();
        let Some(t) = toks.strip_prefix("__global__") else {
            continue;
        };
        toks = t.trim_start();
        let Some(t) = toks.strip_prefix("void") else {
            continue;
        };
        toks = t.trim_start();
        let mut bound = "0".to_string();
        if let Some(t) = toks.strip_prefix("__launch_bounds__") {
            let t = t
                .trim_start()
                .strip_prefix('(')
                .expect("__launch_bounds__ (");
            let mut depth = 1;
            let mut end = 0;
            for (k, ch) in t.char_indices() {
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = k;
                    break;
                }
            }
            // the first argument: max threads per block
            bound = t[..end].split(',').next().unwrap().trim().to_string();
            toks = t[end + 1..].trim_start();
        }
        let name: String = toks
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        assert!(
            !name.is_empty(),
            "could not read a kernel name after {toks:.60}"
        );
        kernels.push((name, bound));
    }
    kernels
}

pub(crate) fn hash_of(parts: &[&str]) -> String {
    let mut h = DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn common_args() -> Vec<String> {
    let mut a: Vec<String> = CXXFLAGS.iter().map(|s| s.to_string()).collect();
    if std::env::var("EMU_DEBUG").is_ok_and(|v| v == "1") {
        a.retain(|f| f != "-O2");
        a.extend(["-O0".to_string(), "-g".to_string()]);
    }
    a.extend(auto_var_init().iter().map(|f| f.to_string()));
    a.extend(sanitize_bounds().iter().map(|f| f.to_string()));
    a.extend([
        "-I".to_string(),
        emu_dir().display().to_string(),
        "-I".to_string(),
        kernel_dir().display().to_string(),
    ]);
    a
}

/// `flags` if the compiler accepts them (asked once, the answer kept in `accepted`), else none,
/// saying once on stderr what the emulation then cannot see (`lost`). It runs either way.
fn if_accepted(
    flags: &'static [&'static str],
    accepted: &OnceLock<bool>,
    lost: &str,
) -> &'static [&'static str] {
    let has = *accepted.get_or_init(|| {
        let (cc, version) = compiler();
        let has = Command::new(cc)
            .args(flags)
            .args(["-x", "c++", "-fsyntax-only", "-"])
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if !has {
            eprintln!(
                "note: {cc} ({version}) has no {}: the kernel emulation cannot tell {lost}",
                flags.join(" ")
            );
        }
        has
    });
    if has {
        flags
    } else {
        &[]
    }
}

/// `-ftrivial-auto-var-init=pattern` if the compiler has it (g++ 12, clang 8): a kernel's local
/// read before it is written then holds 0xfe bytes (-1.7e38 as a float), where the stack often
/// holds zeros that would pass for an initialised sum (a register on the GPU holds anything).
fn auto_var_init() -> &'static [&'static str] {
    static HAS: OnceLock<bool> = OnceLock::new();
    if_accepted(
        &["-ftrivial-auto-var-init=pattern"],
        &HAS,
        "a local read before it is written",
    )
}

/// `-fsanitize=bounds` trapping on error (g++ 4.9, clang 3.3), if the compiler has it: an index
/// past a local array's bound (`float acc[NO]` read at NO) traps, and the launch fails with
/// SIGILL naming the thread (`runtime.cpp`), where the host's stack has room past the array and
/// the read or write goes unseen. (An index past a struct's last array is not flagged, g++ 12's
/// `bounds-strict` included; `Packed` checks its own.)
fn sanitize_bounds() -> &'static [&'static str] {
    static HAS: OnceLock<bool> = OnceLock::new();
    if_accepted(
        &["-fsanitize=bounds", "-fsanitize-undefined-trap-on-error"],
        &HAS,
        "an index past a local array",
    )
}

/// Whether an index past a local array fails the launch ([`sanitize_bounds`]).
pub fn checks_local_bounds() -> bool {
    !sanitize_bounds().is_empty()
}

/// Whether the emulated kernels' locals start as 0xfe bytes ([`auto_var_init`]).
pub fn initialises_locals() -> bool {
    !auto_var_init().is_empty()
}

/// The hash of the shim and the flags (part of every library's key).
fn shim_key() -> String {
    let mut parts: Vec<String> = SHIM_FILES
        .iter()
        .map(|f| read(&emu_dir().join(f)))
        .collect();
    parts.push(common_args().join(" "));
    parts.push(compiler().1.clone());
    let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
    hash_of(&refs)
}

/// runtime.cpp compiled once (cached).
fn runtime_object() -> &'static PathBuf {
    static OBJ: OnceLock<PathBuf> = OnceLock::new();
    OBJ.get_or_init(|| {
        let obj = out_dir().join(format!("runtime-{}.o", shim_key()));
        if !obj.exists() {
            let tmp = obj.with_extension(format!("tmp{}", std::process::id()));
            let mut args = common_args();
            args.extend([
                "-c".to_string(),
                emu_dir().join("runtime.cpp").display().to_string(),
                "-o".to_string(),
                tmp.display().to_string(),
            ]);
            let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            cxx(&refs, "compiling tests/emu/runtime.cpp");
            std::fs::rename(&tmp, &obj).unwrap();
        }
        obj
    })
}

/// The shared library of `path` (a .cu file), built if not cached; returns its path.
pub(crate) fn build(path: &Path) -> PathBuf {
    let src = rewrite_extern_shared(&read(path));
    let common_h = read(&kernel_dir().join("common.h"));
    let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
    let key = hash_of(&[&src, &common_h, &shim_key(), &path.display().to_string()]);
    let dir = out_dir();
    let lib = dir.join(format!("lib{stem}-{key}.so"));
    if lib.exists() {
        return lib;
    }
    let copy = dir.join(format!("{stem}-{key}.cu"));
    std::fs::write(&copy, format!("#line 1 \"{}\"\n{src}", path.display())).unwrap();
    // Kernels, including macro-generated ones, from the preprocessed file.
    let mut pre_args = common_args();
    pre_args.extend([
        "-E".to_string(),
        "-P".to_string(),
        "-x".to_string(),
        "c++".to_string(),
        copy.display().to_string(),
    ]);
    let refs: Vec<&str> = pre_args.iter().map(|s| s.as_str()).collect();
    let kernels = find_kernels(&cxx(&refs, &format!("preprocessing {}", path.display())));
    assert!(
        !kernels.is_empty(),
        "no kernels found in {}",
        path.display()
    );
    let mut tu = format!(
        "#include \"{}\"\n#include \"emu_register.h\"\nconst EmuKernelEntry emu_kernels[] = {{\n",
        copy.display()
    );
    for (name, bound) in &kernels {
        tu.push_str(&format!("EMU_KERNEL({name}, {bound})\n"));
    }
    tu.push_str(&format!(
        "}};\nconst int emu_kernel_count = {};\n",
        kernels.len()
    ));
    let tu_path = dir.join(format!("{stem}-{key}.cpp"));
    std::fs::write(&tu_path, tu).unwrap();
    let tmp = lib.with_extension(format!("tmp{}", std::process::id()));
    let mut args = common_args();
    args.extend([
        "-include".to_string(),
        "cuda_shim.h".to_string(),
        "-shared".to_string(),
        tu_path.display().to_string(),
        runtime_object().display().to_string(),
        "-o".to_string(),
        tmp.display().to_string(),
        "-lpthread".to_string(),
        "-lrt".to_string(), // timer_create before glibc 2.34
    ]);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    cxx(&refs, &format!("compiling {} for the host", path.display()));
    std::fs::rename(&tmp, &lib).unwrap();
    lib
}

// ---- the loaded library ------------------------------------------------------------------------

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    u32,
    *const *const c_void,
    u32,
) -> i32;

struct Api {
    launch: LaunchFn,
    last_error: unsafe extern "C" fn() -> *const c_char,
    names: unsafe extern "C" fn() -> *const c_char,
    alloc: unsafe extern "C" fn(usize, usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
    check: unsafe extern "C" fn(*mut c_void) -> i32,
    set_launch_limit: unsafe extern "C" fn(f64),
    vector_accesses: unsafe extern "C" fn() -> u64,
}

/// One emulated kernel file.
pub struct Kernels {
    file: String,
    api: Api,
    _lib: libloading::Library,
}

/// The emulated kernels of `kernels/<stem>.cu` (built on first use, shared between tests).
pub fn kernels(stem: &str) -> Arc<Kernels> {
    kernels_at(&kernel_dir().join(format!("{stem}.cu")))
}

/// The emulated kernels of any .cu file (also the harness's own self-test kernels), built on
/// first use and shared between tests.
pub fn kernels_at(path: &Path) -> Arc<Kernels> {
    // one cell per kernel file: built once, by whichever test asks first
    type Cell = Arc<OnceLock<Arc<Kernels>>>;
    static LIBS: OnceLock<Mutex<HashMap<PathBuf, Cell>>> = OnceLock::new();
    let cell = LIBS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(path.to_path_buf())
        .or_default()
        .clone();
    cell.get_or_init(|| Arc::new(Kernels::load(path))).clone()
}

impl Kernels {
    fn load(path: &Path) -> Kernels {
        let so = build(path);
        // SAFETY: the library is ours (built just now from the shim and one kernel file); loading
        // it runs no initialisers beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(&so) }
            .unwrap_or_else(|e| panic!("loading {}: {e}", so.display()));
        // SAFETY: the symbols are runtime.cpp's exported C functions, with these signatures.
        let api = unsafe {
            Api {
                launch: *lib.get(b"emu_launch").unwrap(),
                last_error: *lib.get(b"emu_last_error").unwrap(),
                names: *lib.get(b"emu_kernel_names").unwrap(),
                alloc: *lib.get(b"emu_alloc").unwrap(),
                free: *lib.get(b"emu_free").unwrap(),
                check: *lib.get(b"emu_check").unwrap(),
                set_launch_limit: *lib.get(b"emu_set_launch_limit").unwrap(),
                vector_accesses: *lib.get(b"emu_last_vector_accesses").unwrap(),
            }
        };
        Kernels {
            file: path.display().to_string(),
            api,
            _lib: lib,
        }
    }

    fn last_error(&self) -> String {
        // SAFETY: emu_last_error returns a NUL-terminated string owned by the library.
        unsafe { CStr::from_ptr((self.api.last_error)()) }
            .to_string_lossy()
            .into_owned()
    }

    /// Fails this library's launches that run longer than `seconds` of CPU time (an endless
    /// loop); 0 restores the default (`EMU_LAUNCH_TIMEOUT_S`, or 120 s).
    pub fn set_launch_limit(&self, seconds: f64) {
        // SAFETY: a plain setter of the library's own limit.
        unsafe { (self.api.set_launch_limit)(seconds) }
    }

    /// How many vector (packed) loads and stores this thread's last launch made: whether a
    /// kernel took its packed path (tests on the same library in other threads do not count).
    pub fn last_vector_accesses(&self) -> u64 {
        // SAFETY: a plain getter of the library's thread-local count.
        unsafe { (self.api.vector_accesses)() }
    }

    /// The kernels the library holds.
    pub fn names(&self) -> Vec<String> {
        // SAFETY: as in last_error.
        unsafe { CStr::from_ptr((self.api.names)()) }
            .to_string_lossy()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A guarded buffer holding `data`, starting 16-byte aligned, or one element past that when
    /// `misaligned`.
    pub fn upload<T: Copy>(self: &Arc<Self>, data: &[T], misaligned: bool) -> Buf {
        let size = std::mem::size_of::<T>();
        let bytes = std::mem::size_of_val(data);
        let misalign = if misaligned { size } else { 0 };
        // SAFETY: emu_alloc returns `bytes` writable bytes (or null).
        let ptr = unsafe { (self.api.alloc)(bytes, misalign) } as *mut u8;
        assert!(!ptr.is_null(), "emu_alloc({bytes}) failed");
        // SAFETY: ptr holds bytes bytes; data is bytes bytes of plain values.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, ptr, bytes) };
        Buf {
            k: self.clone(),
            ptr,
            bytes,
        }
    }

    /// Launches kernel `name` as the GPU would with geometry `g` and these arguments (in the
    /// kernel's parameter order), with threads and blocks run in the order `schedule` picks (0
    /// ascending, 1 descending, >= 2 shuffled). Panics with the emulator's report on a deadlock,
    /// a divergent warp-wide operation, a fault, a launch the GPU would refuse, or a buffer whose
    /// canary bytes were overwritten.
    pub fn launch(&self, name: &str, g: Grid, args: &[Arg], schedule: u32) {
        assert!(
            self.names().iter().any(|n| n == name),
            "{}: no kernel {name} (has {:?})",
            self.file,
            self.names()
        );
        // Each argument's value in 8-byte-aligned storage, as cuLaunchKernel's kernelParams.
        let storage: Vec<Vec<u64>> = args.iter().map(Arg::bytes).collect();
        let ptrs: Vec<*const c_void> = storage
            .iter()
            .map(|v| v.as_ptr() as *const c_void)
            .collect();
        let grid = [g.grid.0, g.grid.1, g.grid.2];
        let block = [g.block.0, g.block.1, g.block.2];
        let cname = CString::new(name).unwrap();
        // SAFETY: the arguments are laid out as the kernel's parameters (the caller's contract, as
        // with cuLaunchKernel); every pointer argument is a live guarded buffer.
        let rc = unsafe {
            (self.api.launch)(
                cname.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                g.shared_bytes,
                ptrs.as_ptr(),
                schedule,
            )
        };
        if rc != 0 {
            panic!("emulated launch failed: {}", self.last_error());
        }
        for (i, a) in args.iter().enumerate() {
            if let Arg::Buf(b) = a {
                // SAFETY: b.ptr is a live guarded buffer of b.k's library.
                if unsafe { (b.k.api.check)(b.ptr as *mut c_void) } != 0 {
                    panic!("{name}: argument {i}: {}", b.k.last_error());
                }
            }
        }
    }
}

/// A kernel argument.
pub enum Arg<'a> {
    Buf(&'a Buf),
    I32(i32),
    U32(u32),
    F32(f32),
    Usize(usize),
    /// A struct passed by value, as its bytes.
    Bytes(Vec<u8>),
}

impl Arg<'_> {
    fn bytes(&self) -> Vec<u64> {
        let raw: Vec<u8> = match self {
            Arg::Buf(b) => (b.ptr as u64).to_ne_bytes().to_vec(),
            Arg::I32(x) => x.to_ne_bytes().to_vec(),
            Arg::U32(x) => x.to_ne_bytes().to_vec(),
            Arg::F32(x) => x.to_ne_bytes().to_vec(),
            Arg::Usize(x) => x.to_ne_bytes().to_vec(),
            Arg::Bytes(v) => v.clone(),
        };
        let mut words = vec![0u64; raw.len().div_ceil(8).max(1)];
        // SAFETY: words holds at least raw.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(raw.as_ptr(), words.as_mut_ptr() as *mut u8, raw.len())
        };
        words
    }
}

/// A guarded buffer of the emulated device memory.
pub struct Buf {
    k: Arc<Kernels>,
    ptr: *mut u8,
    bytes: usize,
}

impl Buf {
    /// The buffer's contents as elements of T.
    pub fn read<T: Copy>(&self) -> Vec<T> {
        let n = self.bytes / std::mem::size_of::<T>();
        // SAFETY: ptr holds `bytes` bytes; read_unaligned tolerates a misaligned start.
        (0..n)
            .map(|i| unsafe { (self.ptr as *const T).add(i).read_unaligned() })
            .collect()
    }

    /// The address (for the kernels' alignment checks).
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: ptr came from this library's emu_alloc and is freed once.
        unsafe { (self.k.api.free)(self.ptr as *mut c_void) };
    }
}

// ---- storage types and comparisons ---------------------------------------------------------------

/// The kernels' storage type: f32 (NAME) or bf16 (NAME_bf16); arithmetic is fp32 either way.
pub trait Storage: Copy + 'static {
    const BF16: bool;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// The kernel `name` instantiated for this type.
    fn kernel(name: &str) -> String {
        if Self::BF16 {
            format!("{name}_bf16")
        } else {
            name.to_string()
        }
    }
    /// What one rounding to this type adds to a relative tolerance: 0 for f32, 2^-8 for bf16.
    fn unit() -> f32 {
        if Self::BF16 {
            1.0 / 256.0
        } else {
            0.0
        }
    }
    fn label() -> &'static str {
        if Self::BF16 {
            "bf16"
        } else {
            "fp32"
        }
    }
}

impl Storage for f32 {
    const BF16: bool = false;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Storage for bf16 {
    const BF16: bool = true;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// x rounded to T and widened back (what the kernel sees as its T input): the identity for f32.
pub fn round_to<T: Storage>(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| T::from_f32(v).to_f32()).collect()
}

/// x as T values in a guarded buffer (misaligned by one element when asked).
pub fn up<T: Storage>(k: &Arc<Kernels>, x: &[f32], misaligned: bool) -> Buf {
    let v: Vec<T> = x.iter().map(|&f| T::from_f32(f)).collect();
    k.upload(&v, misaligned)
}

/// A buffer of T widened to f32.
pub fn down<T: Storage>(b: &Buf) -> Vec<f32> {
    b.read::<T>().into_iter().map(T::to_f32).collect()
}

/// n values uniform in [-scale, scale).
pub fn rand(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * scale)
        .collect()
}

/// The largest |x| (0 for an empty slice).
pub fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// |got - want| <= atol + rtol |want| everywhere (NaN only where want is NaN); prints the worst.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_within(what, got, want, |_, w| atol + rtol * w.abs());
}

/// |got[i] - want[i]| <= tol(i, want[i]) everywhere (NaN only where want is NaN); prints the
/// worst.
#[track_caller]
pub fn assert_within(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize, f32) -> f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() && g.is_nan() {
            continue;
        }
        let err = (g - w).abs();
        let tol = tol(i, w);
        assert!(
            err <= tol,
            "{what}[{i}]: emulated kernel {g} vs cpu {w} (|diff| {err} > tolerance {tol})"
        );
        if err > worst.1 {
            worst = (i, err);
        }
    }
    eprintln!("{what}: max |diff| {} at {}", worst.1, worst.0);
}

/// got and want bitwise equal (NaN payloads aside).
#[track_caller]
pub fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: emulated kernel {g} vs cpu {w} (must be bitwise equal)"
        );
    }
}
