#!/usr/bin/env bash
# Verify every FMHA stage on a GPU through wb itself (records in runs/, MEMORY.md, stage
# reports). On the device machine, after `bash .gpu/p2/install.sh`:
#     bash benchmarks/gpu_verify.sh [a b c d]        (default: all four)
set -u
. benchmarks/gpu_env.sh
T=${T:-60}
for stage in ${@:-a b c d}; do
  echo "=== stage $stage"
  case $stage in
    a|b) wb sweep "$stage" --n 128,256,512,1024,4096 --d 64,128 --dtype bf16,fp16 --timeout "$T" ;;
    c)   wb sweep c --n 128,256,384,512,1024,4096,16384,32768 --d 64,128 --dtype bf16,fp16 -p m=256 --timeout "$T" ;;
    d)   wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 64,128 --dtype bf16,fp16 -p causal=false,true -p kv_heads=4,2 --timeout "$T" ;;
  esac
done
