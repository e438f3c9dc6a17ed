//! The llm.c file formats: checkpoints (v3 fp32, v5 bf16), debug states and tokenizer files.
//!
//! The reference is tests/fixtures/llmc_*.bin, written by an independent writer
//! (tools/write_llmc_fixtures.py, Python stdlib only) with every value a formula of its index; the
//! formulas are repeated here. Our writers must reproduce those files byte for byte, and every bad
//! input must be an error that names the file and what is wrong.

use half::bf16;
use std::path::{Path, PathBuf};
use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::formats::checkpoint::{
    read_checkpoint, read_checkpoint_bf16, read_checkpoint_config, write_checkpoint, Checkpoint,
    CheckpointPrecision,
};
use train_gpt2_cuda::formats::debug_state::{read_debug_state, write_debug_state, DebugState};
use train_gpt2_cuda::formats::tokenizer_file::{
    read_tokenizer_file, write_tokenizer_file, TokenizerFile,
};
use train_gpt2_cuda::formats::{write_file_atomic, write_file_atomic_with, StagedFiles};
use train_gpt2_cuda::params::{num_parameters, split};

// ---------------------------------------------------------------------------------------------
// The fixtures' contents, as in tools/write_llmc_fixtures.py.

/// maxT=8, V=10, Vp=16, L=2, NH=2, C=4.
fn cfg() -> GPT2Config {
    GPT2Config::new(8, 10, 16, 2, 2, 4).unwrap()
}
const V: usize = 10;
const VP: usize = 16;
const C: usize = 4;
const B: usize = 2;
const T: usize = 3;
const NUM_PARAMS: usize = 592;
const LOSS: f32 = 2.418367;
const TOKEN_LENS: [usize; 10] = [1, 2, 3, 5, 8, 13, 255, 1, 4, 6];
const EOT: u32 = 9;

fn is_wte_padding(i: usize) -> bool {
    (V * C..VP * C).contains(&i)
}
fn param(i: usize) -> f32 {
    if is_wte_padding(i) {
        0.0
    } else {
        ((i % 97) as f64 / 97.0 - 0.5) as f32
    }
}
fn grad(i: usize) -> f32 {
    if is_wte_padding(i) {
        0.0
    } else {
        (((i * 7) % 101) as f64 / 101.0 * 0.02 - 0.01) as f32
    }
}
fn logit(i: usize) -> f32 {
    ((i % 13) as f64 / 13.0 * 4.0 - 2.0) as f32
}
fn x_token(i: usize) -> u32 {
    ((7 * i + 3) % V) as u32
}
fn y_token(i: usize) -> u32 {
    ((7 * i + 4) % V) as u32
}
fn token_bytes(k: usize) -> Vec<u8> {
    (0..TOKEN_LENS[k])
        .map(|j| ((k * 37 + j * 11 + 200) % 256) as u8)
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(&root()).join("tests/fixtures").join(name)
}

fn fixture_state() -> DebugState {
    DebugState {
        b: B,
        t: T,
        x: (0..B * T).map(x_token).collect(),
        y: (0..B * T).map(y_token).collect(),
        logits: (0..B * T * V).map(logit).collect(),
        loss: LOSS,
        grads: (0..NUM_PARAMS).map(grad).collect(),
    }
}

fn fixture_tokens() -> Vec<Vec<u8>> {
    (0..V).map(token_bytes).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "train-gpt2-cuda-formats-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Writes `bytes` to a file named `name` and returns its path.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The whole error chain of `r`, which must be an error.
fn err<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

/// Asserts that `msg` names `path` and contains every one of `parts`.
fn assert_msg(msg: &str, path: &Path, parts: &[&str]) {
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
    for p in parts {
        assert!(msg.contains(p), "error lacks '{p}': {msg}");
    }
}

/// `bytes` with header[idx] set to `value`.
fn with_header(bytes: &[u8], idx: usize, value: i32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[4 * idx..4 * idx + 4].copy_from_slice(&value.to_le_bytes());
    b
}

/// A few thousand deterministic f32 values of all magnitudes and both signs (a 64-bit LCG).
fn arbitrary_f32s(n: usize) -> Vec<f32> {
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mant = ((s >> 40) as f64) / (1u64 << 24) as f64 - 0.5; // [-0.5, 0.5)
            let exp = ((s >> 8) % 40) as i32 - 20;
            (mant * 2f64.powi(exp)) as f32
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Checkpoints.

#[test]
fn fixture_checkpoint_v3_has_the_formula_values() {
    let path = fixture("llmc_model_v3.bin");
    let ck = read_checkpoint(&path).unwrap();
    assert_eq!(ck.config, cfg());
    assert_eq!(num_parameters(&cfg()), NUM_PARAMS);
    assert_eq!(ck.params.len(), NUM_PARAMS);
    for (i, &p) in ck.params.iter().enumerate() {
        assert_eq!(p.to_bits(), param(i).to_bits(), "param {i}");
    }
    // The layout: wte's padding rows are zero, wpe starts after Vp*C values.
    let w = split(&ck.config, &ck.params);
    assert!(w.wte[V * C..].iter().all(|&x| x == 0.0));
    assert_eq!(w.wpe[0], param(VP * C));
    assert_eq!(w.lnfb[C - 1], param(NUM_PARAMS - 1));
    assert_eq!(
        read_checkpoint_config(&path).unwrap(),
        (cfg(), CheckpointPrecision::Fp32)
    );
}

#[test]
fn fixture_checkpoint_v5_has_the_formula_values_rounded_to_nearest_even() {
    let path = fixture("llmc_model_v5.bin");
    let ck = read_checkpoint(&path).unwrap();
    assert_eq!(ck.config, cfg());
    assert_eq!(
        read_checkpoint_config(&path).unwrap(),
        (cfg(), CheckpointPrecision::Bf16)
    );
    let (mut rounded, mut rounded_up) = (0, 0);
    for (i, &p) in ck.params.iter().enumerate() {
        let exact = param(i);
        let want = bf16::from_f32(exact).to_f32();
        assert_eq!(p.to_bits(), want.to_bits(), "param {i}");
        // The low 16 bits of a bf16 widened to f32 are zero.
        assert_eq!(p.to_bits() & 0xFFFF, 0, "param {i}");
        rounded += (p != exact) as usize;
        rounded_up += (p.to_bits() != exact.to_bits() & 0xFFFF_0000) as usize;
    }
    // The fixture does exercise the rounding, and a writer that truncated would have failed above.
    assert!(rounded > 400, "{rounded}");
    assert!(rounded_up > 100, "{rounded_up}");

    // bf16 access: v5 as stored, v3 rounded the same way.
    let (c5, raw5) = read_checkpoint_bf16(&path).unwrap();
    let (c3, raw3) = read_checkpoint_bf16(&fixture("llmc_model_v3.bin")).unwrap();
    assert_eq!((c5, c3), (cfg(), cfg()));
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&raw5), bits(&raw3));
    let bytes = std::fs::read(&path).unwrap();
    for (i, x) in raw5.iter().enumerate() {
        let stored = u16::from_le_bytes([bytes[1024 + 2 * i], bytes[1024 + 2 * i + 1]]);
        assert_eq!(x.to_bits(), stored, "param {i}");
    }
}

#[test]
fn written_checkpoints_equal_the_independent_writers_bytes() {
    let dir = TempDir::new("ck-bytes");
    let params: Vec<f32> = (0..NUM_PARAMS).map(param).collect();
    for (precision, name) in [
        (CheckpointPrecision::Fp32, "llmc_model_v3.bin"),
        (CheckpointPrecision::Bf16, "llmc_model_v5.bin"),
    ] {
        let out = dir.path(name);
        write_checkpoint(&out, &cfg(), &params, precision).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(fixture(name)).unwrap(),
            "{name}"
        );
    }
    // No temporary file is left behind.
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["llmc_model_v3.bin", "llmc_model_v5.bin"]);
}

#[test]
fn checkpoint_round_trips() {
    let dir = TempDir::new("ck-roundtrip");
    // A config with V = Vp and a single layer, different from the fixtures'.
    let cfg = GPT2Config::new(5, 7, 7, 1, 3, 6).unwrap();
    let n = num_parameters(&cfg);
    let params = arbitrary_f32s(n);
    let p3 = dir.path("v3.bin");
    write_checkpoint(&p3, &cfg, &params, CheckpointPrecision::Fp32).unwrap();
    assert_eq!(std::fs::metadata(&p3).unwrap().len() as usize, 1024 + 4 * n);
    let ck = read_checkpoint(&p3).unwrap();
    assert_eq!(
        ck,
        Checkpoint {
            config: cfg,
            params: params.clone()
        }
    );

    // bf16: values already representable round-trip exactly.
    let exact: Vec<f32> = params
        .iter()
        .map(|&x| f32::from_bits(x.to_bits() & 0xFFFF_0000))
        .collect();
    let p5 = dir.path("v5.bin");
    write_checkpoint(&p5, &cfg, &exact, CheckpointPrecision::Bf16).unwrap();
    assert_eq!(std::fs::metadata(&p5).unwrap().len() as usize, 1024 + 2 * n);
    assert_eq!(read_checkpoint(&p5).unwrap().params, exact);

    // Arbitrary values round to nearest even, and a second round trip changes nothing.
    write_checkpoint(&p5, &cfg, &params, CheckpointPrecision::Bf16).unwrap();
    let once = read_checkpoint(&p5).unwrap().params;
    for (i, (&got, &x)) in once.iter().zip(&params).enumerate() {
        assert_eq!(got, bf16::from_f32(x).to_f32(), "param {i}");
    }
    write_checkpoint(&p5, &cfg, &once, CheckpointPrecision::Bf16).unwrap();
    assert_eq!(read_checkpoint(&p5).unwrap().params, once);
}

#[test]
fn bf16_rounding_matches_hand_computed_bit_patterns() {
    // (f32 bits, the bf16 bits it must become)
    let cases: [(u32, u16); 12] = [
        (0x3F80_0000, 0x3F80), // 1.0
        (0x3F80_8000, 0x3F80), // 1.00390625: exactly halfway, ties to even (down)
        (0x3F81_8000, 0x3F82), // 1.01171875: exactly halfway, ties to even (up)
        (0x3F80_8001, 0x3F81), // one f32 ulp above halfway: up
        (0x3F81_7FFF, 0x3F81), // one f32 ulp below halfway: down
        (0xBF80_8000, 0xBF80), // -1.00390625: ties to even, sign kept
        (0xBF81_8000, 0xBF82), // -1.01171875
        (0x4049_0FDB, 0x4049), // pi: low half 0x0FDB < 0x8000, down
        (0x3DCC_CCCD, 0x3DCD), // 0.1: low half 0xCCCD > 0x8000, up
        (0x7F7F_FFFF, 0x7F80), // f32::MAX rounds up to +inf
        (0x0000_0001, 0x0000), // the smallest subnormal rounds to +0
        (0x8000_0000, 0x8000), // -0.0 stays -0.0
    ];
    let dir = TempDir::new("ck-bf16-bits");
    let cfg = cfg();
    let mut params = vec![0.5f32; NUM_PARAMS];
    for (i, &(bits, _)) in cases.iter().enumerate() {
        params[i] = f32::from_bits(bits);
    }
    let path = dir.path("bits.bin");
    write_checkpoint(&path, &cfg, &params, CheckpointPrecision::Bf16).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let back = read_checkpoint(&path).unwrap().params;
    for (i, &(bits, want)) in cases.iter().enumerate() {
        let stored = u16::from_le_bytes([bytes[1024 + 2 * i], bytes[1024 + 2 * i + 1]]);
        assert_eq!(stored, want, "f32 bits {bits:#010x}: stored {stored:#06x}");
        assert_eq!(back[i].to_bits(), (want as u32) << 16, "case {i}");
    }
    // 0.5 = 0x3F000000 is exact in bf16.
    assert!(back[cases.len()..].iter().all(|&x| x == 0.5));
}

#[test]
fn bad_checkpoints_are_errors_that_say_what_is_wrong() {
    let dir = TempDir::new("ck-bad");
    let good3 = std::fs::read(fixture("llmc_model_v3.bin")).unwrap();
    let good5 = std::fs::read(fixture("llmc_model_v5.bin")).unwrap();

    let missing = dir.path("missing.bin");
    let e = err(read_checkpoint(&missing));
    assert_msg(&e, &missing, &["cannot open"]);

    let p = dir.file("trunc3.bin", &good3[..good3.len() - 1]);
    let e = err(read_checkpoint(&p));
    assert_msg(
        &e,
        &p,
        &[
            "truncated",
            "expected 3392 bytes",
            "592 fp32 parameters",
            "found 3391",
        ],
    );
    let p = dir.file("trunc5.bin", &good5[..2000]);
    let e = err(read_checkpoint(&p));
    assert_msg(
        &e,
        &p,
        &["truncated", "expected 2208 bytes", "bf16", "found 2000"],
    );
    let p = dir.file("trunc-header.bin", &good3[..100]);
    let e = err(read_checkpoint(&p));
    assert_msg(&e, &p, &["truncated", "100 bytes", "1024-byte header"]);
    let p = dir.file("empty.bin", &[]);
    assert_msg(&err(read_checkpoint(&p)), &p, &["truncated", "0 bytes"]);

    let mut long = good3.clone();
    long.extend_from_slice(&[0; 6]);
    let p = dir.file("trailing.bin", &long);
    let e = err(read_checkpoint(&p));
    assert_msg(
        &e,
        &p,
        &["6 trailing bytes", "expected 3392 bytes", "found 3398"],
    );

    let p = dir.file("magic.bin", &with_header(&good3, 0, 20240327));
    let e = err(read_checkpoint(&p));
    assert_msg(&e, &p, &["bad magic number 20240327", "expected 20240326"]);
    // what the file is, where its first four bytes say: a zip archive (torch.save's), PyTorch's
    // legacy format, or nothing known
    for (magic, is) in [
        (
            i32::from_le_bytes(*b"PK\x03\x04"),
            ": this is a zip archive, as PyTorch's torch.save writes (pytorch_model.bin): give it \
             to --model with the model's config.json beside it",
        ),
        (
            0x0a8a_0280,
            ": this is PyTorch's legacy format (torch.save before PyTorch 1.6), which is not \
             read: save it again with a current PyTorch",
        ),
        (1234, ""),
    ] {
        let p = dir.file("magic.bin", &with_header(&good3, 0, magic));
        let want = format!(
            "{}: bad magic number {magic} (expected 20240326 for a model checkpoint){is}",
            p.display()
        );
        assert_eq!(err(read_checkpoint(&p)), want);
    }

    for version in [1, 4, 6] {
        let p = dir.file("version.bin", &with_header(&good3, 1, version));
        let e = err(read_checkpoint(&p));
        assert_msg(&e, &p, &["unsupported", &format!("version {version}")]);
    }
    // A v3 file labelled v5 has the wrong size for bf16.
    let p = dir.file("v3-as-v5.bin", &with_header(&good3, 1, 5));
    let e = err(read_checkpoint(&p));
    assert_msg(&e, &p, &["1184 trailing bytes", "bf16"]);

    // Config fields.
    let cases: [(usize, i32, &str); 6] = [
        (2, 0, "maxT (header[2]) is 0, must be positive"),
        (3, -5, "V (header[3]) is -5, must be positive"),
        (5, 3, "not divisible by heads NH=3"),
        (7, 9, "Vp=9 is smaller than V=10"),
        (6, 0, "C (header[6]) is 0"),
        (4, -1, "L (header[4]) is -1"),
    ];
    for (idx, value, want) in cases {
        let p = dir.file("config.bin", &with_header(&good3, idx, value));
        let e = err(read_checkpoint(&p));
        assert_msg(&e, &p, &[want]);
    }
    // A header whose parameter count overflows is an error, not a panic or a huge allocation.
    let mut huge = with_header(&good3, 4, i32::MAX);
    huge = with_header(&huge, 6, 1 << 30);
    huge = with_header(&huge, 5, 1);
    let p = dir.file("huge.bin", &huge);
    let e = err(read_checkpoint(&p));
    assert_msg(&e, &p, &["too many parameters"]);
    let big = with_header(&good3, 4, 1000);
    let p = dir.file("big.bin", &big);
    let e = err(read_checkpoint(&p));
    assert_msg(&e, &p, &["truncated", "found 3392"]);

    // The writer checks the parameter count.
    let out = dir.path("out.bin");
    let e = err(write_checkpoint(
        &out,
        &cfg(),
        &[0.0; 10],
        CheckpointPrecision::Fp32,
    ));
    assert_msg(
        &e,
        &out,
        &[
            "cannot write checkpoint",
            "10 parameters given",
            "needs 592",
        ],
    );
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// Debug states.

#[test]
fn fixture_debug_state_has_the_formula_values() {
    let s = read_debug_state(&fixture("llmc_debug_state.bin"), &cfg()).unwrap();
    assert_eq!((s.b, s.t), (B, T));
    assert_eq!(s.x, [3, 0, 7, 4, 1, 8]);
    assert_eq!(s.y, [4, 1, 8, 5, 2, 9]);
    assert_eq!(s.loss.to_bits(), LOSS.to_bits());
    assert_eq!(s.logits.len(), B * T * V);
    for (i, &l) in s.logits.iter().enumerate() {
        assert_eq!(l.to_bits(), logit(i).to_bits(), "logit {i}");
    }
    assert_eq!(s.grads.len(), NUM_PARAMS);
    for (i, &g) in s.grads.iter().enumerate() {
        assert_eq!(g.to_bits(), grad(i).to_bits(), "grad {i}");
    }
    assert_eq!(s, fixture_state());
}

#[test]
fn debug_state_round_trips_and_equals_the_independent_writers_bytes() {
    let dir = TempDir::new("ds-roundtrip");
    let out = dir.path("state.bin");
    write_debug_state(&out, &cfg(), &fixture_state()).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("llmc_debug_state.bin")).unwrap()
    );

    // Other shapes: B=3, T=maxT=8, and the smallest, B=T=1; arbitrary values.
    for (b, t) in [(3, 8), (1, 1)] {
        let vals = arbitrary_f32s(b * t * V + 1 + NUM_PARAMS);
        let s = DebugState {
            b,
            t,
            x: (0..b * t).map(|i| (i * 3 % V) as u32).collect(),
            y: (0..b * t).map(|i| ((i * 3 + 1) % V) as u32).collect(),
            logits: vals[..b * t * V].to_vec(),
            loss: vals[b * t * V],
            grads: vals[b * t * V + 1..].to_vec(),
        };
        write_debug_state(&out, &cfg(), &s).unwrap();
        assert_eq!(
            std::fs::metadata(&out).unwrap().len() as usize,
            1024 + 4 * (2 * b * t + b * t * V + 1 + NUM_PARAMS)
        );
        assert_eq!(read_debug_state(&out, &cfg()).unwrap(), s, "B={b}, T={t}");
    }
}

#[test]
fn bad_debug_states_are_errors_that_say_what_is_wrong() {
    let dir = TempDir::new("ds-bad");
    let good = std::fs::read(fixture("llmc_debug_state.bin")).unwrap();
    let cfg = cfg();

    let missing = dir.path("missing.bin");
    assert_msg(
        &err(read_debug_state(&missing, &cfg)),
        &missing,
        &["cannot open"],
    );

    let p = dir.file("trunc.bin", &good[..good.len() - 4]);
    let e = err(read_debug_state(&p, &cfg));
    assert_msg(
        &e,
        &p,
        &[
            "debug state is truncated",
            "expected 3684 bytes",
            "found 3680",
        ],
    );
    let p = dir.file("trunc-header.bin", &good[..1000]);
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["truncated", "1024-byte header"],
    );
    // cut short, it is named as truncated, not as another model's: for certain where no model's
    // state ends there (inside a value, inside the tokens x and y, whose size the header gives),
    // else with a whole file of another model as the other reading. (B*T = 6: x and y end at
    // byte 1072, so 1068 lacks y's last token, a whole number of values; 1072 is the first
    // length that a whole state of another model could have.)
    for (len, aside) in [
        (2001, false),
        (1050, false),
        (1068, false),
        (1072, true),
        (2000, true),
    ] {
        let p = dir.file("cut.bin", &good[..len]);
        let e = err(read_debug_state(&p, &cfg));
        assert_msg(
            &e,
            &p,
            &[
                "debug state is truncated",
                "expected 3684 bytes",
                &format!("for the model given, found {len}"),
            ],
        );
        assert!(
            !e.contains("a state made with another model does not fit"),
            "{e}"
        );
        let other = "(or, if the file is whole, it was made with a smaller model than this one)";
        assert_eq!(e.contains(other), aside, "{e}");
    }

    let mut long = good.clone();
    long.push(0);
    let p = dir.file("trailing.bin", &long);
    let e = err(read_debug_state(&p, &cfg));
    assert_msg(&e, &p, &["1 trailing byte:", "expected 3684", "found 3685"]);

    // Read with the wrong model: V=11 needs 6 more logits, 24 more bytes.
    let other = GPT2Config::new(8, 11, 16, 2, 2, 4).unwrap();
    let e = err(read_debug_state(&fixture("llmc_debug_state.bin"), &other));
    assert!(
        e.contains("truncated") && e.contains("expected 3708"),
        "{e}"
    );

    let p = dir.file("magic.bin", &with_header(&good, 0, 20240326));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["bad magic number 20240326", "expected 20240327"],
    );
    let p = dir.file("version.bin", &with_header(&good, 1, 1));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["unsupported", "version 1"],
    );

    let p = dir.file("b0.bin", &with_header(&good, 2, 0));
    assert_msg(&err(read_debug_state(&p, &cfg)), &p, &["batch size B=0"]);
    let p = dir.file("bneg.bin", &with_header(&good, 2, -2));
    assert_msg(&err(read_debug_state(&p, &cfg)), &p, &["batch size B=-2"]);
    // the largest B the header holds is a batch size like any other, too large for this file
    let p = dir.file("bmax.bin", &with_header(&good, 2, i32::MAX));
    let e = err(read_debug_state(&p, &cfg));
    assert_msg(&e, &p, &["debug state is truncated", "found 3684"]);
    assert!(!e.contains("batch size"), "{e}");
    let p = dir.file("t0.bin", &with_header(&good, 3, 0));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["sequence length T=0 must be positive"],
    );
    let p = dir.file("t9.bin", &with_header(&good, 3, 9));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["sequence length T=9 exceeds the model's maxT=8"],
    );

    // Token ids: x starts at byte 1024, y at 1024 + 4*B*T; position 4 is b=1, t=1.
    let set_i32 = |bytes: &[u8], at: usize, v: i32| {
        let mut b = bytes.to_vec();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        b
    };
    let p = dir.file("x-big.bin", &set_i32(&good, 1024 + 4 * 4, 10));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["x[4] (b=1, t=1) = 10 is not a token id in 0..10"],
    );
    let p = dir.file("y-big.bin", &set_i32(&good, 1024 + 4 * (B * T + 2), 50257));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["y[2] (b=0, t=2) = 50257 is not a token id in 0..10"],
    );
    // 2^16 + 3: a reader that lost the upper bytes would take it for token 3
    let p = dir.file("x-wide.bin", &set_i32(&good, 1024 + 4, 65539));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["x[1] (b=0, t=1) = 65539 is not a token id in 0..10"],
    );
    let p = dir.file("x-neg.bin", &set_i32(&good, 1024, -1));
    assert_msg(
        &err(read_debug_state(&p, &cfg)),
        &p,
        &["x[0] (b=0, t=0) = -1 is not a token id"],
    );

    // A reference that is not finite: logits start at 1024 + 8*B*T, the loss follows them, then
    // the gradients.
    let set_f32 = |bytes: &[u8], at: usize, v: f32| set_i32(bytes, at, v.to_bits() as i32);
    let logits_at = 1024 + 8 * B * T;
    let loss_at = logits_at + 4 * B * T * V;
    for (name, at, v, what) in [
        (
            "logit-nan",
            logits_at + 4 * 7,
            f32::NAN,
            "NaN in its logits (element 7)",
        ),
        (
            "loss-inf",
            loss_at,
            f32::INFINITY,
            "inf in its loss (element 0)",
        ),
        (
            "grad-nan",
            loss_at + 4 + 4 * 3,
            f32::NAN,
            "NaN in its gradients (element 3)",
        ),
    ] {
        let p = dir.file(&format!("{name}.bin"), &set_f32(&good, at, v));
        assert_msg(
            &err(read_debug_state(&p, &cfg)),
            &p,
            &[what, "a reference must be finite"],
        );
    }

    // The writer checks the same things.
    let out = dir.path("out.bin");
    let mut s = fixture_state();
    s.y[5] = 10;
    assert_msg(
        &err(write_debug_state(&out, &cfg, &s)),
        &out,
        &[
            "cannot write debug state",
            "y[5] (b=1, t=2) = 10 is not a token id",
        ],
    );
    let mut s = fixture_state();
    s.t = 9;
    assert_msg(
        &err(write_debug_state(&out, &cfg, &s)),
        &out,
        &["T=9 exceeds the model's maxT=8"],
    );
    let mut s = fixture_state();
    s.b = 0;
    assert_msg(
        &err(write_debug_state(&out, &cfg, &s)),
        &out,
        &["batch size B=0"],
    );
    let mut s = fixture_state();
    s.grads.pop();
    assert_msg(
        &err(write_debug_state(&out, &cfg, &s)),
        &out,
        &["grads has 591 values", "need 592"],
    );
    let mut s = fixture_state();
    s.logits.push(0.0);
    assert_msg(
        &err(write_debug_state(&out, &cfg, &s)),
        &out,
        &["logits has 61 values", "need 60"],
    );
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------------
// Tokenizer files.

#[test]
fn fixture_tokenizer_files_have_the_formula_tokens() {
    let v2 = read_tokenizer_file(&fixture("llmc_tokenizer_v2.bin")).unwrap();
    assert_eq!(v2.eot, Some(EOT));
    assert_eq!(v2.tokens.len(), V);
    for (k, tok) in v2.tokens.iter().enumerate() {
        assert_eq!(tok, &token_bytes(k), "token {k}");
    }
    assert_eq!(v2.tokens[6].len(), 255);
    assert_eq!(v2.tokens[0], [200]);
    assert_eq!(v2.tokens[1], [237, 248]);

    let v1 = read_tokenizer_file(&fixture("llmc_tokenizer_v1.bin")).unwrap();
    assert_eq!(
        v1,
        TokenizerFile {
            eot: None,
            tokens: fixture_tokens()
        }
    );
}

#[test]
fn tokenizer_file_round_trips_and_equals_the_independent_writers_bytes() {
    let dir = TempDir::new("tok-roundtrip");
    let out = dir.path("tok.bin");
    write_tokenizer_file(&out, &fixture_tokens(), EOT).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("llmc_tokenizer_v2.bin")).unwrap()
    );

    // Every byte value, lengths 1..=255, EOT in the middle.
    let tokens: Vec<Vec<u8>> = (0..300usize)
        .map(|k| {
            (0..1 + k % 255)
                .map(|j| ((k + 7 * j) % 256) as u8)
                .collect()
        })
        .collect();
    write_tokenizer_file(&out, &tokens, 123).unwrap();
    let back = read_tokenizer_file(&out).unwrap();
    assert_eq!(
        back,
        TokenizerFile {
            eot: Some(123),
            tokens
        }
    );
    // the smallest vocabulary: one token, its end-of-text
    write_tokenizer_file(&out, &[b"<|end|>".to_vec()], 0).unwrap();
    assert_eq!(
        read_tokenizer_file(&out).unwrap(),
        TokenizerFile {
            eot: Some(0),
            tokens: vec![b"<|end|>".to_vec()]
        }
    );
}

#[test]
fn bad_tokenizer_files_are_errors_that_say_what_is_wrong() {
    let dir = TempDir::new("tok-bad");
    let good = std::fs::read(fixture("llmc_tokenizer_v2.bin")).unwrap();

    let missing = dir.path("missing.bin");
    assert_msg(
        &err(read_tokenizer_file(&missing)),
        &missing,
        &["cannot open"],
    );

    // Cut inside the last token (6 bytes at 1326..1332) and right after the second to last.
    let p = dir.file("trunc.bin", &good[..good.len() - 1]);
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &[
            "truncated",
            "token 9 of 10 needs bytes 1326..1332",
            "the file has 1331",
        ],
    );
    let p = dir.file("trunc-len.bin", &good[..good.len() - 7]);
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["truncated", "ends at byte 1325 before token 9 of 10"],
    );
    let p = dir.file("trunc-header.bin", &good[..10]);
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["truncated", "1024-byte header"],
    );

    let mut long = good.clone();
    long.extend_from_slice(&[1, 65]);
    let p = dir.file("trailing.bin", &long);
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["2 trailing bytes", "expected 1332 bytes, found 1334"],
    );

    let p = dir.file("magic.bin", &with_header(&good, 0, 20240329));
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["bad magic number 20240329", "expected 20240328"],
    );
    let p = dir.file("version.bin", &with_header(&good, 1, 3));
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["unsupported", "version 3"],
    );
    let p = dir.file("eot.bin", &with_header(&good, 3, 10));
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["EOT token id 10 (header[3]) is not in 0..10"],
    );
    let p = dir.file("count.bin", &with_header(&good, 2, 0));
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["0 tokens (header[2]), must be positive"],
    );

    // Token 3's length byte is at 1024 + (1+1) + (1+2) + (1+3) = 1033.
    let mut zero = good.clone();
    assert_eq!(zero[1033], 5);
    zero[1033] = 0;
    let p = dir.file("zero.bin", &zero);
    assert_msg(
        &err(read_tokenizer_file(&p)),
        &p,
        &["token 3 has length 0 (at byte 1033)"],
    );

    // The writer refuses what the reader would refuse.
    let out = dir.path("out.bin");
    let mut tokens = fixture_tokens();
    tokens[4] = vec![];
    assert_msg(
        &err(write_tokenizer_file(&out, &tokens, EOT)),
        &out,
        &["cannot write tokenizer file", "token 4 has 0 bytes"],
    );
    tokens[4] = vec![b'a'; 256];
    assert_msg(
        &err(write_tokenizer_file(&out, &tokens, EOT)),
        &out,
        &["token 4 has 256 bytes, must be 1..=255"],
    );
    assert_msg(
        &err(write_tokenizer_file(&out, &fixture_tokens(), 10)),
        &out,
        &["EOT token id 10 is not in 0..10"],
    );
    assert_msg(
        &err(write_tokenizer_file(&out, &[], 0)),
        &out,
        &["0 tokens"],
    );
    assert!(!out.exists());
}

/// A file shorter than a header but of another kind (a run's log, a JSON config) is named by its
/// magic number, as a longer one is, by every reader: it is not called truncated. Where it is a
/// file of a Hugging Face model, the model's folder is what to give.
#[test]
fn a_short_file_of_another_kind_is_named_by_its_magic_number_not_as_truncated() {
    use train_gpt2_cuda::formats::read_model;
    use train_gpt2_cuda::formats::shard::read_shard;
    use train_gpt2_cuda::formats::train_state::TrainStateFile;
    let dir = TempDir::new("short-other");
    let log = "{\"step\": 1, \"loss\": 10.98, \"lr\": 0.0001}\n".repeat(20);
    assert!(log.len() < 1024);
    let p = dir.file("log.jsonl", log.as_bytes());
    let magic = i32::from_le_bytes(log.as_bytes()[..4].try_into().unwrap());
    let bad = format!("bad magic number {magic}");
    let cases: [(&str, String); 6] = [
        ("20240326 for a model checkpoint", err(read_checkpoint(&p))),
        ("20240326 for a model checkpoint", err(read_model(&p))),
        (
            "20240327 for a debug state",
            err(read_debug_state(&p, &cfg())),
        ),
        (
            "20240328 for a tokenizer file",
            err(read_tokenizer_file(&p)),
        ),
        ("20240520 for a token shard", err(read_shard(&p))),
        (
            "20261202 for a training state",
            err(TrainStateFile::open(&p).map(|_| ())),
        ),
    ];
    for (expected, e) in cases {
        assert_msg(&e, &p, &[&bad, &format!("(expected {expected})")]);
        assert!(!e.contains("truncated"), "{e}");
        // (no config.json beside it: not called a file of a Hugging Face model)
        assert!(!e.contains("Hugging Face"), "{e}");
    }
    // a file of a Hugging Face model: give its folder
    let hf = PathBuf::from(root()).join("tests/fixtures/hf_tiny");
    let config = hf.join("config.json");
    let e = err(read_model(&config));
    assert_msg(
        &e,
        &config,
        &[
            "bad magic number",
            &format!(
                "this is a file of the Hugging Face model in {}, which is read from its folder: \
                 give the folder instead (--model {})",
                hf.display(),
                hf.display()
            ),
        ],
    );
    // too short for a magic number, or of the right one: truncated
    let p = dir.file("three.bin", b"abc");
    assert_msg(&err(read_checkpoint(&p)), &p, &["truncated", "3 bytes"]);
    let p = dir.file("short.bin", &20240326i32.to_le_bytes());
    assert_msg(&err(read_checkpoint(&p)), &p, &["truncated", "4 bytes"]);
}

/// The crate root: `CARGO_MANIFEST_DIR` at run time (cargo, or .gpu/on-gpu.sh on the GPU machine,
/// where the compile-time path does not exist), else the one compiled in.
fn root() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
}

// ---------------------------------------------------------------------------------------------
// Writing files: through a temporary file and a rename, but never over what is not a file.

#[test]
fn a_write_follows_a_symbolic_link_and_keeps_it() {
    let dir = TempDir::new("write-link");
    let target = dir.file("target.bin", b"old");
    let link = dir.path("link.bin");
    std::os::unix::fs::symlink("target.bin", &link).unwrap();
    write_file_atomic(&link, b"new").unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    // a link to a file not there yet: the file is created where it points
    let dangling = dir.path("dangling.bin");
    std::os::unix::fs::symlink("made.bin", &dangling).unwrap();
    write_file_atomic(&dangling, b"made").unwrap();
    assert_eq!(std::fs::read(dir.path("made.bin")).unwrap(), b"made");
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_write_to_a_device_or_a_fifo_writes_into_it() {
    use std::os::unix::fs::FileTypeExt;
    let null = Path::new("/dev/null");
    write_file_atomic(null, b"nothing").unwrap();
    write_file_atomic_with(null, |w| w.write_all(b"nothing")).unwrap();
    assert!(std::fs::metadata(null)
        .unwrap()
        .file_type()
        .is_char_device());
    // a FIFO: what is written comes out of it, and it stays a FIFO
    let dir = TempDir::new("write-fifo");
    let fifo = dir.path("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("no mkfifo: the FIFO case is not checked");
        return;
    }
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    write_file_atomic(&fifo, b"through the pipe").unwrap();
    // (before the join: a FIFO replaced by a file would leave the reader waiting)
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(reader.join().unwrap(), b"through the pipe");
    assert!(!dir.path("fifo.tmp").exists());
}

/// A pipe named through a link whose target is no path (`/dev/stdout` of a process whose output
/// is piped: `/proc/self/fd/1`, whose link reads `pipe:[1234]`) is written into, as named.
#[test]
fn a_write_to_a_pipe_through_a_proc_link_writes_into_it() {
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    let Ok(mut cat) = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("no cat: the pipe case is not checked");
        return;
    };
    let stdin = cat.stdin.take().unwrap();
    let path = PathBuf::from(format!("/proc/self/fd/{}", stdin.as_raw_fd()));
    let link = std::fs::read_link(&path).unwrap();
    assert!(link.to_string_lossy().starts_with("pipe:"), "{link:?}");
    train_gpt2_cuda::formats::check_replaceable(&path).unwrap();
    write_file_atomic(&path, b"through the pipe").unwrap();
    let mut files = StagedFiles::new();
    files.write(&path, b", twice").unwrap();
    files.commit().unwrap();
    drop(stdin);
    let out = cat.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"through the pipe, twice");
}

#[test]
fn a_write_to_a_directory_is_an_error_that_writes_nothing() {
    let dir = TempDir::new("write-dir");
    let sub = dir.path("sub");
    std::fs::create_dir(&sub).unwrap();
    for path in [sub.clone(), dir.path("sub/"), dir.path("missing/")] {
        let e = err(write_file_atomic(&path, b"x"));
        assert!(e.contains("directory"), "{e}");
        assert!(e.contains("give the name of a file"), "{e}");
    }
    let mut left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["sub"], "a temporary file was left");
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
}

#[test]
fn a_failed_write_leaves_the_file_as_it_was_and_no_temporary() {
    let dir = TempDir::new("write-fail");
    let path = dir.file("model.bin", b"old");
    let e = err(write_file_atomic_with(&path, |w| {
        w.write_all(b"half")?;
        Err(std::io::Error::other("disk full"))
    }));
    assert!(e.contains("model.bin: cannot write: disk full"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert!(!dir.path("model.bin.tmp").exists());

    // several files: the second fails, so the first keeps its old contents too
    let a = dir.file("a.txt", b"old a");
    let b = dir.file("b.txt", b"old b");
    let mut files = StagedFiles::new();
    files.write(&a, b"new a").unwrap();
    let e = err(files.write_with(&b, |_| Err(std::io::Error::other("disk full"))));
    assert!(e.contains("b.txt: cannot write"), "{e}");
    drop(files);
    assert_eq!(std::fs::read(&a).unwrap(), b"old a");
    assert_eq!(std::fs::read(&b).unwrap(), b"old b");
    let mut left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["a.txt", "b.txt", "model.bin"]);
    // and committed, both are new
    let mut files = StagedFiles::new();
    files.write(&a, b"new a").unwrap();
    files.write(&b, b"new b").unwrap();
    assert_eq!(
        std::fs::read(&a).unwrap(),
        b"old a",
        "named only at the commit"
    );
    files.commit().unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), b"new a");
    assert_eq!(std::fs::read(&b).unwrap(), b"new b");
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_rewritten_file_keeps_its_permissions() {
    let dir = TempDir::new("write-mode");
    let path = dir.file("private.bin", b"old");
    chmod(&path, 0o600);
    write_file_atomic(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(mode(&path), 0o600, "a private file stays private");
    chmod(&path, 0o640);
    write_file_atomic_with(&path, |w| w.write_all(b"newer")).unwrap();
    assert_eq!(mode(&path), 0o640);
    // through a link: the file it points to keeps its own
    let link = dir.path("link.bin");
    std::os::unix::fs::symlink("private.bin", &link).unwrap();
    let mut files = StagedFiles::new();
    files.write(&link, b"newest").unwrap();
    files.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"newest");
    assert_eq!(mode(&path), 0o640);
}

#[test]
fn a_read_only_file_is_not_replaced() {
    let dir = TempDir::new("write-read-only");
    let path = dir.file("kept.bin", b"old");
    chmod(&path, 0o444);
    let link = dir.path("link.bin");
    std::os::unix::fs::symlink("kept.bin", &link).unwrap();
    for p in [&path, &link] {
        let e = err(train_gpt2_cuda::formats::check_replaceable(p));
        assert_msg(&e, p, &["is read-only", "chmod u+w"]);
        let e = err(write_file_atomic(p, b"new"));
        assert_msg(&e, p, &["is read-only"]);
        let mut files = StagedFiles::new();
        let e = err(files.write(p, b"new"));
        assert_msg(&e, p, &["is read-only"]);
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(mode(&path), 0o444);
    let mut left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["kept.bin", "link.bin"], "a temporary file was left");
    // writable again, it is replaced; a new file, or a device, is fine
    chmod(&path, 0o644);
    write_file_atomic(&path, b"new").unwrap();
    train_gpt2_cuda::formats::check_replaceable(&dir.path("new.bin")).unwrap();
    train_gpt2_cuda::formats::check_replaceable(Path::new("/dev/null")).unwrap();
}

/// An output replaces an existing regular file only where it holds the format written already
/// (or nothing): a training state, a model or notes where a model is written are refused, named
/// with what they hold, and left as they are; a device is written into.
#[test]
fn a_file_of_another_kind_is_not_replaced() {
    use train_gpt2_cuda::formats::check_replaceable_by;
    let dir = TempDir::new("write-other-kind");
    let model = 20240326; // (the magic number of a checkpoint, what is written)
    let mut state = 20261202i32.to_le_bytes().to_vec();
    state.resize(4096, 7);
    let mut zip = b"PK\x03\x04".to_vec();
    zip.resize(100, 0);
    let mut legacy = b"\x80\x02\x8a\x0a".to_vec(); // how torch.save's legacy files begin
    legacy.resize(100, 0);
    let mut safetensors = 2u64.to_le_bytes().to_vec(); // an 8-byte header length, then the JSON
    safetensors.extend(b"{}");
    for (name, bytes, holds) in [
        (
            "state_000500.bin",
            &state[..],
            "a training state (for --resume)",
        ),
        (
            "debug.bin",
            &std::fs::read(fixture("llmc_debug_state.bin")).unwrap()[..],
            "a debug state (for verify)",
        ),
        ("notes.txt", "my notes, \u{e9}t\u{e9}\n".as_bytes(), "text"),
        (
            "pytorch_model.bin",
            &zip[..],
            "a zip archive (as PyTorch's torch.save writes)",
        ),
        ("old.pt", &legacy[..], "a PyTorch file (legacy format)"),
        ("model.safetensors", &safetensors[..], "a safetensors file"),
        ("odd.bin", &[1, 2, 0, 9, 255][..], "5 bytes of another kind"),
        // raw 16-bit token ids, as nanoGPT's train.bin: valid UTF-8, but with NUL bytes
        (
            "tokens.bin",
            &[15, 0, 33, 0, 127, 0, 16, 0][..],
            "8 bytes of another kind",
        ),
        ("two.bin", &[b'h', b'i'][..], "text"),
    ] {
        let p = dir.file(name, bytes);
        let e = err(check_replaceable_by("--out", &p, model));
        assert!(
            e.contains(&format!(
                "--out {} holds {holds}, not a model checkpoint: it is not replaced; remove it \
                 first, or give another --out",
                p.display()
            )),
            "{e}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), bytes);
        // through a link too
        let link = dir.path("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(name, &link).unwrap();
        let e = err(check_replaceable_by("--out", &link, model));
        assert!(e.contains(&format!("holds {holds}")), "{e}");
    }
    // a file of the kind written, an empty one, none, a device: fine
    let p = dir.file(
        "m.bin",
        &std::fs::read(fixture("llmc_model_v5.bin")).unwrap(),
    );
    check_replaceable_by("--out", &p, model).unwrap();
    let p = dir.file("empty.bin", b"");
    check_replaceable_by("--out", &p, model).unwrap();
    check_replaceable_by("--out", &dir.path("new.bin"), model).unwrap();
    check_replaceable_by("--out", Path::new("/dev/null"), model).unwrap();
    // a read-only file is named as such first
    let p = dir.file("ro.bin", b"notes");
    chmod(&p, 0o444);
    assert_msg(
        &err(check_replaceable_by("--out", &p, model)),
        &p,
        &["is read-only"],
    );
}

/// The folders a command makes for its outputs: a file in the way is named, with the flag, before
/// anything is made (the system's "File exists" or "Not a directory" names neither); where
/// nothing is in the way, the folders are made.
#[test]
fn a_folder_to_make_under_a_file_is_named() {
    use train_gpt2_cuda::formats::{make_folder, make_folder_of};
    let dir = TempDir::new("make-folder");
    let file = dir.file("afile", b"kept");
    let under = file.join("sub");
    let out = under.join("x.bin");
    for (result, flag, target, done) in [
        (make_folder_of("--out", &out), "--out", &out, "written"),
        (
            make_folder("--out-dir", &under),
            "--out-dir",
            &under,
            "made",
        ),
    ] {
        let want = format!(
            "{} is a file, not a folder, so {flag} {} cannot be {done}: give another {flag}",
            file.display(),
            target.display()
        );
        assert_eq!(err(result), want);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"kept");
    make_folder_of("--out", &dir.path("a/b/x.bin")).unwrap();
    make_folder("--out-dir", &dir.path("c/d")).unwrap();
    assert!(dir.path("a/b").is_dir() && dir.path("c/d").is_dir());
}

/// A parameter that is not finite is named with its tensor and index, and one in wte's padding
/// rows (from V*C on: no token reads them) is said to be there.
#[test]
fn a_non_finite_parameter_is_named_with_its_place() {
    use train_gpt2_cuda::formats::check_finite;
    for (i, place) in [(V * C - 1, ""), (V * C, " (a padding row, past V)")] {
        let mut params = train_gpt2_cuda::params::init_params(&cfg(), 1);
        params[i] = f32::NAN;
        let ck = Checkpoint {
            config: cfg(),
            params,
        };
        assert_eq!(
            err(check_finite(Path::new("m.bin"), &ck)),
            format!(
                "m.bin: the model holds 1 parameter that is not finite, the first NaN in \
                 wte[{i}]{place}: the file is damaged, or from a run that diverged"
            )
        );
    }
}

/// `check_magic_version` checks both numbers itself (every reader checks the magic number first,
/// as it reads the header, but the function is public and says it does).
#[test]
fn check_magic_version_checks_the_magic_number_and_the_version() {
    use train_gpt2_cuda::formats::{check_magic_version, new_header};
    let p = Path::new("m.bin");
    let h = new_header(20240326, 3);
    check_magic_version(p, &h, 20240326, &[3, 5]).unwrap();
    assert_eq!(
        err(check_magic_version(p, &h, 20240328, &[3])),
        "m.bin: bad magic number 20240326 (expected 20240328 for a tokenizer file): this is a \
         model checkpoint, not a tokenizer file"
    );
    assert_eq!(
        err(check_magic_version(p, &h, 20240326, &[5])),
        "m.bin: unsupported model checkpoint version 3 (supported: 5)"
    );
}
