"""benchmarks/gpu_verify.sh, the GPU matrix of the FMHA stages, read on the CPU: every `wb sweep`
line plans (kernel.yaml accepts each of its cases, as `wb sweep` checks before it runs
anything), the case count in the script's header is the true one (GPU time is budgeted by
it), and the matrix covers every axis the stages have: the sequence lengths, d, dtype, m != n,
causal both ways, tails, MHA / GQA group sizes / one KV head, softmax=identity, and every
fixture of kernel.yaml."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_verify.sh"


def _sweep_lines() -> list[list[str]]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("wb sweep "):
            lines.append(shlex.split(line.replace('"$T"', "60")))
    return lines


def _parse(tokens: list[str]):
    """(stage, parameter axes, variant axes, fixtures) of one `wb sweep` line."""
    stage, axes, variants, fixtures = tokens[2], {}, {}, []
    it = iter(tokens[3:])
    for opt in it:
        value = next(it)
        if opt in ("--n", "--d", "--dtype"):
            axes[opt[2:]] = value.split(",")
        elif opt in ("-p", "--param", "-V", "--variant"):
            key, _, vals = value.partition("=")
            (axes if opt in ("-p", "--param") else variants)[key] = vals.split(",")
        elif opt in ("-f", "--fixture"):
            fixtures.append(value)
        else:
            assert opt == "--timeout", f"gpu_verify.sh: option {opt} is not read by this test"
    return stage, axes, variants, fixtures


@pytest.fixture(scope="module")
def matrix():
    """stage -> [(params, variants, fixtures run)] of every case of the script."""
    from workbench.remote import sweep
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.workspace import find_workspace

    ws = find_workspace(ROOT)
    kernels = load_kernels(ws)
    out: dict[str, list] = {}
    for tokens in _sweep_lines():
        stage, axes, variants, fixtures = _parse(tokens)
        spec = resolve_stage(ws, stage, kernels)
        for case in sweep.plan(spec, axes, variants):
            out.setdefault(stage, []).append((case.params, case.variants, tuple(fixtures or spec.fixtures)))
    return out


def test_header_counts_are_the_planned_cases(matrix):
    m = re.search(r"Cases: a (\d+), b (\d+), c (\d+), d (\d+) \((\d+) in all\)", SCRIPT.read_text())
    assert m, "gpu_verify.sh states its case counts in its header"
    counts = {s: len(matrix.get(s, [])) for s in "abcd"}
    assert [counts[s] for s in "abcd"] == [int(x) for x in m.groups()[:4]]
    assert sum(counts.values()) == int(m.group(5))


def _values(cases, key):
    return {p[key] for p, _, _ in cases}


@pytest.mark.parametrize("stage", ["a", "b", "c", "d"])
def test_every_stage_sweeps_d_dtype_lengths_m_ne_n_and_its_fixtures(matrix, stage):
    from workbench.kernels.registry import load_kernels, resolve_stage
    from workbench.workspace import find_workspace

    ws = find_workspace(ROOT)
    spec = resolve_stage(ws, stage, load_kernels(ws))
    cases = matrix[stage]
    assert _values(cases, "d") == {64, 128} and _values(cases, "dtype") == {"bf16", "fp16"}
    lengths = {"a": {128, 256, 512, 1024, 4096}, "b": {128, 256, 512, 1024, 4096},
               "c": {128, 256, 384, 512, 1024, 4096, 16384, 32768}, "d": {1, 17, 128, 1000, 1024, 4096, 8192}}
    assert _values(cases, "n") >= lengths[stage]
    assert any(p["m"] != p["n"] for p, _, _ in cases) and any(p["m"] == p["n"] for p, _, _ in cases)
    run = {f for _, _, fx in cases for f in fx}
    assert run == set(spec.fixtures)


def test_softmax_identity_runs_the_addressing_fixtures_of_stage_b(matrix):
    ident = [fx for _, v, fx in matrix["b"] if v.get("softmax") == "identity"]
    assert ident and {"single", "iota"} <= {f for fx in ident for f in fx}


def test_stage_d_covers_causal_tails_gqa_and_m_ne_n(matrix):
    cases = matrix["d"]
    assert _values(cases, "causal") == {False, True}
    assert any(p["n"] % 128 for p, _, _ in cases) and any(p["m"] % 128 and p["m"] != p["n"] for p, _, _ in cases)
    groups = {p["heads"] // p["kv_heads"] for p, _, _ in cases}
    assert groups >= {1, 2, 3, 4} and 1 in _values(cases, "kv_heads")
    uneven = {(p["m"] > p["n"], p["causal"]) for p, _, _ in cases if p["m"] != p["n"]}
    assert uneven == {(True, False), (True, True), (False, False), (False, True)}
