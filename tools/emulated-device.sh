#!/usr/bin/env bash
# Runs a command on the emulated device: the fake libcuda, libcublas and libcublasLt that
# tests/emu/device.rs builds (over the host emulation of the kernels), first on LD_LIBRARY_PATH.
# The engine then runs its GPU code on the CPU, slowly (small models only: d1, d2, the fixtures).
#     bash tools/emulated-device.sh target/release/train-gpt2-cuda --device cuda --model d1 ...
#     ONLY='^verify' bash tools/emulated-device.sh bash tools/gpu-verify.sh /tmp/gv
# The fakes are built by the tests: run `cargo test --test emulated_device` once first (again
# after changing tests/emu/ or kernels/). FAKECUDA_MEMORY_BYTES sets the device's memory (default
# 4 GiB), FAKECUDA_SCHEDULE the emulated threads' order (0 ascending, 1 descending, >= 2 shuffled).
# FAKECUDA_INVALIDATE_CAPTURES=1 makes every CUDA graph capture fail (the engine then runs eagerly).
# FAKECUDA_FAIL_CAPTURED_LAUNCHES=1 refuses every kernel launch during a capture, which stays valid.
set -euo pipefail
# (the command runs where it was given: its relative paths are the caller's)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -gt 0 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
dir=$(ls -td "$root"/target/tmp/kernel-emu/fake-cuda-*/ 2>/dev/null | head -1 || true)
if [ -z "$dir" ] || [ ! -f "$dir/libcuda.so" ]; then
  echo "no emulated device built yet: run 'cargo test --test emulated_device' first" >&2
  exit 2
fi
dir=$(cd "$dir" && pwd)
libs=$(ls "$dir"/emu-*.so | tr '\n' ':')
export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FAKECUDA_KERNEL_LIBS="${libs%:}"
exec "$@"
