#!/usr/bin/env bash
# Installs CUDA's compiler (nvcc, ptxas, the CUDA headers) and libclang from PyPI into .cuda/ at the
# project root (git-ignored). build.rs finds nvcc there when NVCC, CUDA_HOME and PATH have none, and
# bindgen finds libclang there. Pinned to CUDA 13.0: the GPU machines' driver is 13.0, and PTX from a
# newer nvcc does not load on it. Idempotent: a second run with everything in place does nothing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="$root/.cuda"
stamp="$dest/.installed-13.0"
if [ -f "$stamp" ]; then
  echo "setup-cuda: already installed in $dest"
  exit 0
fi
python3 -m pip --version >/dev/null 2>&1 || { echo "setup-cuda: python3 with pip is needed" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
echo "setup-cuda: installing nvcc 13.0 and libclang from PyPI into $dest (a few hundred MB) ..."
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --target "$dest/pip" \
  'nvidia-cuda-nvcc==13.0.*' 'nvidia-cuda-crt==13.0.*' 'nvidia-cuda-runtime==13.0.*' \
  'nvidia-nvvm==13.0.*' 'nvidia-cuda-cccl==13.0.*' 'libclang==18.1.1'
touch "$stamp"
echo "setup-cuda: done"
