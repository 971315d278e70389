#!/usr/bin/env bash
# The grouped GEMM's smem epilogue (variant epilogue=smem, stages/moe/gemm.py epilogue_smem)
# on one GPU, in one call: correctness first, then speed beside the default in the same call.
# Run from the repository root on the device machine, environment set up:
#     . benchmarks/gpu_env.sh && bash benchmarks/gpu_epilogue_moe.sh
# 1. pytest: the epilogue=smem GPU tests of stages A/B/C/D, then every GPU test of stage C
#    again with MOE_EPILOGUE=smem (the default epilogue of tests/test_moe_grouped.py's cases)
# 2. wb sweep moe/c and moe/d with -V epilogue=smem at Qwen3's shape (fixtures incl. tails)
# 3. wb bench moe/c and moe (stage D) --sweep, no peers: default, then epilogue=smem, then
#    default again (drift check). NOTE: each --sweep rewrites the stage's perf doc
#    (docs/perf-moe*.md): keep the default's (git checkout docs/) unless smem becomes the default.
set -u
export COLUMNS=${COLUMNS:-220}
command -v wb >/dev/null 2>&1 || wb() { python3 -m workbench "$@"; }
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
TO=${TO:-300}

step "pytest: epilogue=smem tests (stages A/B variants, C, D)"
timeout 900 python3 -m pytest -q -m gpu tests/test_moe_grouped.py -k "smem" -x
timeout 900 python3 -m pytest -q -m gpu tests/test_moe_gemm.py -k "variants and epilogue"
step "pytest: every stage C GPU test with MOE_EPILOGUE=smem"
MOE_EPILOGUE=smem timeout 900 python3 -m pytest -q -m gpu tests/test_moe_grouped.py
step "wb sweep: Qwen3 shape, epilogue=smem"
wb sweep moe/c -p t=1,7,1000 -p h=2048 -p i=768 -p e=128 -p topk=8 -V epilogue=smem --dtype bf16 --timeout "$TO"
wb sweep moe/c -p t=1,1000 -p h=2048 -p i=768 -p e=128 -p topk=8 -p activation=none -V gather=off -V epilogue=smem --dtype bf16 --timeout "$TO"
wb sweep moe/d -p t=1,7,1000 -p h=2048 -p i=768 -p e=128 -p topk=8 -V epilogue=smem --dtype bf16 --timeout "$TO"

step "bench moe/c: default, smem, default"
wb bench moe/c --sweep --peers ''
wb bench moe/c --sweep --peers '' -V epilogue=smem
wb bench moe/c --sweep --peers ''
step "bench moe/c 64-row tiles: default, smem"
wb bench moe/c --sweep --peers '' -V tile_m=64
wb bench moe/c --sweep --peers '' -V tile_m=64 -V epilogue=smem
step "bench moe (stage D): default, smem, default"
wb bench moe --sweep --peers ''
wb bench moe --sweep --peers '' -V epilogue=smem
wb bench moe --sweep --peers ''
step "done"
