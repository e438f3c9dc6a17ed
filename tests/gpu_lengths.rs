//! Every GPU launcher checks the length of every buffer it is given, before it launches anything:
//! a buffer one element short or one too long is an error that names the kernel and the buffer
//! (`"layernorm_forward: rstd has 5 elements, expected B*T = 6"`), never a launch that reads or
//! writes past the buffer's end (on a GPU, a fault that poisons the context or, worse, someone
//! else's memory). The buffers that must be 16-byte aligned (cuBLASLt's operands, flash
//! attention's) are checked too, and every other buffer works misaligned. And an empty batch (B =
//! 0; N = 0 for the elementwise kernels) is no work, as on the CPU: Ok, nothing launched that
//! fails, nothing changed.
//!
//! Each case lists a launcher's buffers with their right lengths for given sizes, and calls it.
//! The call with the right lengths must succeed (so the case itself is right); then each buffer in
//! turn is made one element shorter, and one longer, and the call must fail naming it. The first
//! buffer of an elementwise launcher (the one whose length sets N: `params`, `out`, ...) is not
//! checked against anything; making it shorter must fail on another buffer's length, which is what
//! `Sets::N` says. A scratch buffer is "at least" so long: only the shorter one fails.
//!
//! The mutation sweep `tools/rust-mutants` found that deleting one of these checks (layernorm's,
//! the classifier's, AdamW's, ...) or an alignment check (cuBLASLt's dbias) failed no test, nor
//! did skipping the early return of an empty batch: the other tests pass the right lengths and non-empty batches only. Every test here is
//! `#[ignore = "needs a CUDA GPU"]`; the emulated device runs them in `cargo test`
//! (tests/emulated_device.rs).
// Every launcher exists only in a build with the kernels (tests/ptx.rs fails a build without).
#![cfg(has_cuda)]

mod on_gpu {
    use anyhow::Result;
    use half::bf16;
    use train_gpt2_cuda::gpu::launch::buckets_len;
    use train_gpt2_cuda::gpu::{
        attention_backward_scratch_len, attention_forward_scratch_len,
        flash_attention_backward_scratch_len, CudaSlice, CudaView, CudaViewMut, Gpu,
    };
    use train_gpt2_cuda::verify::VERIFY_ADAMW;

    // Small sizes, none equal to another (a check against the wrong dimension would pass
    // otherwise): B*T = 6 rows, C = 8 (64 for flash attention: HS = 64), NH = 2, OC = 16 (a
    // multiple of 8, as cuBLASLt's GELU epilogue wants), V = 5 of Vp = 24, 7 positions in wpe, 10
    // weights for AdamW and the elementwise kernels.
    const T: usize = 3;
    const C: usize = 8;
    const NH: usize = 2;
    const OC: usize = 16;
    const V: usize = 5;
    const VP: usize = 24;
    const MAXT: usize = 7;
    const FC: usize = 64;

    /// The sizes that vary between the tests: B (so B*T), and the elementwise kernels' N.
    struct D {
        b: usize,
        n: usize,
    }
    const SIZES: D = D { b: 2, n: 10 };
    const EMPTY: D = D { b: 0, n: 0 };

    /// What a buffer holds and where.
    #[derive(Clone, Copy)]
    enum Kind {
        F32,
        Bf16,
        U32,
        /// token ids on the host (`encoder_backward`)
        HostU32,
    }

    /// How the launcher judges a buffer's length.
    #[derive(Clone, Copy, PartialEq)]
    enum Sets {
        /// exactly its length, named in the error when wrong
        Exact,
        /// its length is N; a shorter one fails on another buffer
        N,
        /// at least its length (a scratch buffer)
        AtLeast,
    }

    /// What every f32 and bf16 buffer starts as (exact in bf16).
    const FILL: f32 = 0.5;

    /// A device buffer and the offset its view starts at (1: misaligned), or token ids on the host.
    enum Buf {
        F32(CudaSlice<f32>, usize),
        Bf16(CudaSlice<bf16>, usize),
        U32(CudaSlice<u32>, usize),
        HostU32(Vec<u32>),
    }

    impl Buf {
        /// A view of `len` elements of FILL (token ids 0), `off` elements into its buffer (whose
        /// first `off` elements are FILL too).
        fn new(g: &Gpu, kind: Kind, len: usize, off: usize) -> Buf {
            let n = len + off;
            match kind {
                Kind::F32 => Buf::F32(g.upload(&vec![FILL; n]).unwrap(), off),
                Kind::Bf16 => Buf::Bf16(g.upload(&vec![bf16::from_f32(FILL); n]).unwrap(), off),
                Kind::U32 => Buf::U32(g.zeros(n).unwrap(), off),
                Kind::HostU32 => Buf::HostU32(vec![0; len]),
            }
        }
        /// Whether the whole buffer still holds what `new` put there.
        fn untouched(&self, g: &Gpu) -> bool {
            match self {
                Buf::F32(s, _) => g.download(s).unwrap().iter().all(|&x| x == FILL),
                Buf::Bf16(s, _) => g.download(s).unwrap().iter().all(|&x| x.to_f32() == FILL),
                Buf::U32(s, _) => g.download(s).unwrap().iter().all(|&x| x == 0),
                Buf::HostU32(v) => v.iter().all(|&x| x == 0),
            }
        }
        fn fv(&self) -> CudaView<'_, f32> {
            match self {
                Buf::F32(s, off) => s.slice(*off..),
                _ => panic!("not an f32 buffer"),
            }
        }
        fn fm(&mut self) -> CudaViewMut<'_, f32> {
            match self {
                Buf::F32(s, off) => s.slice_mut(*off..),
                _ => panic!("not an f32 buffer"),
            }
        }
        fn hv(&self) -> CudaView<'_, bf16> {
            match self {
                Buf::Bf16(s, off) => s.slice(*off..),
                _ => panic!("not a bf16 buffer"),
            }
        }
        fn hm(&mut self) -> CudaViewMut<'_, bf16> {
            match self {
                Buf::Bf16(s, off) => s.slice_mut(*off..),
                _ => panic!("not a bf16 buffer"),
            }
        }
        fn uv(&self) -> CudaView<'_, u32> {
            match self {
                Buf::U32(s, off) => s.slice(*off..),
                _ => panic!("not a u32 buffer"),
            }
        }
        fn host(&self) -> &[u32] {
            match self {
                Buf::HostU32(v) => v,
                _ => panic!("not a host buffer"),
            }
        }
    }

    type Call = fn(&Gpu, &D, &mut [Buf]) -> Result<()>;

    struct Case {
        /// the launcher (`Gpu::` method)
        launcher: &'static str,
        /// what its errors start with: the kernel's name
        kernel: &'static str,
        /// the buffers that must be 16-byte aligned (cuBLASLt's, flash attention's); a view of
        /// any other one element into its buffer must work
        aligned: &'static [&'static str],
        /// name (as the launcher's errors say it), right length, kind, how it is judged
        bufs: Vec<(&'static str, usize, Kind, Sets)>,
        call: Call,
    }

    /// `[a, b, c] = bufs` with a clear panic if the case lists another number.
    macro_rules! split {
        ($bufs:expr, $($x:ident),+) => {
            let [$($x),+] = $bufs else { panic!("the case lists another number of buffers") };
        };
    }

    fn cases(d: &D) -> Vec<Case> {
        use Kind::{Bf16, HostU32, F32, U32};
        use Sets::{AtLeast, Exact, N as SetsN};
        let (n, btc, bt) = (d.n, d.b * T * C, d.b * T);
        let btt = d.b * NH * T * T;
        let (fbtc, fbnht) = (d.b * T * FC, d.b * T); // NH = 1
        vec![
            Case {
                launcher: "adamw_update",
                kernel: "adamw_update",
                aligned: &[],
                bufs: vec![
                    ("params", n, F32, SetsN),
                    ("grads", n, F32, Exact),
                    ("m", n, F32, Exact),
                    ("v", n, F32, Exact),
                ],
                call: |g, _, b| {
                    split!(b, p, gr, m, v);
                    g.adamw_update(
                        &mut p.fm(),
                        &gr.fv(),
                        &mut m.fm(),
                        &mut v.fm(),
                        &VERIFY_ADAMW,
                        1,
                        1.0,
                    )
                },
            },
            Case {
                launcher: "adamw_update_mixed",
                kernel: "adamw_update_mixed",
                aligned: &[],
                bufs: vec![
                    ("params", n, Bf16, SetsN),
                    ("master", n, F32, Exact),
                    ("grads", n, Bf16, Exact),
                    ("m", n, F32, Exact),
                    ("v", n, F32, Exact),
                ],
                call: |g, _, b| {
                    split!(b, p, master, gr, m, v);
                    g.adamw_update_mixed(
                        &mut p.hm(),
                        &mut master.fm(),
                        &gr.hv(),
                        &mut m.fm(),
                        &mut v.fm(),
                        &VERIFY_ADAMW,
                        1,
                        1.0,
                        7,
                        0,
                    )
                },
            },
            Case {
                launcher: "attention_forward",
                kernel: "attention_forward",
                aligned: &[],
                bufs: vec![
                    ("out", btc, F32, Exact),
                    ("preatt", btt, F32, Exact),
                    ("att", btt, F32, Exact),
                    ("inp", 3 * btc, F32, Exact),
                    (
                        "scratch",
                        attention_forward_scratch_len(d.b, T, C),
                        F32,
                        AtLeast,
                    ),
                ],
                call: |g, d, b| {
                    split!(b, out, preatt, att, inp, scratch);
                    g.attention_forward(
                        &mut out.fm(),
                        &mut preatt.fm(),
                        &mut att.fm(),
                        &inp.fv(),
                        d.b,
                        T,
                        C,
                        NH,
                        &mut scratch.fm(),
                    )
                },
            },
            Case {
                launcher: "attention_backward",
                kernel: "attention_backward",
                aligned: &[],
                bufs: vec![
                    ("dinp", 3 * btc, F32, Exact),
                    ("dpreatt", btt, F32, Exact),
                    ("datt", btt, F32, Exact),
                    ("dout", btc, F32, Exact),
                    ("inp", 3 * btc, F32, Exact),
                    ("att", btt, F32, Exact),
                    (
                        "scratch",
                        attention_backward_scratch_len(d.b, T, C),
                        F32,
                        AtLeast,
                    ),
                ],
                call: |g, d, b| {
                    split!(b, dinp, dpreatt, datt, dout, inp, att, scratch);
                    g.attention_backward(
                        &mut dinp.fm(),
                        &mut dpreatt.fm(),
                        &mut datt.fm(),
                        &dout.fv(),
                        &inp.fv(),
                        &att.fv(),
                        d.b,
                        T,
                        C,
                        NH,
                        &mut scratch.fm(),
                    )
                },
            },
            Case {
                launcher: "fused_classifier",
                kernel: "fused_classifier",
                aligned: &[],
                bufs: vec![
                    ("logits", bt * VP, F32, Exact),
                    ("losses", bt, F32, Exact),
                    ("targets", bt, U32, Exact),
                    ("row_stats", 2 * bt, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, logits, losses, targets, stats);
                    g.fused_classifier(
                        &mut logits.fm(),
                        &mut losses.fm(),
                        1.0 / (d.b * T).max(1) as f32,
                        &targets.uv(),
                        d.b,
                        T,
                        V,
                        VP,
                        Some(&stats.fv()),
                    )
                },
            },
            Case {
                launcher: "classifier_losses",
                // the losses-only launch of the fused_classifier kernel
                kernel: "fused_classifier",
                aligned: &[],
                bufs: vec![
                    ("logits", bt * VP, F32, Exact),
                    ("losses", bt, F32, Exact),
                    ("targets", bt, U32, Exact),
                    ("row_stats", 2 * bt, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, logits, losses, targets, stats);
                    g.classifier_losses(
                        &logits.fv(),
                        &mut losses.fm(),
                        &targets.uv(),
                        d.b,
                        T,
                        V,
                        VP,
                        Some(&mut stats.fm()),
                    )
                },
            },
            Case {
                launcher: "encoder_forward",
                kernel: "encoder_forward",
                aligned: &[],
                bufs: vec![
                    ("out", btc, F32, Exact),
                    ("inp", bt, U32, Exact),
                    ("wte", VP * C, F32, Exact),
                    ("wpe", MAXT * C, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, out, inp, wte, wpe);
                    g.encoder_forward(&mut out.fm(), &inp.uv(), &wte.fv(), &wpe.fv(), d.b, T, C)
                },
            },
            Case {
                launcher: "encoder_backward",
                kernel: "encoder_backward",
                aligned: &[],
                bufs: vec![
                    ("dwte", VP * C, F32, Exact),
                    ("dwpe", MAXT * C, F32, Exact),
                    ("dout", btc, F32, Exact),
                    ("inp", bt, HostU32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, dwte, dwpe, dout, inp);
                    g.encoder_backward(
                        &mut dwte.fm(),
                        &mut dwpe.fm(),
                        &dout.fv(),
                        inp.host(),
                        d.b,
                        T,
                        C,
                    )
                },
            },
            Case {
                launcher: "encoder_backward_buckets",
                kernel: "encoder_backward",
                aligned: &[],
                bufs: vec![
                    ("dwte", VP * C, F32, Exact),
                    ("dwpe", MAXT * C, F32, Exact),
                    ("dout", btc, F32, Exact),
                    ("buckets", buckets_len(bt), U32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, dwte, dwpe, dout, buckets);
                    let (mut dwte, mut dwpe, buckets) = (dwte.fm(), dwpe.fm(), buckets.uv());
                    // SAFETY: buckets of zeros index within bounds: tokens 0 < Vp, offsets 0 <=
                    // B*T (every bucket empty) and positions 0 < B*T.
                    unsafe {
                        g.encoder_backward_buckets(
                            &mut dwte,
                            &mut dwpe,
                            &dout.fv(),
                            &buckets,
                            d.b,
                            T,
                            C,
                        )
                    }
                },
            },
            Case {
                launcher: "flash_attention_forward",
                kernel: "flash_attention_forward",
                aligned: &["out", "qkv"],
                bufs: vec![
                    ("out", fbtc, F32, Exact),
                    ("lse", fbnht, F32, Exact),
                    ("qkv", 3 * fbtc, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, out, lse, qkv);
                    g.flash_attention_forward(
                        &mut out.fm(),
                        &mut lse.fm(),
                        &qkv.fv(),
                        d.b,
                        T,
                        FC,
                        1,
                    )
                },
            },
            Case {
                launcher: "flash_attention_backward",
                kernel: "flash_attention_backward",
                aligned: &["dqkv", "dout", "qkv", "out"],
                bufs: vec![
                    ("dqkv", 3 * fbtc, F32, Exact),
                    ("dout", fbtc, F32, Exact),
                    ("qkv", 3 * fbtc, F32, Exact),
                    ("out", fbtc, F32, Exact),
                    ("lse", fbnht, F32, Exact),
                    (
                        "scratch",
                        flash_attention_backward_scratch_len(d.b, T, FC, 1),
                        F32,
                        AtLeast,
                    ),
                ],
                call: |g, d, b| {
                    split!(b, dqkv, dout, qkv, out, lse, scratch);
                    g.flash_attention_backward(
                        &mut dqkv.fm(),
                        &dout.fv(),
                        &qkv.fv(),
                        &out.fv(),
                        &lse.fv(),
                        d.b,
                        T,
                        FC,
                        1,
                        &mut scratch.fm(),
                    )
                },
            },
            Case {
                launcher: "gelu_forward",
                kernel: "gelu_forward",
                aligned: &[],
                bufs: vec![("out", n, F32, SetsN), ("inp", n, F32, Exact)],
                call: |g, _, b| {
                    split!(b, out, inp);
                    g.gelu_forward(&mut out.fm(), &inp.fv())
                },
            },
            Case {
                launcher: "gelu_backward",
                kernel: "gelu_backward",
                aligned: &[],
                bufs: vec![
                    ("dinp", n, F32, SetsN),
                    ("inp", n, F32, Exact),
                    ("dout", n, F32, Exact),
                ],
                call: |g, _, b| {
                    split!(b, dinp, inp, dout);
                    g.gelu_backward(&mut dinp.fm(), &inp.fv(), &dout.fv())
                },
            },
            Case {
                launcher: "layernorm_forward",
                kernel: "layernorm_forward",
                aligned: &[],
                bufs: vec![
                    ("out", btc, F32, Exact),
                    ("mean", bt, F32, Exact),
                    ("rstd", bt, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", C, F32, Exact),
                    ("bias", C, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, out, mean, rstd, inp, w, bias);
                    g.layernorm_forward(
                        &mut out.fm(),
                        &mut mean.fm(),
                        &mut rstd.fm(),
                        &inp.fv(),
                        &w.fv(),
                        &bias.fv(),
                        d.b,
                        T,
                        C,
                    )
                },
            },
            Case {
                launcher: "layernorm_backward",
                kernel: "layernorm_backward",
                aligned: &[],
                bufs: vec![
                    ("dinp", btc, F32, Exact),
                    ("dweight", C, F32, Exact),
                    ("dbias", C, F32, Exact),
                    ("dout", btc, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", C, F32, Exact),
                    ("mean", bt, F32, Exact),
                    ("rstd", bt, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, dinp, dw, db, dout, inp, w, mean, rstd);
                    g.layernorm_backward(
                        &mut dinp.fm(),
                        &mut dw.fm(),
                        &mut db.fm(),
                        &dout.fv(),
                        &inp.fv(),
                        &w.fv(),
                        &mean.fv(),
                        &rstd.fv(),
                        d.b,
                        T,
                        C,
                    )
                },
            },
            Case {
                launcher: "residual_layernorm_forward",
                kernel: "residual_layernorm_forward",
                aligned: &[],
                bufs: vec![
                    ("residual_out", btc, F32, Exact),
                    ("ln_out", btc, F32, Exact),
                    ("mean", bt, F32, Exact),
                    ("rstd", bt, F32, Exact),
                    ("inp1", btc, F32, Exact),
                    ("inp2", btc, F32, Exact),
                    ("weight", C, F32, Exact),
                    ("bias", C, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, res, ln, mean, rstd, inp1, inp2, w, bias);
                    g.residual_layernorm_forward(
                        &mut res.fm(),
                        &mut ln.fm(),
                        &mut mean.fm(),
                        &mut rstd.fm(),
                        &inp1.fv(),
                        &inp2.fv(),
                        &w.fv(),
                        &bias.fv(),
                        d.b,
                        T,
                        C,
                    )
                },
            },
            Case {
                launcher: "matmul_forward",
                kernel: "matmul_forward",
                aligned: &[],
                bufs: vec![
                    ("out", bt * OC, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", OC * C, F32, Exact),
                    ("bias", OC, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, out, inp, w, bias);
                    g.matmul_forward(
                        &mut out.fm(),
                        &inp.fv(),
                        &w.fv(),
                        Some(&bias.fv()),
                        d.b,
                        T,
                        C,
                        OC,
                    )
                },
            },
            Case {
                launcher: "matmul_backward",
                kernel: "matmul_backward",
                aligned: &[],
                bufs: vec![
                    ("dinp", btc, F32, Exact),
                    ("dweight", OC * C, F32, Exact),
                    ("dbias", OC, F32, Exact),
                    ("dout", bt * OC, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", OC * C, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, dinp, dw, db, dout, inp, w);
                    g.matmul_backward(
                        &mut dinp.fm(),
                        &mut dw.fm(),
                        Some(&mut db.fm()),
                        &dout.fv(),
                        &inp.fv(),
                        &w.fv(),
                        d.b,
                        T,
                        C,
                        OC,
                    )
                },
            },
            Case {
                launcher: "matmul_forward_lt",
                kernel: "matmul_forward_lt",
                aligned: &["out", "inp", "weight", "bias"],
                bufs: vec![
                    ("out", bt * OC, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", OC * C, F32, Exact),
                    ("bias", OC, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, out, inp, w, bias);
                    g.matmul_forward_lt(
                        &mut out.fm(),
                        &inp.fv(),
                        &w.fv(),
                        Some(&bias.fv()),
                        d.b,
                        T,
                        C,
                        OC,
                    )
                },
            },
            Case {
                launcher: "matmul_forward_gelu_lt",
                kernel: "matmul_forward_gelu_lt",
                aligned: &["out_gelu", "pre_gelu", "inp", "weight", "bias"],
                bufs: vec![
                    ("out_gelu", bt * OC, F32, Exact),
                    ("pre_gelu", bt * OC, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", OC * C, F32, Exact),
                    ("bias", OC, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, out, pre, inp, w, bias);
                    g.matmul_forward_gelu_lt(
                        &mut out.fm(),
                        &mut pre.fm(),
                        &inp.fv(),
                        &w.fv(),
                        &bias.fv(),
                        d.b,
                        T,
                        C,
                        OC,
                    )
                },
            },
            Case {
                launcher: "matmul_backward_lt",
                kernel: "matmul_backward_lt",
                aligned: &["dinp", "dweight", "dbias", "dout", "inp", "weight"],
                bufs: vec![
                    ("dinp", btc, F32, Exact),
                    ("dweight", OC * C, F32, Exact),
                    ("dbias", OC, F32, Exact),
                    ("dout", bt * OC, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", OC * C, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, dinp, dw, db, dout, inp, w);
                    g.matmul_backward_lt(
                        &mut dinp.fm(),
                        true,
                        &mut dw.fm(),
                        Some(&mut db.fm()),
                        &dout.fv(),
                        &inp.fv(),
                        &w.fv(),
                        d.b,
                        T,
                        C,
                        OC,
                    )
                },
            },
            Case {
                launcher: "matmul_backward_dgelu_lt",
                kernel: "matmul_backward_dgelu_lt",
                aligned: &[
                    "dpre", "dweight", "dbias", "dout", "inp", "weight", "pre_gelu",
                ],
                bufs: vec![
                    ("dpre", btc, F32, Exact),
                    ("dweight", OC * C, F32, Exact),
                    ("dbias", OC, F32, Exact),
                    ("dout", bt * OC, F32, Exact),
                    ("inp", btc, F32, Exact),
                    ("weight", OC * C, F32, Exact),
                    ("pre_gelu", btc, F32, Exact),
                ],
                call: |g, d, b| {
                    split!(b, dpre, dw, db, dout, inp, w, pre);
                    g.matmul_backward_dgelu_lt(
                        &mut dpre.fm(),
                        &mut dw.fm(),
                        Some(&mut db.fm()),
                        &dout.fv(),
                        &inp.fv(),
                        &w.fv(),
                        &pre.fv(),
                        d.b,
                        T,
                        C,
                        OC,
                    )
                },
            },
            Case {
                launcher: "residual_forward",
                kernel: "residual_forward",
                aligned: &[],
                bufs: vec![
                    ("out", n, F32, SetsN),
                    ("inp1", n, F32, Exact),
                    ("inp2", n, F32, Exact),
                ],
                call: |g, _, b| {
                    split!(b, out, inp1, inp2);
                    g.residual_forward(&mut out.fm(), &inp1.fv(), &inp2.fv())
                },
            },
            Case {
                launcher: "residual_backward",
                kernel: "residual_backward",
                aligned: &[],
                bufs: vec![
                    ("dinp1", n, F32, Exact),
                    ("dinp2", n, F32, Exact),
                    ("dout", n, F32, SetsN),
                ],
                call: |g, _, b| {
                    split!(b, dinp1, dinp2, dout);
                    g.residual_backward(&mut dinp1.fm(), &mut dinp2.fm(), &dout.fv())
                },
            },
        ]
    }

    /// The case's buffers with the right lengths, but buffer `which` `delta` longer (-1, 0, +1).
    fn buffers(g: &Gpu, case: &Case, which: usize, delta: isize) -> Vec<Buf> {
        offset_buffers(g, case, which, delta, usize::MAX)
    }

    /// [`buffers`], and buffer `misaligned` a view one element into its buffer.
    fn offset_buffers(
        g: &Gpu,
        case: &Case,
        which: usize,
        delta: isize,
        misaligned: usize,
    ) -> Vec<Buf> {
        let lens = case.bufs.iter().enumerate().map(|(i, &(_, len, kind, _))| {
            let len = if i == which {
                len.checked_add_signed(delta).unwrap()
            } else {
                len
            };
            Buf::new(g, kind, len, (i == misaligned) as usize)
        });
        lens.collect()
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn every_buffer_length_is_checked() {
        let g = Gpu::new().unwrap();
        let mut checked = 0;
        for case in cases(&SIZES) {
            let (f, k) = (case.launcher, case.kernel);
            let mut right = buffers(&g, &case, usize::MAX, 0);
            if let Err(e) = (case.call)(&g, &SIZES, &mut right) {
                panic!("{f} with the right lengths: {e:#}");
            }
            g.synchronize().unwrap();
            for (i, &(name, len, _, sets)) in case.bufs.iter().enumerate() {
                for delta in [-1isize, 1] {
                    let wrong = len.checked_add_signed(delta).unwrap();
                    let result = (case.call)(&g, &SIZES, &mut buffers(&g, &case, i, delta));
                    if sets == Sets::AtLeast && delta > 0 {
                        if let Err(e) = result {
                            panic!("{f} with {name} one element longer than it needs: {e:#}");
                        }
                        continue;
                    }
                    let e = match result {
                        Ok(()) => panic!("{f} accepted {name} of {wrong} elements (not {len})"),
                        Err(e) => format!("{e:#}"),
                    };
                    let expected = match sets {
                        Sets::N => format!("{k}: "),
                        _ => format!("{k}: {name} has {wrong} elements"),
                    };
                    assert!(
                        e.starts_with(&expected) && e.contains(" elements"),
                        "{f} with {name} of {wrong} elements (not {len}) said {e:?}, not \
                         {expected:?}..."
                    );
                    checked += 1;
                }
            }
        }
        // every launcher's every buffer, both ways (a scratch only shorter)
        assert_eq!(checked, 227, "the cases changed: update the count");
        // nothing above faulted the device
        g.synchronize().unwrap();
    }

    /// The buffers the kernels read and write with 16-byte accesses that nothing else makes safe
    /// (cuBLASLt's operands, flash attention's tiles) must be 16-byte aligned: a view one element
    /// into its buffer is an error naming it. Every other buffer may be misaligned: the launcher
    /// takes its scalar path (under the emulation, a packed access to a misaligned address faults
    /// the launch, as on the GPU).
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn misaligned_buffers_are_refused_or_work() {
        let g = Gpu::new().unwrap();
        let (mut refused, mut worked) = (0, 0);
        for case in cases(&SIZES) {
            let (f, k) = (case.launcher, case.kernel);
            for (i, &(name, _, kind, _)) in case.bufs.iter().enumerate() {
                if matches!(kind, Kind::HostU32) {
                    continue;
                }
                let result =
                    (case.call)(&g, &SIZES, &mut offset_buffers(&g, &case, usize::MAX, 0, i));
                if case.aligned.contains(&name) {
                    let e = format!(
                        "{:#}",
                        result.err().unwrap_or_else(|| {
                            panic!("{f} accepted {name} one element into its buffer")
                        })
                    );
                    let expected = format!("{k}: {name} is not 16-byte aligned");
                    assert!(e.starts_with(&expected), "{f}: {e:?}, not {expected:?}...");
                    refused += 1;
                } else {
                    if let Err(e) = result {
                        panic!("{f} with {name} one element into its buffer: {e:#}");
                    }
                    g.synchronize()
                        .unwrap_or_else(|e| panic!("{f} with {name} misaligned: {e:#}"));
                    worked += 1;
                }
            }
        }
        assert_eq!(
            (refused, worked),
            (28, 86),
            "the cases changed: update the counts"
        );
    }

    /// B = 0 (so B*T = 0) and N = 0 are no work, as on the CPU: every launcher returns Ok without
    /// launching anything that fails, and leaves the buffers that still have elements (weights,
    /// their gradients, embeddings) as they were: a gradient is accumulated into, never reset.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn an_empty_batch_is_no_work() {
        let g = Gpu::new().unwrap();
        for case in cases(&EMPTY) {
            let f = case.launcher;
            let mut bufs = buffers(&g, &case, usize::MAX, 0);
            if let Err(e) = (case.call)(&g, &EMPTY, &mut bufs) {
                panic!("{f} with B = 0 and N = 0: {e:#}");
            }
            g.synchronize()
                .unwrap_or_else(|e| panic!("{f} with B = 0 and N = 0: {e:#}"));
            for (buf, &(name, ..)) in bufs.iter().zip(&case.bufs) {
                assert!(buf.untouched(&g), "{f} with B = 0 and N = 0 changed {name}");
            }
        }
    }
}
