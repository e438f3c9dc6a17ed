#!/usr/bin/env bash
# Installs CUDA's compiler (nvcc, ptxas, the CUDA headers), the NVTX 3 headers and libclang from
# PyPI into .cuda/ at the project root (git-ignored). build.rs finds nvcc there when NVCC, CUDA_HOME
# and PATH have none, bindgen finds libclang there, and the NVTX headers land next to the CUDA
# headers (.cuda/pip/nvidia/cu13/include/nvtx3), where build.rs looks for them. Pinned to CUDA 13.0:
# the GPU machines' driver is 13.0, and PTX from a newer nvcc does not load on it. Idempotent: a
# second run with everything in place does nothing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/.cuda"
# named after what is installed: a new package renames it, so that an older install runs again
stamp="$dest/.installed-13.0-nvtx"
if [ -f "$stamp" ]; then
  echo "setup-cuda: already installed in $dest"
  exit 0
fi
python3 -m pip --version >/dev/null 2>&1 || { echo "setup-cuda: python3 with pip is needed" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
echo "setup-cuda: installing nvcc 13.0, NVTX and libclang from PyPI into $dest (a few hundred MB) ..."
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --target "$dest/pip" \
  'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-cuda-runtime==13.0.*' \
  'nvidia-nvvm==13.0.*' 'nvidia-cuda-cccl==13.0.*' 'nvidia-nvtx==13.0.*' 'libclang==18.1.1'
touch "$stamp"
# A build made before this install watched no stamp (there was no .cuda/): touching build.rs
# (watched always) makes the next cargo build look for nvcc again and compile the kernels.
touch "$root/build.rs"
echo "setup-cuda: done"
