#!/usr/bin/env bash
# Verify every MoE stage on a GPU through wb itself (records in runs/, MEMORY.md, stage
# reports). On the device machine, after `bash .gpu/p2/install.sh`:
#     bash benchmarks/gpu_verify_moe.sh [a b c d bugs]      (default: all)
# Shapes (h, i, e, topk): Qwen3-30B-A3B (2048, 768, 128, 8), Mixtral-8x7B (4096, 14336, 8, 2),
# gpt-oss-120b (2880, 2880, 128, 4), DeepSeek-V3 (7168, 2048, 256, 8); tokens T in
# 1, 7, 128, 1000, 8192. Stages A and B are one expert's GEMM: m = ceil(T·topk / E) (the
# rows an expert gets when routing is balanced) and m = T (every token on one expert).
# Stages C and D route T tokens (parameter t). Every case runs the stage's fixtures
# (kernel.yaml; random with 3 seeds); FIXTURES="-f random" (say) narrows them.
# `bugs`: each injected bug of stages C and D must FAIL and its diagnosis must name the
# mutant that models it (one line per bug: OK / MISMATCH).
set -u
. benchmarks/gpu_env.sh
TO=${TO:-300}
FIXTURES=${FIXTURES:-}
TOKENS="1 7 128 1000 8192"
MODELS="qwen3-30b-a3b:2048:768:128:8 mixtral-8x7b:4096:14336:8:2 gpt-oss-120b:2880:2880:128:4 deepseek-v3:7168:2048:256:8"

csv() { echo "$*" | tr ' ' ','; }

for stage in ${@:-a b c d bugs}; do
  echo "=== stage $stage"
  for model in $MODELS; do
    IFS=: read -r name h i e k <<<"$model"
    case $stage in
      a|b)
        ms=""
        for t in $TOKENS; do ms="$ms $(( (t * k + e - 1) / e )) $t"; done
        ms=$(echo $ms | tr ' ' '\n' | sort -nu | tr '\n' ' ')
        echo "--- $name: m = $ms"
        wb sweep moe/$stage -p m=$(csv $ms) -p h=$h -p i=$i --dtype bf16 $FIXTURES --timeout "$TO"
        if [ "$stage" = b ]; then
          wb sweep moe/b -p m=$(csv $ms) -p h=$h -p i=$i -p activation=gptoss,identity --dtype bf16 $FIXTURES --timeout "$TO"
        fi
        ;;
      c)
        echo "--- $name"
        wb sweep moe/c -p t=$(csv $TOKENS) -p h=$h -p i=$i -p e=$e -p topk=$k --dtype bf16 $FIXTURES --timeout "$TO"
        ;;
      d)
        echo "--- $name"
        wb sweep moe/d -p t=$(csv $TOKENS) -p h=$h -p i=$i -p e=$e -p topk=$k --dtype bf16 $FIXTURES --timeout "$TO"
        wb sweep moe/d -p t=1000 -p h=$h -p i=$i -p e=$e -p topk=$k -p routing=given --dtype bf16 $FIXTURES --timeout "$TO"
        ;;
    esac
  done
  case $stage in
    c)  # fp16 and the down-projection's path (no gather, activation none) at one shape
      wb sweep moe/c -p t=1,7,128,1000 -p h=2048 -p i=768 -p e=128 -p topk=8 --dtype fp16 --timeout "$TO"
      wb sweep moe/c -p t=1,1000 -p h=2048 -p i=768 -p e=128 -p topk=8 -p activation=none -V gather=off --dtype bf16 --timeout "$TO"
      ;;
    d)  # the small shape of tests/test_moe_pipeline.py, gpt-oss's activation, fp16
      wb sweep moe/d -p t=1,7,128,1000 -p h=256 -p i=128 -p e=8 -p topk=2 -p routing=logits,given --dtype bf16,fp16 --timeout "$TO"
      wb sweep moe/d -p t=1,1000 -p h=2880 -p i=2880 -p e=128 -p topk=4 -p activation=gptoss --dtype bf16 --timeout "$TO"
      # the grouped GEMMs' other tiles (speed variants)
      wb sweep moe/d -p t=1,7,1000 -p h=2048 -p i=768 -p e=128 -p topk=8 -V up_tile=128x128,64x256,64x128 -V down_tile=128x128,64x128 --dtype bf16 -f random --timeout "$TO"
      # the CuTe combine (experimental variant): the small shape and Qwen3's
      wb sweep moe/d -p t=1,7,128,1000 -p h=256 -p i=128 -p e=8 -p topk=2 -V combine=cute --dtype bf16 --timeout "$TO"
      wb sweep moe/d -p t=1,1000,8192 -p h=2048 -p i=768 -p e=128 -p topk=8 -V combine=cute --dtype bf16 --timeout "$TO"
      ;;
    bugs)
      # stage -> bug -> the mutant its diagnosis must name (stages/moe/mutants.py)
      expect() {  # expect STAGE BUG MUTANT PARAMS...
        local st=$1 bug=$2 mut=$3; shift 3
        out=$(wb run moe/$st "$@" -V bug=$bug -f random --seeds 1 --timeout "$TO" 2>&1)
        if echo "$out" | grep -q "FAIL" && echo "$out" | grep -q "'$mut'"; then
          echo "OK        moe/$st bug=$bug -> FAIL, names '$mut'"
        else
          echo "MISMATCH  moe/$st bug=$bug: expected FAIL naming '$mut'"; echo "$out" | tail -15
        fi
      }
      C="-p t=1000 -p h=256 -p i=128 -p e=8 -p topk=2"
      expect c expert_offset_off_by_one expert-offset-off-by-one $C
      expect c tail_from_next tail-rows-from-next-expert $C
      expect c tail_unwritten tail-rows-unwritten $C
      expect c gather_ignored gather-ignored $C
      expect c gate_up_swapped gate-up-swapped $C
      expect c silu_on_up silu-on-up $C
      D="-p t=1000 -p h=256 -p i=128 -p e=8 -p topk=2"
      expect d topk_weights_skipped topk-weights-not-applied $D
      expect d topk_weights_twice topk-weights-applied-twice $D
      expect d combine_overwrite combine-overwrites $D
      expect d combine_overwrite combine-overwrites $D -V combine=cute
      expect d topk_weights_skipped topk-weights-not-applied $D -V combine=cute
      expect d expert_offset_off_by_one expert-offset-off-by-one $D
      expect d tail_from_next tail-rows-from-next-expert $D
      expect d gather_ignored gather-ignored $D
      expect d gate_up_swapped gate-up-swapped $D
      expect d silu_on_up silu-on-up $D
      # tail_unwritten in D leaves stage D's own (unpoisoned) scratch rows: y is garbage there, so
      # it must FAIL but no mutant can claim the garbage
      out=$(wb run moe/d $D -V bug=tail_unwritten -f tail-plus-one --seeds 1 --timeout "$TO" 2>&1)
      echo "$out" | grep -q "FAIL" && echo "OK        moe/d bug=tail_unwritten -> FAIL" || { echo "MISMATCH  moe/d bug=tail_unwritten passed"; echo "$out" | tail -15; }
      # the same model shape as a real one: the down-projection's bugs at Qwen3's shape
      expect d combine_overwrite combine-overwrites -p t=128 -p h=2048 -p i=768 -p e=128 -p topk=8
      ;;
  esac
done
