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
      ;;
    varlen)
      ;;
  esac
done
