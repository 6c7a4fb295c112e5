#!/usr/bin/env bash
# Weights at line rate on a real GPU: `baton bench load` writes 4 GiB and 16 GiB bf16 safetensors
# files and a 4 GiB GGUF (Q4_K/Q6_K blocks), checks the loader bit for bit against candle's on
# the GPU (every dtype, every GGUF block type), refuses broken files with device memory verified,
# then times pinned H2D, baton (warm, each lanes x chunk setting, bf16 -> f16, cold), candle's
# default loaders and PyTorch's load_file, in one run. DIRECT_LANES=0,4 adds lanes that pin
# the page cache's pages in place.
# Needs a build with --features cuda in target/release. From the repository root:
#   bash scripts/gpu/load.sh [OUTPUT_DIR]
set -u
B=${BATON:-$PWD/target/release/baton}
OUT=${1:-${OUT:-/tmp/baton-gpu}}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,pcie.link.gen.max,pcie.link.width.max,memory.total --format=csv
python3 -c "import torch, safetensors; print('torch', torch.__version__, 'safetensors', safetensors.__version__)"
nproc
$B bench load --sizes "${SIZES:-4GiB,16GiB}" --gguf-sizes "${GGUF_SIZES:-4GiB}" \
    --repeat "${REPEAT:-3}" --slots "${SLOTS:-2}" --direct-lanes "${DIRECT_LANES:-0}" --read "${READ:-pread,mmap}" --staging "${STAGING:-cached,write-combined}" \
    --lanes "${LANES:-16,12,8}" --chunk "${CHUNKS:-512KiB,1MiB,2MiB}" \
    --dir "${DIR:-/tmp/baton-bench-load}" --json "$OUT/load.json" 2>&1 | tee "$OUT/load.txt"
