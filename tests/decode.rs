//! Generation with a key/value cache (`cpu::decode`): the cached attention and the decoder's
//! logits are the full forward's bit for bit, the decoder computes only the new positions, the
//! logits of a Hugging Face GPT-2 decoded token by token are transformers' own, and sampling
//! with the cache picks the tokens it picks without.

use std::ops::ControlFlow;
use std::path::PathBuf;
use train_gpt2_cuda::config::GPT2Config;
use train_gpt2_cuda::cpu::attention::{attention_forward, attention_forward_cached};
use train_gpt2_cuda::cpu::decode::Decoder;
use train_gpt2_cuda::cpu::model::Gpt2Cpu;
use train_gpt2_cuda::engine::Engine;
use train_gpt2_cuda::formats::debug_state::read_debug_state;
use train_gpt2_cuda::formats::read_model;
use train_gpt2_cuda::params::init_params;
use train_gpt2_cuda::rng::Rng;
use train_gpt2_cuda::sample::{generate, generate_with, SampleOptions};
use train_gpt2_cuda::verify::Tolerances;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn randv(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * 2.0 - 1.0) * scale)
        .collect()
}

fn tokens(rng: &mut Rng, n: usize, v: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.uniform_f32() * v as f32) as u32 % v as u32)
        .collect()
}

/// Every bit of two float slices, with the first index where they differ.
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i}: {} vs {}", got[i], want[i]);
    }
}

#[test]
fn cached_attention_is_the_full_forward_s_last_rows_bit_for_bit() {
    // S positions (not a multiple of anything), C = 12 in NH = 3 heads of 4, sharp scores
    let (s, c, nh) = (11, 12, 3);
    let mut rng = Rng::new(3);
    let inp = randv(&mut rng, s * 3 * c, 2.5);
    let (mut out, mut preatt, mut att) = (
        vec![0.0; s * c],
        vec![0.0; nh * s * s],
        vec![0.0; nh * s * s],
    );
    attention_forward(&mut out, &mut preatt, &mut att, &inp, 1, s, c, nh);
    for p in 0..s {
        let t = s - p;
        // NaN-filled: every element must be written
        let (mut o, mut pr, mut a) = (
            vec![f32::NAN; t * c],
            vec![f32::NAN; nh * t * s],
            vec![f32::NAN; nh * t * s],
        );
        attention_forward_cached(&mut o, &mut pr, &mut a, &inp, 1, p, t, c, nh);
        assert_same_bits(&format!("out, P={p}"), &o, &out[p * c..]);
        for h in 0..nh {
            let rows = |x: &[f32]| x[(h * s + p) * s..(h + 1) * s * s].to_vec();
            let mine = |x: &[f32]| x[h * t * s..(h + 1) * t * s].to_vec();
            assert_same_bits(&format!("preatt, P={p} h={h}"), &mine(&pr), &rows(&preatt));
            assert_same_bits(&format!("att, P={p} h={h}"), &mine(&a), &rows(&att));
        }
    }
}

/// The full forward's logits (Vp) at the last position of `ctx`.
fn full_forward_logits(model: &mut Gpt2Cpu, ctx: &[u32]) -> Vec<f32> {
    let t = ctx.len();
    model.forward(ctx, None, 1, t).unwrap();
    let vp = model.config.padded_vocab_size;
    model.logits()[(t - 1) * vp..t * vp].to_vec()
}

/// Walks a decoder through the contexts a generation (and other callers) give it: a prompt, one
/// token at a time up to the window, a slid window, a context that departs from the cache in the
/// middle, a shorter one, the same one again. Each call's logits must be the full forward's bits
/// and it must compute exactly the positions not cached.
fn check_decoder_against_the_full_forward(model: Gpt2Cpu, what: &str) {
    let cfg = model.config;
    let w = cfg.max_seq_len;
    let mut rng = Rng::new(21);
    let seq = tokens(&mut rng, w + 3, cfg.vocab_size);
    let mut full = Gpt2Cpu::new(cfg, model.params.clone(), 1, w).unwrap();
    if model.has_master_weights() {
        full = full.emulating_bf16_storage();
        // the same bf16 weights as `model` (rounding them again changes nothing)
        assert!(full.params == model.params);
    }
    let mut decoder = Decoder::new(&model, w).unwrap();
    let mut check = |ctx: &[u32], computed: usize, step: &str| {
        let got = decoder.next_logits(ctx).unwrap();
        assert_same_bits(
            &format!("{what}: {step}"),
            &got,
            &full_forward_logits(&mut full, ctx),
        );
        assert_eq!(
            decoder.computed(),
            computed,
            "{what}: {step}: positions computed"
        );
    };
    check(&seq[..4], 4, "a prompt of 4");
    for n in 5..=w {
        check(&seq[..n], 1, &format!("grown to {n}"));
    }
    check(&seq[1..w + 1], w, "the window slid by one");
    check(&seq[2..w + 2], w, "slid again");
    let mut departed = seq[2..w + 2].to_vec();
    departed[5] = (departed[5] + 1) % cfg.vocab_size as u32;
    check(&departed, w - 5, "departing at position 5");
    check(&departed[..7], 1, "a prefix of the cache");
    check(&departed[..7], 1, "the same again");
    check(&seq[..1], 1, "a single token");
}

#[test]
fn decoder_logits_are_the_full_forward_s_bit_for_bit() {
    // awkward sizes: maxT 13, V 37 (Vp 40), C 12 in 3 heads of 4, 2 layers
    let cfg = GPT2Config::new(13, 37, 40, 2, 3, 12).unwrap();
    let params = init_params(&cfg, 5);
    let model = Gpt2Cpu::new(cfg, params.clone(), 1, 1).unwrap();
    check_decoder_against_the_full_forward(model, "random init, fp32");
    let model = Gpt2Cpu::new(cfg, params, 1, 1).unwrap();
    check_decoder_against_the_full_forward(model.emulating_bf16_storage(), "random init, bf16");

    // trained weights with sharp attention (the PyTorch fixture), maxT 16
    let ck = read_model(&fixture("ref_sharp_model.bin")).unwrap();
    let model = Gpt2Cpu::new(ck.config, ck.params, 1, 1).unwrap();
    check_decoder_against_the_full_forward(model, "ref_sharp, fp32");
}

#[test]
fn decoding_a_hugging_face_gpt2_token_by_token_gives_transformers_logits() {
    // transformers' logits (B=2, T=16) of a full forward: position i depends on tokens 0..=i
    // only, so decoding each row one token at a time must give every row of them
    let ck = read_model(&fixture("hf_tiny")).unwrap();
    let cfg = ck.config;
    let state = read_debug_state(&fixture("hf_tiny_state.bin"), &cfg).unwrap();
    let model = Gpt2Cpu::new(cfg, ck.params, 1, 1).unwrap();
    let v = cfg.vocab_size;
    let max_ref = state.logits.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
    let mut worst = 0.0f64;
    for bi in 0..state.b {
        let row = &state.x[bi * state.t..(bi + 1) * state.t];
        let mut decoder = Decoder::new(&model, state.t).unwrap();
        for ti in 0..state.t {
            let got = decoder.next_logits(&row[..=ti]).unwrap();
            assert_eq!(decoder.computed(), 1);
            let want = &state.logits[(bi * state.t + ti) * v..][..v];
            for (g, w) in got[..v].iter().zip(want) {
                worst = worst.max((g - w).abs() as f64 / max_ref);
            }
        }
    }
    println!("decoded logits vs transformers: worst err/max|ref| {worst:.2e}");
    assert!(worst <= Tolerances::FP32.logits, "{worst:e}");
}

#[test]
fn sampling_with_the_cache_picks_the_tokens_sampling_without_it_picks() {
    let ck = read_model(&fixture("ref_sharp_model.bin")).unwrap();
    let cfg = ck.config;
    let w = 9; // below maxT 16, so the window slides for most of the 40 tokens
               // the model is near its initialisation (its logits near uniform): a low temperature makes a
               // small error in them change the tokens (a wrong position embedding in the decoder does)
    let opts = SampleOptions {
        temperature: 0.3,
        ..Default::default()
    };
    let prompt = [3u32, 1, 4];
    let mut model = Gpt2Cpu::new(cfg, ck.params.clone(), 1, w).unwrap();
    let mut streamed = Vec::new();
    let cached = generate(&mut model, &prompt, 40, w, &opts, 7, |id| {
        streamed.push(id);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(cached, streamed);
    assert_eq!(cached.len(), 40);
    let mut full = Gpt2Cpu::new(cfg, ck.params, 1, w).unwrap();
    let recompute = |ctx: &[u32]| Ok(full_forward_logits(&mut full, ctx));
    let args = (&prompt[..], 40, w, &opts, 7);
    let uncached = generate_with(recompute, cfg.vocab_size, args, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(cached, uncached);
    // and the tokens depend on the seed (the comparison above is not of two constant streams)
    let other = generate(&mut model, &prompt, 40, w, &opts, 8, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_ne!(cached, other);
}

#[test]
fn the_decoder_refuses_bad_windows_contexts_and_tokens() {
    let cfg = GPT2Config::new(13, 37, 40, 2, 3, 12).unwrap();
    let model = Gpt2Cpu::new(cfg, init_params(&cfg, 5), 1, 1).unwrap();
    for bad in [0, 14] {
        let err = Decoder::new(&model, bad).err().unwrap().to_string();
        assert!(err.contains("window must be in 1..=13"), "{err}");
    }
    let mut d = model.decoder(5).unwrap().unwrap();
    d.next_logits(&[1, 2, 3]).unwrap();
    for ctx in [&[][..], &[1, 2, 3, 4, 5, 6][..]] {
        let err = d.next_logits(ctx).unwrap_err().to_string();
        assert!(err.contains("1..=5 tokens"), "{err}");
    }
    let err = d.next_logits(&[1, 37]).unwrap_err().to_string();
    assert!(
        err.contains("token id 37 at position 1 is out of range"),
        "{err}"
    );
    // a refused context leaves the cache as it was
    d.next_logits(&[1, 2, 3, 4]).unwrap();
    assert_eq!(d.computed(), 1);
}
