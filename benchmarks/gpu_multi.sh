#!/usr/bin/env bash
# Issue 20 in one device call: `wb sweep` lanes and `wb bench` on a machine with several GPUs
# (nvidia-h200-x2 or larger). Run from the repository root on the device machine, environment
# set up (. benchmarks/gpu_env.sh); records land in runs/ for `wb import`.
#
#   bash benchmarks/gpu_multi.sh [all|lanes|hang|bench|moe]      (all: about 9 minutes on 2 GPUs)
#
# lanes: the 24-case sweep of issue 20 once on every GPU to compile and warm each lane's
#        worker, then timed with --gpus 0 and with every GPU (warm workers, cached compiles);
#        every case must PASS and each lane's records must name their own card and worker
#        (provenance.cuda_visible_devices, gpu_uuid; timing.worker_pid). Prints the speed-up
#        and its goal, 0.8 x the GPU count.
# hang:  stage C with bug=stuck_pipeline mixed into a sweep on every GPU: HANG on its case
#        only, the other cases PASS; `wb ps --json` sampled while it runs (one worker per lane
#        at most, none orphaned) and after it (nothing busy or orphaned).
# bench: `wb bench d` with the peers: it says which card it timed on (card_label).
# moe:   moe stage D's sweep on every GPU.
# A line "CHECK <name>: ok|FAILED ..." per claim; the script exits 1 if any failed.
set -u
export COLUMNS=${COLUMNS:-200}
command -v wb >/dev/null 2>&1 || wb() { python3 -m workbench "$@"; }
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
OUTDIR=${OUT:-/tmp}
FAILED=0
check() {  # check NAME OK? DETAIL
  if [ "$2" = ok ]; then echo "CHECK $1: ok $3"; else echo "CHECK $1: FAILED $3"; FAILED=1; fi
}
now() { date +%s.%N; }
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU ")
nvidia-smi -L 2>/dev/null
echo "GPUs: $NGPU"
[ "$NGPU" -ge 2 ] || { echo "needs 2 or more GPUs (nvidia-smi -L shows $NGPU)"; exit 2; }

# lanes_of SWEEP_JSON: "ok <detail>" when every lane's records name one card and one worker and
# no two lanes share either; prints the lanes
lanes_of() {
  python3 - "$1" <<'EOF'
import json, sys
from pathlib import Path
summary = json.loads(Path(sys.argv[1]).read_text())
lanes = {}
for row in summary["rows"]:
    rec = json.loads((Path("runs") / row["run"] / "run.json").read_text())
    prov, timing = rec["provenance"], rec["timing"]
    lanes.setdefault(row["lane"], set()).add((prov.get("cuda_visible_devices"), prov.get("gpu_uuid"), timing.get("worker_pid")))
for lane, seen in sorted(lanes.items()):
    print(f"  lane {lane}: {sorted(seen, key=str)}", file=sys.stderr)
cards = [next(iter(s))[:2] for s in lanes.values()]
one_each = all(len({x[:2] for x in s}) == 1 for s in lanes.values())
ok = one_each and len(set(cards)) == len(cards) and all(c[1] for c in cards)
print(("ok" if ok else "no") + f" {len(lanes)} lanes, cards {sorted(set(c[1] or '?' for c in cards))}")
EOF
}

sweep24() {  # sweep24 GPUS JSON_OUT: the issue's 24 cases
  wb sweep d --n 1024,4096,8192 --d 64,128 -p causal=false,true --dtype bf16,fp16 --gpus "$1" --timeout 120 --json > "$2"
}

phase_lanes() {
  step "lanes: warm every lane (compiles cached, one warm worker per GPU)"
  sweep24 all "$OUTDIR/sweep-warm.json"
  step "lanes: --gpus 0, warm"
  t0=$(now); sweep24 0 "$OUTDIR/sweep-one.json"; rc1=$?; t1=$(now)
  step "lanes: every GPU, warm"
  t2=$(now); sweep24 all "$OUTDIR/sweep-all.json"; rc2=$?; t3=$(now)
  one=$(python3 -c "print(f'{$t1 - $t0:.1f}')"); all=$(python3 -c "print(f'{$t3 - $t2:.1f}')")
  speedup=$(python3 -c "print(f'{($t1 - $t0) / ($t3 - $t2):.2f}')")
  goal=$(python3 -c "print(f'{0.8 * $NGPU:.2f}')")
  [ $rc1 = 0 ] && [ $rc2 = 0 ] && check "lanes: 24 cases PASS on one GPU and on all" ok "" || check "lanes: 24 cases PASS" no "exit $rc1 / $rc2"
  read -r verdict detail <<< "$(lanes_of "$OUTDIR/sweep-all.json")"
  check "lanes: each lane its own card and worker" "$verdict" "$detail"
  echo "sweep wall: --gpus 0 $one s, $NGPU GPUs $all s, speed-up x$speedup (goal >= x$goal)"
  python3 -c "import sys; sys.exit(0 if $speedup >= $goal else 1)" && check "lanes: speed-up >= 0.8 x GPUs" ok "x$speedup" \
    || check "lanes: speed-up >= 0.8 x GPUs" no "x$speedup < x$goal"
}

phase_hang() {
  step "hang: stage C bug=none,stuck_pipeline on every GPU (--timeout 45: a cold compile fits), wb ps sampled during it"
  wb sweep c --n 256,1024 -V bug=none,stuck_pipeline --gpus all --timeout 45 --json > "$OUTDIR/sweep-hang.json" &
  pid=$!
  sleep 15
  wb ps --json > "$OUTDIR/ps-during.json"
  wait $pid
  wb ps --json > "$OUTDIR/ps-after.json"
  said=$(python3 - "$OUTDIR/sweep-hang.json" "$OUTDIR/ps-during.json" "$OUTDIR/ps-after.json" "$NGPU" <<'EOF'
import json, sys
from collections import Counter
summary = json.load(open(sys.argv[1]))
during, after, ngpu = json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4])
verdicts = {(r["label"].get("n"), r["label"].get("bug")): r["verdict"] for r in summary["rows"]}
lanes = {r["lane"] for r in summary["rows"]}
ok = all(v == ("HANG" if bug == "stuck_pipeline" else "PASS") for (n, bug), v in verdicts.items())
print(f"CHECK hang: HANG only where stuck, PASS elsewhere, on {len(lanes)} lanes: {'ok' if ok and len(lanes) == ngpu else 'FAILED'} {verdicts}")
live = [p for p in during if p["state"] in ("idle", "busy", "running")]
per_lane = Counter(p.get("cuda_visible_devices") for p in live)
fine = len(per_lane) == ngpu and all(c == 1 for c in per_lane.values()) and not [p for p in during if p["state"] == "orphan"]
print(f"CHECK hang: wb ps during the sweep, one worker per lane: {'ok' if fine else 'FAILED'} {dict(per_lane)} {[p['state'] for p in during]}")
left = [p for p in after if p["state"] in ("busy", "orphan", "running")]
print(f"CHECK hang: nothing busy or orphaned after it: {'ok' if not left else 'FAILED'} {[(p['pid'], p['state']) for p in left]} (idle warm workers: {sum(p['state'] == 'idle' for p in after)})")
EOF
)
  echo "$said"
  case "$said" in *FAILED*) FAILED=1 ;; esac
  wb kill --all >/dev/null 2>&1
  sleep 6
  n=$(wb ps --json | python3 -c "import json,sys; print(sum(p['state'] in ('idle','busy','running','orphan') for p in json.load(sys.stdin)))")
  [ "$n" = 0 ] && check "hang: wb kill --all leaves no worker" ok "" || check "hang: wb kill --all leaves no worker" no "$n left"
}

phase_bench() {
  step "bench: wb bench d with the peers, on a machine with $NGPU GPUs"
  wb bench d -p n=4096 -p d=128 --peers fa4,sdpa-cudnn --timeout 200 | tee "$OUTDIR/bench.txt" | grep -a -E "bench|^│ " | cut -c1-200
  grep -a -q -E "on NVIDIA .* GPU-" "$OUTDIR/bench.txt" && check "bench: says which card" ok "$(grep -a -o -E 'on NVIDIA [^·]*' "$OUTDIR/bench.txt" | head -1)" \
    || check "bench: says which card" no "(no UUID in its first line)"
}

phase_moe() {
  step "moe: stage D's sweep on every GPU"
  wb sweep moe/d -p t=1,7,128,1000 -p h=256 -p i=128 -p e=8 -p topk=2 -p routing=logits,given --dtype bf16,fp16 \
    --gpus all --timeout 120 --json > "$OUTDIR/sweep-moe.json" && check "moe: every case PASS" ok "" || check "moe: every case PASS" no "(see sweep-moe.json)"
  read -r verdict detail <<< "$(lanes_of "$OUTDIR/sweep-moe.json")"
  check "moe: each lane its own card and worker" "$verdict" "$detail"
}

case "${1:-all}" in
  lanes) phase_lanes ;;
  hang) phase_hang ;;
  bench) phase_bench ;;
  moe) phase_moe ;;
  all) phase_lanes; phase_hang; phase_bench; phase_moe ;;
  *) echo "usage: bash benchmarks/gpu_multi.sh [all|lanes|hang|bench|moe]" >&2; exit 2 ;;
esac
step done
exit $FAILED
