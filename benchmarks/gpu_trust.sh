#!/usr/bin/env bash
# The GPU half of issue 14 ("Trust nothing that comes in"), through wb itself, in one call.
# On the device machine, from the repository root, after the DSL (and peers) are installed
# (the shared team folder's `gpu/pack.sh --peers`, then `bash .gpu/p2/install.sh`):
#     OUT=/some/folder bash benchmarks/gpu_trust.sh [tests] [bench] [sweep]   (default: all)
#
#   tests  the GPU tests of the issue: a killed `wb run` frees the GPU within 10 s, the
#          reference's memory at n=32768 b=8 h=16 d=128 recorded, a hung kernel's HANG
#          record names the card, every injected bug named on the GPU
#   bench  `wb bench d -p n=4096 -p d=128 --peers fa4,sdpa-cudnn` (a failing peer's whole error
#          is in the record), and FA4 from a plain script in the same call for comparison
#   sweep  stage C and D sweeps over the new streaming reference
# Records land in runs/ (and the tests' workspaces under /tmp/wb-trust); each part's runs are
# packed into $OUT/runs-<part>.tgz for `wb import` at home.
set -u
. benchmarks/gpu_env.sh
OUT=${OUT:-/tmp/wb-trust-out}
mkdir -p "$OUT"
WB="python3 -m workbench"  # `timeout` runs programs, not gpu_env.sh's shell function
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

pack() {  # pack every run folder made since the mark into $OUT/runs-$1.tgz
  local list
  list=$(find runs /tmp/wb-trust -mindepth 1 -maxdepth 4 -type d -name '20*-*-*' -newer /tmp/wb-trust.mark 2>/dev/null | grep -E '/runs/[0-9]{8}-[0-9]{6}-[0-9]{6}$')
  [ -n "$list" ] || return 0
  rm -rf /tmp/wb-pack && mkdir -p /tmp/wb-pack/runs
  for d in $list; do cp -r "$d" /tmp/wb-pack/runs/; done
  tar czf "$OUT/runs-$1.tgz" -C /tmp/wb-pack runs && echo "packed $(echo "$list" | wc -l) run(s) into runs-$1.tgz"
}

for part in ${@:-tests bench sweep}; do
  touch /tmp/wb-trust.mark
  case $part in
    tests)
      step "GPU tests of issue 14"
      timeout 540 python3 -m pytest -q -s -m gpu --basetemp=/tmp/wb-trust -p no:cacheprovider \
        tests/test_gpu_trust.py tests/test_gpu_bug_injection.py 2>&1 | grep -vE "Failed to initialize NumPy|_conversion_method_template"
      ;;
    bench)
      step "wb bench d -p n=4096 -p d=128 --peers fa4,sdpa-cudnn"
      timeout 300 $WB bench d -p n=4096 -p d=128 --peers fa4,sdpa-cudnn --timeout 280 --json > /tmp/bench.json
      python3 - <<'PY'
import json
r = json.load(open("/tmp/bench.json"))
for c in r.get("bench", []):
    print(c["case"], "wb", round(c.get("tflops") or 0), "TFLOP/s")
    for name, peer in (c.get("peers") or {}).items():
        print(" ", name, round(peer["tflops"]) if peer.get("tflops") else peer.get("skipped"))
        if peer.get("error"):
            print(peer["error"].get("traceback", "")[-3000:])
PY
      step "FA4 from a plain script"
      timeout 120 python3 -c "
import torch; from flash_attn.cute import flash_attn_func
q = torch.randn(4, 4096, 16, 128, device='cuda', dtype=torch.bfloat16)
o = flash_attn_func(q, q, q, causal=False); torch.cuda.synchronize(); print('fa4 plain script ok', tuple(o[0].shape) if isinstance(o, tuple) else tuple(o.shape))"
      ;;
    sweep)
      step "stage C and D sweeps over the streaming reference"
      timeout 200 $WB sweep c --n 128,1024,4096 --d 64,128 -p m=256 --timeout 60
      timeout 300 $WB sweep d --n 17,1000,4096 --d 64,128 -p causal=false,true -p kv_heads=4,2 --timeout 60
      ;;
  esac
  pack "$part"
done
step "done"
