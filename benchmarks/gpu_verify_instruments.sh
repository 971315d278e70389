#!/usr/bin/env bash
# Issue 19 (instruments) on a GPU, in one call (about 7 minutes on an H200). On the device
# machine, after `bash .gpu/p2/install.sh`:
#     bash benchmarks/gpu_verify_instruments.sh
# compute-sanitizer and ncu come with the machine's CUDA toolkit (/usr/local/cuda/bin).
# Phase 1 runs the sanitizer work in parallel (each run is slow, not busy); phase 2 the
# timing-sensitive parts (profiles, traces) alone on the GPU.
set -u
. benchmarks/gpu_env.sh
export PATH="$PATH:/usr/local/cuda/bin"
logs=$(mktemp -d)
echo "=== phase 1: tests/test_sanitize_gpu.py in groups; fmha D and moe C defaults under the four tools"
for group in "lse or race" "initcheck_at or synccheck_at" "clean and memcheck" "clean and racecheck" "clean and synccheck" "clean and initcheck"; do
  (timeout 400 python3 -m pytest -q -m gpu tests/test_sanitize_gpu.py -k "$group" -p no:cacheprovider > "$logs/pytest-${group// /_}.txt" 2>&1) &
done
for tool in memcheck racecheck synccheck initcheck; do
  (timeout 300 python3 -m workbench run d --n 256 -f random --seeds 1 --sanitize $tool --timeout 280 > "$logs/d-$tool.txt" 2>&1) &
  t=1000; [ $tool = initcheck ] && t=256  # initcheck makes the grouped GEMM very slow
  (timeout 300 python3 -m workbench run moe/c -p t=$t -f random --seeds 1 --sanitize $tool --timeout 280 > "$logs/moec-$tool.txt" 2>&1) &
done
wait
for f in "$logs"/*.txt; do echo "--- $(basename "$f")"; grep -E "passed|failed|^(PASS|FAIL|HANG|CRASH|MEMCHECK|RACE|SYNCCHECK|INITCHECK) |compute-sanitizer " "$f" | tail -3; done
echo "=== phase 2: the profile and trace GPU tests, stage D beside its peers, moe D's kernels, the traces"
timeout 200 python3 -m pytest -q -m gpu tests/test_profile_gpu.py tests/test_timeline_gpu.py -p no:cacheprovider 2>&1 | tail -3
timeout 150 python3 -m workbench profile d --n 4096 -p batch=4 -p heads=16 --peers fa4,sdpa-cudnn 2>&1 | grep -A8 "beside its peers"
timeout 100 python3 -m workbench profile moe/d 2>&1 | grep -E "^  and |roofline"
timeout 120 python3 -m workbench run d --d 64 --n 8192 -p batch=2 -p heads=32 -p causal=true -f random --seeds 1 --trace 2>&1 | grep -A3 "^trace:"
timeout 120 python3 -m workbench run moe/c -p t=8192 -f random --seeds 1 --trace 2>&1 | grep -A3 "^trace:"
