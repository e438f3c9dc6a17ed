#!/usr/bin/env bash
# Every GPU check, most important first, for the GPU machine (no Rust there). Here, first:
#     bash tools/gpu-pack      # ../shared/gpu/pack with the test executables that hold GPU tests,
#                              # and a check that what travels fits the device tool's 64 MiB
# then on the GPU machine, from the project root (the device tool: carry [".gpu"]):
#     DEADLINE_S=540 bash tools/gpu-verify.sh "$OUT"        # with timeout_s 600
# and, if the summary says checks were left for lack of time, the same command again at once
# (while the machine is warm): it skips every check that already finished.
#
# What comes back in the folder given (default gpu-verify-out/): summary.txt (one line per
# check: ok, FAIL, cut (the deadline stopped it) or left (no time to start it)) and
# gpu-verify-logs.tar.gz (every check's log, the bench JSONs, the dumps, the loss lists). The
# device tool returns at most 8 files, so nothing else goes there. Both are rewritten after every
# check, so a call that runs out of time still returns what finished. The exit status is 0 only if
# every check ran and passed.
#
# Knobs (environment):
#   DEADLINE_S=N   start no check after N seconds from now, and cut a running one at N
#   ONLY=REGEX     only the checks whose names match (e.g. ONLY='^(info|gpu-tests)$')
#   SKIP=REGEX     not the checks whose names match
#   GPU_VERIFY_STATE=DIR  logs and the record of finished checks (default /tmp/gpu-verify; it
#                  lives as long as the machine: a fresh machine starts from the first check)
#   CHECK_TIMEOUT=N  one check's limit in seconds (default 300; some checks set their own)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-gpu-verify-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
run=".gpu/on-gpu.sh"
[ -f "$run" ] || { echo "no .gpu/: run bash tools/gpu-pack on the build machine first" >&2; exit 2; }
state=${GPU_VERIFY_STATE:-/tmp/gpu-verify}
logs="$state/logs"
mkdir -p "$logs"
touch "$state/status"
start=$SECONDS
deadline=${DEADLINE_S:-}

# The status file holds one line per check that ran: "ok NAME (S s)", "FAIL NAME (...)" or
# "cut NAME (...)"; ok and FAIL are final, a cut check runs again next time.
status_of() { awk -v n="$1" '$2 == n { s = $1 } END { print s }' "$state/status"; }
declare -a order
publish() {
  {
    echo "gpu-verify at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC')"
    for name in "${order[@]}"; do
      line=$(awk -v n="$name" '$2 == n { l = $0 } END { print l }' "$state/status")
      echo "  ${line:-left $name}"
    done
  } > "$out/summary.txt"
  tar -C "$state" -czf "$out/gpu-verify-logs.tar.gz" logs 2> /dev/null
}
# check NAME LIMIT COMMAND...: runs COMMAND for at most LIMIT seconds. With a deadline, a check
# is not started when less than NEED seconds (default 30; set it before the call, NEED=N check
# ...) are left: a check that cannot finish would only be cut and run again.
check() { # name, timeout seconds, command...
  local name=$1 limit=$2 need=${NEED:-30}; shift 2
  if [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] || [[ -n "${SKIP:-}" && "$name" =~ $SKIP ]]; then
    return 0
  fi
  order+=("$name")
  case "$(status_of "$name")" in ok | FAIL) echo "=== $name: done before"; return 0 ;; esac
  local cut_by_deadline=0
  if [ -n "$deadline" ]; then
    local left=$((deadline - (SECONDS - start)))
    if [ "$left" -lt "$need" ]; then echo "=== $name: left (needs $need s, $left left)"; publish; return 0; fi
    if [ "$left" -lt "$limit" ]; then limit=$left; cut_by_deadline=1; fi
  fi
  echo "=== $name: $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" bash -c '"$@"' check "$@" > "$logs/$name.log" 2>&1
  rc=$?
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then
    echo "ok $name ($took s)" >> "$state/status"
  elif [ "$cut_by_deadline" -eq 1 ] && { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; }; then
    echo "cut $name ($took s: the deadline stopped it; it runs again next time)" >> "$state/status"
  else
    echo "FAIL $name ($took s, exit $rc, see logs/$name.log)" >> "$state/status"
  fi
  tail -n 15 "$logs/$name.log"
  publish
}
eng() { bash "$run" exec train-gpt2-cuda "$@"; }
# the step lines of a training log without their timings: what two runs must agree on
losses() { grep '^step' "$logs/$1.log" 2> /dev/null | sed 's/ | [0-9.]* ms .*//' > "$logs/$2"; }
# two loss lists, equal and not empty (two failed runs print no steps)
same() { [ -s "$logs/$1" ] && [ -s "$logs/$2" ] && diff "$logs/$1" "$logs/$2"; }
# each test executable of .gpu/tests with the given arguments (on-gpu.sh's environment: its exec
# runs .gpu/bin/NAME, and ../tests/NAME is the test executable)
tests() {
  local rc=0 t
  for t in .gpu/tests/*; do
    echo "=== $(basename "$t")"
    bash "$run" exec "../tests/$(basename "$t")" --test-threads=1 "$@" || rc=1
  done
  return $rc
}
# (check runs its command in a child bash under `timeout`: it needs these)
export run logs
export -f eng same tests

# 1. What the machine is.
check info 60 bash "$run" info
# 2. The GPU tests (every #[ignore = "needs a CUDA GPU"] test): each kernel family against its CPU
# twin, the model, the graphs, the profiler. The first process JIT-compiles the PTX for the GPU
# (the driver caches it for the rest). Not here: the ignored corpus regeneration (it reads
# ../shared), the tests on the emulated device (CI runs those) and the bench tool's PyTorch tests
# (about a minute of process starts: after the benchmarks, below).
NEED=120 check gpu-tests 420 tests --ignored --skip regenerate_default_corpus --skip emulated_device \
  --skip engine_and_pytorch
# 3. The engine against the PyTorch fixtures and the CPU path, with the 10-step trajectories: fp32,
# then bf16 at verify::Tolerances::BF16, then the fused kernels in fp32 and the plain ones in bf16.
for f in tiny sharp gpt2vocab hs64; do
  check "verify-$f" 120 eng verify --device both \
    --model "tests/fixtures/ref_${f}_model.bin" --state "tests/fixtures/ref_${f}_state.bin" \
    --steps 10 --expect-losses "tests/fixtures/ref_${f}_losses.txt" --dump "$logs/dump_${f}.bin"
done
# the GPU's gradient norm and clipping against PyTorch's clip_grad_norm_ (every step clipped)
check verify-clip-tiny 120 eng verify --device both --model tests/fixtures/ref_tiny_model.bin \
  --state tests/fixtures/ref_tiny_state.bin --steps 10 --grad-clip 1 \
  --expect-losses tests/fixtures/ref_tiny_clip_losses.txt
# the engine on a Hugging Face GPT-2 directory against transformers' own logits, loss and gradients
check verify-hf-tiny 120 eng verify --device both --model tests/fixtures/hf_tiny \
  --state tests/fixtures/hf_tiny_state.bin
for f in tiny sharp gpt2vocab hs64; do
  check "verify-bf16-$f" 120 eng verify --device both --precision bf16 \
    --model "tests/fixtures/ref_${f}_model.bin" --state "tests/fixtures/ref_${f}_state.bin" \
    --steps 10 --expect-losses "tests/fixtures/ref_${f}_losses.txt"
done
check verify-fused-fp32-hs64 120 eng verify --device both --precision fp32 --kernels fused \
  --model tests/fixtures/ref_hs64_model.bin --state tests/fixtures/ref_hs64_state.bin \
  --steps 10 --expect-losses tests/fixtures/ref_hs64_losses.txt
check verify-plain-bf16-hs64 120 eng verify --device both --precision bf16 --kernels plain \
  --model tests/fixtures/ref_hs64_model.bin --state tests/fixtures/ref_hs64_state.bin \
  --steps 10 --expect-losses tests/fixtures/ref_hs64_losses.txt
# TF32 products (verify::Tolerances::TF32, so far measured on the emulated device only): the
# fixture of the largest errors there
check verify-tf32-gpt2vocab 120 eng verify --device both --tf32 \
  --model tests/fixtures/ref_gpt2vocab_model.bin --state tests/fixtures/ref_gpt2vocab_state.bin \
  --steps 10 --expect-losses tests/fixtures/ref_gpt2vocab_losses.txt
# 4. d12 on the default corpus, twice with the same seed: identical losses; in bf16 too
# (stochastic rounding is seeded; the second run also samples text after step 25, which must
# change nothing), with CUDA graphs off (they change the speed, not the numbers), and resumed at
# step 25 from the first bf16 run's training state (its master weights included).
# Only that run writes a state (1.5 GB at d12 in bf16); the others pass --no-state.
train() { # name, args...
  local name=$1; shift
  NEED=40 check "$name" 180 eng --device cuda --model d12 --batch 4 --seq 64 --steps 50 --val-every 25 \
    --seed 1337 --out-dir "$state/$name" "$@"
}
train train-d12-run1 --precision fp32 --no-state
train train-d12-run2 --precision fp32 --no-state
losses train-d12-run1 losses1.txt; losses train-d12-run2 losses2.txt
check same-seed-same-losses 10 same losses1.txt losses2.txt
train train-d12-bf16-run1 --precision bf16 --checkpoint-every 25
train train-d12-bf16-run2 --precision bf16 --no-state --sample-every 25
losses train-d12-bf16-run1 losses-bf16-1.txt; losses train-d12-bf16-run2 losses-bf16-2.txt
check same-seed-same-losses-bf16 10 same losses-bf16-1.txt losses-bf16-2.txt
train train-d12-bf16-no-graphs --precision bf16 --no-cuda-graphs --no-state
losses train-d12-bf16-no-graphs losses-bf16-nog.txt
check graphs-same-losses-bf16 10 same losses-bf16-1.txt losses-bf16-nog.txt
NEED=40 check train-d12-bf16-resumed 180 eng --device cuda --batch 4 --seq 64 --steps 50 --val-every 25 \
  --seed 1337 --precision bf16 --no-state --resume "$state/train-d12-bf16-run1/state_000025.bin" \
  --out-dir "$state/train-d12-bf16-resumed"
losses train-d12-bf16-resumed losses-bf16-resumed.txt
# the whole run's steps 26 to 50
check resumed-same-losses-bf16 10 bash -c 'tail -n 25 "$logs/losses-bf16-1.txt" > "$logs/losses-bf16-26.txt" &&
  same losses-bf16-26.txt losses-bf16-resumed.txt' 
# eval and sample of that run's model build the engine for forwards only (no gradients, AdamW
# state or master weights: gpu::ModelOptions::forwards_only)
check eval-d12-bf16 60 eng eval --device cuda --model "$state/train-d12-bf16-run1/model_000050.bin" \
  --batch 4 --seq 64 --batches 10
check sample-d12-bf16 60 eng sample --device cuda --model "$state/train-d12-bf16-run1/model_000050.bin" \
  --tokens 32
# 5. The bf16 loss curve tracks fp32 (same seed, same data): 300 steps of d12 at B=8, T=256.
for p in fp32 bf16; do
  NEED=60 check "curve-$p" 240 eng --device cuda --model d12 --batch 8 --seq 256 --steps 300 --lr 6e-4 \
    --warmup 20 --val-every 50 --seed 1337 --precision $p --sample-tokens 0 --no-state --out-dir "$state/curve-$p"
done
check bf16-tracks-fp32 30 python3 tools/loss_band.py "$logs/curve-fp32.log" "$logs/curve-bf16.log" \
  --window 25 --band 0.02 --val-band 0.02
# 6. Speed: the engine against PyTorch eager and torch.compile (about a minute of compilation per
# torch.compile row), then the --profile tables of the fused and the plain kernels.
bench() { # name, seconds it needs at least, args...
  local name=$1 need=$2; shift 2
  NEED=$need check "$name" 540 python3 tools/bench --out "$logs/$name.json" "$@"
}
# (one table of the two: python3 tools/bench --report bench-bf16.json bench-bf16-compile.json)
bench bench-bf16 90 --precision bf16 --batch 4,8,16 --pytorch eager
bench bench-bf16-compile 240 --engine none --precision bf16 --batch 4,8,16 --pytorch compile
profile() { # name, args...
  local name=$1; shift
  check "$name" 120 eng --device cuda --model d12 --batch 8 --seq 1024 --steps 12 --profile \
    --val-every 0 --sample-tokens 0 --no-state --out-dir "$state/$name" "$@"
}
profile profile-bf16-fused
# flash attention's forward and dQ kernels with 16 queries a warp (the default is 32): which is
# faster (the attention row's fwd ms and bwd ms)
TRAIN_GPT2_FLASH_QUERIES=16 profile profile-bf16-fused-q16
profile profile-bf16-plain --kernels plain
bench bench-bf16-plain 40 --precision bf16 --batch 8 --pytorch none --kernels plain
bench bench-bf16-no-graphs 40 --precision bf16 --batch 8 --pytorch none --no-cuda-graphs
# GELU recomputed in the backward: the peak memory it saves (about 1 GiB at B=16) for its ms
bench bench-bf16-recompute 40 --precision bf16 --batch 16 --pytorch none --recompute gelu
bench bench-d6 40 --model d6 --seq 64 --batch 4 --precision bf16 --pytorch eager
bench bench-d6-no-graphs 30 --model d6 --seq 64 --batch 4 --precision bf16 --pytorch none --no-cuda-graphs
bench bench-fp32 90 --precision fp32 tf32 --batch 4,8 --pytorch eager
# tools/bench's own tests with PyTorch (d1 and d2 runs, on the CPU and the GPU)
NEED=90 check bench-tool-tests 300 tests --ignored engine_and_pytorch
# 7. Memory errors in short runs.
if command -v compute-sanitizer > /dev/null; then
  san() { # name, args...
    local name=$1; shift
    NEED=60 check "$name" 240 compute-sanitizer --tool memcheck --target-processes all --error-exitcode 1 \
      bash "$run" exec train-gpt2-cuda --device cuda --model d2 --batch 2 --seq 33 --steps 2 \
      --val-batches 1 --sample-tokens 4 --out-dir "$state/$name" "$@"
  }
  san sanitizer --precision fp32
  san sanitizer-bf16 --precision bf16
  san sanitizer-fused-fp32 --precision fp32 --kernels fused
  # shared-memory races and barrier misuse in the kernels, flash attention's cp.async pipeline
  # above all: T = 199 gives its query blocks up to four key tiles (two buffers refilled)
  for tool in racecheck synccheck; do
    NEED=90 check "sanitizer-$tool" 240 compute-sanitizer --tool $tool --target-processes all --error-exitcode 1 \
      bash "$run" exec train-gpt2-cuda --device cuda --model d2 --batch 1 --seq 199 --steps 2 \
      --val-batches 1 --sample-tokens 0 --precision bf16 --out-dir "$state/san-$tool"
  done
fi
# 8. Nsight Compute over the second step of d12 at B=8, T=1024 (bf16, fused kernels, eagerly
# launched): each kernel's achieved bandwidth and throughput against the GPU's peaks, occupancy and
# launch shape, the cuBLASLt products included, for choosing block sizes (ncu.csv in the logs).
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2> /dev/null || true)
if [ -n "$ncu" ]; then
  NEED=150 check ncu 300 "$ncu" --target-processes all --nvtx --nvtx-include "step/" --launch-skip 260 \
    --launch-count 280 --section SpeedOfLight --section Occupancy --section LaunchStats --csv \
    --page details --log-file "$logs/ncu.csv" bash "$run" exec train-gpt2-cuda --device cuda \
    --model d12 --batch 8 --seq 1024 --steps 3 --val-every 0 --sample-tokens 0 --no-cuda-graphs --no-state \
    --out-dir "$state/ncu"
fi
# 9. Every other test of the packed executables (those that hold GPU tests), with a GPU present
# (CI runs them, and the CPU-only executables, without one).
NEED=150 check other-tests 420 tests --skip emulated_device

publish
echo; cat "$out/summary.txt"
if grep -qvE '^gpu-verify|^  ok ' "$out/summary.txt"; then exit 1; fi
exit 0
