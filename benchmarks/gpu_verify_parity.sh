#!/usr/bin/env bash
# Verify stage D's parity features (issue 18) on a GPU through wb itself (records in runs/,
# MEMORY.md). On the device machine, after `bash .gpu/p2/install.sh`:
#     bash benchmarks/gpu_verify_parity.sh [mask softcap headdim varlen]   (default: all)
# Each section is a set of wb sweeps (every case gets a verdict) plus the injected bugs of
# that feature, which must FAIL and be named by their mutant.
set -u
. benchmarks/gpu_env.sh
T=${T:-60}
for part in ${@:-mask softcap headdim varlen}; do
  echo "=== $part"
  case $part in
    mask)
      ;;
    softcap)
      ;;
    headdim)
      ;;
    varlen)
      # packed batches (varlen=true): q lengths 1 ... 32768 in one batch, a zero-length k
      # sequence (O = 0, LSE = -inf rows), a zero-length q sequence, equal lengths; d 64/128,
      # causal both (top-left per sequence), bf16 + fp16, GQA with k lengths != q lengths;
      # every persistent mode. Then today's (non-varlen) kernel, unchanged.
      timeout 150 wb sweep d -p varlen=true -p seqlens=1000,1:17:1000:0:4096,128:128:128:128,1:32768:7:300:0:129 \
        --d 64,128 --dtype bf16 -p causal=false,true --timeout $T
      timeout 60 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 -p seqlens_k=5:0:1000:33:4000 \
        -p heads=8 -p kv_heads=2 --d 64,128 --dtype fp16 -p causal=false,true --timeout $T
      timeout 60 wb sweep d -p varlen=true -p seqlens=1:17:1000:0:4096 --d 128 -p causal=true \
        -V persistent=off,on,dynamic --timeout $T
      timeout 60 wb sweep d --n 17,1000 --d 64,128 -p causal=false,true -p kv_heads=4,2 --timeout $T
      # injected bugs: each must FAIL with its mutant named first (varlen-next-offset,
      # varlen-tail-unmasked, varlen-first-length); tests/test_varlen_gpu.py asserts the same
      for bug in next_offset:300:1000:77:500 tail_unmasked:300:1000:77:500 first_length:77:1000:300:500; do
        timeout 90 wb run d -p varlen=true -p seqlens=${bug#*:} -V varlen_bug=${bug%%:*} --fixture random --seeds 1 --timeout $T
      done
      timeout 300 python3 -m pytest -q -m gpu tests/test_varlen_gpu.py
      ;;
    varlen-speed)
      # (not in the default list: `bash benchmarks/gpu_verify_parity.sh varlen-speed`) the issue's
      # varlen goals: equal lengths within 3% of the fixed-length kernel (same tensors' sizes),
      # and a mixed batch (128 ... 16k, 64k tokens) against FA4's varlen path
      timeout 200 wb bench d -p n=4096 -p d=128 -p batch=4 -p heads=16 -p causal=false,true --peers fa4 --timeout 180
      timeout 200 wb bench d -p varlen=true -p seqlens=4096:4096:4096:4096 -p d=128 -p heads=16 \
        -p causal=false,true --peers fa4 --timeout 180
      timeout 200 wb bench d -p varlen=true \
        -p seqlens=16384:128:8000:3000:512:12000:777:4096:9000:2000:6000:3639 -p d=128 -p heads=16 \
        -p causal=false,true --peers fa4 --timeout 180
      ;;
  esac
done
