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
      # d = 96, 192, 256 (KV tiles of 128, 112, 80 keys; O staged in Q's smem for 192/256):
      # 14 compiles, 58 cases, batch 2 x 2 query heads on 1 KV head (GQA 2:1)
      H="-p batch=2 -p heads=2 -p kv_heads=1"
      wb sweep d --n 1,17,128,1000,4096 --d 96,192,256 --dtype bf16 -p causal=false,true $H --timeout "$T"
      wb sweep d --n 17,1000 --d 96,192,256 --dtype fp16 -p causal=false,true $H --timeout "$T"
      # m != n (causal top-left): a Q tail and a KV tail of 80/112-key tiles on either side
      wb sweep d --n 1000 -p m=17,4096 --d 96,192,256 --dtype bf16 -p causal=false,true $H --timeout "$T"
      # O staged in Q without the persistent loop, and with the serial schedule's Q release
      wb sweep d --n 17,1000 --d 256 --dtype bf16 -p causal=true $H -V persistent=off --timeout "$T"
      wb sweep d --n 17,1000 --d 192 --dtype bf16 -p causal=false $H -V schedule=serial --timeout "$T"
      ;;
    varlen)
      ;;
  esac
done
