#!/usr/bin/env bash
# One device call, from the repository root on the lent GPU machine:
#     BUDGET=480 bash benchmarks/gpu_call.sh "bash benchmarks/gpu_tune_d.sh verify"
# Installs, once per machine, the packed DSL and peer wheels (.gpu/p2 after .gpu/p1 was copied to
# /tmp/keep, README "On the lent GPU machine") and the wheels of .whl/ (benchmarks/gpu_wheels.sh),
# whichever the call carried; sets up benchmarks/gpu_env.sh and a `wb` executable on PATH (so that
# `timeout wb ...` works); takes WB_GIT_COMMIT from .gpu/commit when it is there (the tree travels
# without .git: `git rev-parse HEAD > .gpu/commit` before the call); runs COMMAND under BUDGET
# seconds (default 480: leave the install and the packing inside the call's own limit), its output
# also in $OUT/out.log; then packs the runs made by this call alone (runs/ stays on a warm machine
# between calls) into $OUT/runs.tgz, split into $OUT/runs.tgz.part-aa, -ab, ... where it is over
# 15 MB (a file over 16 MiB does not come back). Here: cat runs.tgz* | tar xz -C DIR; wb import DIR.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
if [ -d .gpu/p2 ]; then bash .gpu/p2/install.sh || exit 3; fi
[ -f /tmp/site/env.sh ] || { echo "gpu_call: the DSL is not installed (carry .gpu/p2 after .gpu/p1)" >&2; exit 3; }
if [ -d .whl ] && [ ! -f /tmp/site/.whl-installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.whl-installed
fi
set +u; . /tmp/site/env.sh; . benchmarks/gpu_env.sh; set -u
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m workbench "$@"\n' > /tmp/bin/wb && chmod +x /tmp/bin/wb
export PATH="/tmp/bin:$PATH"
if [ -f .gpu/commit ]; then export WB_GIT_COMMIT="$(cat .gpu/commit)" WB_GIT_DIRTY=0; fi
echo "gpu_call: commit ${WB_GIT_COMMIT:-(git)}, budget ${BUDGET:-480} s"
mkdir -p runs && touch /tmp/gpu_call.start
set -o pipefail
timeout "${BUDGET:-480}" bash -c "$1" 2>&1 | tee "$OUT/out.log"
rc=$?
new=$(cd runs && find . -mindepth 1 -maxdepth 1 -newer /tmp/gpu_call.start | sort)
if [ -n "$new" ]; then
  (cd runs && tar czf "$OUT/runs.tgz" --transform 's,^\./,runs/,' $new)
  size=$(stat -c %s "$OUT/runs.tgz")
  if [ "$size" -gt 15000000 ]; then
    split -b 15000000 "$OUT/runs.tgz" "$OUT/runs.tgz.part-" && rm "$OUT/runs.tgz"
  fi
  echo "gpu_call: $(echo "$new" | wc -l) run folder(s) packed ($size bytes)"
fi
exit $rc
