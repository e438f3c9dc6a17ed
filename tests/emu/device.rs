//! The emulated device: a fake `libcuda.so` (`fake_cuda/cuda.cpp`: the CUDA driver API over the
//! host emulation of the kernels) and, when their sources exist, fake `libcublas.so` and
//! `libcublasLt.so` (`fake_cuda/cublas.cpp`, `cublaslt.cpp`), built into one directory with every
//! kernel library. A process started with [`fake_cuda_env`] loads them in place of NVIDIA's (cudarc
//! dlopens the libraries by name), so the engine's GPU code (`src/gpu`) runs unchanged on the CPU:
//! `tests/emulated_device.rs`.
//!
//! Cached like the kernel libraries (`mod.rs`): the directory's name is a hash of everything that
//! goes into it, so a rerun only checks that it exists.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{build, compiler, cxx, emu_dir, hash_of, kernel_dir, out_dir, read};

/// The driver and the cuBLAS fakes: IEEE fp32 as the kernels' (no contraction into FMAs).
const FAKE_CXXFLAGS: [&str; 8] = [
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fvisibility=hidden",
    "-Wall",
];

fn fake_src_dir() -> PathBuf {
    emu_dir().join("fake_cuda")
}

/// The kernel files, in name order.
fn kernel_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kernel_dir())
        .unwrap_or_else(|e| panic!("listing {}: {e}", kernel_dir().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    files
}

/// Every kernel library, built in parallel (the first build of flash attention's takes a while).
fn kernel_libs() -> Vec<(String, PathBuf)> {
    let files = kernel_files();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let built = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.min(files.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(f) = files.get(i) else { break };
                let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
                let lib = build(f);
                built.lock().unwrap().push((stem, lib));
            });
        }
    });
    let mut libs = built.into_inner().unwrap();
    libs.sort();
    libs
}

fn compile(srcs: &[&Path], out: &Path, soname: &str, link: &[String]) {
    let mut args: Vec<String> = FAKE_CXXFLAGS.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-I".to_string(),
        fake_src_dir().display().to_string(),
        "-I".to_string(),
        emu_dir().display().to_string(),
    ]);
    args.extend(srcs.iter().map(|p| p.display().to_string()));
    args.extend([
        "-o".to_string(),
        out.display().to_string(),
        format!("-Wl,-soname,{soname}"),
    ]);
    args.extend(link.iter().cloned());
    args.extend(["-ldl".to_string(), "-lpthread".to_string()]);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    cxx(&refs, &format!("building the emulated device's {soname}"));
}

/// The directory holding `libcuda.so`, the cuBLAS fakes (when their sources exist) and a copy of
/// every kernel library (`emu-<file>.so`), built on first use and cached.
pub fn fake_cuda_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let libs = kernel_libs();
        let src = fake_src_dir();
        // every source and header of the fakes, the flags, the compiler and the kernel libraries
        // (whose names carry their own hashes)
        let mut parts: Vec<String> = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&src)
            .unwrap_or_else(|e| panic!("listing {}: {e}", src.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cpp" || x == "h"))
            .collect();
        entries.sort();
        for p in &entries {
            parts.push(p.display().to_string());
            parts.push(read(p));
        }
        // gemm.h includes the emulation's bf16 header
        parts.push(read(&emu_dir().join("cuda_bf16.h")));
        parts.push(FAKE_CXXFLAGS.join(" "));
        parts.push(compiler().1.clone());
        parts.extend(libs.iter().map(|(_, l)| l.display().to_string()));
        let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        let dir = out_dir().join(format!("fake-cuda-{}", hash_of(&refs)));
        if dir.join("libcuda.so").exists() {
            return dir;
        }
        // built in a private directory, then renamed into place (another test process may be
        // building the same one)
        let tmp = out_dir().join(format!(
            "fake-cuda-tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        compile(
            &[&src.join("cuda.cpp")],
            &tmp.join("libcuda.so"),
            "libcuda.so",
            &[],
        );
        let against_cuda = [
            format!("-L{}", tmp.display()),
            "-lcuda".to_string(),
            "-Wl,-rpath,$ORIGIN".to_string(),
        ];
        for (file, lib) in [
            ("cublas.cpp", "libcublas.so"),
            ("cublaslt.cpp", "libcublasLt.so"),
        ] {
            let p = src.join(file);
            if p.exists() {
                compile(&[&p], &tmp.join(lib), lib, &against_cuda);
            }
        }
        for (stem, lib) in &libs {
            std::fs::copy(lib, tmp.join(format!("emu-{stem}.so")))
                .unwrap_or_else(|e| panic!("copying {}: {e}", lib.display()));
        }
        if std::fs::rename(&tmp, &dir).is_err() {
            // someone else's build won the race; theirs is the same
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(
            dir.join("libcuda.so").exists(),
            "building {} failed",
            dir.display()
        );
        dir
    })
    .clone()
}

/// The environment a subprocess needs to run on the emulated device: the fakes first on
/// LD_LIBRARY_PATH (before whatever it held), and FAKECUDA_KERNEL_LIBS, the kernel libraries the
/// fake driver resolves PTX entries to.
pub fn fake_cuda_env() -> Vec<(String, String)> {
    let dir = fake_cuda_dir();
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("emu-"))
        })
        .collect();
    libs.sort();
    let kernel_libs: Vec<String> = libs.iter().map(|p| p.display().to_string()).collect();
    let mut path = dir.display().to_string();
    if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
        if !old.is_empty() {
            path = format!("{path}:{old}");
        }
    }
    vec![
        ("LD_LIBRARY_PATH".to_string(), path),
        ("FAKECUDA_KERNEL_LIBS".to_string(), kernel_libs.join(":")),
    ]
}
