"""workbench/ knows no kernel: no attention or MoE words in its code (docstrings and comments
may cite an example), and a second kernel's bench cases, peers and table columns come from
its own folder without any change to workbench/."""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDS = {
    # attention
    "causal", "heads", "seqlen", "seqlens", "attention", "softmax", "fmha",
    # MoE
    "moe", "expert", "experts", "swiglu", "topk", "gate", "gates",
}
LETTERS = {"q", "k", "v"}  # as a whole identifier or string: an attention input's name


def _docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                starts.add((first.lineno, first.col_offset))
    return starts


def _words(text: str) -> list[str]:
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)  # camelCase
    return [w for w in re.split(r"[^A-Za-z0-9]+|_", text.lower()) if w]


def code_words(source: str) -> list[tuple[int, str]]:
    """(line, offending token) for every attention or MoE word outside docstrings and comments."""
    docs = _docstring_starts(ast.parse(source))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.start in docs):
            continue
        if tok.type == tokenize.NAME:
            if tok.string in ("q", "Q") or WORDS & set(_words(tok.string)):
                found.append((tok.start[0], tok.string))
        elif tok.type == tokenize.STRING:
            try:
                value = ast.literal_eval(tok.string)
            except (ValueError, SyntaxError):  # an f-string: its text as written
                value = tok.string
            if (isinstance(value, str) and value.lower() in LETTERS) or WORDS & set(_words(str(value))):
                found.append((tok.start[0], tok.string))
    return found


def test_the_scan_sees_code_and_skips_docstrings_and_comments():
    """The scanner itself: a word in code is found, the same word in a docstring or comment is not."""
    source = textwrap.dedent('''
        """Module doc: causal attention, e.g. fmha's."""
        def f(x):
            """Doc: heads."""
            y = x["v"]  # comment: softmax
            return f"{y} causal"
        NUM_HEADS = 2
    ''')
    assert [word for _, word in code_words(source)] == ['"v"', 'f"{y} causal"', "NUM_HEADS"]


@pytest.mark.parametrize("path", sorted((ROOT / "workbench").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_workbench_code_has_no_kernel_words(path):
    found = code_words(path.read_text())
    assert not found, f"{path.relative_to(ROOT)}: " + ", ".join(f"line {line}: {word}" for line, word in found)


# ---------------------------------------------------------------- a second kernel plugs in

SECOND = {
    "kernel.yaml": """
kernel: scale2
parameters:
  rows: {default: 256, min: 64, max: 8192, multiple_of: 64}
  width: {default: 64, choices: [64, 128]}
  groups: {default: 1, min: 1, max: 64}
  dtype: {default: bf16, choices: [bf16, fp16]}
stages:
  - {letter: a, name: copy, module: stage_a.py}
  - letter: b
    name: scale
    module: stage_b.py
    parameters: {factor: {default: 1, min: 1, max: 8}}
bench:
  stage: b
  peers: [torch-mul]
  cases: [{rows: 1024}]
  sweep: {width: [64, 128], rows: [512, 2048]}
  columns: [width, rows, dtype]
""",
    "bench_hooks.py": """
def case_params(given):
    out = dict(given)
    out.setdefault("groups", max(1, 4096 // int(out.get("rows", 256))))
    return out
""",
    "peers.py": """
PEERS = {"torch-mul": "x * factor in torch", "torch-compile": "the same, torch.compile'd"}
""",
}


@pytest.fixture
def two_kernels(toy_ws):
    """tests/data/toy_ws plus a second kernel, scale2, with its own bench: section, hook and peers."""
    folder = toy_ws / "stages" / "scale2"
    folder.mkdir()
    for name, text in SECOND.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    stage = "from workbench import Stage, TensorSpec\n\nclass S(Stage):\n    needs_gpu = False\n    def inputs(self, p):\n        return {'x': TensorSpec((p.rows, p.width), p.dtype)}\n"
    (folder / "stage_a.py").write_text(stage)
    (folder / "stage_b.py").write_text(stage)
    from workbench.workspace import Workspace

    return Workspace(toy_ws)


def test_a_second_kernel_gets_its_cases_columns_peers_and_perf_doc_from_its_folder(two_kernels):
    from workbench.cli.bench import bench_target
    from workbench.run import bench, bench_report

    spec, kernel = bench_target(two_kernels, "scale2")
    assert spec.id == "scale2/stage-b" and kernel.bench.peers == ["torch-mul"]
    assert kernel.bench.perf_doc == "docs/perf-scale2.md"  # the default: docs/perf-<kernel>.md
    assert bench_report.perf_doc_path(kernel, spec) == "docs/perf-scale2.md"
    other, _ = bench_target(two_kernels, "scale2/a")  # a sub-stage's sweep never overwrites the kernel's table
    assert bench_report.perf_doc_path(kernel, other) == "docs/perf-scale2-stage-a.md"
    cases = bench.resolve_cases(spec, kernel, bench.plan_cases(spec, kernel, {"factor": ["2", "4"], "dtype": ["fp16"]}))
    assert [(c["params"]["rows"], c["params"]["groups"], c["params"]["factor"], c["params"]["dtype"]) for c in cases] == [
        (1024, 4, 2, "fp16"), (1024, 4, 4, "fp16")]
    assert cases[0]["row"] == "rows=1024 width=64 dtype=fp16 factor=2"  # groups: derived by its hook
    sweep = bench.resolve_cases(spec, kernel, bench.plan_cases(spec, kernel, {}, sweep=True))
    assert [(c["params"]["width"], c["params"]["rows"], c["params"]["groups"]) for c in sweep] == [
        (64, 512, 8), (64, 2048, 2), (128, 512, 8), (128, 2048, 2)]
    record = {"id": "r1", "stage": spec.id, "started": "2026-12-01T00:00:00", "provenance": {"gpu": "G"}, "peak": {"tflops": 1.0},
              "bench": [{"params": c["params"], "tflops": 2.0, "peers": {"torch-mul": {"tflops": 1.0}}} for c in sweep]}
    text = bench_report.perf_markdown(record, kernel)
    assert "| width | rows | dtype | torch-mul | wb scale2/stage-b | wb / best peer |" in text
    assert "| 128 | 2048 | bf16 | 1 | 2 | ×2.00 |" in text
    bench.check_peers(kernel, ["torch-mul", "torch-compile"])
    with pytest.raises(Exception, match="unknown peer 'fa4' of kernel scale2: choose from torch-mul: x \\* factor in torch"):
        bench.check_peers(kernel, ["fa4"])


def test_wb_bench_on_the_second_kernel_checks_its_cases_before_anything_runs(two_kernels, capsys):
    from workbench.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "scale2", "-p", "rows=100"])
    assert exit_.value.code == 2
    assert "bench case rows=100 groups=40: scale2/stage-b: rows=100 must be a multiple of 64" in capsys.readouterr().err


def test_a_kernels_matrices_hook_shapes_its_error_map_and_the_generic_view_takes_the_last_two_axes(tmp_path):
    import torch

    from workbench.diagnose import catalog
    from workbench.diagnose.errormap import error_map

    folder = tmp_path / "grid2"
    folder.mkdir()
    (folder / "mutants.py").write_text(textwrap.dedent("""
        from workbench.diagnose.registry import Matrices, matrices_hook

        @matrices_hook
        def by_slot(name, t, params):
            if t.dim() != 3:
                return None
            a, r, c = t.shape  # (rows, slots, width): one matrix per slot
            return Matrices(t.permute(1, 0, 2), lambda x: x.permute(1, 0, 2), labels=[f"slot{i}" for i in range(r)], col_label="slot")
    """))
    views = catalog.views_for(folder)
    ref = torch.zeros(128, 3, 8, dtype=torch.float64)
    bad = ref.clone()
    bad[:, 1] = 1.0
    cls = torch.zeros(ref.shape, dtype=torch.int8)
    emap, _ = error_map("y", bad, cls, ref, cls, 2.0**-8, {}, views)
    assert emap.col_names == ["slot0", "slot1", "slot2"] and len(emap.grid) == 2 and "slot1" in emap.summary
    plain, _ = error_map("y", bad, cls, ref, cls, 2.0**-8, {}, None)  # generic: 128 matrices of (3, 8)
    assert len(plain.grid) == 1 and len(plain.grid[0]) == 128


def test_memory_blocks_of_a_kernel_without_n(two_kernels):
    """Status counts the runs of a stage that has no parameter n (one column); the speed table's
    columns are the kernel's bench.column."""
    from workbench.records import memory
    from workbench.records.speed import speed_edit
    from workbench.run import bench

    (two_kernels.stages_dir / "scale2" / "kernel.yaml").write_text(
        (two_kernels.stages_dir / "scale2" / "kernel.yaml").read_text().replace("  stage: b\n", "  stage: b\n  column: rows\n"))
    from workbench.cli.bench import bench_target

    spec, kernel = bench_target(two_kernels, "scale2")
    runs = [{"id": f"20261204-100000-00000{i}", "stage": "scale2/stage-a", "verdict": v, "params": {"rows": 256, "width": w, "dtype": "bf16"},
             "variants": {}, "started": "2026-12-04T10:00:00+00:00", "provenance": {"gpu": "G"}} for i, (w, v) in enumerate([(64, "PASS"), (128, "FAIL")])]
    cases = bench.resolve_cases(spec, kernel, bench.plan_cases(spec, kernel, {"rows": ["512", "2048"]}))
    speed = {"id": "20261204-100001-000000", "stage": "scale2/stage-b", "started": "2026-12-04T10:00:01+00:00", "provenance": {"gpu": "G"},
             "bench": [{"case": c["name"], "row": c["row"], "column": c["column"], "params": c["params"], "tflops": t, "verdict": "PASS"}
                       for c, t in zip(cases, (10.0, 20.0))]}
    memory.update_blocks(two_kernels, {**memory.run_edits(runs), "speed": speed_edit([speed], two_kernels)})
    text = two_kernels.memory_path.read_text()
    status = next(line for line in memory.block_content(text, "status").splitlines() if line.startswith("| scale2/stage-a |"))
    assert "| 1/2 | FAIL rows=256 width=128 dtype=bf16 |" in status
    block = memory.block_content(text, "speed")
    assert "| case | rows=512 | rows=2048 | date |" in block and "| width=64 dtype=bf16 factor=1 | 10 | 20 | 2026-12-04 |" in block


@pytest.mark.parametrize("bench, message", [
    ("  stage: z\n", "bench.stage: expected a letter of one of the stages (a, b), got 'z'"),
    ("  colums: [rows]\n", "did you mean columns?"),
    ("  sweep: {rows: []}\n", "bench.sweep: expected a list of cases, or a mapping of axes"),
    ("  perf_doc: ../perf.md\n", "bench.perf_doc: expected a .md path relative to the workspace root"),
])
def test_a_broken_bench_section_is_one_line_naming_the_key(two_kernels, bench, message):
    from workbench.kernels.registry import load_kernel
    from workbench.schemas import SchemaError

    path = two_kernels.stages_dir / "scale2" / "kernel.yaml"
    text = path.read_text()
    path.write_text(text[: text.index("bench:")] + "bench:\n" + bench)
    with pytest.raises(SchemaError, match=re.escape(message)):
        load_kernel(path)


@pytest.mark.parametrize("argv,named", [
    (["run", "moe/c", "--n", "0"], "moe/stage-c: t=0"),          # moe's C and D: --n is t (tokens)
    (["compile", "moe/a", "--n", "99999"], "moe/stage-a: m=99999"),  # moe's A and B: --n is m
    (["sweep", "moe/d", "--n", "1,0"], "t=0"),
    (["run", "fmha/c", "--n", "100"], "n=100"),                    # a kernel without `size:`: n
])
def test_the_n_shorthand_sets_each_stages_size_parameter(argv, named):
    """`--n` is the same flag for every kernel; kernel.yaml's `size:` (kernel or stage) says which
    parameter it sets, so `wb run moe/c --n 4096` works without workbench knowing moe."""
    from conftest import run_wb

    res = run_wb(*argv)
    assert res.returncode == 2 and named in res.stderr, res.stderr


def test_shapes_n_sets_each_stages_own_size_parameter():
    """`wb shapes moe --n N` sets m in stages A/B and t in C/D (each stage's `size:`), fmha's n."""
    from workbench.compile import shapes
    from workbench.workspace import Workspace

    ws = Workspace(Path(__file__).resolve().parents[1])
    _, targets = shapes.plan(ws, "moe", None, {}, {}, None, size="4096")
    assert {t.spec.letter: (t.spec.size_param, t.params[t.spec.size_param]) for t in targets} == {
        "a": ("m", 4096), "b": ("m", 4096), "c": ("t", 4096), "d": ("t", 4096)}
    _, targets = shapes.plan(ws, "fmha", "c", {}, {}, None, size="256")
    assert targets[0].params["n"] == 256
