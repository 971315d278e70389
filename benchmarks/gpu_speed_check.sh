#!/usr/bin/env bash
# One GPU call: correctness and speed of stage D's new consumer schedules against the
# verified serial kernel (docs/perf-notes.md). Run from the repository root on the device
# machine, with the environment already set up:
#     . benchmarks/gpu_env.sh && bash benchmarks/gpu_speed_check.sh
# Budget: under 5 minutes in total. Every wb command has its own hang timeout, and
# `timeout` bounds each step as a backstop. Records land in runs/ (bring them home with
# `wb import`), speeds also in MEMORY.md's speed block.
#
#   0. smoke: one overlap case (n=1000, d=128, causal, GQA); on FAIL/HANG the overlap
#      benches are skipped (the serial baseline still runs)
#   1. correctness sweep of schedule=overlap: n 17,1000,4096 x d 64,128 x causal x
#      kv_heads 4,2, every fixture of the stage
#   2. bench serial (with peers fa4, sdpa-cudnn) and overlap at s 1024,4096,8192, d 64,128
#   3. bench causal d=128 s=4096, serial (with peers) and overlap
#   4. if time is left (START budget 190 s): pingpong smoke + bench s 4096,8192 d 64,128
# PEERS_ALL=1 also times the peers beside the overlap/pingpong runs (slower).
set -u
command -v wb >/dev/null 2>&1 || wb() { python3 -m workbench "$@"; }
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
step() { echo; echo "=== [$(el) s] $*"; }
PEERS=fa4,sdpa-cudnn
OPEERS=${PEERS_ALL:+$PEERS}
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null

step "0. smoke: overlap, n=1000 d=128 causal kv_heads=2"
timeout 120 wb run d --n 1000 --d 128 -p causal=true -p kv_heads=2 -V schedule=overlap --timeout 40
smoke=$?
echo "smoke exit code: $smoke"

if [ $smoke -eq 0 ]; then
  step "1. correctness sweep, schedule=overlap"
  timeout 200 wb sweep d --n 17,1000,4096 --d 64,128 --dtype bf16 -p causal=false,true -p kv_heads=4,2 \
    -V schedule=overlap --timeout 40
  echo "sweep exit code: $?"
fi

step "2a. bench serial (baseline, with peers)"
timeout 200 wb bench d -p n=1024,4096,8192 -p d=64,128 --peers "$PEERS" -V schedule=serial --timeout 180
if [ $smoke -eq 0 ]; then
  step "2b. bench overlap"
  timeout 200 wb bench d -p n=1024,4096,8192 -p d=64,128 --peers "$OPEERS" -V schedule=overlap --timeout 180
fi

step "3a. bench causal d=128 s=4096 serial (with peers)"
timeout 100 wb bench d -p n=4096 -p d=128 -p causal=true --peers "$PEERS" -V schedule=serial --timeout 90
if [ $smoke -eq 0 ]; then
  step "3b. bench causal d=128 s=4096 overlap"
  timeout 100 wb bench d -p n=4096 -p d=128 -p causal=true --peers "$OPEERS" -V schedule=overlap --timeout 90
fi

BUDGET=${BUDGET:-190}
if [ "$(el)" -lt "$BUDGET" ]; then
  step "4a. smoke: pingpong (n=1000 d=128 causal GQA, n=17 d=64)"
  timeout 60 wb run d --n 1000 --d 128 -p causal=true -p kv_heads=2 -V schedule=pingpong --timeout 30 \
    && timeout 60 wb run d --n 17 --d 64 -V schedule=pingpong --timeout 30
  pp=$?
  echo "pingpong smoke exit code: $pp"
  if [ $pp -eq 0 ] && [ "$(el)" -lt $((BUDGET + 40)) ]; then
    step "4b. bench pingpong"
    timeout 90 wb bench d -p n=4096,8192 -p d=64,128 --peers "$OPEERS" -V schedule=pingpong --timeout 80
  fi
else
  echo "skipped step 4 (pingpong): $(el) s spent"
fi
step "done"
