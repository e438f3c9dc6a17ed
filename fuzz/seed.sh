#!/bin/bash
# Fills corpus/TARGET, for every target, with the committed files of its format: the seeds
# libFuzzer starts from. The training states are in seeds/ (300 parameters, without and with
# master weights: a real run's are megabytes, all but the header arrays of floats).
set -euo pipefail
cd "$(dirname "$0")"
f=../tests/fixtures
seed() {
  local target=$1 file
  shift
  mkdir -p "corpus/$target"
  for file in "$@"; do
    cp "$file" "corpus/$target/$(echo "${file#../}" | tr / _)"
  done
}
seed checkpoint $f/llmc_model_v3.bin $f/llmc_model_v5.bin
seed torch_zip $f/hf_tiny_torch/pytorch_model.bin $f/hf_tiny_torch_bf16/pytorch_model.bin \
  $f/torch_odd.bin $f/torch_transposed.bin
seed safetensors $f/hf_tiny/model.safetensors $f/hf_tiny_hub_bf16/model.safetensors
seed hf_config $f/hf_tiny/config.json $f/hf_tiny_torch_bf16/config.json \
  $f/hf_tiny_hub_bf16/config.json
seed tokenizer_file $f/llmc_tokenizer_v1.bin $f/llmc_tokenizer_v2.bin
seed shard $f/shard_small.bin $f/train_tiny_val.bin
seed train_state seeds/train_state_*.bin
seed debug_state $f/llmc_debug_state.bin
seed hellaswag $f/hellaswag_tiny.jsonl
seed parquet $f/parquet/*.parquet
seed gzip $f/gzip/*.gz
seed zstd $f/zstd/*.zst
mkdir -p corpus/snappy_lz4
echo "corpus/ filled: $(ls corpus | wc -l) targets"
