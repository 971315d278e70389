#!/usr/bin/env bash
# Issue 19 (instruments) on a GPU, in one call: the sanitizer, profile and trace GPU tests, then
# the pieces not yet run on a GPU at the time of writing: `wb run d --trace` (stage D's trace
# hook), `wb profile moe/d` (a stage of four kernels: one row each), and stage D's default under
# memcheck and racecheck (clean?). On the device machine, after `bash .gpu/p2/install.sh`:
#     bash benchmarks/gpu_verify_instruments.sh
# compute-sanitizer and ncu come with the machine's CUDA toolkit (/usr/local/cuda/bin).
set -u
. benchmarks/gpu_env.sh
export PATH="$PATH:/usr/local/cuda/bin"
echo "=== GPU tests: sanitizer (stage C bugs), profile, trace"
timeout 420 python3 -m pytest -q -m gpu tests/test_sanitize_gpu.py tests/test_profile_gpu.py tests/test_timeline_gpu.py -p no:cacheprovider
echo "=== wb run d --trace (d=64 s=8192 causal, the gap cell of docs/perf-notes.md)"
timeout 150 python3 -m workbench run d --d 64 --n 8192 -p batch=2 -p heads=32 -p causal=true -f random --seeds 1 --trace
echo "=== wb profile d beside FA4 and cuDNN (d=128 s=4096 b=4 h=16: the bench shape)"
timeout 240 python3 -m workbench profile d --n 4096 -p batch=4 -p heads=16 --peers fa4,sdpa-cudnn
echo "=== wb profile moe/d (four kernels)"
timeout 150 python3 -m workbench profile moe/d
echo "=== stage D's and moe stage C's defaults under the four tools (clean?)"
for tool in memcheck racecheck synccheck initcheck; do
  timeout 300 python3 -m workbench run d --n 256 -f random --seeds 1 --sanitize $tool --timeout 280
  timeout 300 python3 -m workbench run moe/c -f random --seeds 1 --sanitize $tool --timeout 280
done
