//! A Hugging Face GPT-2 (transformers' `GPT2LMHeadModel`: `openai-community/gpt2`, `gpt2-medium`,
//! a model finetuned and saved with `save_pretrained`) read as a [`Checkpoint`], so that `--model`
//! can start a finetuning run from it ([`read_hf_gpt2`]), and a checkpoint written as one, so
//! that transformers can take a model trained here (`convert --format hf`, [`write_hf_gpt2`]).
//!
//! What is read: a directory holding `config.json` and the weights: `model.safetensors`, a sharded
//! `model.safetensors.index.json` with its shards, or else PyTorch's `pytorch_model.bin` (read by
//! `formats::torch_zip`, which runs none of the pickle's code) or its sharded
//! `pytorch_model.bin.index.json`; or one of those files, with `config.json` beside it.
//!
//! `config.json` gives the dimensions: `n_layer` (L), `n_head` (NH), `n_embd` (C), `n_positions`
//! (maxT), `vocab_size` (V; Vp is V rounded up to 128, the padded rows of wte zero). A missing key
//! takes transformers' default (GPT-2 124M's). A config whose model the engine does not compute
//! is refused, naming the key: another `model_type`, an `activation_function` other than the
//! tanh GELU (`gelu_new`), `n_inner` other than 4C, `layer_norm_epsilon` other than 1e-5, unscaled
//! or layer-scaled attention, cross-attention.
//!
//! The tensors, with or without the `transformer.` prefix `save_pretrained` adds:
//! `wte.weight` (V, C), `wpe.weight` (maxT, C), `ln_f.weight`/`.bias` (C) and, for each layer
//! `h.N.`: `ln_1`, `ln_2` (weight, bias: C), `attn.c_attn` (weight (C, 3C), bias 3C),
//! `attn.c_proj` (C, C; C), `mlp.c_fc` (C, 4C; 4C), `mlp.c_proj` (4C, C; C). GPT-2's `Conv1D`
//! stores a weight as (in, out); the checkpoint (like `nn.Linear`) as (out, in), so the four
//! weights are transposed. The causal-mask buffers `h.N.attn.bias` and `h.N.attn.masked_bias` are
//! skipped; `lm_head.weight`, where present, must equal `wte.weight` (the engine ties the two). Any
//! other tensor, a missing one or a wrong shape is an error. F32, F16, BF16 and F64 are read (as
//! f32).

use super::checkpoint::{Checkpoint, CheckpointPrecision};
use super::hf_tokenizer::{write_hf_tokenizer, GPT2_TOKENIZER_FILES, OTHER_TOKENIZER_FILES};
use super::safetensors::{
    starts_like_safetensors, write_safetensors, Dtype, SafeTensors, TensorInfo,
};
use super::torch_zip::{open_torch_zip, starts_like_zip};
use super::StagedFiles;
use crate::config::{pad_vocab, GPT2Config, GPT2_EOT, GPT2_VOCAB_SIZE};
use crate::host_memory::zeroed;
use crate::params::{num_parameters, param_sizes};
use crate::tokenizer::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

const CONFIG_FILE: &str = "config.json";
const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";
const TORCH_FILE: &str = "pytorch_model.bin";
const TORCH_INDEX_FILE: &str = "pytorch_model.bin.index.json";

/// The Hugging Face repository of a GPT-2 named as on the Hub (`gpt2`, `gpt2-medium`,
/// `openai-community/gpt2-xl`, `distilgpt2`, ...): a name a user may give for a folder they have
/// not downloaded.
pub fn hub_repo(name: &str) -> Option<String> {
    let short = name.strip_prefix("openai-community/").unwrap_or(name);
    let short = short.strip_prefix("distilbert/").unwrap_or(short);
    match short {
        "gpt2" | "gpt2-medium" | "gpt2-large" | "gpt2-xl" => {
            Some(format!("openai-community/{short}"))
        }
        "distilgpt2" => Some("distilbert/distilgpt2".to_string()),
        _ => None,
    }
}

/// Whether `path` is (or is in) a Hugging Face model rather than an llm.c checkpoint: a directory,
/// a weights file (safetensors, or a `torch.save` archive) or a shard index.
pub fn is_hf_model(path: &Path) -> bool {
    path.is_dir() || is_index(path) || weights_file(path).is_some()
}

/// What a weights file is, by its first bytes.
#[derive(Clone, Copy, PartialEq)]
enum WeightsFile {
    /// A `torch.save` archive (`pytorch_model.bin`).
    TorchZip,
    SafeTensors,
}

/// Reads the first bytes of `path` once and says which weights file it is; None for anything
/// else, or a file that cannot be read.
fn weights_file(path: &Path) -> Option<WeightsFile> {
    let mut head = Vec::with_capacity(9);
    std::fs::File::open(path)
        .ok()?
        .take(9)
        .read_to_end(&mut head)
        .ok()?;
    if starts_like_zip(&head) {
        Some(WeightsFile::TorchZip)
    } else if starts_like_safetensors(&head) {
        Some(WeightsFile::SafeTensors)
    } else {
        None
    }
}

fn is_index(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".safetensors.index.json") || n.ends_with(".bin.index.json"))
}

/// Opens a file of weights: a `torch.save` archive, or a safetensors file.
fn open_weights(path: &Path) -> Result<SafeTensors> {
    if weights_file(path) == Some(WeightsFile::TorchZip) {
        return open_torch_zip(path);
    }
    // (a file that cannot be read is named by SafeTensors::open)
    let head = super::file_head(path, 4).unwrap_or_default();
    if super::starts_like_legacy_torch(&head) {
        bail!("{}: {}", path.display(), super::LEGACY_TORCH);
    }
    SafeTensors::open(path)
}

/// The config file and the safetensors files of the model at `path`.
fn locate(path: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let p = path.display();
    let (dir, weights) = if path.is_dir() {
        // safetensors first, as transformers prefers them
        let candidates = [SINGLE_FILE, INDEX_FILE, TORCH_FILE, TORCH_INDEX_FILE];
        let Some(weights) = candidates
            .iter()
            .map(|f| path.join(f))
            .find(|f| f.is_file())
        else {
            bail!(
                "{p}: a directory without {SINGLE_FILE}, {INDEX_FILE}, {TORCH_FILE} or \
                 {TORCH_INDEX_FILE}: not a Hugging Face model"
            );
        };
        (path.to_path_buf(), weights)
    } else {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (dir, path.to_path_buf())
    };
    let config = dir.join(CONFIG_FILE);
    if !config.is_file() {
        bail!(
            "{}: no {CONFIG_FILE} beside {}: it gives the model's dimensions (n_layer, n_head, ...)",
            dir.display(),
            weights.display()
        );
    }
    let files = if is_index(&weights) {
        shard_files(&weights)?
    } else {
        vec![weights]
    };
    Ok((config, files))
}

/// Reads a JSON file.
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| anyhow!("{}: not valid JSON: {e}", path.display()))
}

/// The shards a `model.safetensors.index.json` names (its `weight_map` values), each once.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let json = read_json(index)?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow!("{}: no \"weight_map\" object", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for file in map.values() {
        let name = file
            .as_str()
            .filter(|n| !n.contains('/') && !n.contains('\\') && !n.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "{}: \"weight_map\" names {file}, not a file beside it",
                    index.display()
                )
            })?;
        let f = dir.join(name);
        if !files.contains(&f) {
            files.push(f);
        }
    }
    if files.is_empty() {
        bail!("{}: \"weight_map\" names no shard", index.display());
    }
    files.sort();
    Ok(files)
}

/// The model config from `config.json`, refusing what the engine does not compute.
fn read_config(path: &Path) -> Result<GPT2Config> {
    let p = path.display();
    let json = read_json(path)?;
    let obj = json
        .as_object()
        .ok_or_else(|| anyhow!("{p}: not a JSON object"))?;
    let present = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let dim = |k: &str, default: usize| -> Result<usize> {
        match present(k) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|&x| x > 0)
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| anyhow!("{p}: \"{k}\" is {v}, not a positive integer")),
        }
    };
    if let Some(t) = present("model_type") {
        if t.as_str() != Some("gpt2") {
            bail!("{p}: \"model_type\" is {t}: only GPT-2 (\"gpt2\") models are read");
        }
    }
    let l = dim("n_layer", 12)?;
    let nh = dim("n_head", 12)?;
    let c = dim("n_embd", 768)?;
    let maxt = dim("n_positions", 1024)?;
    let v = dim("vocab_size", GPT2_VOCAB_SIZE)?;
    let refuse = |k: &str, found: &Value, engine: &str| -> Result<()> {
        bail!("{p}: \"{k}\" is {found}, but the engine computes {engine}")
    };
    if let Some(f) = present("activation_function") {
        if !matches!(f.as_str(), Some("gelu_new" | "gelu_pytorch_tanh")) {
            refuse("activation_function", f, "GPT-2's tanh GELU (\"gelu_new\")")?;
        }
    }
    if let Some(n) = present("n_inner") {
        if n.as_u64() != Some(4 * c as u64) {
            refuse("n_inner", n, &format!("an MLP of 4 * n_embd = {}", 4 * c))?;
        }
    }
    if let Some(e) = present("layer_norm_epsilon") {
        if e.as_f64().is_none_or(|x| (x - 1e-5).abs() > 1e-12) {
            refuse("layer_norm_epsilon", e, "LayerNorm with eps 1e-5")?;
        }
    }
    // the flags whose other value the engine does not compute: (key, transformers' default and
    // the engine's value, what the engine computes)
    for (key, engine_value, engine) in [
        (
            "scale_attn_weights",
            true,
            "attention scaled by 1/sqrt(head size)",
        ),
        (
            "scale_attn_by_inverse_layer_idx",
            false,
            "the same attention scale in every layer",
        ),
        ("add_cross_attention", false, "self-attention only"),
    ] {
        if let Some(v) = present(key) {
            if v.as_bool() != Some(engine_value) {
                refuse(key, v, engine)?;
            }
        }
    }
    GPT2Config::new(maxt, v, pad_vocab(v), l, nh, c).map_err(|e| anyhow!("{p}: {e}"))
}

/// Where a tensor is: the index of its file among the open ones, its entry.
type Found = (usize, TensorInfo);

/// Every tensor of the open files by its name without the `transformer.` prefix.
fn index_tensors(files: &[SafeTensors]) -> Result<BTreeMap<String, Found>> {
    let mut found: BTreeMap<String, Found> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        for (name, info) in f.tensors() {
            let short = name.strip_prefix("transformer.").unwrap_or(name);
            if let Some((j, _)) = found.insert(short.to_string(), (i, info.clone())) {
                bail!(
                    "tensor \"{short}\" is stored twice: in {} and in {}",
                    files[j].path().display(),
                    f.path().display()
                );
            }
        }
    }
    Ok(found)
}

/// One tensor of a Hugging Face GPT-2 and where it lives in the llm.c parameter buffer.
struct HfTensor {
    /// Its name without the `transformer.` prefix, e.g. `h.3.attn.c_attn.weight`.
    name: String,
    /// Its shape as transformers stores it (GPT-2's `Conv1D` weights as (in, out)).
    shape: Vec<usize>,
    /// The elements it occupies in the parameter buffer (`num_parameters`, checkpoint order).
    range: Range<usize>,
    /// Stored as the transpose of the llm.c layout (the four `Conv1D` weights).
    transposed: bool,
}

/// The tensors of each transformer block.
const TENSORS_PER_LAYER: usize = 12;

/// Every tensor of a GPT-2 of `cfg`, in llm.c's checkpoint order (wte's V real rows only).
fn hf_tensors(cfg: &GPT2Config) -> Vec<HfTensor> {
    let (maxt, v, l, c) = (
        cfg.max_seq_len,
        cfg.vocab_size,
        cfg.num_layers,
        cfg.channels,
    );
    let sizes = param_sizes(cfg).into_array();
    let start = |i: usize| -> usize { sizes[..i].iter().sum() };
    // (tensor index, HF name in layer, HF shape, transposed) of the per-layer tensors
    let per_layer: [(usize, &str, Vec<usize>, bool); TENSORS_PER_LAYER] = [
        (2, "ln_1.weight", vec![c], false),
        (3, "ln_1.bias", vec![c], false),
        (4, "attn.c_attn.weight", vec![c, 3 * c], true),
        (5, "attn.c_attn.bias", vec![3 * c], false),
        (6, "attn.c_proj.weight", vec![c, c], true),
        (7, "attn.c_proj.bias", vec![c], false),
        (8, "ln_2.weight", vec![c], false),
        (9, "ln_2.bias", vec![c], false),
        (10, "mlp.c_fc.weight", vec![c, 4 * c], true),
        (11, "mlp.c_fc.bias", vec![4 * c], false),
        (12, "mlp.c_proj.weight", vec![4 * c, c], true),
        (13, "mlp.c_proj.bias", vec![c], false),
    ];
    let whole = |i: usize, name: &str, shape: Vec<usize>| HfTensor {
        name: name.to_string(),
        range: start(i)..start(i) + shape.iter().product::<usize>(),
        shape,
        transposed: false,
    };
    let mut out = vec![
        whole(0, "wte.weight", vec![v, c]), // rows V..Vp of the buffer stay 0
        whole(1, "wpe.weight", vec![maxt, c]),
    ];
    for (i, name, shape, transposed) in per_layer {
        let n = sizes[i] / l;
        for layer in 0..l {
            out.push(HfTensor {
                name: format!("h.{layer}.{name}"),
                shape: shape.clone(),
                range: start(i) + layer * n..start(i) + (layer + 1) * n,
                transposed,
            });
        }
    }
    out.push(whole(14, "ln_f.weight", vec![c]));
    out.push(whole(15, "ln_f.bias", vec![c]));
    out
}

/// `x` (rows, cols) transposed: (cols, rows).
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols]; // (cols, rows)
    transpose_into(x, rows, cols, &mut out);
    out
}

/// Writes `x` (rows, cols) transposed into `out` (cols, rows).
fn transpose_into(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    for (r, row) in x.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
}

/// Where tensor `t` is stored (its file's index and the name it is stored under), once it is
/// there with config.json's shape.
fn find_tensor(
    files: &[SafeTensors],
    found: &BTreeMap<String, Found>,
    t: &HfTensor,
) -> Result<(usize, String)> {
    let name = &t.name;
    let (i, info) = found.get(name).ok_or_else(|| {
        anyhow!(
            "{}: no tensor \"{name}\" (nor \"transformer.{name}\"): not a complete GPT-2",
            files[0].path().display()
        )
    })?;
    let file = &files[*i];
    if info.shape != t.shape {
        bail!(
            "{}: tensor \"{name}\" has shape {:?}, but config.json's dimensions give {:?}",
            file.path().display(),
            info.shape,
            t.shape
        );
    }
    let stored_name = if file.tensors().contains_key(name) {
        name.to_string()
    } else {
        format!("transformer.{name}")
    };
    Ok((*i, stored_name))
}

/// Reads one tensor into `out` (its place in the llm.c layout).
fn read_tensor(
    files: &mut [SafeTensors],
    found: &BTreeMap<String, Found>,
    t: &HfTensor,
    out: &mut [f32],
) -> Result<()> {
    let (i, stored_name) = find_tensor(files, found, t)?;
    let file = &mut files[i];
    if !t.transposed {
        return file.read_f32(&stored_name, out);
    }
    let what = format!("{}: {stored_name}", file.path().display());
    let mut stored = zeroed(out.len(), &what)?; // (in, out)
    file.read_f32(&stored_name, &mut stored)?;
    transpose_into(&stored, t.shape[0], t.shape[1], out);
    Ok(())
}

/// Reads the Hugging Face GPT-2 at `path` (a directory, or one of its weight files or shard
/// indexes) as a checkpoint: the llm.c layout, wte padded to Vp rows.
pub fn read_hf_gpt2(path: &Path) -> Result<Checkpoint> {
    let (config_path, paths) = locate(path)?;
    let cfg = read_config(&config_path)?;
    let mut files = paths
        .iter()
        .map(|p| open_weights(p))
        .collect::<Result<Vec<_>>>()?;
    let found = index_tensors(&files)?;
    // config.json's tensors against the weights' before its parameters are allocated, those of at
    // most one layer more than the weights hold (which cannot all be there): the config.json of a
    // larger model, however large, is named by its first tensor missing or misshapen, not as
    // memory too short
    let probe = GPT2Config {
        num_layers: cfg.num_layers.min(found.len() / TENSORS_PER_LAYER + 1),
        ..cfg
    };
    for t in &hf_tensors(&probe) {
        find_tensor(&files, &found, t)?;
    }
    // (an error, not the allocator's abort, where the memory is short)
    let what = format!("{}: the parameters", path.display());
    let mut params = zeroed(num_parameters(&cfg), &what)?; // (num_parameters)
    let tensors = hf_tensors(&cfg);
    for t in &tensors {
        read_tensor(&mut files, &found, t, &mut params[t.range.clone()])?;
    }
    let (v, c) = (cfg.vocab_size, cfg.channels);
    if found.contains_key("lm_head.weight") {
        let lm_head = HfTensor {
            name: "lm_head.weight".into(),
            shape: vec![v, c],
            range: 0..v * c,
            transposed: false,
        };
        let mut head = zeroed(v * c, &format!("{}: lm_head.weight", path.display()))?; // (V, C)
        read_tensor(&mut files, &found, &lm_head, &mut head)?;
        if head[..] != params[..v * c] {
            bail!(
                "{}: lm_head.weight differs from wte.weight: the engine ties the output layer to \
                 the token embedding, as GPT-2 does",
                path.display()
            );
        }
    } else if read_json(&config_path)?.get("tie_word_embeddings") == Some(&Value::Bool(false)) {
        // transformers would start such an output layer at random: not the model it describes
        bail!(
            "{}: \"tie_word_embeddings\" is false, but there is no lm_head.weight: the output layer \
             is missing (the engine ties it to the token embedding, as GPT-2 does)",
            config_path.display()
        );
    }
    let known = |n: &str| {
        n == "lm_head.weight"
            || n.ends_with(".attn.bias")
            || n.ends_with(".attn.masked_bias")
            || tensors.iter().any(|t| t.name == n)
    };
    if let Some(extra) = found.keys().find(|n| !known(n)) {
        bail!(
            "{}: unexpected tensor \"{extra}\": not part of a GPT-2 language model with {} layers \
             (config.json's n_layer)",
            path.display(),
            cfg.num_layers
        );
    }
    Ok(Checkpoint {
        config: cfg,
        params,
    })
}

/// The beginning- and end-of-text tokens a written config.json names (`bos_token_id`,
/// `eos_token_id`; none is `null`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl TokenIds {
    /// GPT-2's end-of-text token for both, where the vocabulary of `cfg` has it; else none.
    pub fn gpt2(cfg: &GPT2Config) -> TokenIds {
        let eot = (cfg.vocab_size > GPT2_EOT as usize).then_some(GPT2_EOT);
        TokenIds { bos: eot, eos: eot }
    }

    /// The ids the model at `model` names, as written again for it (of `cfg`, read from it): a
    /// Hugging Face GPT-2's `bos_token_id` and `eos_token_id`, each where its config.json gives
    /// a token of the vocabulary; [`TokenIds::gpt2`]'s otherwise (an llm.c checkpoint has none).
    pub fn of_model(model: &Path, cfg: &GPT2Config) -> Result<TokenIds> {
        let gpt2 = TokenIds::gpt2(cfg);
        if !is_hf_model(model) {
            return Ok(gpt2);
        }
        let json = read_json(&locate(model)?.0)?;
        let id = |key: &str| {
            json.get(key)
                .and_then(Value::as_u64)
                .filter(|&id| id < cfg.vocab_size as u64)
                .map(|id| id as u32)
        };
        Ok(TokenIds {
            bos: id("bos_token_id").or(gpt2.bos),
            eos: id("eos_token_id").or(gpt2.eos),
        })
    }
}

/// config.json for `cfg`, naming `ids`: what transformers needs to build the same
/// `GPT2LMHeadModel`.
fn config_json(cfg: &GPT2Config, precision: CheckpointPrecision, ids: TokenIds) -> Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.channels,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "tie_word_embeddings": true,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "torch_dtype": match precision {
            CheckpointPrecision::Fp32 => "float32",
            CheckpointPrecision::Bf16 => "bfloat16",
        },
    })
}

/// Writes `ck` as a Hugging Face GPT-2 in the folder `dir` (which
/// [`make_folder`](super::make_folder) makes): config.json, naming the tokens `ids`, and
/// model.safetensors, its tensors named and laid out as `save_pretrained` writes them
/// (`transformer.` prefix, `Conv1D` weights as (in, out), wte's V rows, lm_head left out as tied),
/// in `precision` (fp32, or bf16 rounded to nearest even); with GPT-2's vocabulary, GPT-2's
/// tokenizer files too ([`write_hf_tokenizer`]), and never beside another tokenizer's. transformers'
/// `from_pretrained(dir)` and [`read_hf_gpt2`] read it.
pub fn write_hf_gpt2(
    dir: &Path,
    ck: &Checkpoint,
    precision: CheckpointPrecision,
    ids: TokenIds,
) -> Result<()> {
    let gpt2_vocab = ck.config.vocab_size == GPT2_VOCAB_SIZE;
    check_no_other_tokenizer(dir, &ck.config, gpt2_vocab)?;
    let tensors = hf_tensors(&ck.config);
    let entries: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|t| (format!("transformer.{}", t.name), t.shape.clone()))
        .collect();
    let dtype = match precision {
        CheckpointPrecision::Fp32 => Dtype::F32,
        CheckpointPrecision::Bf16 => Dtype::BF16,
    };
    // every file under a temporary name first, then all renamed: a failure midway (a full disk)
    // leaves an earlier model in the folder whole, not new weights beside an old config
    let mut files = StagedFiles::new();
    write_safetensors(
        &mut files,
        &dir.join(SINGLE_FILE),
        dtype,
        &entries,
        &[("format", "pt")],
        |i| {
            let t = &tensors[i];
            let x = &ck.params[t.range.clone()];
            if t.transposed {
                // llm.c's (out, in) to Conv1D's (in, out)
                transpose(x, t.shape[1], t.shape[0])
            } else {
                x.to_vec()
            }
        },
    )?;
    if gpt2_vocab {
        write_hf_tokenizer(&mut files, dir, &Tokenizer::gpt2()?, ck.config.max_seq_len)?;
    }
    let config = serde_json::to_string_pretty(&config_json(&ck.config, precision, ids))
        .expect("a JSON value serialises");
    files.write(&dir.join(CONFIG_FILE), config.as_bytes())?;
    files.commit()
}

/// Refuses to write a model of `cfg` (with GPT-2's tokenizer where `gpt2_vocab`) into `dir` where
/// `dir` holds tokenizer files the write would not replace: `AutoTokenizer` would load them with
/// the new model (GPT-2's 50257 tokens, from an earlier convert, beside a model of 100).
fn check_no_other_tokenizer(dir: &Path, cfg: &GPT2Config, gpt2_vocab: bool) -> Result<()> {
    let written: &[&str] = if gpt2_vocab {
        &GPT2_TOKENIZER_FILES
    } else {
        &[]
    };
    let other: Vec<&str> = GPT2_TOKENIZER_FILES
        .into_iter()
        .chain(OTHER_TOKENIZER_FILES)
        .filter(|f| !written.contains(f) && dir.join(f).symlink_metadata().is_ok())
        .collect();
    if other.is_empty() {
        return Ok(());
    }
    let why = if gpt2_vocab {
        format!("GPT-2's tokenizer is written as {}", written.join(", "))
    } else {
        format!(
            "the model's vocabulary of {} tokens is not GPT-2's, so no tokenizer is written",
            cfg.vocab_size
        )
    };
    bail!(
        "{} holds tokenizer files that this convert would not write again: {} ({why}); \
         transformers' AutoTokenizer would load them with the new model: remove them, or give \
         another --out",
        dir.display(),
        other.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What config.json leaves out is transformers' GPT2Config default: GPT-2 small (124M).
    #[test]
    fn a_config_without_sizes_is_gpt2_small() {
        let path = std::env::temp_dir().join(format!("hf-config-{}.json", std::process::id()));
        for text in ["{}", r#"{"model_type": "gpt2", "n_layer": null}"#] {
            std::fs::write(&path, text).unwrap();
            let got = read_config(&path).unwrap();
            assert_eq!(got, GPT2Config::from_descriptor("d12").unwrap(), "{text}");
            assert_eq!(
                (got.num_layers, got.num_heads, got.channels, got.max_seq_len),
                (12, 12, 768, 1024)
            );
            assert_eq!(got.vocab_size, 50257);
        }
        std::fs::remove_file(&path).ok();
    }
}
