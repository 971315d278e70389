"""`wb new kernel NAME` writes a real starting point: a TMA + WGMMA tile GEMM stage for
sm_90a that compiles at once (one real ptxas compile here, no GPU), shows its probes and is
listed; its names come from NAME; its fixtures are what their texts say; and on a GPU the
stage passes on every fixture, with masked tails and exact results where the data are exact.
The refusals of bad names and existing folders are in test_input_errors.py and
test_cli_errors.py."""

import importlib.util
import os
import json
import re

import pytest

from workbench.kernels import fixtures as fixture_registry
from workbench.kernels.registry import load_kernel
from workbench.kernels.stage import TensorSpec

PROBES = ("sA", "sB", "gA", "gB", "gC", "cC", "tAsA", "tAgA", "tBsB", "tBgB", "tCrA", "tCrB", "tCgC", "tCcC", "tCrC")


def test_the_scaffold_compiles_for_sm90a_shows_its_probes_and_is_listed(toy_ws, wb):
    made = wb("new", "kernel", "gemmtest")
    assert made.returncode == 0, made.stderr
    compiled = wb("compile", "gemmtest/stage-a")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    sass = next(line for line in compiled.stdout.splitlines() if line.startswith("SASS:"))
    # the TMA loads and the WGMMAs are in the machine code, not only in the source
    assert "UTMALDG" in sass and "HGMMA" in sass, sass
    assert not [line for line in compiled.stdout.splitlines() if line.startswith("warning")], compiled.stdout

    shapes = wb("shapes", "gemmtest")  # from the compile cache: the suite pays for one compile
    assert shapes.returncode == 0, shapes.stdout + shapes.stderr
    shown = {line.split()[1] for line in shapes.stdout.splitlines() if line.startswith("│")}
    assert set(PROBES) <= shown, shown

    listed = wb("list")
    assert listed.returncode == 0 and "gemmtest" in listed.stdout and "stage-a" in listed.stdout


def test_names_come_from_NAME_and_the_files_agree(toy_ws, wb):
    assert wb("new", "kernel", "my_gemm2").returncode == 0
    kernel_dir = toy_ws / "stages" / "my_gemm2"
    written = [
        kernel_dir / "kernel.yaml", kernel_dir / "stage_a_gemm.py", kernel_dir / "reference.py", kernel_dir / "export_op.py",
        toy_ws / "fixtures" / "my_gemm2.py",
    ]
    for path in written:
        text = path.read_text()
        assert "$" not in text, f"{path.name} keeps a template placeholder"
        if path.suffix == ".py":
            compile(text, str(path), "exec")
    stage_source = written[1].read_text()
    assert re.search(r"^class MyGemm2Gemm:", stage_source, re.M)
    assert re.search(r"^class MyGemm2StageA\(Stage\):", stage_source, re.M)
    # self-contained: only the public stage-author API of wb, nothing of another kernel
    imports = set(re.findall(r"^(?:from|import) ([\w.]+)", stage_source, re.M))
    assert {m for m in imports if m.startswith(("workbench", "stages"))} == {
        "workbench.compile.probe", "workbench.kernels.cute_host", "workbench.kernels.stage",
    }
    # the export op module is copied into an exported package: torch only
    op_imports = set(re.findall(r"^(?:from|import) ([\w.]+)", written[3].read_text(), re.M))
    assert op_imports == {"__future__", "torch"}, op_imports

    kernel = load_kernel(kernel_dir / "kernel.yaml")
    stage = kernel.stage("a")
    assert kernel.name == "my_gemm2" and stage.module_path.name == "stage_a_gemm.py"
    assert stage.fixtures == ["my_gemm2-random", "my_gemm2-eye", "my_gemm2-onehot", "my_gemm2-iota"]
    listed = wb("fixtures")
    assert listed.returncode == 0
    assert all(name in listed.stdout for name in stage.fixtures), listed.stdout


def test_a_fixture_file_of_that_name_is_refused_and_nothing_is_written(toy_ws, wb):
    (toy_ws / "fixtures" / "mine.py").write_text("# mine\n")
    proc = wb("new", "kernel", "mine")
    assert proc.returncode == 2 and "already exists" in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert not (toy_ws / "stages" / "mine").exists()
    assert (toy_ws / "fixtures" / "mine.py").read_text() == "# mine\n"


def test_an_interrupted_new_kernel_leaves_no_half_kernel(toy_ws, wb, monkeypatch):
    """A Ctrl-C after kernel.yaml was written left stages/halfk/ with kernel.yaml alone: the
    name was taken and `wb list` showed a kernel whose stage module did not exist. The files
    are written aside and renamed in with the signals held; a write that fails leaves nothing;
    a staging folder a SIGKILL left behind is not a kernel."""
    import signal

    from workbench.kernels import scaffold

    real = scaffold.Template.substitute
    calls = []

    def substitute_then_ctrl_c(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # held until the kernel is whole
        return real(self, *args, **kwargs)

    monkeypatch.setattr(scaffold.Template, "substitute", substitute_then_ctrl_c)
    assert wb("new", "kernel", "halfk").returncode == 130
    assert sorted(p.name for p in (toy_ws / "stages" / "halfk").iterdir()) == ["export_op.py", "kernel.yaml", "reference.py", "stage_a_gemm.py"]
    assert (toy_ws / "fixtures" / "halfk.py").is_file()
    monkeypatch.setattr(scaffold.Template, "substitute", lambda self, *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    failed = wb("new", "kernel", "fullk")
    assert failed.returncode == 2 and "No space left on device" in failed.stderr
    assert not (toy_ws / "stages" / "fullk").exists() and not (toy_ws / "fixtures" / "fullk.py").exists()
    assert not [p for p in (toy_ws / "stages").iterdir() if p.name.startswith(".")]
    left = toy_ws / "stages" / ".new-cut.tmp"
    left.mkdir()
    (left / "kernel.yaml").write_text("kernel: cut\nstages: []\n")
    assert wb("list").returncode == 0


@pytest.fixture
def gemm_fixtures(toy_ws, wb, monkeypatch):
    """The scaffold's fixture module, imported on its own (the global registry is restored)."""
    assert wb("new", "kernel", "fx").returncode == 0
    monkeypatch.setattr(fixture_registry, "_by_module", dict(fixture_registry._by_module))
    spec = importlib.util.spec_from_file_location("scaffold_fixtures_fx", toy_ws / "fixtures" / "fx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gemm_fixtures_are_what_their_texts_say(gemm_fixtures):
    import torch

    m, n, k = 200, 136, 200  # tails in m, n and k (k > n: eye leaves A's last columns out)
    specs = {"a": TensorSpec((m, k), "bf16"), "b": TensorSpec((n, k), "bf16")}

    def gemm(made):
        assert {name: (tuple(t.shape), t.dtype) for name, t in made.items()} == {
            "a": ((m, k), torch.bfloat16), "b": ((n, k), torch.bfloat16)
        }
        return made["a"].double() @ made["b"].double().T

    made = gemm_fixtures.eye(specs, None, 0, "cpu")
    assert torch.equal(gemm(made), made["a"].double()[:, :n])

    made = gemm_fixtures.onehot(specs, None, 0, "cpu")
    cols = made["a"].float().argmax(dim=1)
    assert torch.equal(made["a"].float().sum(dim=1), torch.ones(m))
    assert torch.equal(gemm(made), made["b"].double()[:, cols].T)
    assert set((cols // 64).tolist()) == set(range(-(-k // 64)))  # every k tile, the tail's too

    made = gemm_fixtures.iota(specs, None, 0, "cpu")
    c = gemm(made)
    assert torch.equal(c, c.round()) and c.abs().max() <= 18
    assert torch.equal(made["a"].float() @ made["b"].float().T, c.float())  # exact in fp32
    assert torch.equal(c.bfloat16().double(), c)  # and in a 16-bit C

    first, again, other = (gemm_fixtures.random(specs, None, s, "cpu")["a"] for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "params",
    [
        [],  # the defaults: k tiles > ring slots, so the ring wraps
        ["m=200", "n=136", "k=72", "out_dtype=bf16"],  # tails in m, n, k; fewer k tiles than slots
        ["m=129", "n=1", "k=1000", "dtype=fp16", "out_dtype=fp16"],
        ["m=1", "n=300", "k=8", "dtype=fp16", "out_dtype=bf16"],  # C rounds more coarsely than the inputs
    ],
)
def test_the_scaffolded_gemm_passes_on_a_gpu(toy_ws, wb, params):
    assert wb("new", "kernel", "gemmtest").returncode == 0
    args = [arg for p in params for arg in ("-p", p)]
    proc = wb("run", "gemmtest/a", *args, "--json")
    assert proc.stdout.strip(), proc.stderr
    record = json.loads((toy_ws / "runs" / json.loads(proc.stdout)["id"] / "run.json").read_text())
    assert record["verdict"] == "PASS", json.dumps(record["results"], indent=1)[:4000]
    assert {r["fixture"] for r in record["results"]} == {f"gemmtest-{f}" for f in ("random", "eye", "onehot", "iota")}
    if record["params"]["out_dtype"] in ("fp32", record["params"]["dtype"]):
        # one exact product per element, or small integer sums: bit for bit
        exact = [r for r in record["results"] if not r["fixture"].endswith("random")]
        assert all(r["outputs"]["c"]["max_abs_err"] == 0 for r in exact), [r["outputs"]["c"] for r in exact]


@pytest.mark.parametrize("name", ["on", "no", "null"])
def test_a_name_yaml_reads_as_a_boolean_or_null_is_still_the_kernels_name(toy_ws, wb, name):
    """`kernel: on` is True in YAML 1.1 (no: False, null: None): the scaffold of such a name
    wrote a kernel.yaml that wb then refused ('expected a name ..., got True'), and wb list
    exited 2 for the whole workspace."""
    assert wb("new", "kernel", name).returncode == 0
    assert load_kernel(toy_ws / "stages" / name / "kernel.yaml").name == name
    listed = wb("list")
    assert listed.returncode == 0 and f"{name} — {name}: C = A·Bᵀ" in listed.stdout, listed.stderr


def test_a_link_planted_at_the_staged_fixture_writes_nothing_through_it(toy_ws, wb, tmp_path):
    """fixtures/.new-NAME.py.tmp as a symlink to a file outside the workspace: `wb new kernel`
    wrote the fixture template through it (the victim's content replaced, and
    fixtures/NAME.py a link to it), exit 0."""
    victim = tmp_path / "victim.txt"
    victim.write_text("ORIGINAL\n")
    (toy_ws / "fixtures" / ".new-evil.py.tmp").symlink_to(victim)
    done = wb("new", "kernel", "evil")
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "ORIGINAL\n"
    made = toy_ws / "fixtures" / "evil.py"
    assert made.is_file() and not made.is_symlink() and "@fixture" in made.read_text()
