//! Hugging Face GPT-2 models read as checkpoints (`src/formats/hf_gpt2.rs`), checked against
//! transformers' own GPT-2: the fixtures `tests/fixtures/hf_tiny*` and `hf_tiny_state.bin` were
//! written by `tools/write_hf_fixture.py` (transformers' `GPT2LMHeadModel`, `save_pretrained`, and
//! its logits, loss and gradients on one batch). Every layout of the same model (one file,
//! shards, the Hub's names in bf16, PyTorch's pytorch_model.bin) reads to the same parameters; a finetuning run starts from
//! transformers' loss; every malformed model gives an error that names what is wrong.

use std::path::{Path, PathBuf};
use train_gpt2_cuda::cpu::model::Gpt2Cpu;
use train_gpt2_cuda::formats::checkpoint::{read_checkpoint, Checkpoint};
use train_gpt2_cuda::formats::debug_state::{read_debug_state, DebugState};
use train_gpt2_cuda::formats::gzip::crc32;
use train_gpt2_cuda::formats::read_model;
use train_gpt2_cuda::formats::safetensors::Dtype;
use train_gpt2_cuda::formats::shard::write_shard;
use train_gpt2_cuda::formats::torch_zip::open_torch_zip;
use train_gpt2_cuda::params::split;
use train_gpt2_cuda::verify::{self, Tolerances};

mod engine_bin;
use engine_bin::{bin, engine, limited, root, step_losses};

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn tmp_dir(name: &str) -> engine_bin::TempFolder {
    engine_bin::temp_folder("train-gpt2-hf", name)
}

/// Runs the command, expects success and returns its stdout.
fn run_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}:\n{stdout}{stderr}");
    stdout
}

/// `train-gpt2-cuda convert --model MODEL --out OUT` with `flags`; its stdout.
fn convert(flags: &[&str], model: &Path, out: &Path) -> String {
    let mut cmd = bin();
    cmd.arg("convert").args(flags).arg("--model").arg(model);
    run_ok(cmd.arg("--out").arg(out))
}

/// The CPU engine on hf_tiny against transformers: logits, loss and all 16 gradients within the
/// fp32 tolerances (the same as against tools/pytorch_reference.py; docs/verification.md).
#[test]
fn a_hugging_face_gpt2_computes_what_transformers_computes() {
    let ck = read_model(&fixture("hf_tiny")).unwrap();
    let cfg = ck.config;
    assert_eq!(
        (cfg.num_layers, cfg.num_heads, cfg.channels, cfg.max_seq_len),
        (2, 4, 32, 16)
    );
    assert_eq!((cfg.vocab_size, cfg.padded_vocab_size), (100, 128));
    let state = read_debug_state(&fixture("hf_tiny_state.bin"), &cfg).unwrap();
    let mut model = Gpt2Cpu::new(cfg, ck.params.clone(), state.b, state.t).unwrap();
    let out = verify::run_engine(&mut model, &state).unwrap();
    let want = verify::Outputs::expected(&state);
    let rows = verify::compare_outputs(&cfg, &out, &want, &Tolerances::FP32);
    let table = verify::format_table("cpu on hf_tiny vs transformers", &rows);
    println!("{table}");
    assert!(rows.iter().all(|r| r.pass), "{table}");
    // the padded rows of wte are zero, as llm.c's
    let p = split(&cfg, &ck.params);
    assert!(p.wte[100 * 32..].iter().all(|&x| x == 0.0));
}

/// Reads each fixture and asserts it is `want`: the same config and the same parameters, bit for
/// bit.
fn assert_each_reads_as(want: &Checkpoint, fixtures: &[&str]) {
    for name in fixtures {
        let ck = read_model(&fixture(name)).unwrap();
        assert_eq!(ck.config, want.config, "{name}");
        assert!(ck.params == want.params, "{name}");
    }
}

/// One file, its path, the shards (directory and index) and the Hub's layout (no prefix, mask
/// buffers, an explicit tied lm_head, bf16) read to the same parameters: bit for bit, and for bf16
/// each the fp32 value rounded to nearest even.
#[test]
fn every_layout_of_a_model_reads_the_same() {
    let fp32 = read_model(&fixture("hf_tiny")).unwrap();
    assert_each_reads_as(
        &fp32,
        &[
            "hf_tiny/model.safetensors",
            "hf_tiny_sharded",
            "hf_tiny_sharded/model.safetensors.index.json",
        ],
    );
    let shards = std::fs::read_dir(fixture("hf_tiny_sharded"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "safetensors")
        .count();
    assert!(shards >= 3, "the sharded fixture has {shards} shards");
    let hub = read_model(&fixture("hf_tiny_hub_bf16")).unwrap();
    assert_eq!(hub.config, fp32.config);
    let rounded: Vec<f32> = fp32
        .params
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert!(hub.params == rounded);
    assert!(
        hub.params != fp32.params,
        "the bf16 copy must differ from fp32"
    );
}

/// `convert` writes the model as an llm.c checkpoint that reads back to the same parameters (into
/// a folder it makes, as --format hf does).
#[test]
fn convert_writes_an_llmc_checkpoint() {
    let dir = tmp_dir("convert");
    let out_path = dir.join("new/folder/hf_tiny.bin");
    let stdout = convert(&[], &fixture("hf_tiny"), &out_path);
    assert!(stdout.contains("30080 parameters"), "{stdout}");
    let ck = read_checkpoint(&out_path).unwrap();
    assert_eq!(ck, read_model(&fixture("hf_tiny")).unwrap());
}

/// `convert --format hf` writes what transformers writes: the tensors of hf_tiny's
/// model.safetensors (save_pretrained, fp32) with the same names, shapes, dtypes and bytes and, in
/// bf16, those of hf_tiny_hub_bf16 (torch's rounding to nearest even), less the mask buffers and
/// lm_head; and a config.json with the fixture's dimensions and settings. (transformers' own
/// from_pretrained on such a folder computes the state's logits exactly:
/// `tools/write_hf_fixture.py --check-export`.)
#[test]
fn convert_writes_a_hugging_face_gpt2() {
    let dir = tmp_dir("export");
    let strip = |t: Vec<(String, String, Vec<usize>, Vec<u8>)>| {
        let mut t: Vec<_> = t
            .into_iter()
            .filter(|x| !x.0.ends_with(".attn.bias") && x.0 != "lm_head.weight")
            .map(|(n, d, s, b)| (n.trim_start_matches("transformer.").to_string(), d, s, b))
            .collect();
        t.sort();
        t
    };
    for (precision, reference) in [("fp32", "hf_tiny"), ("bf16", "hf_tiny_hub_bf16")] {
        let out = dir.join(precision);
        let flags = ["--format", "hf", "--precision", precision];
        convert(&flags, &fixture("hf_tiny"), &out);
        let got = strip(tensors_in(&out.join("model.safetensors")));
        let want = strip(tensors_in(&fixture(&format!(
            "{reference}/model.safetensors"
        ))));
        assert_eq!(got.len(), 2 + 2 * 12 + 2, "{precision}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.0, &g.1, &g.2), (&w.0, &w.1, &w.2), "{precision}");
            assert!(
                g.3 == w.3,
                "{precision}: {} differs from {reference}'s",
                g.0
            );
        }
        // save_pretrained's names: with the prefix
        assert!(tensors_in(&out.join("model.safetensors"))
            .iter()
            .all(|t| t.0.starts_with("transformer.")));
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let fixture_config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("hf_tiny/config.json")).unwrap())
                .unwrap();
        for key in [
            "model_type",
            "vocab_size",
            "n_positions",
            "n_embd",
            "n_layer",
            "n_head",
            "n_inner",
            "activation_function",
            "layer_norm_epsilon",
            "scale_attn_weights",
            "tie_word_embeddings",
        ] {
            assert_eq!(config[key], fixture_config[key], "{precision}: {key}");
        }
        let back = read_model(&out).unwrap();
        assert_eq!(back.config, read_model(&fixture("hf_tiny")).unwrap().config);
    }
}

/// A model with GPT-2's vocabulary goes out with GPT-2's tokenizer files: vocab.json (50257
/// ids, spelled through GPT-2's byte-to-character table), merges.txt (the 50000 merges, token
/// 256 + i made by merge i) and tokenizer_config.json. (transformers' AutoTokenizer on them
/// tokenizes the bundled plays to the shards' ids: `tools/write_hf_fixture.py --check-export`.)
#[test]
fn a_gpt2_vocabulary_goes_out_with_its_tokenizer() {
    let dir = tmp_dir("tokenizer");
    let out = dir.join("hf");
    convert(
        &["--format", "hf"],
        &fixture("ref_gpt2vocab_model.bin"),
        &out,
    );
    let read_json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(name)).unwrap()).unwrap()
    };
    let vocab = read_json("vocab.json");
    let vocab = vocab.as_object().unwrap();
    assert_eq!(vocab.len(), 50257);
    assert_eq!(vocab["<|endoftext|>"], 50256);
    // " the" is token 262, "\n" 198, "!" 0 (GPT-2's encoder.json)
    assert_eq!(
        (
            vocab["Ġthe"].clone(),
            vocab["Ċ"].clone(),
            vocab["!"].clone()
        ),
        (262.into(), 198.into(), 0.into())
    );
    let merges = std::fs::read_to_string(out.join("merges.txt")).unwrap();
    let lines: Vec<&str> = merges.lines().collect();
    assert_eq!(lines.len(), 50001);
    assert_eq!(lines[..4], ["#version: 0.2", "Ġ t", "Ġ a", "h e"]);
    // merge i joins two tokens into token 256 + i
    for (i, line) in lines[1..].iter().enumerate() {
        let (a, b) = line.split_once(' ').unwrap();
        assert_eq!(vocab[&format!("{a}{b}")], 256 + i, "{line}");
    }
    let config = read_json("tokenizer_config.json");
    assert_eq!(config["model_max_length"], 8); // the fixture's maxT
    assert_eq!(config["eos_token"], "<|endoftext|>");
    // GPT-2's tokenizer adds no space before a text's first word ("Hello" is 15496, not " Hello"'s
    // 18435): transformers does so only where the config asks for it
    assert_ne!(config["add_prefix_space"], true);
    // a model with another vocabulary gets none
    let other = dir.join("other");
    convert(&["--format", "hf"], &fixture("hf_tiny"), &other);
    assert!(!other.join("vocab.json").exists() && !other.join("merges.txt").exists());
}

/// `convert --format hf` of a Hugging Face model keeps the `bos_token_id` and `eos_token_id` of
/// its config.json (hf_tiny's 99, not null), each where it is a token of the vocabulary; a model
/// without them (an llm.c checkpoint) names GPT-2's end of text where the vocabulary has it.
#[test]
fn convert_keeps_a_hugging_face_model_s_token_ids() {
    let dir = tmp_dir("token_ids");
    let config = |folder: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap()
    };
    let hf = |model: &Path, name: &str| {
        let out = dir.join(name);
        convert(&["--format", "hf"], model, &out);
        let c = config(&out);
        (c["bos_token_id"].clone(), c["eos_token_id"].clone())
    };
    let null = serde_json::Value::Null;
    assert_eq!(hf(&fixture("hf_tiny"), "tiny"), (99.into(), 99.into()));
    // through an llm.c checkpoint the ids are lost: GPT-2's end of text is not among 100 tokens
    convert(&[], &fixture("hf_tiny"), &dir.join("tiny.bin"));
    assert_eq!(
        hf(&dir.join("tiny.bin"), "via_llmc"),
        (null.clone(), null.clone())
    );
    // ids of its own, one of them not a token of the vocabulary
    let edited = dir.join("edited");
    std::fs::create_dir(&edited).unwrap();
    let weights = "model.safetensors";
    std::fs::copy(fixture("hf_tiny").join(weights), edited.join(weights)).unwrap();
    let mut c = config(&fixture("hf_tiny"));
    (c["bos_token_id"], c["eos_token_id"]) = (3.into(), 100.into());
    std::fs::write(edited.join("config.json"), c.to_string()).unwrap();
    assert_eq!(hf(&edited, "own"), (3.into(), null));
    // GPT-2's vocabulary: 50256 from a checkpoint, and a folder's own ids kept
    let gpt2 = dir.join("gpt2");
    assert_eq!(
        hf(&fixture("ref_gpt2vocab_model.bin"), "gpt2"),
        (50256.into(), 50256.into())
    );
    let mut c = config(&gpt2);
    c["bos_token_id"] = 0.into();
    std::fs::write(gpt2.join("config.json"), c.to_string()).unwrap();
    assert_eq!(hf(&gpt2, "gpt2_again"), (0.into(), 50256.into()));
}

/// The names and bytes of the files in `dir` (a folder's bytes empty), sorted.
fn folder_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap_or_default();
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// `convert --format hf` into a folder that holds tokenizer files it would not write again is
/// refused before anything is written, naming them: GPT-2's (an earlier convert's) where the
/// model's vocabulary is another (transformers would load a 50257-token tokenizer for a model of
/// 100), a `tokenizer.json` beside GPT-2's own three.
#[test]
fn a_folder_with_another_tokenizer_is_refused() {
    let dir = tmp_dir("other_tokenizer");
    let out = dir.join("hf");
    let gpt2_vocab = fixture("ref_gpt2vocab_model.bin");
    convert(&["--format", "hf"], &gpt2_vocab, &out);
    let refused = |model: &Path| {
        let before = folder_files(&out);
        let run = bin()
            .args(["convert", "--format", "hf", "--model"])
            .arg(model)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(folder_files(&out) == before, "the folder changed");
        stderr
    };
    let d = out.display();
    assert_eq!(
        refused(&fixture("hf_tiny")),
        format!(
            "error: {d} holds tokenizer files that this convert would not write again: \
             vocab.json, merges.txt, tokenizer_config.json (the model's vocabulary of 100 tokens \
             is not GPT-2's, so no tokenizer is written); transformers' AutoTokenizer would load \
             them with the new model: remove them, or give another --out\n"
        )
    );
    // GPT-2's vocabulary again: its own three are written again
    convert(&["--format", "hf"], &gpt2_vocab, &out);
    std::fs::write(out.join("tokenizer.json"), b"{}").unwrap();
    let stderr = refused(&gpt2_vocab);
    assert!(
        stderr.contains(&format!(
            "{d} holds tokenizer files that this convert would not write again: tokenizer.json \
             (GPT-2's tokenizer is written as vocab.json, merges.txt, tokenizer_config.json)"
        )),
        "{stderr}"
    );
    // without them, the model of 100 tokens goes in
    for f in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    ] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    convert(&["--format", "hf"], &fixture("hf_tiny"), &out);
    assert_eq!(read_model(&out).unwrap().config.vocab_size, 100);
}

/// `convert --format hf` into a folder that holds a model writes all of its files or none: a
/// failure on the last (config.json, as on a full disk) leaves the earlier weights and config
/// together, and no temporary file; nor does it write over its own `--model`.
#[test]
fn a_failed_hugging_face_write_leaves_the_folder_as_it_was() {
    let dir = tmp_dir("hf_failed");
    let out = dir.join("hf");
    convert(&["--format", "hf"], &fixture("hf_tiny"), &out);
    let before = folder_files(&out);
    // config.json cannot be written: a directory holds its temporary name
    std::fs::create_dir(out.join("config.json.tmp")).unwrap();
    let mut cmd = bin();
    cmd.args([
        "convert",
        "--format",
        "hf",
        "--precision",
        "bf16",
        "--model",
    ]);
    let run = cmd
        .arg(fixture("hf_tiny"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("config.json: cannot write"), "{stderr}");
    std::fs::remove_dir(out.join("config.json.tmp")).unwrap();
    assert!(folder_files(&out) == before, "the folder changed");
    // --out the model itself
    for (flags, model, to) in [
        (
            &[][..],
            out.join("model.safetensors"),
            out.join("model.safetensors"),
        ),
        (&["--format", "hf"][..], out.clone(), out.clone()),
    ] {
        let run = bin()
            .arg("convert")
            .args(flags)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&to)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("would overwrite the model being converted"),
            "{stderr}"
        );
    }
    assert!(folder_files(&out) == before, "the model was overwritten");
}

/// A shard in `dir` whose first batch (B=2, T=16) is hf_tiny_state.bin's, and that state.
fn state_batch_shard(dir: &Path) -> (PathBuf, DebugState) {
    let cfg = read_model(&fixture("hf_tiny")).unwrap().config;
    let state = read_debug_state(&fixture("hf_tiny_state.bin"), &cfg).unwrap();
    // x = tokens[..B*T], y = tokens[1..]
    let mut tokens: Vec<u32> = state.x.clone();
    tokens.push(*state.y.last().unwrap());
    let shard = dir.join("batch.bin");
    write_shard(&shard, &tokens).unwrap();
    (shard, state)
}

/// `eval` on the state's batch gives transformers' loss; what it cannot evaluate is an error.
#[test]
fn eval_gives_transformers_loss() {
    let dir = tmp_dir("eval");
    let (shard, state) = state_batch_shard(&dir);
    let eval = |extra: &[&str]| {
        let mut cmd = bin();
        cmd.args(["eval", "--device", "cpu", "--model"])
            .arg(fixture("hf_tiny"));
        cmd.args(["--data", shard.to_str().unwrap()]);
        cmd.args(extra).output().unwrap()
    };
    let out = eval(&["--batch", "2", "--seq", "16"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 of 1 batch of 2x16"), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("loss ")).unwrap();
    let loss: f32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // within 1e-5: the print's 6 decimals and the fp32 tolerance against transformers (1e-6
    // relative); ln V is 0.027 away
    assert!(
        (loss - state.loss).abs() <= 1e-5,
        "{loss} vs transformers' {}",
        state.loss
    );
    let perplexity = (state.loss as f64).exp();
    assert!(
        line.contains(&format!("(perplexity {perplexity:.3}) over 32 tokens")),
        "{line}"
    );
    for (extra, error) in [
        (&["--batch", "2", "--seq", "17"][..], "--seq in 1..=16"),
        (
            &["--batch", "2", "--seq", "16", "--batches", "2"],
            "--batches must be in 1..=1 (the data's whole batches of 2x16); got 2",
        ),
        (
            &["--batch", "2", "--seq", "16", "--batches", "0"],
            "--batches must be in 1..=1 (the data's whole batches of 2x16); got 0",
        ),
        (
            &["--seq", "8", "--batch", "0"],
            "--batch must be at least 1",
        ),
    ] {
        let out = eval(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(error), "{extra:?}: {stderr}");
    }
}

/// Finetuning from a Hugging Face directory: the run's first loss, on a shard holding the state's
/// batch, is transformers' loss; the run trains and writes llm.c checkpoints.
#[test]
fn a_finetuning_run_starts_from_transformers_loss() {
    let dir = tmp_dir("finetune");
    let (shard, state) = state_batch_shard(&dir);
    let stdout = run_ok(
        bin()
            .args(["--device", "cpu", "--model"])
            .arg(fixture("hf_tiny"))
            .args(["--train", shard.to_str().unwrap()])
            .args(["--val", shard.to_str().unwrap()])
            .args(["--batch", "2", "--seq", "16", "--steps", "3"])
            .args(["--lr", "1e-3", "--warmup", "0", "--sample-tokens", "0"])
            .arg("--out-dir")
            .arg(&dir),
    );
    let losses = step_losses(&stdout);
    assert_eq!(losses.len(), 3, "{stdout}");
    // the step line prints 4 decimals: within half of the last one (ln V = 4.605 is 0.027 away)
    assert!(
        (losses[0] - state.loss).abs() <= 5e-5 + state.loss * Tolerances::FP32.loss as f32,
        "first loss {} vs transformers' {}",
        losses[0],
        state.loss
    );
    assert!(losses[2] < losses[0], "{losses:?}");
    assert!(dir.join("model_000003.bin").exists(), "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// malformed models

/// A safetensors file with these tensors: (name, dtype, shape, bytes).
fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// A folder of hf_tiny's config.json and a model.safetensors of this header, written as given
/// (valid or not), and `data` zero bytes after it.
fn folder_with_header(name: &str, header: &str, data: usize) -> engine_bin::TempFolder {
    let dir = tmp_dir(name);
    std::fs::copy(fixture("hf_tiny/config.json"), dir.join("config.json")).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data, 0);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

/// hf_tiny's tensors, as (name, dtype, shape, bytes), in the file's order.
fn hf_tiny_tensors() -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    tensors_in(&fixture("hf_tiny/model.safetensors"))
}

/// A safetensors file's tensors, as (name, dtype, shape, bytes), in name order (parsed here, not
/// by the engine's reader).
fn tensors_in(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for (name, e) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let off: Vec<usize> = e["data_offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let shape = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        out.push((
            name.clone(),
            e["dtype"].as_str().unwrap().to_string(),
            shape,
            data[off[0]..off[1]].to_vec(),
        ));
    }
    out
}

/// A copy of hf_tiny in a fresh directory, its config edited by `edit_config` and its tensors by
/// `edit_tensors`.
fn variant(
    name: &str,
    edit_config: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    edit_tensors: impl FnOnce(&mut Vec<(String, String, Vec<usize>, Vec<u8>)>),
) -> engine_bin::TempFolder {
    let dir = tmp_dir(name);
    let text = std::fs::read(fixture("hf_tiny/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&text).unwrap();
    edit_config(config.as_object_mut().unwrap());
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = hf_tiny_tensors();
    edit_tensors(&mut tensors);
    let borrowed: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), d.as_str(), s.clone(), b.clone()))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &borrowed);
    dir
}

fn expect_err(path: &Path, needles: &[&str]) {
    let err = match read_model(path) {
        Ok(_) => panic!("{}: read without error", path.display()),
        Err(e) => format!("{e:#}"),
    };
    for n in needles {
        assert!(
            err.contains(n),
            "{}: error lacks '{n}': {err}",
            path.display()
        );
    }
}

fn keep<T>(_: &mut T) {}

#[test]
fn an_unchanged_copy_reads_like_the_fixture() {
    // the variants below differ from this only by what each edits
    let dir = variant("unchanged", keep, keep);
    let ck = read_model(&dir).unwrap();
    assert_eq!(ck, read_model(&fixture("hf_tiny")).unwrap());
}

#[test]
fn a_config_the_engine_does_not_compute_is_refused() {
    use serde_json::json;
    let cases: Vec<(&str, &str, serde_json::Value, &str)> = vec![
        ("llama", "model_type", json!("llama"), "only GPT-2"),
        (
            "erf-gelu",
            "activation_function",
            json!("gelu"),
            "tanh GELU",
        ),
        ("n-inner", "n_inner", json!(64), "4 * n_embd = 128"),
        ("eps", "layer_norm_epsilon", json!(1e-6), "eps 1e-5"),
        ("unscaled", "scale_attn_weights", json!(false), "1/sqrt"),
        (
            "by-layer",
            "scale_attn_by_inverse_layer_idx",
            json!(true),
            "same attention scale",
        ),
        (
            "cross",
            "add_cross_attention",
            json!(true),
            "self-attention only",
        ),
        ("zero-heads", "n_head", json!(0), "not a positive integer"),
        (
            "odd-heads",
            "n_head",
            json!(3),
            "C=32 is not divisible by heads NH=3",
        ),
    ];
    for (name, key, value, needle) in cases {
        let dir = variant(name, |c| drop(c.insert(key.into(), value)), keep);
        let key_named = if name == "odd-heads" {
            "config.json"
        } else {
            key
        };
        expect_err(&dir, &[key_named, needle]);
    }
}

#[test]
fn missing_extra_and_misshapen_tensors_are_named() {
    use serde_json::json;
    // the config says 3 layers, the file holds 2
    let dir = variant(
        "three",
        |c| drop(c.insert("n_layer".into(), json!(3))),
        keep,
    );
    expect_err(&dir, &["no tensor \"h.2.ln_1.weight\""]);
    // the config says 1 layer, the file holds 2
    let dir = variant("one", |c| drop(c.insert("n_layer".into(), json!(1))), keep);
    expect_err(&dir, &["unexpected tensor \"h.1.", "1 layers"]);
    // a wider model
    let dir = variant("wide", |c| drop(c.insert("n_embd".into(), json!(64))), keep);
    expect_err(&dir, &["\"wte.weight\" has shape [100, 32]", "[100, 64]"]);
    // a far larger model's config.json beside these weights (75,000 GiB of parameters): named by
    // its tensors before any memory is asked for them
    let dir = variant(
        "huge",
        |c| {
            c.insert("n_layer".into(), json!(100_000));
            c.insert("n_embd".into(), json!(4096));
        },
        keep,
    );
    expect_err(&dir, &["\"wte.weight\" has shape [100, 32]", "[100, 4096]"]);
    // and one of many more layers than these weights (133 GiB of parameters): named by the first
    // layer missing
    let dir = variant(
        "deep",
        |c| drop(c.insert("n_layer".into(), json!(2_800_000))),
        keep,
    );
    expect_err(&dir, &["no tensor \"h.2.ln_1.weight\""]);
    // and one of i32::MAX layers (the most a config takes), read by the engine within 400 MB: the
    // reader compares the tensors of at most one layer more than the weights hold, never a list
    // of every layer the config names (2^31 layers of 12 tensors: terabytes)
    let dir = variant(
        "deepest",
        |c| drop(c.insert("n_layer".into(), json!(i32::MAX))),
        keep,
    );
    let out = limited(400_000)
        .args(["sample", "--device", "cpu", "--tokens", "1", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no tensor \"h.2.ln_1.weight\" (nor \"transformer.h.2.ln_1.weight\")"),
        "{stderr}"
    );
    // a classification head
    let dir = variant("score", keep, |t| {
        t.push((
            "score.weight".into(),
            "F32".into(),
            vec![2, 32],
            vec![0; 256],
        ))
    });
    expect_err(&dir, &["unexpected tensor \"score.weight\""]);
    // an output layer not tied to wte
    let dir = variant("untied", keep, |t| {
        let wte = t.iter().find(|x| x.0 == "transformer.wte.weight").unwrap();
        let mut head = wte.clone();
        head.0 = "lm_head.weight".into();
        head.3[0] ^= 1;
        t.push(head);
    });
    expect_err(&dir, &["lm_head.weight differs from wte.weight"]);
    // an integer tensor where a weight is expected
    let dir = variant("int", keep, |t| {
        let x = t
            .iter_mut()
            .find(|x| x.0 == "transformer.ln_f.bias")
            .unwrap();
        x.1 = "I32".into();
    });
    expect_err(
        &dir,
        &["\"transformer.ln_f.bias\" is I32", "only F32, F16, BF16"],
    );
    // the same tensor with and without the prefix
    let dir = variant("twice", keep, |t| {
        let mut x = t
            .iter()
            .find(|x| x.0 == "transformer.wpe.weight")
            .unwrap()
            .clone();
        x.0 = "wpe.weight".into();
        t.push(x);
    });
    expect_err(&dir, &["\"wpe.weight\" is stored twice"]);
}

#[test]
fn broken_files_and_directories_give_clear_errors() {
    let tiny = std::fs::read(fixture("hf_tiny/model.safetensors")).unwrap();
    let config = std::fs::read(fixture("hf_tiny/config.json")).unwrap();
    let with = |name: &str, model: &[u8]| {
        let dir = tmp_dir(name);
        std::fs::write(dir.join("config.json"), &config).unwrap();
        std::fs::write(dir.join("model.safetensors"), model).unwrap();
        dir
    };
    // truncated: the last tensor ends past the end of the file
    let dir = with("truncated", &tiny[..tiny.len() - 4]);
    expect_err(&dir, &["safetensors file is truncated"]);
    // a header length beyond the file
    let mut bad = tiny.clone();
    bad[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let dir = with("huge-header", &bad);
    expect_err(&dir, &["header length 1099511627776", "format's limit"]);
    // a header that is not JSON
    let mut bad = tiny.clone();
    bad[8] = b'[';
    bad[9] = b'!';
    let dir = with("not-json", &bad);
    expect_err(&dir, &["its header is not JSON"]);
    // shorter than the length field
    let dir = with("tiny", &tiny[..5]);
    expect_err(&dir, &["shorter than its 8-byte length"]);
    // overlapping tensors
    let text = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    let dir = folder_with_header("overlap", text, 12);
    expect_err(&dir, &["tensors \"a\" and \"b\" overlap"]);
    // a shape that does not match its byte range
    let dir = variant("short-range", keep, |t| t[0].2 = vec![97]);
    expect_err(&dir, &["shape [97] of F32 is 388 bytes", "hold 384"]);
    // no config.json
    let dir = tmp_dir("no-config");
    std::fs::write(dir.join("model.safetensors"), &tiny).unwrap();
    expect_err(&dir, &["no config.json beside"]);
    // nothing at all
    let dir = tmp_dir("empty");
    expect_err(
        &dir,
        &[
            "without model.safetensors, model.safetensors.index.json, pytorch_model.bin or \
           pytorch_model.bin.index.json",
        ],
    );
    // a config.json that is not JSON, or JSON but not an object of settings
    for (name, text, needle) in [
        (
            "config-not-json",
            "n_layer = 2",
            "config.json: not valid JSON: ",
        ),
        (
            "config-array",
            "[2, 2, 32]",
            "config.json: not a JSON object",
        ),
    ] {
        let dir = with(name, &tiny);
        std::fs::write(dir.join("config.json"), text).unwrap();
        expect_err(&dir, &[needle]);
    }
    // a shard index (beside config.json alone) that cannot be followed
    for (name, text, needle) in [
        // naming a file outside its directory
        (
            "index",
            r#"{"weight_map": {"wte.weight": "../elsewhere.safetensors"}}"#,
            "not a file beside it",
        ),
        // a missing shard
        (
            "missing-shard",
            r#"{"weight_map": {"wte.weight": "model-00001-of-00002.safetensors"}}"#,
            "model-00001-of-00002.safetensors: cannot open",
        ),
        // without its map of tensors to shards
        (
            "no-weight-map",
            r#"{"metadata": {"total_size": 400}}"#,
            "model.safetensors.index.json: no \"weight_map\" object",
        ),
        (
            "weight-map-list",
            r#"{"weight_map": ["model.safetensors"]}"#,
            "model.safetensors.index.json: no \"weight_map\" object",
        ),
        // naming a shard by a number or an empty name
        (
            "shard-number",
            r#"{"weight_map": {"wte.weight": 1}}"#,
            "\"weight_map\" names 1, not a file beside it",
        ),
        (
            "shard-empty-name",
            r#"{"weight_map": {"wte.weight": ""}}"#,
            "\"weight_map\" names \"\", not a file beside it",
        ),
        // naming no shard (it panicked)
        (
            "no-shard",
            r#"{"weight_map": {}}"#,
            "model.safetensors.index.json: \"weight_map\" names no shard",
        ),
    ] {
        let dir = tmp_dir(name);
        std::fs::write(dir.join("config.json"), &config).unwrap();
        std::fs::write(dir.join("model.safetensors.index.json"), text).unwrap();
        expect_err(&dir, &[needle]);
    }
    // PyTorch's legacy format as a folder's pytorch_model.bin: named, not read as safetensors
    let dir = tmp_dir("legacy-in-folder");
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let mut bytes = b"\x80\x02\x8a\x0a".to_vec();
    bytes.resize(2048, 0);
    std::fs::write(dir.join("pytorch_model.bin"), bytes).unwrap();
    expect_err(
        &dir,
        &["pytorch_model.bin: this is PyTorch's legacy format"],
    );
    // untied (tie_word_embeddings false) without lm_head.weight: its output layer is missing
    let dir = variant(
        "untied-no-head",
        |c| {
            c.insert("tie_word_embeddings".into(), false.into());
        },
        keep,
    );
    expect_err(
        &dir,
        &["\"tie_word_embeddings\" is false, but there is no lm_head.weight"],
    );
}

/// Each check of a safetensors header entry, on a file whose header is written by hand: the
/// error names the file, the tensor and what is wrong with its entry (none of these was named
/// by a test; a bad entry was seen only through a truncated or overlapping file).
#[test]
fn a_damaged_safetensors_header_names_the_entry() {
    // (a case's name, tensor "a"'s entry, what the error must say of it)
    let cases = [
        ("not-object", "5", "the entry is 5, not an object"),
        (
            "no-dtype",
            r#"{"shape":[2],"data_offsets":[0,8]}"#,
            "no \"dtype\" field",
        ),
        (
            "dtype-number",
            r#"{"dtype":4,"shape":[2],"data_offsets":[0,8]}"#,
            "\"dtype\" is not a string",
        ),
        (
            "shape-number",
            r#"{"dtype":"F32","shape":2,"data_offsets":[0,8]}"#,
            "\"shape\" is not an array",
        ),
        (
            "negative-dimension",
            r#"{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}"#,
            "a dimension is -2, not a non-negative integer",
        ),
        (
            "one-offset",
            r#"{"dtype":"F32","shape":[2],"data_offsets":[8]}"#,
            "\"data_offsets\" is not a [begin, end] pair",
        ),
        (
            "three-offsets",
            r#"{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}"#,
            "\"data_offsets\" is not a [begin, end] pair",
        ),
        (
            "fractional-begin",
            r#"{"dtype":"F32","shape":[2],"data_offsets":[0.5,8]}"#,
            "the begin offset is 0.5, not a non-negative integer",
        ),
        (
            "negative-end",
            r#"{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}"#,
            "the end offset is -8, not a non-negative integer",
        ),
        (
            "backwards",
            r#"{"dtype":"F32","shape":[2],"data_offsets":[8,0]}"#,
            "\"data_offsets\" [8, 0] ends before it begins",
        ),
        // 2^63 x 2^63 x 4 elements: 2^128, past even a u128 count
        (
            "too-many-elements",
            r#"{"dtype":"F32","shape":[9223372036854775808,9223372036854775808,4],"data_offsets":[0,8]}"#,
            "shape [9223372036854775808, 9223372036854775808, 4] has too many elements",
        ),
    ];
    for (name, entry, needle) in cases {
        let dir = folder_with_header(name, &format!(r#"{{"a":{entry}}}"#), 8);
        expect_err(
            &dir,
            &["model.safetensors: tensor \"a\" in the header: ", needle],
        );
    }
    // a header that is JSON, but not an object of entries
    let dir = folder_with_header("array-header", "[1]", 0);
    expect_err(
        &dir,
        &["model.safetensors: the safetensors header is not a JSON object"],
    );
}

/// A model named as on the Hugging Face Hub is not downloaded: the error says how to fetch it.
#[test]
fn a_hub_name_says_how_to_download_the_model() {
    for (name, repo, dir) in [
        ("gpt2", "openai-community/gpt2", "gpt2"),
        (
            "openai-community/gpt2-xl",
            "openai-community/gpt2-xl",
            "gpt2-xl",
        ),
        ("distilgpt2", "distilbert/distilgpt2", "distilgpt2"),
    ] {
        let want = format!(
            "huggingface-cli download {repo} config.json model.safetensors --local-dir {dir}`, \
             then give --model {dir}"
        );
        for command in [&["--device", "cpu"][..], &["sample", "--device", "cpu"]] {
            let out = bin()
                .args(command)
                .args(["--model", name])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains(&want), "{stderr}");
        }
    }
}

/// PyTorch's `pytorch_model.bin` (torch.save's zip archive, read without running its pickle):
/// the state dict of the whole model (fp32, lm_head sharing wte's storage) reads to hf_tiny's
/// parameters bit for bit, from the folder, the file or two shards with their index; the Hub's
/// old layout in bf16 (mask buffers, a scalar masked_bias) to hf_tiny_hub_bf16's.
#[test]
fn pytorch_model_bin_reads_as_the_safetensors_do() {
    let fp32 = read_model(&fixture("hf_tiny")).unwrap();
    assert_each_reads_as(
        &fp32,
        &[
            "hf_tiny_torch",
            "hf_tiny_torch/pytorch_model.bin",
            "hf_tiny_torch_sharded",
        ],
    );
    let bf16 = read_model(&fixture("hf_tiny_torch_bf16")).unwrap();
    assert!(bf16.params == read_model(&fixture("hf_tiny_hub_bf16")).unwrap().params);
    assert!(bf16.params != fp32.params);
    // the file's tensors: names, shapes, dtypes as torch saved them
    let t = open_torch_zip(&fixture("hf_tiny_torch_bf16/pytorch_model.bin")).unwrap();
    let masked = &t.tensors()["h.0.attn.masked_bias"];
    assert_eq!(
        (masked.shape.clone(), masked.dtype.clone()),
        (vec![], Ok(Dtype::F32))
    );
    assert_eq!(t.tensors()["wte.weight"].dtype, Ok(Dtype::BF16));
    assert_eq!(t.tensors()["h.1.attn.bias"].shape, [1, 1, 16, 16]);
}

/// What the torch reader refuses, each with a message: a view that is not contiguous, an integer
/// tensor read as weights (a file holding one still opens), an archive cut short anywhere, the
/// legacy format, and a pickle given directly without config.json.
#[test]
fn pytorch_files_it_cannot_read_give_clear_errors() {
    let mut odd = open_torch_zip(&fixture("torch_odd.bin")).unwrap();
    let mut w = vec![0f32; 6];
    odd.read_f32("w", &mut w).unwrap();
    assert_eq!(w, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    // a view from element 4 of its storage (torch saves the whole storage)
    let mut tail = vec![0f32; 6];
    odd.read_f32("tail", &mut tail).unwrap();
    assert_eq!(tail, [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    let err = odd.read_f32("ids", &mut [0f32; 5]).unwrap_err().to_string();
    assert!(err.contains("\"ids\" is torch.LongStorage"), "{err}");
    let err = open_torch_zip(&fixture("torch_transposed.bin"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("shape [3, 2] with strides [1, 3]: not contiguous"),
        "{err}"
    );
    // cut anywhere: an error, never a panic or a wrong model
    let whole = std::fs::read(fixture("hf_tiny_torch/pytorch_model.bin")).unwrap();
    let config = std::fs::read(fixture("hf_tiny/config.json")).unwrap();
    let dir = tmp_dir("torch-cut");
    std::fs::write(dir.join("config.json"), &config).unwrap();
    for cut in [
        4,
        100,
        1000,
        whole.len() / 2,
        whole.len() - 30,
        whole.len() - 1,
    ] {
        std::fs::write(dir.join("pytorch_model.bin"), &whole[..cut]).unwrap();
        let err = format!(
            "{:#}",
            read_model(&dir).expect_err("a cut archive must fail")
        );
        assert!(err.contains("pytorch_model.bin"), "cut at {cut}: {err}");
    }
    // any one byte of a small archive changed: an error or a file that opens, never a panic
    let small = std::fs::read(fixture("torch_odd.bin")).unwrap();
    let damaged = dir.join("damaged.bin");
    for i in 0..small.len() {
        for x in [0x00, 0xFF, small[i] ^ 0x01] {
            let mut bytes = small.clone();
            bytes[i] = x;
            std::fs::write(&damaged, &bytes).unwrap();
            if let Ok(mut t) = open_torch_zip(&damaged) {
                let names: Vec<String> = t.tensors().keys().cloned().collect();
                for name in names {
                    let n = t.tensors()[&name].numel();
                    let _ = t.read_f32(&name, &mut vec![0f32; n]);
                }
            }
        }
    }
    // PyTorch's legacy format (a bare pickle, before 1.6) is named, not read
    let legacy = dir.join("legacy.bin");
    let mut bytes = b"\x80\x02\x8a\x0a".to_vec(); // how torch.save's legacy files begin
    bytes.resize(2048, 0);
    std::fs::write(&legacy, bytes).unwrap();
    let err = format!("{:#}", read_model(&legacy).expect_err("legacy"));
    assert!(err.contains("PyTorch's legacy format"), "{err}");
    // a pickle file on its own: it needs the config
    let alone = tmp_dir("torch-alone");
    std::fs::copy(fixture("torch_odd.bin"), alone.join("pytorch_model.bin")).unwrap();
    let out = bin()
        .args(["sample", "--device", "cpu", "--model"])
        .arg(alone.join("pytorch_model.bin"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no config.json beside"), "{stderr}");
}

/// Where entry `name`'s bytes begin in the zip archive `zip`: after its local header.
fn entry_data(zip: &[u8], name: &str) -> usize {
    let at = (0..zip.len() - 30)
        .find(|&i| {
            zip[i..].starts_with(b"PK\x03\x04") && zip[i + 30..].starts_with(name.as_bytes())
        })
        .unwrap_or_else(|| panic!("no entry {name}"));
    let u16_at = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
    at + 30 + u16_at(at + 26) + u16_at(at + 28)
}

/// Each entry's CRC-32 is checked: one byte changed in a tensor's storage, or in a key of the
/// pickle (which would still read, as another name), is an error that names the entry and the
/// file, not a model with other weights.
#[test]
fn a_damaged_pytorch_model_bin_is_named_by_its_crc() {
    let whole = std::fs::read(fixture("hf_tiny_torch/pytorch_model.bin")).unwrap();
    let dir = tmp_dir("torch-crc");
    std::fs::copy(fixture("hf_tiny/config.json"), dir.join("config.json")).unwrap();
    let file = dir.join("pytorch_model.bin");
    // the unchanged copy reads; each change is found wherever it is in the entry
    std::fs::write(&file, &whole).unwrap();
    read_model(&dir).unwrap();
    let storage = entry_data(&whole, "pytorch_model/data/4");
    for at in [storage, storage + 5000, storage + 12287] {
        let mut bytes = whole.clone();
        bytes[at] ^= 0x10;
        std::fs::write(&file, &bytes).unwrap();
        let Err(e) = read_model(&dir) else {
            panic!("byte {at} changed: read without error")
        };
        let err = format!("{e:#}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(
            err.contains("pytorch_model/data/4: CRC-32 mismatch (stored 54129a90, computed "),
            "{err}"
        );
        assert!(err.contains("the file is damaged"), "{err}");
    }
    // "wpe" read as "wqe": the pickle still runs
    let pickle = entry_data(&whole, "pytorch_model/data.pkl");
    let wpe = pickle
        + whole[pickle..]
            .windows(3)
            .position(|w| w == b"wpe")
            .unwrap();
    let mut bytes = whole.clone();
    bytes[wpe + 1] = b'q';
    std::fs::write(&file, &bytes).unwrap();
    let Err(e) = read_model(&dir) else {
        panic!("a key changed: read without error")
    };
    let err = format!("{e:#}");
    assert!(
        err.contains("pytorch_model/data.pkl: CRC-32 mismatch (stored e33bfd25"),
        "{err}"
    );
}

/// A zip archive of `entries`, stored (as torch.save writes them), with their CRC-32s.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(entries, false, b"")
}

/// [`zip_of`], with every size, offset and count in zip64 records if `zip64` (as torch.save
/// writes those past 4 GiB), and `comment` after the directory's record.
fn zip_with(entries: &[(&str, &[u8])], zip64: bool, comment: &[u8]) -> Vec<u8> {
    const FULL: u32 = 0xFFFF_FFFF; // "in the zip64 extra field"
    let (mut out, mut directory) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let (crc, size, name_len) = (crc32(0, data), data.len() as u32, name.len() as u16);
        let local = out.len() as u32;
        // the zip64 extra field (id 1): the sizes, then in the directory the local header's offset
        let sizes = [(data.len() as u64).to_le_bytes(); 2].concat();
        let local_extra = [&1u16.to_le_bytes()[..], &16u16.to_le_bytes(), &sizes].concat();
        let dir_extra = [
            &1u16.to_le_bytes()[..],
            &24u16.to_le_bytes(),
            &sizes,
            &(local as u64).to_le_bytes(),
        ]
        .concat();
        let (shown, local_extra, dir_extra) = if zip64 {
            (FULL, local_extra, dir_extra)
        } else {
            (size, vec![], vec![])
        };
        // version 20, no flags, stored, no time
        let common = [
            &20u16.to_le_bytes()[..],
            &[0; 8],
            &crc.to_le_bytes(),
            &shown.to_le_bytes(),
            &shown.to_le_bytes(),
            &name_len.to_le_bytes(),
        ]
        .concat();
        out.extend(b"PK\x03\x04");
        out.extend(&common);
        out.extend((local_extra.len() as u16).to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(local_extra);
        out.extend(*data);
        directory.extend(b"PK\x01\x02");
        directory.extend(20u16.to_le_bytes()); // made by
        directory.extend(&common);
        directory.extend((dir_extra.len() as u16).to_le_bytes());
        directory.extend([0; 10]); // comment, disk, attributes
        directory.extend((if zip64 { FULL } else { local }).to_le_bytes());
        directory.extend(name.as_bytes());
        directory.extend(dir_extra);
    }
    // the directory, and the record at the end that says where it is
    let (count, at, len) = (entries.len(), out.len(), directory.len());
    out.extend(directory);
    let (mut count16, mut at32, mut len32) = (count as u16, at as u32, len as u32);
    if zip64 {
        // the zip64 record (its size after its first 12 bytes, versions, disks, counts, size,
        // offset), then the locator that says where it is
        let record = out.len() as u64;
        out.extend(b"PK\x06\x06");
        out.extend(44u64.to_le_bytes());
        out.extend([45u16.to_le_bytes(), 45u16.to_le_bytes()].concat());
        out.extend([0; 8]);
        for v in [count, count, len, at] {
            out.extend((v as u64).to_le_bytes());
        }
        out.extend(b"PK\x06\x07\0\0\0\0");
        out.extend(record.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        (count16, at32, len32) = (0xFFFF, FULL, FULL);
    }
    out.extend(b"PK\x05\x06\0\0\0\0"); // this disk, the directory's
    out.extend([count16.to_le_bytes(), count16.to_le_bytes()].concat());
    out.extend(len32.to_le_bytes());
    out.extend(at32.to_le_bytes());
    out.extend((comment.len() as u16).to_le_bytes());
    out.extend(comment);
    out
}

/// The entries of a zip archive `zip` without zip64 records, by its directory: names and bytes.
fn entries_of(zip: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes(zip[i..i + 4].try_into().unwrap()) as usize;
    let end = zip.len() - 22;
    assert!(zip[end..].starts_with(b"PK\x05\x06"), "a comment or zip64");
    let mut at = u32_at(end + 16);
    (0..u16_at(end + 10))
        .map(|_| {
            let (size, name_len) = (u32_at(at + 24), u16_at(at + 28));
            let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
            let data = entry_data(zip, &name);
            at += 46 + name_len + u16_at(at + 30) + u16_at(at + 32);
            (name, zip[data..data + size].to_vec())
        })
        .collect()
}

/// The same entries zipped otherwise than torch.save does read as the fixture: with a comment
/// after the directory's record (which its reader must step over), and with zip64 records for
/// every size, offset and count, as torch.save writes them past 4 GiB (gpt2-xl's 6.4 GB
/// pytorch_model.bin).
#[test]
fn a_rezipped_pytorch_model_bin_reads_the_same() {
    let want = read_model(&fixture("hf_tiny")).unwrap();
    let whole = std::fs::read(fixture("hf_tiny_torch/pytorch_model.bin")).unwrap();
    let entries = entries_of(&whole);
    assert_eq!(
        entries.len(),
        34,
        "{:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    let entries: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (&n[..], &d[..])).collect();
    // the writer here, checked: without zip64 or a comment it gives torch.save's entries back
    assert!(entries_of(&zip_of(&entries)) == entries_of(&whole));
    let dir = tmp_dir("torch-rezipped");
    std::fs::copy(fixture("hf_tiny/config.json"), dir.join("config.json")).unwrap();
    for (zip64, comment) in [
        (false, &b"made by hand"[..]),
        (true, b""),
        (true, b"zip64 too"),
    ] {
        std::fs::write(
            dir.join("pytorch_model.bin"),
            zip_with(&entries, zip64, comment),
        )
        .unwrap();
        let got = read_model(&dir).unwrap_or_else(|e| panic!("zip64 {zip64}: {e:#}"));
        assert!(
            got.params == want.params,
            "zip64 {zip64}, comment {comment:?}"
        );
        assert_eq!(got.config, want.config);
    }
}

/// An entry of torch.save's archive that is not stored as torch.save stores it is refused by
/// name: compressed (method 8, deflate) even where its compressed size equals its size, or
/// stored with a compressed size other than its size.
#[test]
fn a_compressed_entry_is_refused() {
    let zip = std::fs::read(fixture("hf_tiny_torch/pytorch_model.bin")).unwrap();
    // the first directory entry (the archive has no comment and no zip64 records): its method
    // at +10, its compressed size at +20
    let end = zip.len() - 22;
    let first = u32::from_le_bytes(zip[end + 16..end + 20].try_into().unwrap()) as usize;
    assert!(zip[first..].starts_with(b"PK\x01\x02"));
    let name_len = u16::from_le_bytes([zip[first + 28], zip[first + 29]]) as usize;
    let name = String::from_utf8_lossy(&zip[first + 46..first + 46 + name_len]).into_owned();
    let dir = tmp_dir("torch-compressed");
    std::fs::copy(fixture("hf_tiny/config.json"), dir.join("config.json")).unwrap();
    // (field's offset, its width, the value written, the method then): deflated; stored short
    for (at, width, value, method) in [(10, 2, 8u32, 8), (20, 4, 1, 0)] {
        let mut bad = zip.clone();
        bad[first + at..first + at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        std::fs::write(dir.join("pytorch_model.bin"), bad).unwrap();
        expect_err(
            &dir,
            &[&format!(
                "entry {name} is compressed (method {method}); torch.save stores its entries \
                 uncompressed"
            )],
        );
    }
}

/// Small crafted pickles that would take all memory (a list holding the previous memo entry twice,
/// 40 times over: 2^40 values from 326 bytes) or overflow the stack (lists 200,000 deep) are errors
/// at once, under a limit of 2 GB of address space.
#[test]
fn a_crafted_pickle_is_refused_within_bounded_memory() {
    let mut doubling = b"\x80\x02]q\x00".to_vec();
    for i in 1..=40u8 {
        doubling.extend([b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
    }
    doubling.push(b'.');
    let deep = [
        &b"\x80\x02"[..],
        &b"(".repeat(200_000),
        &b"l".repeat(200_000),
        b".",
    ]
    .concat();
    for (what, pickle, want) in [
        (
            "doubling",
            doubling,
            "data.pkl: the pickle builds more objects than a state dict could (over 1304 from 326 \
             bytes)",
        ),
        (
            "deep",
            deep,
            "data.pkl: the pickle nests containers more than 1000 deep: not a state dict",
        ),
    ] {
        let dir = tmp_dir(&format!("torch-{what}"));
        std::fs::copy(fixture("hf_tiny/config.json"), dir.join("config.json")).unwrap();
        let zip = zip_of(&[
            ("archive/data.pkl", &pickle),
            ("archive/byteorder", b"little"),
        ]);
        std::fs::write(dir.join("pytorch_model.bin"), zip).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -v 2000000 && exec \"$0\" \"$@\""])
            .arg(engine())
            .args(["convert", "--model"])
            .arg(&dir)
            .arg("--out")
            .arg(dir.join("out.bin"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(want), "{what}: {stderr}");
    }
}
