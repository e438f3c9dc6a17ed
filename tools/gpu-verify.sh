#!/usr/bin/env bash
# Every GPU check in one go, for the GPU machine (no Rust there). Here, first:
#     ../shared/gpu/pack
# then on the GPU machine, from the project root (the device tool: carry [".gpu"]):
#     bash tools/gpu-verify.sh "$OUT"
# It writes one log per check into the folder given (default gpu-verify-out/) and a summary at
# the end; the exit status is 0 only if every check passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-gpu-verify-out}
mkdir -p "$out"
run=".gpu/on-gpu.sh"
[ -f "$run" ] || { echo "no .gpu/: run ../shared/gpu/pack on the build machine first" >&2; exit 2; }
declare -a summary
# each check may take at most CHECK_TIMEOUT seconds (default 300), so that one hang cannot eat a
# device session's whole budget
# ONLY=REGEX runs just the checks whose names match (e.g. ONLY='^(info|tests)$', or
# ONLY='train|curve|bf16-tracks'), to split the whole set over several device calls.
check() { # name, command...
  local name=$1; shift
  if [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]]; then return 0; fi
  echo "=== $name: $*"
  local start=$SECONDS
  if timeout "${CHECK_TIMEOUT:-300}" "$@" > "$out/$name.log" 2>&1; then
    summary+=("ok    $name ($((SECONDS - start)) s)")
  else
    summary+=("FAIL  $name ($((SECONDS - start)) s, see $name.log)")
  fi
  tail -n 25 "$out/$name.log"
}

check info bash "$run" info
# every test, the GPU ones included (--include-ignored), one thread; longer than the other checks
# (the driver compiles the kernels' PTX for the GPU in the first process, about 10 MB of it; the
# host emulation builds its C++), so give it a device call of its own: ONLY='^(info|tests)$'.
# Skipped here: the tests on the emulated device (every name has "emulated_device" in it), which
# run the same GPU tests on fake CUDA libraries on the CPU; CI runs them, the GPU machine's time is
# for the real device.
CHECK_TIMEOUT=${TESTS_TIMEOUT:-540} check tests bash "$run" tests --skip emulated_device
# the engine against the PyTorch fixtures and against the CPU path, with the 10-step trajectories
for f in tiny sharp gpt2vocab hs64; do
  check "verify-$f" bash "$run" exec train-gpt2-cuda verify --device both \
    --model "tests/fixtures/ref_${f}_model.bin" --state "tests/fixtures/ref_${f}_state.bin" \
    --steps 10 --expect-losses "tests/fixtures/ref_${f}_losses.txt" --dump "$out/dump_${f}.bin"
done
# the bf16 engine: against PyTorch (fp32) and the CPU at the bf16 tolerances (verify::Tolerances::BF16)
for f in tiny sharp gpt2vocab hs64; do
  check "verify-bf16-$f" bash "$run" exec train-gpt2-cuda verify --device both --precision bf16 \
    --model "tests/fixtures/ref_${f}_model.bin" --state "tests/fixtures/ref_${f}_state.bin" \
    --steps 10 --expect-losses "tests/fixtures/ref_${f}_losses.txt"
done
# the fused kernels in fp32 (flash attention, cuBLASLt epilogues, residual + layernorm) at the fp32
# tolerances, and the plain kernels in bf16 on the same head-size-64 fixture
check verify-fused-fp32-hs64 bash "$run" exec train-gpt2-cuda verify --device both --precision fp32 \
  --kernels fused --model tests/fixtures/ref_hs64_model.bin --state tests/fixtures/ref_hs64_state.bin \
  --steps 10 --expect-losses tests/fixtures/ref_hs64_losses.txt
check verify-plain-bf16-hs64 bash "$run" exec train-gpt2-cuda verify --device both --precision bf16 \
  --kernels plain --model tests/fixtures/ref_hs64_model.bin --state tests/fixtures/ref_hs64_state.bin \
  --steps 10 --expect-losses tests/fixtures/ref_hs64_losses.txt
# training d12 on the default corpus, twice with the same seed: the losses must be identical
for i in 1 2; do
  check "train-d12-run$i" bash "$run" exec train-gpt2-cuda --device cuda --model d12 --batch 4 \
    --seq 64 --steps 50 --val-every 25 --seed 1337 --precision fp32 --out-dir "$out/train$i"
done
grep '^step' "$out/train-d12-run1.log" 2>/dev/null | sed 's/ | [0-9.]* ms .*//' > "$out/losses1.txt"
grep '^step' "$out/train-d12-run2.log" 2>/dev/null | sed 's/ | [0-9.]* ms .*//' > "$out/losses2.txt"
check same-seed-same-losses diff "$out/losses1.txt" "$out/losses2.txt"
# the same in bf16 (stochastic rounding is seeded: still bitwise reproducible)
for i in 1 2; do
  check "train-d12-bf16-run$i" bash "$run" exec train-gpt2-cuda --device cuda --model d12 --batch 4 \
    --seq 64 --steps 50 --val-every 25 --seed 1337 --precision bf16 --out-dir "$out/train-bf16-$i"
done
grep '^step' "$out/train-d12-bf16-run1.log" 2>/dev/null | sed 's/ | [0-9.]* ms .*//' > "$out/losses-bf16-1.txt"
grep '^step' "$out/train-d12-bf16-run2.log" 2>/dev/null | sed 's/ | [0-9.]* ms .*//' > "$out/losses-bf16-2.txt"
check same-seed-same-losses-bf16 diff "$out/losses-bf16-1.txt" "$out/losses-bf16-2.txt"
# CUDA graphs change the speed, not the numbers: the same run with every kernel launched eagerly
check train-d12-bf16-no-graphs bash "$run" exec train-gpt2-cuda --device cuda --model d12 --batch 4 \
  --seq 64 --steps 50 --val-every 25 --seed 1337 --precision bf16 --no-cuda-graphs \
  --out-dir "$out/train-bf16-nog"
grep '^step' "$out/train-d12-bf16-no-graphs.log" 2>/dev/null | sed 's/ | [0-9.]* ms .*//' > "$out/losses-bf16-nog.txt"
check graphs-same-losses-bf16 diff "$out/losses-bf16-1.txt" "$out/losses-bf16-nog.txt"
# the bf16 loss curve tracks fp32 (same seed, same data) for 300 steps of d12 at B=8, T=256
for p in fp32 bf16; do
  check "curve-$p" bash "$run" exec train-gpt2-cuda --device cuda --model d12 --batch 8 --seq 256 \
    --steps 300 --lr 6e-4 --warmup 20 --val-every 50 --seed 1337 --precision $p --sample-tokens 0 \
    --out-dir "$out/curve-$p"
done
check bf16-tracks-fp32 python3 tools/loss_band.py "$out/curve-fp32.log" "$out/curve-bf16.log" \
  --window 25 --band 0.02 --val-band 0.02
# memory errors and races in a short run
if command -v compute-sanitizer > /dev/null; then
  check sanitizer compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 \
    bash "$run" exec train-gpt2-cuda --device cuda --model d2 --batch 2 --seq 33 --steps 2 --val-batches 1 --sample-tokens 4 --precision fp32 --out-dir "$out/san"
  check sanitizer-bf16 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 \
    bash "$run" exec train-gpt2-cuda --device cuda --model d2 --batch 2 --seq 33 --steps 2 --val-batches 1 --sample-tokens 4 --precision bf16 --out-dir "$out/san-bf16"
  check sanitizer-fused-fp32 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 \
    bash "$run" exec train-gpt2-cuda --device cuda --model d2 --batch 2 --seq 33 --steps 2 --val-batches 1 --sample-tokens 4 --precision fp32 --kernels fused --out-dir "$out/san-fused"
fi
echo; echo "summary:"; printf '  %s\n' "${summary[@]}"
printf '%s\n' "${summary[@]}" | grep -q FAIL && exit 1
exit 0
