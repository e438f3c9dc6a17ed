//! [`DeviceFloat`]: the storage types of the GPU engine's parameters, activations and gradients
//! (f32 and bf16). Kernels that exist in both precisions are C++ templates instantiated under two
//! `extern "C"` names, NAME (fp32) and NAME_bf16 (see `kernels/common.h`); a launcher generic over
//! `T: DeviceFloat` picks its instantiation with [`DeviceFloat::pick`].

use std::fmt::Debug;

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::bf16;

use crate::precision::Precision;

/// f32 or bf16 on the device; arithmetic is fp32 in either case.
pub trait DeviceFloat:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Debug + Send + Sync + Unpin + 'static
{
    /// The precision this type stores.
    const PRECISION: Precision;
    /// x rounded to nearest even.
    fn from_f32(x: f32) -> Self;
    /// Exact.
    fn to_f32(self) -> f32;
    /// The kernel instantiated for this type: `fp32` for f32, `bf16` for bf16.
    fn pick<'a, K>(fp32: &'a K, bf16: &'a K) -> &'a K;
}

impl DeviceFloat for f32 {
    const PRECISION: Precision = Precision::Fp32;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn pick<'a, K>(fp32: &'a K, _bf16: &'a K) -> &'a K {
        fp32
    }
}

impl DeviceFloat for bf16 {
    const PRECISION: Precision = Precision::Bf16;
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn pick<'a, K>(_fp32: &'a K, bf16: &'a K) -> &'a K {
        bf16
    }
}

/// Host values converted to `T` (round to nearest even).
pub fn to_device_float<T: DeviceFloat>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

/// Device-type values widened to f32 (exact).
pub fn to_f32_vec<T: DeviceFloat>(x: &[T]) -> Vec<f32> {
    x.iter().map(|&v| v.to_f32()).collect()
}
