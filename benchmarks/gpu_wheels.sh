#!/usr/bin/env bash
# The wheels wb needs on the lent GPU machine beyond the DSL (pack.sh) and what the machine
# has (torch, typer, rich, PyYAML, pytest): pydantic and its parts, for CPython 3.12 x86-64,
# into .whl/ (git-ignored). Carry `.whl` and, on the machine, before anything else:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
  2>&1 | grep -v '^WARNING: Location' || true
ls .whl
