//! The engine's GPU code on the emulated device (`tests/emu/device.rs`): a fake `libcuda.so` over
//! the host emulation of the kernels, found first on LD_LIBRARY_PATH by a subprocess.
//!
//! - `driver_*`: the fake driver through cudarc's safe API, each in a child process (this test
//!   binary, rerun with FAKECUDA_CHILD naming the test): memory (0xFF-filled, guarded, a capacity),
//!   copies, launches and the errors real CUDA gives (a refused launch; a fault, sticky), CUDA
//!   graphs (recorded work replayed, graph allocations) and what a capture forbids.
//! - `gpu_*_tests_pass_on_the_emulated_device`: every GPU test binary (`gpu_layers`,
//!   `gpu_flash_attention`, `gpu_matmul_lt`, `fused_residual_layernorm`, `profile`, `gpu_model`,
//!   `train_reference`:
//!   tests normally `#[ignore = "needs a CUDA GPU"]`) run with `--include-ignored` against the fakes.
//!   They are found next to this binary (cargo builds every test target before running any); the
//!   cuBLAS and cuBLASLt fakes must exist (`Gpu::new` loads both).
//!
//! All of it needs a build with the kernels (tests/ptx.rs fails a build without).
#![cfg(has_cuda)]

mod emu;

use std::path::{Path, PathBuf};
use std::process::Command;

use emu::device::{fake_cuda_dir, fake_cuda_env};

/// Whether this process is the child that runs `name`'s body on the emulated device.
fn is_child(name: &str) -> bool {
    std::env::var("FAKECUDA_CHILD").is_ok_and(|v| v == name)
}

/// Runs test `name` of this binary in a child process on the emulated device (with `env` added);
/// panics with its output unless it passed. Returns its stderr.
fn run_child(name: &str, env: &[(&str, &str)]) -> String {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .envs(fake_cuda_env())
        .env("FAKECUDA_CHILD", name)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} on the emulated device failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stderr.into_owned()
}

mod emulated_device_driver {
    use std::sync::Arc;

    use cudarc::driver::sys::{CUresult, CUstreamCaptureMode};
    use cudarc::driver::{
        CudaContext, CudaFunction, CudaStream, DriverError, LaunchConfig, PushKernelArg,
    };
    use cudarc::nvrtc::Ptx;
    use train_gpt2_cuda::gpu::ptx;

    use super::{is_child, run_child};

    fn setup() -> (Arc<CudaContext>, Arc<CudaStream>, CudaFunction) {
        let ctx = CudaContext::new(0).expect("the fake driver's context");
        // as the engine: one stream, no per-buffer events
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().unwrap();
        let module = ctx
            .load_module(Ptx::from_src(ptx::RESIDUAL.text().unwrap()))
            .unwrap();
        let f = module.load_function("residual_forward").unwrap();
        (ctx, stream, f)
    }

    /// residual_forward(out, a, b, n): out = a + b over n floats.
    fn add(
        stream: &Arc<CudaStream>,
        f: &CudaFunction,
        out: &mut cudarc::driver::CudaSlice<f32>,
        a: &cudarc::driver::CudaSlice<f32>,
        b: &cudarc::driver::CudaSlice<f32>,
        n: usize,
        cfg: LaunchConfig,
    ) -> Result<(), DriverError> {
        let mut l = stream.launch_builder(f);
        l.arg(out).arg(a).arg(b).arg(&n);
        // SAFETY: the arguments are residual_forward's (float*, const float*, const float*, size_t).
        unsafe { l.launch(cfg) }.map(|_| ())
    }

    fn err(code: CUresult) -> DriverError {
        DriverError(code)
    }

    #[test]
    fn driver_memory_copies_and_launches() {
        if !is_child("emulated_device_driver::driver_memory_copies_and_launches") {
            run_child(
                "emulated_device_driver::driver_memory_copies_and_launches",
                &[("FAKECUDA_MEMORY_BYTES", "67108864")],
            );
            return;
        }
        let (ctx, stream, f) = setup();
        assert_eq!(ctx.name().unwrap(), "Emulated CUDA device (host)");
        assert_eq!(ctx.compute_capability().unwrap(), (9, 0));
        assert!(ctx.has_async_alloc());
        assert_eq!(ctx.total_mem().unwrap(), 64 << 20);
        // fresh memory is 0xFF bytes: NaN
        // SAFETY: read back only to see the fill.
        let fresh = unsafe { stream.alloc::<f32>(5) }.unwrap();
        let bits: Vec<u32> = stream
            .clone_dtoh(&fresh)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(bits, vec![u32::MAX; 5]);
        let n = 1000;
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| 0.5 * i as f32).collect();
        let (da, db) = (
            stream.clone_htod(&a).unwrap(),
            stream.clone_htod(&b).unwrap(),
        );
        let mut out = stream.alloc_zeros::<f32>(n).unwrap();
        add(
            &stream,
            &f,
            &mut out,
            &da,
            &db,
            n,
            LaunchConfig::for_num_elems(n as u32),
        )
        .unwrap();
        let want: Vec<f32> = (0..n).map(|i| 1.5 * i as f32).collect();
        assert_eq!(stream.clone_dtoh(&out).unwrap(), want);
        let copy = stream.clone_dtod(&out).unwrap();
        stream.memset_zeros(&mut out).unwrap();
        assert_eq!(stream.clone_dtoh(&copy).unwrap(), want);
        assert_eq!(stream.clone_dtoh(&out).unwrap(), vec![0.0; n]);
        // a launch the GPU refuses (2048 threads per block): an error, not sticky
        let bad = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (2048, 1, 1),
            shared_mem_bytes: 0,
        };
        assert_eq!(
            add(&stream, &f, &mut out, &da, &db, n, bad),
            Err(err(CUresult::CUDA_ERROR_INVALID_VALUE))
        );
        // more dynamic shared memory than 48 KiB without the opt-in: refused too
        let big_smem = LaunchConfig {
            shared_mem_bytes: 64 * 1024,
            ..LaunchConfig::for_num_elems(n as u32)
        };
        assert_eq!(
            add(&stream, &f, &mut out, &da, &db, n, big_smem),
            Err(err(CUresult::CUDA_ERROR_INVALID_VALUE))
        );
        stream.synchronize().unwrap();
        // the capacity: 64 MiB here
        // SAFETY: never read.
        let too_big = unsafe { stream.alloc::<u8>(100 << 20) };
        assert_eq!(too_big.err(), Some(err(CUresult::CUDA_ERROR_OUT_OF_MEMORY)));
        let (free, total) = ctx.mem_get_info().unwrap();
        assert_eq!(total, 64 << 20);
        assert!(free < total);
        // events: host time stamps
        let e0 = stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        let e1 = stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap();
        assert!(e0.elapsed_ms(&e1).unwrap() >= 0.0);
    }

    #[test]
    fn driver_fault_is_sticky() {
        if !is_child("emulated_device_driver::driver_fault_is_sticky") {
            let stderr = run_child("emulated_device_driver::driver_fault_is_sticky", &[]);
            assert!(
                stderr.contains("past the end of a 400-byte device allocation"),
                "the fault report names the buffer:\n{stderr}"
            );
            return;
        }
        let (_ctx, stream, f) = setup();
        let (a, b) = (
            stream.clone_htod(&[1.0f32; 100]).unwrap(),
            stream.clone_htod(&[2.0f32; 200]).unwrap(),
        );
        let mut out = stream.alloc_zeros::<f32>(200).unwrap();
        // n = 200 reads past the end of the 100-float `a`
        let r = add(
            &stream,
            &f,
            &mut out,
            &a,
            &b,
            200,
            LaunchConfig::for_num_elems(200),
        );
        assert_eq!(r, Err(err(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS)));
        // sticky: everything after fails with it
        assert_eq!(
            stream.synchronize(),
            Err(err(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS))
        );
        assert!(stream.clone_htod(&[0.0f32; 4]).is_err());
        std::mem::forget((a, b, out)); // their frees would fail too
    }

    #[test]
    fn driver_graphs_replay_recorded_work() {
        if !is_child("emulated_device_driver::driver_graphs_replay_recorded_work") {
            let stderr = run_child(
                "emulated_device_driver::driver_graphs_replay_recorded_work",
                &[],
            );
            assert!(
                stderr.contains("a graph can only free its own allocations"),
                "{stderr}"
            );
            return;
        }
        let (ctx, stream, f) = setup();
        let n = 64;
        let a = stream.clone_htod(&vec![1.0f32; n]).unwrap();
        let mut out = stream.alloc_zeros::<f32>(n).unwrap();
        let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        stream.begin_capture(mode).unwrap();
        {
            // a graph allocation: scratch = a + a; out = scratch + a
            let mut scratch = stream.alloc_zeros::<f32>(n).unwrap();
            let cfg = LaunchConfig::for_num_elems(n as u32);
            add(&stream, &f, &mut scratch, &a, &a, n, cfg).unwrap();
            add(&stream, &f, &mut out, &scratch, &a, n, cfg).unwrap();
        }
        let graph = stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .unwrap()
            .expect("a graph");
        ctx.check_err().unwrap();
        // recorded, not run
        assert_eq!(stream.clone_dtoh(&out).unwrap(), vec![0.0; n]);
        graph.launch().unwrap();
        assert_eq!(stream.clone_dtoh(&out).unwrap(), vec![3.0; n]);
        // a replay reads the buffers as they are then
        let mut a2 = a;
        stream.memcpy_htod(&vec![2.0f32; n], &mut a2).unwrap();
        graph.launch().unwrap();
        assert_eq!(stream.clone_dtoh(&out).unwrap(), vec![6.0; n]);

        // what a capture forbids invalidates it
        stream.begin_capture(mode).unwrap();
        assert_eq!(
            ctx.synchronize(),
            Err(err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED))
        );
        assert_eq!(
            stream
                .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
                .err(),
            Some(err(CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED))
        );
        stream.begin_capture(mode).unwrap();
        assert_eq!(
            stream.clone_dtoh(&out).err(),
            Some(err(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)),
            "a copy to pageable memory cannot be captured"
        );
        assert!(stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .is_err());
        // freeing, during a capture, memory allocated before it
        let outside = stream.alloc_zeros::<f32>(4).unwrap();
        stream.begin_capture(mode).unwrap();
        drop(outside);
        assert_eq!(
            ctx.check_err(),
            Err(err(CUresult::CUDA_ERROR_INVALID_VALUE))
        );
        assert!(stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .is_err());
        // the context is still usable: nothing above was sticky
        graph.launch().unwrap();
        assert_eq!(stream.clone_dtoh(&out).unwrap(), vec![6.0; n]);
    }
}

/// The newest executable of test target `name` next to this one (target/<profile>/deps).
fn test_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let prefix = format!("{name}-");
    let newest = std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && !n.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    let (built, path) = newest.unwrap_or_else(|| {
        panic!(
            "no {name} test binary in {}: build it first (`cargo test --no-run`, or run `cargo \
             test` for every target)",
            deps.display()
        )
    });
    // `cargo test --test emulated_device` alone rebuilds only this file's binary: the one found
    // may predate its sources (and test old code) unless every target was built. Its sources: the
    // crate (src, kernels, build.rs), tests/NAME.rs and the modules it declares (`mod common;`).
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let test_file = root.join("tests").join(format!("{name}.rs"));
    let mut sources = vec![
        root.join("src"),
        root.join("kernels"),
        root.join("build.rs"),
    ];
    let text = std::fs::read_to_string(&test_file).unwrap_or_default();
    for module in text
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
    {
        sources.push(root.join("tests").join(module));
        sources.push(root.join("tests").join(format!("{module}.rs")));
    }
    sources.push(test_file);
    if let Some((changed, file)) = sources.iter().filter_map(|p| newest_file(p)).max() {
        assert!(
            built >= changed,
            "{} is older than {} (changed since it was built): rebuild every test first \
             (`cargo test --no-run`, with --release if this run is), or run `cargo test`",
            path.display(),
            file.display()
        );
    }
    path
}

/// The most recently modified file at or under `path` and its time (None: no file).
fn newest_file(path: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    if path.is_file() {
        let modified = std::fs::metadata(path).and_then(|m| m.modified());
        return modified.ok().map(|t| (t, path.to_path_buf()));
    }
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(path).ok()?.filter_map(|e| e.ok()) {
        if let Some(f) = newest_file(&entry.path()) {
            if newest.as_ref().is_none_or(|n| f.0 > n.0) {
                newest = Some(f);
            }
        }
    }
    newest
}

/// Runs `binary` (a test target) with its ignored tests on the emulated device, skipping the
/// tests named in `skip`; panics unless at least `min_passed` ran and all passed.
fn run_gpu_tests(binary: &str, skip: &[&str], min_passed: usize) {
    run_gpu_tests_scheduled(binary, skip, min_passed, None);
}

/// As [`run_gpu_tests`], with the emulated threads in the order of `schedule` when given
/// (`FAKECUDA_SCHEDULE`, else the caller's environment decides): an odd one runs each warp alone
/// up to its next barrier and lands every cp.async copy at once (tests/emu/runtime.cpp).
fn run_gpu_tests_scheduled(binary: &str, skip: &[&str], min_passed: usize, schedule: Option<u32>) {
    let bin = test_binary(binary);
    // `cargo test` builds every test target before running any; `cargo test --test
    // emulated_device` builds only this one, and a sibling built before a change to the library
    // would test the old code
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(theirs), Some(ours)) =
        (modified(&bin), modified(&std::env::current_exe().unwrap()))
    {
        if theirs < ours {
            eprintln!(
                "note: {} is older than this test binary; if the library changed since, run \
                 `cargo test --no-run` (or plain `cargo test`) first",
                bin.display()
            );
        }
    }
    let mut cmd = Command::new(&bin);
    cmd.args(["--include-ignored", "--test-threads=1"]);
    for s in skip {
        cmd.args(["--skip", s]);
    }
    if let Some(s) = schedule {
        cmd.env("FAKECUDA_SCHEDULE", s.to_string());
    }
    let out = cmd
        .envs(fake_cuda_env())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert!(
        out.status.success() && passed.is_some_and(|p| p >= min_passed),
        "{} on the emulated device: {} (expected at least {min_passed} passed)\n{stdout}\n{stderr}",
        bin.display(),
        out.status
    );
}

/// The cuBLAS and cuBLASLt fakes are there (`Gpu::new` loads both).
fn check_blas_fakes() {
    let dir = fake_cuda_dir();
    let missing: Vec<&str> = ["libcublas.so", "libcublasLt.so"]
        .into_iter()
        .filter(|l| !dir.join(l).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "the emulated device has no {missing:?}: Gpu::new loads cuBLAS and cuBLASLt, whose fakes \
         are tests/emu/fake_cuda/cublas.cpp and cublaslt.cpp"
    );
}

#[test]
fn gpu_layer_tests_pass_on_the_emulated_device() {
    check_blas_fakes();
    // every layer (the products through the cuBLAS fake), the launchers' argument checks, flash
    // attention, the cuBLASLt products with their epilogues, the fused residual + layernorm, the
    // profiler's counts
    run_gpu_tests("gpu_layers", &[], 20);
    // every launcher refuses a buffer of the wrong length (or misaligned, where it must not be),
    // naming it, and an empty batch is no work
    run_gpu_tests("gpu_lengths", &[], 3);
    run_gpu_tests("gpu_flash_attention", &[], 5);
    // and once more with the warps far apart and the cp.async copies landing at once: flash
    // attention's double-buffered tiles through the launchers, at T = 257
    run_gpu_tests_scheduled("gpu_flash_attention", &[], 5, Some(1));
    run_gpu_tests("gpu_matmul_lt", &[], 7);
    run_gpu_tests("fused_residual_layernorm", &[], 4);
    run_gpu_tests("profile", &[], 5);
}

#[test]
fn gpu_model_tests_pass_on_the_emulated_device() {
    check_blas_fakes();
    // the whole engine: fixtures against PyTorch and the CPU in both precisions and on both kernel
    // sets, training, determinism, CUDA graphs (about 5 minutes on 2 cores)
    run_gpu_tests("gpu_model", &[], 20);
    // the `train` command on the GPU against PyTorch's training loop, in fp32 and bf16
    run_gpu_tests("train_reference", &[], 5);
}
