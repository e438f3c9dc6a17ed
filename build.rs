//! Build script: compiles every `kernels/*.cu` to PTX with nvcc and turns `kernels/common.h` into
//! Rust with bindgen, so that host and device share one definition of each parameter struct.
//!
//! Where nvcc comes from, first found wins:
//! 1. env `NVCC` (the path of nvcc itself),
//! 2. `$CUDA_HOME/bin/nvcc`,
//! 3. `nvcc` on `PATH`,
//! 4. `<crate root>/.cuda/pip/nvidia/cu13/bin/nvcc` (what `tools/setup-cuda.sh` installs).
//!
//! bindgen's libclang: env `LIBCLANG_PATH`, else `<crate root>/.cuda/pip/clang/native` (also from
//! `tools/setup-cuda.sh`), else wherever clang-sys finds one on the system.
//!
//! With nvcc and libclang both found, every kernel must compile (a kernel that does not compile
//! fails the build with nvcc's full output), the PTX lands in `OUT_DIR/<name>.ptx`, the bindings in
//! `OUT_DIR/common.rs`, and the crate is built with `--cfg has_cuda`. Without them the crate builds
//! the CPU path only and says so in a cargo warning. `TRAIN_GPT2_NO_CUDA=1` forces the CPU-only
//! build even where nvcc exists (to check that path on a machine with CUDA).
//!
//! NVTX (with `has_cuda` only): `kernels/nvtx_shim.c`, a two-function C shim over the header-only
//! NVTX 3 (`nvtx3/nvToolsExt.h`), is compiled with the `cc` crate and linked (with `dl`, which NVTX
//! uses to load a tool), and the crate gets `--cfg has_nvtx`. The headers, first found wins: env
//! `NVTX_INCLUDE` (the folder that holds `nvtx3/`), `include/` next to nvcc's `bin/` (a full CUDA
//! toolkit; also where PyPI's `nvidia-nvtx` lands beside `nvidia-cuda-nvcc`), then
//! `.cuda/pip/nvidia/cu13/include`. Without them the NVTX ranges are no-ops (a cargo warning says
//! so); `TRAIN_GPT2_NO_NVTX=1` forces that. NVTX itself does nothing unless a tool (nsys) injects
//! itself at run time.
//!
//! Other knobs: `CUDA_ARCH` (default `compute_80`: PTX that the driver JIT-compiles for Ampere,
//! Hopper and newer). The kernels are compiled WITHOUT `--use_fast_math`: the fp32 path keeps IEEE
//! division, square root, exp and tanh so that it can be compared with the CPU reference.
//!
//! Environment passed to the crate (only with `has_cuda`): `TRAIN_GPT2_NVCC` (the nvcc used; the
//! PTX test finds ptxas next to it), `TRAIN_GPT2_NVCC_VERSION` (nvcc's release line) and
//! `TRAIN_GPT2_CUDA_ARCH`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NO_CUDA_HINT: &str = "building the CPU path only; GPU commands are unavailable \
                            (run tools/setup-cuda.sh, or set NVCC/CUDA_HOME)";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_cuda)");
    println!("cargo::rustc-check-cfg=cfg(has_nvtx)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_ARCH",
        "LIBCLANG_PATH",
        "TRAIN_GPT2_NO_CUDA",
        "NVTX_INCLUDE",
        "TRAIN_GPT2_NO_NVTX",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // tools/setup-cuda.sh writes a stamp `.cuda/.installed-<what>` when an install is complete,
    // and deletes .cuda before a (re)install (a newer script renames its stamp): watching every
    // stamp there is rebuilds the kernels, and looks for NVTX again, after a (re)install.
    if let Ok(entries) = std::fs::read_dir(root.join(".cuda")) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".installed-")
            {
                println!("cargo:rerun-if-changed={}", entry.path().display());
            }
        }
    }

    if env::var("TRAIN_GPT2_NO_CUDA").is_ok_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:warning=TRAIN_GPT2_NO_CUDA is set: {NO_CUDA_HINT}");
        return;
    }
    let nvcc = match find_nvcc(&root) {
        Ok(nvcc) => nvcc,
        Err(why) => {
            println!("cargo:warning=nvcc not found ({why}): {NO_CUDA_HINT}");
            return;
        }
    };
    if let Err(why) = generate_bindings(&root, &out_dir) {
        println!("cargo:warning=libclang not usable for bindgen ({why}): {NO_CUDA_HINT}");
        return;
    }
    let arch = env::var("CUDA_ARCH")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| "compute_80".to_string());
    compile_kernels(&root, &out_dir, &nvcc, &arch);
    build_nvtx(&root, &nvcc);

    let version = nvcc_version(&nvcc);
    println!("cargo:rustc-cfg=has_cuda");
    println!("cargo:rustc-env=TRAIN_GPT2_NVCC={}", nvcc.display());
    println!("cargo:rustc-env=TRAIN_GPT2_NVCC_VERSION={version}");
    println!("cargo:rustc-env=TRAIN_GPT2_CUDA_ARCH={arch}");
}

/// nvcc by the search order in the file's doc comment; Err says what was tried.
fn find_nvcc(root: &Path) -> Result<PathBuf, String> {
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("NVCC={} is not a file", p.display()))
        };
    }
    if let Some(home) = env::var_os("CUDA_HOME").filter(|p| !p.is_empty()) {
        let p = Path::new(&home).join("bin/nvcc");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let p = root.join(".cuda/pip/nvidia/cu13/bin/nvcc");
    if p.is_file() {
        return Ok(p);
    }
    Err(format!(
        "not in NVCC, $CUDA_HOME/bin, PATH or {}",
        p.display()
    ))
}

/// kernels/common.h -> OUT_DIR/common.rs. Err when libclang cannot be loaded (bindgen panics then:
/// the panic is caught and turned into the CPU-only build) or the header does not parse.
fn generate_bindings(root: &Path, out_dir: &Path) -> Result<(), String> {
    if env::var_os("LIBCLANG_PATH").is_none() {
        let local = root.join(".cuda/pip/clang/native");
        if local.join("libclang.so").is_file() {
            // Only this build script's own process reads it (clang-sys, inside bindgen).
            env::set_var("LIBCLANG_PATH", &local);
        }
    }
    let header = root.join("kernels/common.h");
    let header_str = header.to_str().ok_or("non-UTF-8 path")?.to_string();
    let generated = std::panic::catch_unwind(move || {
        bindgen::Builder::default()
            .header(header_str.clone())
            .allowlist_file(header_str)
            .derive_default(true)
            .derive_copy(true)
            .derive_debug(true)
            .generate_comments(true)
            .generate()
    });
    let bindings = match generated {
        Err(_) => return Err("bindgen could not load libclang; set LIBCLANG_PATH".to_string()),
        // A header that does not parse is a bug in the crate, not a missing tool: fail the build.
        Ok(Err(e)) => panic!("bindgen failed on {}: {e}", header.display()),
        Ok(Ok(b)) => b,
    };
    let dest = out_dir.join("common.rs");
    bindings
        .write_to_file(&dest)
        .unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
    Ok(())
}

/// Every kernels/*.cu -> OUT_DIR/<name>.ptx. The nvcc processes run side by side; any failure
/// panics with nvcc's whole output.
fn compile_kernels(root: &Path, out_dir: &Path, nvcc: &Path, arch: &str) {
    let kdir = root.join("kernels");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kdir.display()))
        .map(|e| e.expect("reading kernels/").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    assert!(
        !sources.is_empty(),
        "no kernels/*.cu found in {}",
        kdir.display()
    );
    let jobs: Vec<(PathBuf, std::process::Child)> = sources
        .into_iter()
        .map(|src| {
            let stem = src.file_stem().expect("a .cu file has a stem").to_owned();
            let ptx = out_dir.join(Path::new(&stem).with_extension("ptx"));
            let child = Command::new(nvcc)
                .arg("-ptx")
                .arg("-O3")
                .arg(format!("-arch={arch}"))
                .arg("-std=c++17")
                .arg("-lineinfo")
                .arg("-I")
                .arg(&kdir)
                .arg("-o")
                .arg(&ptx)
                .arg(&src)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
            (src, child)
        })
        .collect();
    let mut failures = String::new();
    for (src, child) in jobs {
        let out: Output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for nvcc on {}: {e}", src.display()));
        if !out.status.success() {
            failures.push_str(&format!(
                "\n=== nvcc failed on {} ({}) ===\n{}{}",
                src.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    if !failures.is_empty() {
        panic!(
            "CUDA kernels did not compile with {}:{failures}",
            nvcc.display()
        );
    }
    // What the crate embeds: each PTX deflated (src/gpu/ptx.rs inflates it), about 9x smaller,
    // so that every binary and test executable holding the kernels stays small.
    for entry in fs::read_dir(out_dir).expect("reading OUT_DIR") {
        let path = entry.expect("reading OUT_DIR").path();
        if path.extension().is_some_and(|e| e == "ptx") {
            let text =
                fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let packed = miniz_oxide::deflate::compress_to_vec(&text, 6);
            let dst = path.with_extension("ptx.deflate");
            fs::write(&dst, packed).unwrap_or_else(|e| panic!("writing {}: {e}", dst.display()));
        }
    }
}

/// The NVTX shim, when the NVTX 3 headers are found (see the file comment); otherwise a warning.
fn build_nvtx(root: &Path, nvcc: &Path) {
    if env::var("TRAIN_GPT2_NO_NVTX").is_ok_and(|v| !v.is_empty() && v != "0") {
        println!("cargo:warning=TRAIN_GPT2_NO_NVTX is set: NVTX ranges are no-ops in this build");
        return;
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("NVTX_INCLUDE").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    if let Some(toolkit) = nvcc.parent().and_then(Path::parent) {
        candidates.push(toolkit.join("include"));
    }
    let local = root.join(".cuda/pip/nvidia/cu13/include");
    if !candidates.contains(&local) {
        candidates.push(local);
    }
    let Some(include) = candidates
        .iter()
        .find(|dir| dir.join("nvtx3/nvToolsExt.h").is_file())
    else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        println!(
            "cargo:warning=NVTX 3 headers (nvtx3/nvToolsExt.h) not found in {}: NVTX ranges are \
             no-ops in this build (run tools/setup-cuda.sh, or set NVTX_INCLUDE)",
            tried.join(", ")
        );
        return;
    };
    let shim = root.join("kernels/nvtx_shim.c");
    println!("cargo:rerun-if-changed={}", shim.display());
    cc::Build::new()
        .file(&shim)
        .include(include)
        .warnings(true)
        .compile("tg_nvtx");
    // NVTX loads a tool's injection library with dlopen
    println!("cargo:rustc-link-lib=dl");
    println!("cargo:rustc-cfg=has_nvtx");
}

/// nvcc's "Cuda compilation tools, release ..." line, or "unknown".
fn nvcc_version(nvcc: &Path) -> String {
    Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("release"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}
