//! Helpers shared by the GPU test files (`mod common;` in each): the device, random inputs,
//! uploads and downloads in either storage type, and the elementwise comparisons. Each test file
//! uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]
#![cfg(has_cuda)]

use train_gpt2_cuda::gpu::float::{to_device_float, to_f32_vec};
use train_gpt2_cuda::gpu::{CudaSlice, DeviceFloat, Gpu};
use train_gpt2_cuda::rng::Rng;

/// One rounding to bf16 (8 significant bits) moves a value by at most BF16_U of its magnitude.
pub const BF16_U: f32 = 1.0 / 256.0;

/// The GPU, or a panic that says why there is none.
pub fn gpu() -> Gpu {
    Gpu::new().unwrap_or_else(|e| panic!("{e:#}"))
}

/// n values uniform in [-scale, scale).
pub fn rand(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * scale)
        .collect()
}

/// x rounded to T and uploaded.
pub fn up_t<T: DeviceFloat>(g: &Gpu, x: &[f32]) -> CudaSlice<T> {
    g.upload(&to_device_float::<T>(x)).unwrap()
}

/// A device buffer of T, widened to f32.
pub fn down_t<T: DeviceFloat>(g: &Gpu, x: &CudaSlice<T>) -> Vec<f32> {
    to_f32_vec(&g.download(x).unwrap())
}

/// x rounded to T and widened back (what the GPU sees as its T input): the identity for f32.
pub fn round_to<T: DeviceFloat>(x: &[f32]) -> Vec<f32> {
    to_f32_vec(&to_device_float::<T>(x))
}

/// |got - want| <= tol(i, want) everywhere (and no NaN where want has none); prints the worst.
#[track_caller]
pub fn assert_within(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize, f32) -> f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let t = tol(i, w);
        assert!(
            err <= t,
            "{what}[{i}]: gpu {g} vs cpu {w} (|diff| {err} > tolerance {t})"
        );
        if err > worst.1 {
            worst = (i, err);
        }
    }
    eprintln!("{what}: max |diff| {} at {}", worst.1, worst.0);
}

/// |got - want| <= atol + rtol * |want| everywhere.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_within(what, got, want, |_, w| atol + rtol * w.abs());
}

/// got and want bitwise equal.
#[track_caller]
pub fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}[{i}]: gpu {g} vs cpu {w} (must be bitwise equal)"
        );
    }
}
