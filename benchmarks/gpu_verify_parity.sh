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
      # stage D's softcap c (logits -> c tanh(s / c)): 44 cases, 20 compiles; small batch/heads, tails
      # (17, 1000), m != n.
      # Every case runs stage D's fixtures, softcap-logits included (logits ~N(0, (1.5 c)^2)).
      # 8 compiles: c = 30 over d, dtype, causal; n with tails; GQA 2:1
      wb sweep d --n 17,1000,4096 --d 64,128 --dtype bf16,fp16 -p causal=false,true -p softcap=30 \
        -p batch=1 -p heads=2 -p kv_heads=1 --timeout "$T"
      # 8 compiles: a small cap (5: the tanh bends for every logit) and Gemma 2's 50
      wb sweep d --n 1000 --d 64,128 --dtype bf16 -p causal=false,true -p softcap=5,50 -p batch=1 -p heads=2 \
        --timeout "$T"
      # m != n (causal top-left), both sides, c = 50 (the compiles of the line above)
      wb sweep d --n 1000 -p m=17,4096 --d 64,128 --dtype bf16 -p causal=false,true -p softcap=50 -p batch=1 \
        -p heads=2 --timeout "$T"
      # softcap = 0 on the fixture: the unchanged kernel, large logits
      wb sweep d --n 1000 --d 64,128 --dtype bf16 -p causal=false,true -p softcap=0 -p batch=1 -p heads=2 \
        -f softcap-logits -f random --timeout "$T"
      # the injected bug (the cap before the scale) must FAIL and be named softcap-before-scale
      wb run d --n 1000 -p m=700 --d 64 -p batch=1 -p heads=2 -p kv_heads=1 -p causal=true -p softcap=30 \
        -V softcap_bug=before_scale --fixture softcap-logits --timeout "$T" || true
      python3 -m pytest -q -m gpu tests/test_softcap.py
      ;;
    headdim)
      ;;
    varlen)
      ;;
  esac
done
