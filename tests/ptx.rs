//! The CUDA kernels as built: every `kernels/*.cu` is embedded as PTX, every PTX assembles with
//! ptxas for sm_80 (A100) and sm_90 (H100), every expected kernel is present by name, and the
//! fp32 path was compiled without fast math. Needs no GPU: runs wherever the crate was built with
//! nvcc (CI always is). A build WITHOUT kernels fails these tests unless TRAIN_GPT2_NO_CUDA=1 is
//! set (the variable that also forces that build), so that a CI machine that lost its nvcc cannot
//! pass silently.

use train_gpt2_cuda::gpu;

/// Every kernel file and the `extern "C"` kernels it must define. Deleting or renaming a kernel
/// fails `every_expected_kernel_is_in_the_ptx`.
const EXPECTED: &[(&str, &[&str])] = &[
    ("kernels/adamw.cu", &["adamw_kernel", "adamw_mixed_kernel"]),
    (
        "kernels/attention.cu",
        &[
            "attention_permute",
            "attention_permute_bf16",
            "attention_permute_backward",
            "attention_permute_backward_bf16",
            "attention_unpermute",
            "attention_unpermute_bf16",
            "attention_unpermute_backward",
            "attention_unpermute_backward_bf16",
            "attention_softmax_forward",
            "attention_softmax_forward_bf16",
            "attention_softmax_backward",
            "attention_softmax_backward_bf16",
        ],
    ),
    (
        "kernels/classifier.cu",
        &["fused_classifier", "fused_classifier_bf16"],
    ),
    (
        "kernels/encoder.cu",
        &[
            "encoder_forward",
            "encoder_forward_bf16",
            "encoder_backward_wpe",
            "encoder_backward_wpe_bf16",
            "encoder_backward_wte",
            "encoder_backward_wte_bf16",
        ],
    ),
    (
        "kernels/flash_attention.cu",
        &[
            "flash_attention_forward_hs64",
            "flash_attention_forward_hs64_bf16",
            "flash_attention_forward_hs64_bf16_q32",
            "flash_attention_forward_hs128",
            "flash_attention_forward_hs128_bf16",
            "flash_attention_backward_d",
            "flash_attention_backward_d_bf16",
            "flash_attention_backward_dkdv_hs64",
            "flash_attention_backward_dkdv_hs64_bf16",
            "flash_attention_backward_dkdv_hs128",
            "flash_attention_backward_dkdv_hs128_bf16",
            "flash_attention_backward_dq_hs64",
            "flash_attention_backward_dq_hs64_bf16",
            "flash_attention_backward_dq_hs64_bf16_q32",
            "flash_attention_backward_dq_hs128",
            "flash_attention_backward_dq_hs128_bf16",
        ],
    ),
    (
        "kernels/fused_residual_layernorm.cu",
        &[
            "residual_layernorm_forward",
            "residual_layernorm_forward_bf16",
        ],
    ),
    (
        "kernels/gelu.cu",
        &[
            "gelu_forward",
            "gelu_forward_bf16",
            "gelu_backward",
            "gelu_backward_bf16",
        ],
    ),
    (
        "kernels/global_norm.cu",
        &[
            "global_norm_partial",
            "global_norm_partial_bf16",
            "global_norm_final",
        ],
    ),
    (
        "kernels/layernorm.cu",
        &[
            "layernorm_forward",
            "layernorm_forward_bf16",
            "layernorm_backward_dinp",
            "layernorm_backward_dinp_bf16",
            "layernorm_backward_params_partial",
            "layernorm_backward_params_partial_bf16",
            "layernorm_backward_params_reduce",
            "layernorm_backward_params_reduce_bf16",
        ],
    ),
    (
        "kernels/matmul.cu",
        &[
            "add_bias",
            "add_bias_bf16",
            "bias_backward_partial",
            "bias_backward_partial_bf16",
            "column_sum_reduce",
            "column_sum_reduce_bf16",
        ],
    ),
    (
        "kernels/residual.cu",
        &[
            "residual_forward",
            "residual_forward_bf16",
            "residual_backward",
            "residual_backward_bf16",
        ],
    ),
];

/// Ok(true) when the kernels are built; Ok(false) when they are not and TRAIN_GPT2_NO_CUDA=1 says
/// that is expected; panics otherwise.
fn kernels_built() -> bool {
    if gpu::HAS_CUDA {
        return true;
    }
    if std::env::var("TRAIN_GPT2_NO_CUDA").is_ok_and(|v| v == "1") {
        eprintln!("TRAIN_GPT2_NO_CUDA=1: CPU-only build, PTX checks skipped");
        return false;
    }
    panic!(
        "this build has no CUDA kernels: nvcc was not found when it was built (run \
         tools/setup-cuda.sh or set NVCC/CUDA_HOME, then rebuild); set TRAIN_GPT2_NO_CUDA=1 to \
         accept a CPU-only build"
    );
}

#[test]
fn every_kernel_file_is_expected_here() {
    // The .cu files on disk are exactly the files listed above: a new kernel file must be added to
    // EXPECTED (and to gpu::ptx), a removed one removed.
    let dir = std::path::Path::new(&root()).join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .map(|n| format!("kernels/{n}"))
        .collect();
    on_disk.sort();
    let expected: Vec<String> = EXPECTED.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(on_disk, expected);
}

#[cfg(has_cuda)]
mod with_cuda {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    /// The embedded PTX text of `file`, inflated.
    fn ptx_of(file: &str) -> String {
        gpu::ptx::ALL
            .iter()
            .find(|p| p.file == file)
            .unwrap_or_else(|| panic!("{file} is not embedded in gpu::ptx::ALL"))
            .text()
            .unwrap()
    }

    fn ptxas() -> PathBuf {
        let nvcc = PathBuf::from(gpu::BUILD_NVCC.expect("a has_cuda build records its nvcc"));
        let ptxas = nvcc.with_file_name("ptxas");
        assert!(
            ptxas.is_file(),
            "ptxas not found next to {} (expected {}): the PTX cannot be checked",
            nvcc.display(),
            ptxas.display()
        );
        ptxas
    }

    /// Every file's PTX assembles for sm_80 and sm_90, and no bf16 kernel (the fast path) spills
    /// registers to local memory there (`ptxas -v`): a spill in a flash attention or classifier
    /// kernel would cost more than the tile sizes that caused it gain. The fp32 kernels are the
    /// reference path and may spill (flash attention's fp32 dQ at HS 128 does, 48 bytes).
    #[test]
    fn every_ptx_assembles_for_sm80_and_sm90() {
        assert!(kernels_built());
        let ptxas = ptxas();
        let dir = std::env::temp_dir().join(format!("train-gpt2-ptx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(gpu::ptx::ALL.len(), EXPECTED.len());
        let mut checked = 0;
        for f in gpu::ptx::ALL {
            let name = f.file.trim_start_matches("kernels/").replace(".cu", "");
            let src = dir.join(format!("{name}.ptx"));
            std::fs::write(&src, f.text().unwrap()).unwrap();
            for arch in ["sm_80", "sm_90"] {
                let cubin = dir.join(format!("{name}.{arch}.cubin"));
                let out = Command::new(&ptxas)
                    .arg(format!("-arch={arch}"))
                    .arg("-v")
                    .arg("-o")
                    .arg(&cubin)
                    .arg(&src)
                    .output()
                    .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
                assert!(
                    out.status.success(),
                    "ptxas -arch={arch} failed on the PTX of {}:\n{}{}",
                    f.file,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let size = std::fs::metadata(&cubin).map(|m| m.len()).unwrap_or(0);
                assert!(size > 0, "ptxas wrote no cubin for {} ({arch})", f.file);
                let info = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let spills = spilling_kernels(&info);
                let fast: Vec<_> = spills.iter().filter(|k| k.contains("bf16")).collect();
                assert!(
                    fast.is_empty(),
                    "bf16 kernels of {} spill registers on {arch}: {fast:?}\n{info}",
                    f.file
                );
                checked += info.matches("Compiling entry function").count();
            }
        }
        std::fs::remove_dir_all(&dir).ok();
        // ptxas -v reported on every kernel: two architectures of each name the tests expect
        let kernels: usize = EXPECTED.iter().map(|(_, names)| names.len()).sum();
        assert_eq!(
            checked,
            2 * kernels,
            "ptxas -v reported on {checked} kernels"
        );
    }

    /// The kernels that `ptxas -v`'s report says spill (a nonzero "bytes spill stores" line after
    /// their "Compiling entry function 'NAME'" line).
    fn spilling_kernels(info: &str) -> Vec<String> {
        let mut current = String::new();
        let mut spilling = Vec::new();
        for line in info.lines() {
            if let Some(rest) = line.split("Compiling entry function '").nth(1) {
                current = rest.split('\'').next().unwrap_or("").to_string();
            } else if let Some(at) = line.find(" bytes spill stores") {
                let stores = line[..at].split_whitespace().last().unwrap_or("0");
                if stores != "0" {
                    spilling.push(current.clone());
                }
            }
        }
        spilling
    }

    #[test]
    fn spills_are_read_from_ptxas_reports() {
        let info = "ptxas info    : Compiling entry function 'a_bf16' for 'sm_90'\n\
                    ptxas info    : Function properties for a_bf16\n\
                    \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                    ptxas info    : Compiling entry function 'b' for 'sm_90'\n\
                    ptxas info    : Function properties for b\n\
                    \x20   48 bytes stack frame, 48 bytes spill stores, 92 bytes spill loads\n";
        assert_eq!(spilling_kernels(info), vec!["b".to_string()]);
    }

    /// Every binary and test executable that can reach the GPU embeds all the kernels, and the
    /// GPU machines get them through `../shared/gpu/pack`'s `.gpu`, which the device tool carries
    /// only up to 64 MiB in all (about 20 such executables): the embedded PTX must stay small.
    /// Deflated it is about 0.6 MB today (5.7 MB of text, flash attention's 4.7 MB most of it).
    #[test]
    fn embedded_ptx_stays_small_enough_to_carry() {
        let deflated: usize = gpu::ptx::ALL.iter().map(|f| f.deflated.len()).sum();
        let text: usize = gpu::ptx::ALL.iter().map(|f| f.text().unwrap().len()).sum();
        println!("embedded PTX: {text} bytes of text, {deflated} deflated");
        assert!(
            deflated < 3 << 20,
            "the embedded PTX is {deflated} bytes deflated ({text} of text): each GPU test \
             executable carries it, and .gpu must stay under the device tool's 64 MiB"
        );
        assert!(text > 4 * deflated, "the PTX is not stored deflated");
    }

    #[test]
    fn every_expected_kernel_is_in_the_ptx() {
        assert!(kernels_built());
        for (file, names) in EXPECTED {
            let ptx = ptx_of(file);
            for name in *names {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "kernel {name} is missing from the PTX of {file}"
                );
            }
            // And nothing else: every .entry in the file is one we launch.
            let entries = ptx.matches(".entry ").count();
            assert_eq!(
                entries,
                names.len(),
                "{file} defines {entries} kernels, expected {names:?}"
            );
        }
    }

    #[test]
    fn fp32_kernels_are_compiled_without_fast_math() {
        // --use_fast_math turns '/', sqrtf and tanhf into these approximate instructions; the
        // accurate library versions never emit them (they may use rcp/ex2.approx internally).
        for f in gpu::ptx::ALL {
            let ptx = f.text().unwrap();
            for marker in ["div.approx", "div.full", "sqrt.approx", "tanh.approx"] {
                assert!(
                    !ptx.contains(marker),
                    "{} was compiled with fast math ({marker} in its PTX)",
                    f.file
                );
            }
        }
        // The AdamW kernel rounds every operation as the CPU twin does: no fused multiply-add.
        assert!(!ptx_of("kernels/adamw.cu").contains("fma."));
        // And the layer kernels were built for the virtual architecture the build says.
        let arch = gpu::CUDA_ARCH.expect("a has_cuda build records its architecture");
        let target = format!(".target {}", arch.replace("compute_", "sm_"));
        for f in gpu::ptx::ALL {
            assert!(
                f.text().unwrap().contains(&target),
                "{} lacks `{target}`",
                f.file
            );
        }
    }
}

#[cfg(not(has_cuda))]
#[test]
fn kernels_are_built() {
    // Fails in a CPU-only build unless TRAIN_GPT2_NO_CUDA=1 (see kernels_built).
    assert!(!kernels_built());
}

/// The crate root: `CARGO_MANIFEST_DIR` at run time (cargo, or .gpu/on-gpu.sh on the GPU machine,
/// where the compile-time path does not exist), else the one compiled in.
fn root() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}
