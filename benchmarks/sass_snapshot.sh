#!/usr/bin/env bash
# SASS of every stage's default configurations, one file each, for a before/after diff of a
# refactor ("instruction-for-instruction identical"). No GPU needed.
#     bash benchmarks/sass_snapshot.sh OUT_DIR        then: diff -r BEFORE AFTER
# Needs nvdisasm (pip install 'cute-wb[sass]'). Only the instruction lines are kept (address and
# instruction): the kernel's mangled symbol names its module and class, which a move may rename.
set -eu
out=${1:?usage: sass_snapshot.sh OUT_DIR}
mkdir -p "$out"
wb=${WB:-wb}
snap() {  # name, wb compile args...
  local name=$1; shift
  json=$($wb compile "$@" --keep sass --json)
  sass=$(python3 -c 'import json,sys; r=json.load(sys.stdin); print(next(p for k,p in r["artifacts"].items() if k.endswith(".sass")))' <<<"$json")
  grep -E '^\s*/\*[0-9a-f]{4,}\*/' "$sass" | sed 's/ *$//' > "$out/$name.sass"
  echo "$name: $(wc -l < "$out/$name.sass") instructions"
}
for d in 64 128; do
  snap "a-d$d" a --d $d
  snap "b-d$d" b --d $d
  snap "c-d$d" c --d $d
  for causal in false true; do
    snap "d-d$d-causal-$causal" d --d $d -p causal=$causal
    # the other persistence modes and schedules share the tile scheduler and the CTA skeleton
    for v in persistent=off persistent=on persistent=dynamic schedule=serial schedule=overlap; do
      snap "d-d$d-causal-$causal-${v/=/-}" d --d $d -p causal=$causal -V $v
    done
  done
done
