#!/usr/bin/env bash
# Verify every FMHA stage on a GPU through wb itself (records in runs/, MEMORY.md, stage
# reports). On the device machine, after `bash .gpu/p2/install.sh`:
#     bash benchmarks/gpu_verify.sh [a b c d]        (default: all four)
# Every case runs the stage's fixtures (kernel.yaml; random with 3 seeds) and wb's verdict and
# diagnosis. A sweep is a cartesian product, so each m != n pair and each GQA group size is a
# line of its own. The injected bugs of stage C (caught, named; stuck_pipeline HANGs) are GPU
# tests: tests/test_gpu_bug_injection.py, run by benchmarks/gpu_trust.sh.
# Cases: a 24, b 44, c 44, d 149 (261 in all).
set -u
. benchmarks/gpu_env.sh
T=${T:-60}
for stage in ${@:-a b c d}; do
  echo "=== stage $stage"
  case $stage in
    a)
      wb sweep a --n 128,256,512,1024,4096 --d 64,128 --dtype bf16,fp16 --timeout "$T"
      wb sweep a --n 1024 -p m=384 --d 64,128 --dtype bf16,fp16 --timeout "$T"
      ;;
    b)
      wb sweep b --n 128,256,512,1024,4096 --d 64,128 --dtype bf16,fp16 --timeout "$T"
      wb sweep b --n 1024 -p m=384 --d 64,128 --dtype bf16,fp16 --timeout "$T"
      # softmax=identity on the addressing fixtures (identity-softmax above covers random data)
      wb sweep b --n 128,256,512,1024,4096 --d 64,128 --dtype bf16,fp16 -V softmax=identity \
        -f single -f iota --timeout "$T"
      ;;
    c)
      wb sweep c --n 128,256,384,512,1024,4096,16384,32768 --d 64,128 --dtype bf16,fp16 -p m=256 --timeout "$T"
      wb sweep c --n 128,384,512 --d 64,128 --dtype bf16,fp16 --timeout "$T"  # m = n: 1, 3 and 4 Q tiles
      ;;
    d)
      wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 64,128 --dtype bf16,fp16 -p causal=false,true -p kv_heads=4,2 --timeout "$T"
      # GQA group sizes 4 and 3, and one KV head (MQA)
      wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 128 --dtype bf16 -p heads=8 -p kv_heads=2 -p causal=true --timeout "$T"
      wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 64 --dtype fp16 -p heads=6 -p kv_heads=2 --timeout "$T"
      wb sweep d --n 1,17,128,1000,1024,4096,8192 --d 128 --dtype fp16 -p heads=2 -p kv_heads=1 -p causal=true --timeout "$T"
      # m != n (causal aligned top-left), tails on either side
      wb sweep d --n 1000 -p m=17 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=2 --timeout "$T"
      wb sweep d --n 17 -p m=1000 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=2 --timeout "$T"
      wb sweep d --n 4096 -p m=1024 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=2 --timeout "$T"
      wb sweep d --n 1000 -p m=4096 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=2 --timeout "$T"
      ;;
  esac
done
