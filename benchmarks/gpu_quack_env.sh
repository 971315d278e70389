# Source on the GPU machine instead of gpu_env.sh when quack runs (stages/moe/peer_quack.py).
# quack keys its compile cache by fingerprinting epilogue functions and treats a function as
# installed code (keyed by name) only when its file's path holds "/site-packages/"; from
# /tmp/site (pack.sh's `pip install --target`) cutlass's functions fail that test and the
# fingerprint stops at a ContextVar of cutlass ("... has no fail-closed semantic key").
# peer_quack patches that in its own process; this reaches the same files through a path
# holding "site-packages", which also covers quack's compile workers (other processes).
. benchmarks/gpu_env.sh
mkdir -p /tmp/sp && ln -sfn /tmp/site /tmp/sp/site-packages
export PYTHONPATH="${PYTHONPATH//\/tmp\/site/\/tmp\/sp\/site-packages}"
