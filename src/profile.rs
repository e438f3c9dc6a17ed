//! The `--profile` table: where a training step's time goes, by kernel family. An engine that can
//! time its kernels (the CUDA engine, with CUDA events: `gpu::profile`) adds each timed call to a
//! [`Profile`] with its [`Cost`], the FLOPs and bytes the call moves by the arithmetic of its
//! shapes, and each step's total time; the training loop prints [`Profile::table`] at the end of
//! the run. Everything here is plain arithmetic, independent of the device.
//!
//! The costs are the work a call must do at the least, not what its kernels happen to do:
//! - FLOPs (matmul, attention): 2*M*N*K per matrix product of (M,K) by (K,N). The matmul's forward
//!   is one product of (B*T, C) by (C, OC), its backward two (dinp and dweight); attention's
//!   forward is q k^T and att v over the B*NH heads, 2 * 2*B*NH*T*T*HS = 4*B*T*T*C (the full T*T,
//!   as cuBLAS computes it, not the causal half), its backward four such products, 8*B*T*T*C.
//! - bytes (every other family): each tensor argument read once and/or written once; a gradient
//!   that is accumulated (`+=`) counts as read and written. Activations, parameters and their
//!   gradients are elements of the model's storage type (4 bytes in fp32, 2 in bf16: the
//!   [`Profile`]'s `elem_bytes`); the layernorm statistics, the losses, AdamW's moments and master
//!   weights are fp32 and the tokens u32 in either (4 bytes). A kernel's own scratch (partial
//!   sums) is not counted, and neither are re-reads, so the GB/s column is the effective
//!   bandwidth, comparable with the device's peak.
//!
//! Each call belongs to a [`Pass`] of the step (forward, backward, update), and the table splits
//! each family's time into its forward and its backward calls' ("fwd ms", "bwd ms"): the two
//! passes of one family are often different kernels (flash attention's forward and backward).
//!
//! The table's "other" row is the step time that no family's calls account for: memsets, host <->
//! device copies, and the device idling while the host waits (the loss and the gradient norm are
//! read back within a step) or launches. With the families it sums to 100% of the step.

use std::ffi::CStr;
use std::fmt::Write as _;

/// The number of kernel families.
pub const NUM_FAMILIES: usize = 9;

/// A family of kernels: each launcher of `gpu::*` (and its CPU twin) belongs to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Encoder,
    Layernorm,
    Matmul,
    Attention,
    Gelu,
    Residual,
    Classifier,
    Adamw,
    GlobalNorm,
}

impl Family {
    /// Every family, in the order of a forward pass then the update.
    pub const ALL: [Family; NUM_FAMILIES] = [
        Family::Encoder,
        Family::Layernorm,
        Family::Matmul,
        Family::Attention,
        Family::Gelu,
        Family::Residual,
        Family::Classifier,
        Family::Adamw,
        Family::GlobalNorm,
    ];

    /// The family's name, as a C string for NVTX ranges (static: no allocation per range).
    pub fn label(self) -> &'static CStr {
        match self {
            Family::Encoder => c"encoder",
            Family::Layernorm => c"layernorm",
            Family::Matmul => c"matmul",
            Family::Attention => c"attention",
            Family::Gelu => c"gelu",
            Family::Residual => c"residual",
            Family::Classifier => c"classifier",
            Family::Adamw => c"adamw",
            Family::GlobalNorm => c"global_norm",
        }
    }

    /// The family's name, e.g. "global_norm".
    pub fn name(self) -> &'static str {
        // every label is ASCII
        self.label().to_str().unwrap_or("?")
    }

    /// The position in [`Family::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The part of a training step a call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward,
    Backward,
    /// The gradient norm and the optimizer step.
    Update,
}

/// What one call must compute and move at the least (see the file comment).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Floating-point operations (matmul and attention; 0 for the others).
    pub flops: f64,
    /// Elements of the storage type read plus written (the memory-bound families).
    pub elems: f64,
    /// Bytes read plus written at a fixed width whatever the storage type: fp32 statistics,
    /// losses and AdamW state, u32 tokens.
    pub fixed_bytes: f64,
}

/// The FLOPs of one matrix product of (M, K) by (K, N): a multiply and an add per term.
pub fn matmul_flops(m: usize, n: usize, k: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64
}

/// `n` fp32 values or u32 tokens as bytes.
fn b4(n: f64) -> f64 {
    4.0 * n
}

impl Cost {
    /// A cost of `flops` FLOPs.
    pub fn flops(flops: f64) -> Cost {
        Cost {
            flops,
            ..Cost::default()
        }
    }

    /// A cost of `elems` elements of the storage type and `fixed_bytes` bytes at a fixed width.
    pub fn memory(elems: f64, fixed_bytes: f64) -> Cost {
        Cost {
            flops: 0.0,
            elems,
            fixed_bytes,
        }
    }

    /// The bytes moved when the storage type has `elem_bytes` bytes an element.
    pub fn bytes(&self, elem_bytes: f64) -> f64 {
        self.elems * elem_bytes + self.fixed_bytes
    }

    /// matmul_forward: out (B,T,OC) = inp (B,T,C) @ weight (OC,C)^T (+ bias).
    pub fn matmul_forward(b: usize, t: usize, c: usize, oc: usize) -> Cost {
        Cost::flops(matmul_flops(b * t, oc, c))
    }

    /// matmul_backward: dinp (B,T,C) and dweight (OC,C), two products of the forward's size.
    pub fn matmul_backward(b: usize, t: usize, c: usize, oc: usize) -> Cost {
        Cost::flops(2.0 * matmul_flops(b * t, oc, c))
    }

    /// attention_forward: q k^T and att v per head, 4*B*T*T*C (whatever NH).
    pub fn attention_forward(b: usize, t: usize, c: usize) -> Cost {
        Cost::flops(2.0 * matmul_flops(t, t, c) * b as f64)
    }

    /// attention_backward: datt, dv, dq and dk per head, 8*B*T*T*C.
    pub fn attention_backward(b: usize, t: usize, c: usize) -> Cost {
        Cost::flops(4.0 * matmul_flops(t, t, c) * b as f64)
    }

    /// encoder_forward: tokens (B,T) and a row of wte and of wpe per position read, out (B,T,C)
    /// written.
    pub fn encoder_forward(b: usize, t: usize, c: usize) -> Cost {
        let (bt, btc) = ((b * t) as f64, (b * t * c) as f64);
        Cost::memory(3.0 * btc, b4(bt))
    }

    /// encoder_backward: tokens (B,T) and dout (B,T,C) read; a row of dwte per position (an upper
    /// bound when tokens repeat) and dwpe (T,C) accumulated.
    pub fn encoder_backward(b: usize, t: usize, c: usize) -> Cost {
        let (bt, btc, tc) = ((b * t) as f64, (b * t * c) as f64, (t * c) as f64);
        Cost::memory(btc + 2.0 * btc + 2.0 * tc, b4(bt))
    }

    /// layernorm_forward: inp (B,T,C), weight and bias (C) read; out (B,T,C), mean and rstd (B,T)
    /// written.
    pub fn layernorm_forward(b: usize, t: usize, c: usize) -> Cost {
        let (bt, btc, c) = ((b * t) as f64, (b * t * c) as f64, c as f64);
        Cost::memory(2.0 * btc + 2.0 * c, b4(2.0 * bt))
    }

    /// layernorm_backward: dout and inp (B,T,C), weight (C), mean and rstd (B,T) read; dinp
    /// (B,T,C), dweight and dbias (C) accumulated.
    pub fn layernorm_backward(b: usize, t: usize, c: usize) -> Cost {
        let (bt, btc, c) = ((b * t) as f64, (b * t * c) as f64, c as f64);
        Cost::memory(4.0 * btc + 5.0 * c, b4(2.0 * bt))
    }

    /// residual_layernorm_forward: inp1 and inp2 (B,T,C), weight and bias (C) read; the sum and
    /// the normalised out (B,T,C), mean and rstd (B,T) written: a residual_forward and a
    /// layernorm_forward less one write and one read of the sum.
    pub fn residual_layernorm_forward(b: usize, t: usize, c: usize) -> Cost {
        let (bt, btc, c) = ((b * t) as f64, (b * t * c) as f64, c as f64);
        Cost::memory(4.0 * btc + 2.0 * c, b4(2.0 * bt))
    }

    /// gelu_forward on N elements: inp read, out written.
    pub fn gelu_forward(n: usize) -> Cost {
        Cost::memory(2.0 * n as f64, 0.0)
    }

    /// gelu_backward on N elements: inp and dout read, dinp accumulated.
    pub fn gelu_backward(n: usize) -> Cost {
        Cost::memory(4.0 * n as f64, 0.0)
    }

    /// residual_forward on N elements: two inputs read, out written.
    pub fn residual_forward(n: usize) -> Cost {
        Cost::memory(3.0 * n as f64, 0.0)
    }

    /// residual_backward on N elements: dout read, dinp1 and dinp2 accumulated.
    pub fn residual_backward(n: usize) -> Cost {
        Cost::memory(5.0 * n as f64, 0.0)
    }

    /// The classifier's losses alone: the logits' V real columns and the targets (B,T) read,
    /// losses (B,T) written.
    pub fn classifier_losses(b: usize, t: usize, v: usize) -> Cost {
        let (bt, btv) = ((b * t) as f64, (b * t * v) as f64);
        Cost::memory(btv, b4(2.0 * bt))
    }

    /// The fused classifier: as [`Cost::classifier_losses`], and dlogits (B,T,Vp) written over
    /// the logits.
    pub fn classifier_fused(b: usize, t: usize, v: usize, vp: usize) -> Cost {
        let (bt, btv, btvp) = ((b * t) as f64, (b * t * v) as f64, (b * t * vp) as f64);
        Cost::memory(btv + btvp, b4(2.0 * bt))
    }

    /// adamw_update on N parameters: params, grads, m and v read, params, m and v written. With
    /// `master_weights` (bf16 storage) the fp32 master weights are read and written and the
    /// params only written: 28 bytes a parameter in both precisions.
    pub fn adamw(n: usize, master_weights: bool) -> Cost {
        let n = n as f64;
        if master_weights {
            Cost::memory(2.0 * n, b4(6.0 * n))
        } else {
            Cost::memory(3.0 * n, b4(4.0 * n))
        }
    }

    /// global_norm of N gradients: each read once.
    pub fn global_norm(n: usize) -> Cost {
        Cost::memory(n as f64, 0.0)
    }
}

/// The totals of one family over the profiled steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FamilyTotals {
    pub calls: u64,
    /// Milliseconds, summed over the calls.
    pub ms: f64,
    /// The part of `ms` in forward calls and in backward calls (the rest is update calls).
    pub forward_ms: f64,
    pub backward_ms: f64,
    /// How many of the calls were forward and backward calls.
    pub forward_calls: u64,
    pub backward_calls: u64,
    pub flops: f64,
    pub bytes: f64,
}

/// The totals of the profiled steps: each family's calls, time and cost, and the steps' time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// How many steps were profiled.
    pub steps: u64,
    /// Milliseconds, summed over the steps.
    pub step_ms: f64,
    /// By [`Family::index`].
    pub families: [FamilyTotals; NUM_FAMILIES],
    /// How the times were taken, for the table's title, e.g. "CUDA events".
    pub method: String,
    /// Bytes per element of the model's storage type (4 for fp32, 2 for bf16): what a
    /// [`Cost`]'s elements weigh.
    pub elem_bytes: f64,
    /// The device's peak TFLOP/s in the precision in use and its peak memory bandwidth in GB/s,
    /// when known: what the "% peak" column divides by.
    pub peak_tflops: Option<f64>,
    pub peak_gbps: Option<f64>,
}

/// One line of the table, per step (the totals divided by the number of steps).
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    /// A family's name, or "other".
    pub name: &'static str,
    /// None for "other".
    pub calls_per_step: Option<f64>,
    pub ms_per_step: f64,
    /// The part of `ms_per_step` in forward and in backward calls; None where the family had no
    /// call in that pass (and for "other").
    pub forward_ms_per_step: Option<f64>,
    pub backward_ms_per_step: Option<f64>,
    /// Percent of the step; the rows sum to 100.
    pub percent: f64,
    /// Achieved GB/s (10^9 bytes per second), for the families with a byte count.
    pub gbps: Option<f64>,
    /// Achieved TFLOP/s (10^12 FLOPs per second), for the families with a FLOP count.
    pub tflops: Option<f64>,
    /// The achieved rate in percent of the device's peak (TFLOP/s or GB/s, whichever the family
    /// has), when the peak is known.
    pub percent_of_peak: Option<f64>,
}

impl Profile {
    /// An empty profile whose times are taken by `method`, of a model whose storage type has
    /// `elem_bytes` bytes an element.
    pub fn new(method: &str, elem_bytes: usize) -> Profile {
        Profile {
            method: method.to_string(),
            elem_bytes: elem_bytes as f64,
            ..Profile::default()
        }
    }

    /// The same profile, its rates compared with the device's peaks: `tflops` TFLOP/s in the
    /// precision in use and `gbps` GB/s of memory bandwidth.
    pub fn with_peaks(self, tflops: Option<f64>, gbps: Option<f64>) -> Profile {
        Profile {
            peak_tflops: tflops,
            peak_gbps: gbps,
            ..self
        }
    }

    /// Adds one call of `family` in `pass` that took `ms` milliseconds and costs `cost`.
    pub fn add_call(&mut self, family: Family, pass: Pass, ms: f64, cost: Cost) {
        let f = &mut self.families[family.index()];
        f.calls += 1;
        f.ms += ms;
        match pass {
            Pass::Forward => {
                f.forward_calls += 1;
                f.forward_ms += ms;
            }
            Pass::Backward => {
                f.backward_calls += 1;
                f.backward_ms += ms;
            }
            Pass::Update => {}
        }
        f.flops += cost.flops;
        f.bytes += cost.bytes(self.elem_bytes);
    }

    /// Adds one step that took `ms` milliseconds (its calls added with [`Profile::add_call`]).
    pub fn add_step(&mut self, ms: f64) {
        self.steps += 1;
        self.step_ms += ms;
    }

    /// The totals of `family`.
    pub fn family(&self, family: Family) -> &FamilyTotals {
        &self.families[family.index()]
    }

    /// The rows of the table: every family (slowest first), then "other", the step time no family
    /// accounts for. The percentages are of the step time, or of the families' sum where that is
    /// larger (timer jitter), so that they always sum to 100. Empty when no step was profiled.
    pub fn rows(&self) -> Vec<ProfileRow> {
        if self.steps == 0 {
            return Vec::new();
        }
        let steps = self.steps as f64;
        let in_families: f64 = self.families.iter().map(|f| f.ms).sum();
        let total = self.step_ms.max(in_families);
        let percent = |ms: f64| if total > 0.0 { 100.0 * ms / total } else { 0.0 };
        let mut order = Family::ALL;
        // stable: equal times keep the forward-pass order
        order.sort_by(|a, b| self.family(*b).ms.total_cmp(&self.family(*a).ms));
        let mut rows: Vec<ProfileRow> = order
            .iter()
            .map(|&fam| {
                let f = self.family(fam);
                let secs = f.ms / 1e3;
                let rate = |x: f64, unit: f64| (x > 0.0 && secs > 0.0).then(|| x / secs / unit);
                let (gbps, tflops) = (rate(f.bytes, 1e9), rate(f.flops, 1e12));
                let of_peak = |x: Option<f64>, peak: Option<f64>| Some(100.0 * x? / peak?);
                let in_pass = |calls: u64, ms: f64| (calls > 0).then(|| ms / steps);
                ProfileRow {
                    name: fam.name(),
                    calls_per_step: Some(f.calls as f64 / steps),
                    ms_per_step: f.ms / steps,
                    forward_ms_per_step: in_pass(f.forward_calls, f.forward_ms),
                    backward_ms_per_step: in_pass(f.backward_calls, f.backward_ms),
                    percent: percent(f.ms),
                    gbps,
                    tflops,
                    percent_of_peak: of_peak(tflops, self.peak_tflops)
                        .or(of_peak(gbps, self.peak_gbps)),
                }
            })
            .collect();
        let other = total - in_families;
        rows.push(ProfileRow {
            name: "other",
            calls_per_step: None,
            ms_per_step: other / steps,
            forward_ms_per_step: None,
            backward_ms_per_step: None,
            percent: percent(other),
            gbps: None,
            tflops: None,
            percent_of_peak: None,
        });
        rows
    }

    /// The table the training loop prints: a title line, a header, one line per row of
    /// [`Profile::rows`] and a total.
    pub fn table(&self) -> String {
        let mut s = String::new();
        if self.steps == 0 {
            s.push_str("profile: no steps were profiled\n");
            return s;
        }
        let steps = self.steps as f64;
        let in_families: f64 = self.families.iter().map(|f| f.ms).sum();
        let total = self.step_ms.max(in_families) / steps;
        let _ = writeln!(
            s,
            "profile: {}, {:.3} ms per step, timed by {}",
            crate::text::count(self.steps, "step", "steps"),
            self.step_ms / steps,
            self.method
        );
        let peak = |x: Option<f64>, unit: &str| match x {
            Some(x) => format!("{x:.1} {unit}"),
            None => format!("unknown {unit}"),
        };
        let _ = writeln!(
            s,
            "% peak: of the device's {} and {} (memory)",
            peak(self.peak_tflops, "TFLOP/s"),
            peak(self.peak_gbps, "GB/s")
        );
        let _ = writeln!(
            s,
            "{:<12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "family",
            "calls/step",
            "ms/step",
            "fwd ms",
            "bwd ms",
            "% step",
            "GB/s",
            "TFLOP/s",
            "% peak"
        );
        let opt = |x: Option<f64>, digits: usize| match x {
            Some(x) => format!("{x:.digits$}"),
            None => "-".to_string(),
        };
        for r in self.rows() {
            let _ = writeln!(
                s,
                "{:<12} {:>10} {:>10.3} {:>9} {:>9} {:>9.1} {:>9} {:>9} {:>8}",
                r.name,
                opt(r.calls_per_step, 1),
                r.ms_per_step,
                opt(r.forward_ms_per_step, 3),
                opt(r.backward_ms_per_step, 3),
                r.percent,
                opt(r.gbps, 1),
                opt(r.tflops, 2),
                opt(r.percent_of_peak, 1),
            );
        }
        let _ = writeln!(
            s,
            "{:<12} {:>10} {:>10.3} {:>9} {:>9} {:>9.1}",
            "total", "", total, "", "", 100.0
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-9 * want.abs().max(1.0)
    }

    #[test]
    fn matmul_flops_of_the_qkv_product() {
        // B*T = 256 rows of C = 768 into 3C = 2304: 2 * 256 * 768 * 2304
        let f = Cost::matmul_forward(4, 64, 768, 2304);
        assert_eq!(f.flops, 905_969_664.0);
        assert_eq!((f.elems, f.fixed_bytes), (0.0, 0.0));
        assert_eq!(
            Cost::matmul_backward(4, 64, 768, 2304).flops,
            1_811_939_328.0
        );
        assert_eq!(matmul_flops(2, 3, 5), 60.0);
    }

    #[test]
    fn attention_flops_count_both_products_per_head() {
        // B=2, T=8, C=16 (any NH): forward 2 products of 2*T*T*C per sequence = 4*2*64*16
        assert_eq!(Cost::attention_forward(2, 8, 16).flops, 8192.0);
        assert_eq!(Cost::attention_backward(2, 8, 16).flops, 16384.0);
        // the same by the heads, NH = 4 of HS = 4: B*NH heads, 2 products of (T,HS) by (HS,T)
        assert_eq!(
            Cost::attention_forward(2, 8, 16).flops,
            (2 * 4) as f64 * 2.0 * matmul_flops(8, 8, 4)
        );
    }

    #[test]
    fn memory_bound_bytes_by_hand() {
        // B=2, T=3, C=4: BT = 6, BTC = 24. (fp32 bytes, bf16 bytes) of each cost.
        let both = |c: Cost| (c.bytes(4.0), c.bytes(2.0));
        // layernorm forward: reads 24 + 4 + 4, writes 24 (storage type) and mean, rstd 6 + 6
        // (fp32): 56 elements and 12 floats
        assert_eq!(Cost::layernorm_forward(2, 3, 4), Cost::memory(56.0, 48.0));
        assert_eq!(both(Cost::layernorm_forward(2, 3, 4)), (272.0, 160.0));
        // backward: reads dout 24, inp 24, w 4; dinp 24+24, dw 4+4, db 4+4 -> 116 elements; mean
        // and rstd 6 + 6 floats
        assert_eq!(both(Cost::layernorm_backward(2, 3, 4)), (512.0, 280.0));
        // residual + layernorm: inp1, inp2 24 + 24, w, b 4 + 4, sum and out 24 + 24 -> 104; 12 floats
        assert_eq!(
            both(Cost::residual_layernorm_forward(2, 3, 4)),
            (464.0, 256.0)
        );
        // encoder forward: wte rows 24, wpe rows 24, out 24 -> 72 elements; tokens 6 (u32)
        assert_eq!(both(Cost::encoder_forward(2, 3, 4)), (312.0, 168.0));
        // encoder backward: dout 24, dwte rows 24+24, dwpe (T,C) 12+12 -> 96; tokens 6
        assert_eq!(both(Cost::encoder_backward(2, 3, 4)), (408.0, 216.0));
        assert_eq!(both(Cost::gelu_forward(10)), (80.0, 40.0));
        assert_eq!(both(Cost::gelu_backward(10)), (160.0, 80.0));
        assert_eq!(both(Cost::residual_forward(10)), (120.0, 60.0));
        assert_eq!(both(Cost::residual_backward(10)), (200.0, 100.0));
        // classifier at V=5, Vp=8: losses reads 6*5 logits; 6 targets read, 6 losses written
        assert_eq!(both(Cost::classifier_losses(2, 3, 5)), (168.0, 108.0));
        // fused: and writes 6*8 dlogits
        assert_eq!(both(Cost::classifier_fused(2, 3, 5, 8)), (360.0, 204.0));
        // AdamW, fp32: params r/w, grads r (3 elements), m and v r/w (4 floats) = 28 bytes; bf16
        // with master weights: grads r, params w (2 elements), master, m and v r/w (6 floats) =
        // 4 + 24 = 28 bytes too
        assert_eq!(Cost::adamw(100, false).bytes(4.0), 2800.0);
        assert_eq!(Cost::adamw(100, true).bytes(2.0), 2800.0);
        assert_eq!(Cost::adamw(100, true).bytes(4.0), 3200.0);
        assert_eq!(both(Cost::global_norm(100)), (400.0, 200.0));
    }

    /// A profile adds each call's bytes at its storage type's width.
    #[test]
    fn bytes_at_the_profiles_element_width() {
        for (elem_bytes, want) in [(4, 272.0 + 2800.0), (2, 160.0 + 2800.0)] {
            let mut p = Profile::new("test", elem_bytes);
            let lnf = Cost::layernorm_forward(2, 3, 4);
            p.add_call(Family::Layernorm, Pass::Forward, 1.0, lnf);
            let adamw = Cost::adamw(100, elem_bytes == 2);
            p.add_call(Family::Layernorm, Pass::Update, 1.0, adamw);
            assert_eq!(p.family(Family::Layernorm).bytes, want);
        }
    }

    #[test]
    fn family_names_and_indices() {
        let names: Vec<&str> = Family::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "encoder",
                "layernorm",
                "matmul",
                "attention",
                "gelu",
                "residual",
                "classifier",
                "adamw",
                "global_norm"
            ]
        );
        for (i, f) in Family::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }

    /// Two steps of 10 ms: matmul 3 qkv-sized calls a step (2 forward, 1 backward), 6 ms a step;
    /// layernorm 2 forward calls a step, 2 ms a step, of B=4, T=64, C=768; the rest of the step
    /// (2 ms) is "other".
    fn two_steps() -> Profile {
        let mut p = Profile::new("CUDA events", 4);
        for _ in 0..2 {
            for pass in [Pass::Forward, Pass::Forward, Pass::Backward] {
                p.add_call(
                    Family::Matmul,
                    pass,
                    2.0,
                    Cost::matmul_forward(4, 64, 768, 2304),
                );
            }
            for _ in 0..2 {
                let cost = Cost::layernorm_forward(4, 64, 768);
                p.add_call(Family::Layernorm, Pass::Forward, 1.0, cost);
            }
            p.add_step(10.0);
        }
        p
    }

    /// Steps below the timer's resolution (0 ms, calls of 0 ms): shares of 0, no rates, no NaN.
    #[test]
    fn a_step_of_0_ms_has_no_nan() {
        let mut p = Profile::new("CUDA events", 4);
        p.add_call(Family::Gelu, Pass::Forward, 0.0, Cost::gelu_forward(10));
        p.add_step(0.0);
        for row in p.rows() {
            assert_eq!(row.percent, 0.0, "{}", row.name);
            assert_eq!((row.gbps, row.tflops), (None, None), "{}", row.name);
        }
        assert!(!p.table().contains("NaN"), "{}", p.table());
    }

    #[test]
    fn rows_per_step_with_rates_and_other() {
        let rows = two_steps().rows();
        assert_eq!(rows.len(), NUM_FAMILIES + 1);
        let row = |name: &str| rows.iter().find(|r| r.name == name).unwrap().clone();
        let mm = row("matmul");
        assert_eq!(mm.calls_per_step, Some(3.0));
        assert_eq!(mm.ms_per_step, 6.0);
        // 2 forward calls of 2 ms a step, 1 backward
        assert_eq!(mm.forward_ms_per_step, Some(4.0));
        assert_eq!(mm.backward_ms_per_step, Some(2.0));
        assert!(close(mm.percent, 60.0));
        // 3 * 905,969,664 FLOPs in 6 ms = 0.452984832 TFLOP/s
        assert!(close(mm.tflops.unwrap(), 0.452984832), "{:?}", mm.tflops);
        assert_eq!(mm.gbps, None);
        let ln = row("layernorm");
        assert_eq!(ln.calls_per_step, Some(2.0));
        assert_eq!(ln.forward_ms_per_step, Some(2.0));
        assert_eq!(ln.backward_ms_per_step, None);
        assert!(close(ln.percent, 20.0));
        // 2 * 4 * (2*196608 + 2*768 + 2*256) bytes = 3,162,112 bytes in 2 ms = 1.581056 GB/s
        assert!(close(ln.gbps.unwrap(), 1.581056), "{:?}", ln.gbps);
        assert_eq!(ln.tflops, None);
        let other = row("other");
        assert_eq!(other.calls_per_step, None);
        assert_eq!(other.forward_ms_per_step, None);
        assert!(close(other.ms_per_step, 2.0));
        assert!(close(other.percent, 20.0));
        // slowest first, "other" last; families never called have 0 calls and no rates
        assert_eq!(rows[0].name, "matmul");
        assert_eq!(rows[1].name, "layernorm");
        assert_eq!(rows.last().unwrap().name, "other");
        let gelu = row("gelu");
        assert_eq!((gelu.calls_per_step, gelu.ms_per_step), (Some(0.0), 0.0));
        assert_eq!((gelu.gbps, gelu.tflops), (None, None));
        let sum: f64 = rows.iter().map(|r| r.percent).sum();
        assert!(close(sum, 100.0), "{sum}");
    }

    #[test]
    fn families_longer_than_the_step_leave_no_other() {
        let mut p = Profile::new("test", 4);
        p.add_call(Family::Gelu, Pass::Forward, 3.0, Cost::gelu_forward(1000));
        p.add_call(
            Family::Residual,
            Pass::Backward,
            2.0,
            Cost::residual_forward(1000),
        );
        p.add_step(4.0);
        let rows = p.rows();
        let pct = |name: &str| rows.iter().find(|r| r.name == name).unwrap().percent;
        assert!(close(pct("gelu"), 60.0));
        assert!(close(pct("residual"), 40.0));
        assert_eq!(pct("other"), 0.0);
    }

    #[test]
    fn table_text() {
        let table = two_steps().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "profile: 2 steps, 10.000 ms per step, timed by CUDA events"
        );
        assert_eq!(
            lines[1],
            "% peak: of the device's unknown TFLOP/s and unknown GB/s (memory)"
        );
        assert_eq!(
            lines[2],
            "family       calls/step    ms/step    fwd ms    bwd ms    % step      GB/s   TFLOP/s   % peak"
        );
        assert_eq!(
            lines[3],
            "matmul              3.0      6.000     4.000     2.000      60.0         -      0.45        -"
        );
        assert_eq!(
            lines[4],
            "layernorm           2.0      2.000     2.000         -      20.0       1.6         -        -"
        );
        assert_eq!(
            lines[NUM_FAMILIES + 3],
            "other                 -      2.000         -         -      20.0         -         -        -"
        );
        assert_eq!(
            lines[NUM_FAMILIES + 4],
            "total                       10.000                         100.0"
        );
        assert_eq!(lines.len(), NUM_FAMILIES + 5);
        // with the device's peaks: matmul 0.452984832 TFLOP/s of 2 = 22.6%, layernorm 1.581056
        // GB/s of 4 = 39.5%
        let table = two_steps().with_peaks(Some(2.0), Some(4.0)).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[1],
            "% peak: of the device's 2.0 TFLOP/s and 4.0 GB/s (memory)"
        );
        assert_eq!(
            lines[3],
            "matmul              3.0      6.000     4.000     2.000      60.0         -      0.45     22.6"
        );
        assert_eq!(
            lines[4],
            "layernorm           2.0      2.000     2.000         -      20.0       1.6         -     39.5"
        );
        assert_eq!(
            Profile::new("x", 4).table(),
            "profile: no steps were profiled\n"
        );
    }
}
