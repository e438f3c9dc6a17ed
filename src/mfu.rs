//! Model FLOPs utilisation: the FLOPs a training step needs by the model's arithmetic, against
//! what the device could do at peak in the precision in use.
//!
//! FLOPs per token of a training step (forward + backward) = 6N + 6*L*C*T, where N is the number of
//! parameters (the matrix products: 2 FLOPs per multiply-add, forward once and backward twice) and
//! 6*L*C*T counts the attention products Q.K^T and att.V (llm.c's estimate; it counts the full T
//! rather than the causal half).

use crate::config::GPT2Config;

/// The arithmetic the matrix products run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp32 on the CUDA cores.
    Fp32,
    /// fp32 inputs through TF32 tensor cores.
    Tf32,
    /// bf16 tensor cores.
    Bf16,
}

/// Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets: (name, fp32, tf32, bf16).
pub const PEAK_TFLOPS: [(&str, f64, f64, f64); 4] = [
    ("A100", 19.5, 156.0, 312.0),
    ("H100 PCIe", 51.2, 378.0, 756.0),
    ("H100", 66.9, 494.7, 989.4),
    ("H200", 66.9, 494.7, 989.4),
];

/// The peak TFLOP/s of the GPU called `device_name` (as the driver names it, e.g. "NVIDIA H100
/// 80GB HBM3") in `precision`, or None for a device not in the table. The NVL parts (H100 NVL,
/// H200 NVL) run at lower clocks than the SXM ones the H100 and H200 rows give: they are not in
/// the table (`--peak-tflops` gives their peak).
pub fn peak_tflops(device_name: &str, precision: Precision) -> Option<f64> {
    let upper = device_name.to_uppercase();
    if upper.contains("NVL") {
        return None;
    }
    let row = if upper.contains("H200") {
        PEAK_TFLOPS[3]
    } else if upper.contains("H100") && upper.contains("PCIE") {
        PEAK_TFLOPS[1]
    } else if upper.contains("H100") {
        PEAK_TFLOPS[2]
    } else if upper.contains("A100") {
        PEAK_TFLOPS[0]
    } else {
        return None;
    };
    Some(match precision {
        Precision::Fp32 => row.1,
        Precision::Tf32 => row.2,
        Precision::Bf16 => row.3,
    })
}

/// FLOPs per token of one training step at sequence length T.
pub fn flops_per_token(cfg: &GPT2Config, t: usize) -> f64 {
    let n = crate::params::num_parameters(cfg) as f64;
    6.0 * n + 6.0 * (cfg.num_layers * cfg.channels * t) as f64
}

/// The fraction of `peak_tflops` achieved by a step of `tokens` tokens (at sequence length T)
/// that took `seconds`.
pub fn mfu(cfg: &GPT2Config, t: usize, tokens: usize, seconds: f64, peak_tflops: f64) -> f64 {
    let achieved = flops_per_token(cfg, t) * tokens as f64 / seconds;
    achieved / (peak_tflops * 1e12)
}

/// The peak memory bandwidth in GB/s (10^9 bytes per second) of a device whose memory runs at
/// `memory_clock_khz` (as the driver reports it) on a bus of `bus_width_bits`: two transfers per
/// clock. None when the driver reports no figures (0).
pub fn peak_bandwidth_gbps(memory_clock_khz: i32, bus_width_bits: i32) -> Option<f64> {
    (memory_clock_khz > 0 && bus_width_bits > 0)
        .then(|| 2.0 * memory_clock_khz as f64 * 1e3 * bus_width_bits as f64 / 8.0 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_124m_flops_and_mfu() {
        let cfg = GPT2Config::from_descriptor("d12").unwrap();
        // 6 * 124,475,904 + 6 * 12 * 768 * 1024
        let f = flops_per_token(&cfg, 1024);
        assert_eq!(f, 6.0 * 124_475_904.0 + 6.0 * 12.0 * 768.0 * 1024.0);
        assert_eq!(f, 803_478_528.0);
        // B=16, T=1024 in 100 ms on a 989.4 TFLOP/s part: 16384 * f / 0.1 / 989.4e12
        let m = mfu(&cfg, 1024, 16 * 1024, 0.1, 989.4);
        assert!((m - 16384.0 * 803_478_528.0 / 0.1 / 989.4e12).abs() < 1e-12);
        assert!((m - 0.13305).abs() < 1e-4, "{m}");
    }

    #[test]
    fn peak_bandwidth_from_the_drivers_figures() {
        // H100 SXM: 2,619 MHz on 5,120 bits = 3,352 GB/s (data sheet: 3.35 TB/s); A100 80GB SXM:
        // 1,593 MHz, 5,120 bits = 2,039 GB/s (data sheet: 2,039 GB/s)
        let h100 = peak_bandwidth_gbps(2_619_000, 5120).unwrap();
        assert!((h100 - 3352.32).abs() < 1e-9, "{h100}");
        let a100 = peak_bandwidth_gbps(1_593_000, 5120).unwrap();
        assert!((a100 - 2039.04).abs() < 1e-9, "{a100}");
        assert_eq!(peak_bandwidth_gbps(0, 5120), None);
        assert_eq!(peak_bandwidth_gbps(2_619_000, 0), None);
        // the smallest figures the driver could report: 1 kHz on 1 bit, 2 x 1e3 / 8 bytes a second
        assert_eq!(peak_bandwidth_gbps(1, 1), Some(2.0 * 1e3 / 8.0 / 1e9));
    }

    #[test]
    fn peaks_by_device_name() {
        assert_eq!(
            peak_tflops("NVIDIA H100 80GB HBM3", Precision::Bf16),
            Some(989.4)
        );
        assert_eq!(
            peak_tflops("NVIDIA H100 PCIe", Precision::Tf32),
            Some(378.0)
        );
        assert_eq!(peak_tflops("NVIDIA H200", Precision::Fp32), Some(66.9));
        assert_eq!(
            peak_tflops("NVIDIA A100-SXM4-80GB", Precision::Bf16),
            Some(312.0)
        );
        assert_eq!(
            peak_tflops("NVIDIA GeForce RTX 4090", Precision::Bf16),
            None
        );
        // not the SXM parts' peaks
        assert_eq!(peak_tflops("NVIDIA H200 NVL", Precision::Bf16), None);
        assert_eq!(peak_tflops("NVIDIA H100 NVL", Precision::Bf16), None);
    }
}
