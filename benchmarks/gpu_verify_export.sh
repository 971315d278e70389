#!/usr/bin/env bash
# Issue 17 (wb export) on a GPU: verify a configuration with `wb run`, export it (no
# --allow-unverified: the manifest names the runs), install it, check it against the in-tree
# kernel bit for bit, CUDA graphs, torch.compile, and time its launch beside FA4 and SDPA.
# On the device machine, after `bash .gpu/p2/install.sh` (it brings apache-tvm-ffi and
# torch-c-dlpack-ext):
#     bash benchmarks/gpu_verify_export.sh
# Exporting links with cc. A GPU box without one: export on the CPU box first (the .so files
# hold no Python: one build serves 3.11 and 3.12) and carry it over:
#     wb export d -p d=128 -p heads=4 -p kv_heads=2 -p causal=false,true --allow-unverified --out .gpu/export-pkg
#     (on the GPU box)  WB_EXPORT_PREBUILT=.gpu/export-pkg bash benchmarks/gpu_verify_export.sh
set -u
. benchmarks/gpu_env.sh
OUT=${OUT:-/tmp/wb-export}
rm -rf "$OUT"; mkdir -p "$OUT"
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null && [ -z "${WB_EXPORT_PREBUILT:-}" ]; then
  echo "no C compiler here: set WB_EXPORT_PREBUILT to a package exported on the CPU box (see the top of this file)"; exit 3
fi
echo "=== pytest -m gpu tests/test_export_gpu.py (verifies in a workspace copy, exports, installs, compares)"
timeout 900 python3 -m pytest -q -m gpu tests/test_export_gpu.py
echo "=== tiny-shape launch cost: verify, export, install"
if [ -n "${WB_EXPORT_PREBUILT:-}" ]; then cp -r "$WB_EXPORT_PREBUILT" "$OUT/pkg"; else
for causal in false true; do
  timeout 300 python3 -m workbench run d --n 128 --d 128 -p heads=4 -p kv_heads=2 -p causal=$causal --seeds 1
done
timeout 600 python3 -m workbench export d -p d=128 -p heads=4 -p kv_heads=2 -p causal=false,true --out "$OUT/pkg" \
  || { echo "export refused (no verifying run?): exporting with --allow-unverified to time it anyway"; \
       timeout 600 python3 -m workbench export d -p d=128 -p heads=4 -p kv_heads=2 -p causal=false,true --out "$OUT/pkg" --allow-unverified --force; }
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target "$OUT/site" "$OUT/pkg" \
  || { echo "pip could not build (setuptools?): copying the package folder instead"; mkdir -p "$OUT/site"; cp -r "$OUT/pkg/wb_fmha" "$OUT/site/"; }
echo "=== launch cost (median host µs over 1000 calls; target <= 15 µs for the op)"
PYTHONPATH="$OUT/site:$PYTHONPATH" timeout 300 python3 benchmarks/export_launch_cost.py --calls 1000 --shape 1,128,4,2,128
PYTHONPATH="$OUT/site:$PYTHONPATH" timeout 300 python3 benchmarks/export_launch_cost.py --calls 1000 --shape 1,128,4,2,128 --causal --json
