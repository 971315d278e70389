"""What comes in from the command line, kernel.yaml and shapes.lock.yaml is checked at the
door: a mistake or a broken file is one line on stderr with exit code 2, never a traceback,
and nothing the user wrote is overwritten. In-process calls of `wb` (no subprocess)."""

import json
import math

import pytest

from workbench import arches
from workbench.kernels import registry
from workbench.compile import shapes
from workbench.cli import main
from workbench.errors import UserError
from workbench.schemas import MiB


def one_line_error(capsys, *args: str) -> str:
    """Run `wb ARGS` in this process; it must exit 2 with exactly one line on stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert exc.value.code == 2, (exc.value.code, captured.out[-2000:], err)
    assert err.startswith("wb: error:") and "\n" not in err, err
    return err


# ---------------------------------------------------------------- --arch
@pytest.mark.parametrize(
    "args",
    [
        ["shapes", "toy", "a", "--arch", "sm_999", "--in-process"],
        ["compile", "a", "--arch", "sm_999", "--in-process"],
        ["sweep", "a", "--arch", "sm_999", "--gpus", "none"],
    ],
)
def test_an_unknown_arch_is_one_line_listing_the_known_ones(toy_ws, capsys, args):
    err = one_line_error(capsys, *args)
    assert "'sm_999'" in err and "sm_90a" in err and "sm_100a" in err


def test_wbs_arch_list_is_the_dsls():
    """arches.ARCHES (checked without importing the DSL) holds what the installed DSL knows."""
    from cutlass.base_dsl.enums import Arch

    assert set(arches.ARCHES) == set(Arch.__members__)


# ---------------------------------------------------------------- parameters from the command line
@pytest.mark.parametrize(
    "n, fragment",
    [("-5", "n=-5 is below the minimum 128"), ("20000", "n=20000 is above the maximum 4096"), ("200", "n=200 must be a multiple of 128")],
)
def test_a_value_out_of_range_says_so_before_the_multiple(toy_ws, capsys, n, fragment):
    assert fragment in one_line_error(capsys, "shapes", "toy", "a", "--n", n, "--in-process")


@pytest.mark.parametrize("command", [["run", "a"], ["sweep", "a", "--gpus", "none"], ["bench", "a"]])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5"])
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused_before_anything_runs(toy_ws, capsys, command, value):
    """--timeout nan once reached the socket (a traceback, the warm worker killed, an empty
    run folder left); inf wrote `Infinity` into the record's JSON."""
    assert "--timeout must be a positive, finite number of seconds" in one_line_error(capsys, *command, "--timeout", value)
    assert not (toy_ws / "runs").exists() or not any((toy_ws / "runs").iterdir())


@pytest.mark.parametrize("raw, fragment", [("nan", "finite"), ("inf", "finite"), ("-1", "below the minimum 0"), ("11", "above the maximum 10")])
def test_float_parameters_are_range_checked_too(raw, fragment):
    spec = registry.ParamSpec("scale", 1.0, min=0, max=10)
    with pytest.raises(UserError, match=fragment):
        spec.coerce(raw, "k/stage-a")
    assert math.isclose(spec.coerce("2.5", "k/stage-a"), 2.5)


@pytest.mark.parametrize("raw", ["１２８", "١٢٨", "1_28", "12 8", "0x80"])
def test_a_number_is_ascii_digits(raw):
    """int() and float() take full-width and other scripts' digits and underscores: `-p
    n=１２８` ran n = 128 under a sweep label and a record that said "１２８"."""
    whole = registry.ParamSpec("n", 128, min=1)
    with pytest.raises(UserError, match="must be an integer"):
        whole.coerce(raw, "k/stage-a")
    real = registry.ParamSpec("scale", 1.0)
    with pytest.raises(UserError, match="must be a number"):
        real.coerce(raw.replace("0x80", "0x1p3"), "k/stage-a")
    assert whole.coerce(" 128 ", "k/stage-a") == 128 and whole.coerce("+128", "k/stage-a") == 128
    assert [real.coerce(x, "k/stage-a") for x in ("30", "-.5", "1e3", "2.5E-1")] == [30.0, -0.5, 1000.0, 0.25]


def test_a_run_selector_counts_back_in_ascii_digits(toy_ws, capsys):
    assert "no run matches 'last~٣'" in one_line_error(capsys, "report", "last~٣")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-p", "n=0"], "bench case n=0: toy/stage-a: n=0 is below the minimum 128"),
        (["-p", "n=128,"], "must be a comma-separated list of values"),
        (["-p", "n"], "--param 'n' must look like key=value"),
        (["-p", "nope=1"], "has no parameter 'nope'"),
        (["--peers", "fa4"], "unknown peer 'fa4' of kernel toy: choose from torch-mul"),
        (["--sweep"], "kernel toy has no bench.sweep in its kernel.yaml"),
        (["--timeout", "-1"], "--timeout must be a positive, finite number"),
        (["--timeout", "nan"], "--timeout must be a positive, finite number"),
        (["--processes", "0"], "--processes must be between 1 and 50"),
        (["--processes", "51"], "--processes must be between 1 and 50"),
    ],
)
def test_bench_arguments_are_checked_before_anything_runs(toy_ws, capsys, args, fragment):
    assert fragment in one_line_error(capsys, "bench", "a", *args)


def test_peers_of_a_kernel_without_peers_py_are_refused(tmp_path):
    from types import SimpleNamespace

    from workbench.run import bench

    kernel = SimpleNamespace(name="plain", dir=tmp_path)  # no peers.py
    bench.check_peers(kernel, [])
    with pytest.raises(UserError, match="kernel plain lists no peers"):
        bench.check_peers(kernel, ["fa4"])


# ---------------------------------------------------------------- wb new kernel
@pytest.mark.parametrize("name", ["a" * 300, "a" * 33, "_", "9lives"])
def test_new_kernel_refuses_names_outside_the_rule_and_states_it(toy_ws, capsys, name):
    err = one_line_error(capsys, "new", "kernel", name)
    assert "at most 32 characters" in err and len(err) < 400
    assert sorted(p.name for p in (toy_ws / "stages").iterdir()) == ["toy"]


def test_new_kernel_when_stages_is_a_file(toy_ws, capsys):
    stages = toy_ws / "stages"
    import shutil

    shutil.rmtree(stages)
    stages.write_text("mine\n")
    assert "stages" in one_line_error(capsys, "new", "kernel", "scaled")
    assert stages.read_text() == "mine\n"


# ---------------------------------------------------------------- .wb, wb's state folder
@pytest.mark.parametrize(
    "args",
    [["shapes", "toy", "a"], ["compile", "a"], ["sweep", "a", "--gpus", "none"], ["run", "a"], ["note", "x"], ["import", "stages"]],
)
def test_a_state_dir_that_is_a_file_is_one_line_naming_it(toy_ws, capsys, args):
    (toy_ws / ".wb").write_text("a note of mine\n")
    err = one_line_error(capsys, *args)
    assert ".wb" in err and "not a folder" in err
    assert (toy_ws / ".wb").read_text() == "a note of mine\n"


def test_ensure_state_dir_makes_the_folder_and_its_parts(toy_ws):
    from workbench.workspace import find_workspace

    ws = find_workspace()
    assert ws.ensure_state_dir("logs") == ws.state_dir / "logs" and (ws.state_dir / "logs").is_dir()


# ---------------------------------------------------------------- kernel.yaml
ORIGINAL_BUG = "variants: {bug: [none, zero, nan, partial, sleep, crash, cuda_error, compile_error]}"


def _write(path, text_or_bytes):
    if isinstance(text_or_bytes, bytes):
        path.write_bytes(text_or_bytes)
    else:
        path.write_text(text_or_bytes)


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda t: b"\x00\xff\xfe" * 10, ["is not UTF-8 text"]),
        (lambda t: t.replace("Toy torch", "T\xf6y torch").encode("latin-1"), ["is not UTF-8 text", "line 3"]),
        (lambda t: t + "#" + "x" * (10 * MiB) + "\n", ["over wb's limit of 1 MiB"]),
        (lambda t: "a: " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"]),
        (lambda t: t.replace("atol: 1.0e-4", "atol: 1e-4"), ["tolerance.atol: expected a number >= 0", "write 1.0e-4"]),
        (lambda t: t.replace("atol: 1.0e-4", "atol: 1.0e-4, rtol: -1.0e-6"), ["tolerance.rtol: expected a number >= 0"]),
        (lambda t: t.replace("title: Toy", "default: 'yes'\ntitle: Toy"), ["default: expected true or false, got 'yes'"]),
        (lambda t: t.replace("title: Toy torch kernel (tests)", "title: [1, 2]"), ["title: expected a string"]),
        (lambda t: t.replace("variants: {bug: [none,", "variants: {bug: [{a: 1},"), ["stages[0].variants.bug[0]: expected a value of"]),
        (lambda t: t.replace("module: stage_b.py", "module: ../../x.py"), ["stages[1].module: expected a .py file name beside kernel.yaml", "'../../x.py'"]),
        (lambda t: t.replace("module: stage_b.py", "module: /etc/x.py"), ["stages[1].module: expected a .py file name beside kernel.yaml"]),
        (lambda t: t.replace("name: square", "name: [1]"), ["stages[1].name: expected a stage name"]),
        (lambda t: t.replace("choices: [bf16, fp16]", "choices: []"), ["parameters.dtype.choices: expected a non-empty list"]),
        (lambda t: t.replace("multiple_of: 128", "multiple_of: 0"), ["parameters.n.multiple_of: expected an integer >= 1"]),
        (lambda t: t.replace("min: 128,", "min: 5000,"), ["parameters.n: expected min <= max"]),
        (lambda t: t.replace("title: Toy", "arch: sm_999\ntitle: Toy"), ["arch: expected an arch wb knows", "sm_90a"]),
        (lambda t: t.replace("timeout: 20", "timeout: true"), ["timeout: expected a positive number of seconds"]),
        (lambda t: t.replace("timeout: 20", "timeout: .inf"), ["timeout: expected a positive number of seconds"]),
        (lambda t: t.replace("help: rows", "help: {a: 1}"), ["parameters.n.help: expected a string"]),
        (lambda t: t.replace("  dtype: {default", "  'dt ype': {default"), ["parameters.dt ype (the name): expected a name"]),
        (lambda t: t.replace("{default: bf16,", "{default: [bf16],"), ["parameters.dtype.default: expected a number, a string or true/false"]),
        (lambda t: t.replace("    timeout: 5", "    timeout: 5\n    tolerance: {atol: abc}"), ["stages[1].tolerance.atol: expected a number"]),
        (lambda t: t.replace("timeout: 20", "timeuot: 20"), ["timeuot: expected one of the known keys", "did you mean timeout?"]),
        (lambda t: t.replace("    timeout: 5", "    timout: 5"), ["stages[1].timout: expected one of the known keys", "did you mean timeout?"]),
        (lambda t: t.replace("    timeout: 5", "    timeout: 5\n    parameters: {n: {default: '=nn'}}"), ["stages[1].parameters.n.default: expected '=NAME' naming a parameter"]),
        (lambda t: t.replace("letter: b", "letter: a"), ["stages[1].letter: expected a letter not used before"]),
        # a default its own rules refuse reached the kernel (a CRASH record) before
        (lambda t: t.replace("{default: 128,", "{default: abc,"), ["parameters.n.default (stage a): expected a value its own rules allow", "n='abc' must be an integer"]),
        (lambda t: t.replace("{default: 128,", "{default: 200,"), ["parameters.n.default (stage a)", "n=200 must be a multiple of 128"]),
        (lambda t: t.replace("{default: bf16,", "{default: fp8,"), ["parameters.dtype.default (stage a)", "dtype=fp8 is not allowed"]),
    ],
)
def test_malformed_kernel_yaml_is_one_line_naming_file_and_key(toy_ws, capsys, edit, fragments):
    path = toy_ws / "stages/toy/kernel.yaml"
    _write(path, edit(path.read_text()))
    err = one_line_error(capsys, "list")
    for fragment in [str(path), *fragments]:
        assert fragment in err, err


def test_a_variant_list_over_the_limit_is_refused_for_its_length_not_searched_for_repeats(toy_ws, capsys):
    """A variant's list of values was searched for a repeat pair by pair before its length was
    checked: 60000 values (a 400 KB kernel.yaml) took 50 s to be refused. Over the limit of 64
    it is now refused for its length at once (a repeat in it is not what the message names)."""
    path = toy_ws / "stages/toy/kernel.yaml"
    values = ", ".join(f"v{i}" for i in range(2000)) + ", v0"
    path.write_text(path.read_text().replace("variants: {bug: [none,", f"variants: {{bug: [{values}, none,"))
    err = one_line_error(capsys, "list")
    assert "stages[0].variants.bug: expected at most 64 entries" in err, err


@pytest.mark.parametrize("command", [["list"], ["shapes", "toy", "--in-process"], ["run", "a"]])
@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.write_text(""), "expected a mapping with 'kernel' and 'stages'"),
        (lambda p: (p.unlink(), p.mkdir()), "is a folder, not a file"),
        (lambda p: p.write_text(p.read_text().replace("stages:\n", "stages: null\nold_stages:\n")), "stages: expected a non-empty list of stages"),
    ],
)
def test_an_empty_missing_or_stageless_kernel_yaml_is_one_line(toy_ws, capsys, command, make, fragment):
    make(toy_ws / "stages/toy/kernel.yaml")
    assert fragment in one_line_error(capsys, *command)


def test_the_checked_kernel_yaml_builds_the_same_stages(toy_ws):
    """The declared schema keeps what the hand-written checks built: merged stage parameters,
    variants as strings, per-stage timeout and tolerance."""
    from workbench.workspace import find_workspace

    kernel = registry.get_kernel(find_workspace(), "toy")
    a, b = kernel.stages
    assert (a.id, a.name, a.module_path.name, b.timeout, a.timeout) == ("toy/stage-a", "double", "stage_a.py", 5.0, 20.0)
    assert a.variants["bug"][0] == "none" and a.fixtures == ["toy-random", "toy-ones"]
    assert a.params["n"] == registry.ParamSpec("n", 128, None, 128, 4096, 128, "rows")
    assert a.tolerance == {"factor": 2.0, "atol": 1e-4}


def test_a_kernels_rtol_reaches_its_stages_tolerance(toy_ws):
    """`rtol` (the rule's relative term, compare.py) is read like factor and atol."""
    from workbench.workspace import find_workspace

    path = toy_ws / "stages" / "toy" / "kernel.yaml"
    path.write_text(path.read_text().replace("atol: 1.0e-4", "atol: 1.0e-4, rtol: 9.5e-7"))
    a = registry.get_kernel(find_workspace(), "toy").stages[0]
    assert a.tolerance == {"factor": 2.0, "atol": 1e-4, "rtol": 9.5e-7}


def test_stage_parameter_overrides_merge_with_the_kernels(fmha_ws):
    from workbench.workspace import find_workspace

    fmha = registry.get_kernel(find_workspace(fmha_ws), "fmha")
    c, d = fmha.stage("c"), fmha.stage("d")
    assert (c.params["n"].max, c.params["n"].multiple_of, c.params["n"].help) == (32768, 128, "KV length (keys)")
    assert (d.params["n"].min, d.params["n"].multiple_of) == (1, None)
    assert d.resolve_params({})["m"] == d.resolve_params({})["n"] == 1024
    assert d.variants["consumers"] == ("auto", "2", "3")


# ---------------------------------------------------------------- shapes.lock.yaml
BROKEN_LOCKS = [
    (b"\xff\xfe\x00\x01", "is not UTF-8 text"),
    (b"- just\n- a list\n", "expected a mapping with 'stages'"),
    (b"stages: {a: [1, 2]}\n", "stages.a: "),
    (b"stages: {a: {'sm_90a': {records: {'x@f.py': {rank: two}}}}}\n", "stages.a.sm_90a.records.x@f.py.rank: "),
    (b"stages: {a: {'sm_90a': {records: [1]}}}\n", "stages.a.sm_90a.records: "),
    (b"kernel: other\nstages: {}\n", "kernel: expected 'toy'"),
    (b"version: 7\nstages: {}\n", "version: "),
    (b"stages: {a: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize("content, fragment", BROKEN_LOCKS)
@pytest.mark.parametrize("flag", ["--check", "--accept"])
def test_a_broken_shapes_lock_is_one_line_and_is_not_overwritten(toy_ws, capsys, content, fragment, flag):
    lock = toy_ws / "stages/toy/shapes.lock.yaml"
    lock.write_bytes(content)
    err = one_line_error(capsys, "shapes", "toy", flag, "--in-process")
    assert str(lock) in err and fragment in err
    assert lock.read_bytes() == content


def _compiled(letter="a"):
    return {
        "stage": f"toy/stage-{letter}", "letter": letter, "arch": "sm_90a", "params": {"n": 128}, "variants": {},
        "status": "ok", "shapes": [{"name": "x", "layout": "(4):(1)", "rank": 1, "kind": "probe", "location": "s.py:3"}],
    }


@pytest.mark.parametrize("content, fragment", BROKEN_LOCKS)
def test_accept_refuses_to_replace_a_broken_lock(toy_ws, content, fragment):
    from workbench.workspace import find_workspace

    lock = toy_ws / "stages/toy/shapes.lock.yaml"
    lock.write_bytes(content)
    with pytest.raises(UserError, match="not accepting"):
        shapes.accept(find_workspace(), "toy", [_compiled()])
    assert lock.read_bytes() == content


def test_an_accepted_lock_reads_back_and_compares_same(toy_ws):
    from workbench.workspace import find_workspace

    ws = find_workspace()
    shapes.accept(ws, "toy", [_compiled()])
    lock = shapes.read_lock(ws, "toy")
    assert [d["status"] for d in shapes.compare([_compiled(), _compiled("b")], lock)] == ["same", "unaccepted"]


def test_a_plain_pytorch_stage_is_neither_a_check_failure_nor_a_refused_accept(toy_ws, capsys):
    """A stage with is_cute = False has no shapes (wb shapes says so): --check failed on it
    with '0 change(s) since the accepted snapshot' (exit 1) and --accept refused the whole
    kernel as 'did not compile'. It is left out of both; the other stages are checked and
    accepted as before."""
    from workbench.workspace import find_workspace

    ws = find_workspace()
    plain = {**_compiled("b"), "status": "skipped", "shapes": [], "note": "toy/stage-b is not a CuTe DSL stage (is_cute = False)"}
    shapes.accept(ws, "toy", [_compiled(), plain])
    lock = shapes.read_lock(ws, "toy")
    assert set(lock["stages"]) == {"a"}
    assert [d["status"] for d in shapes.compare([_compiled(), plain], lock)] == ["same", "skipped"]
    with pytest.raises(UserError, match=r"nothing to accept: toy/stage-b is no CuTe DSL stage"):
        shapes.accept(ws, "toy", [plain])
    (toy_ws / "stages/toy/shapes.lock.yaml").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # both toy stages are plain PyTorch: nothing to hold to a snapshot
        main(["shapes", "toy", "--check", "--in-process"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "since the accepted snapshot" not in out and "is not a CuTe DSL stage" in out


# ---------------------------------------------------------------- YAML aliases
def alias_bomb(levels: int) -> str:
    """'a: &a [x * 9]', then each next key a list of nine aliases of the one before: a few
    hundred bytes that expand to 9 ** levels nodes."""
    names = "abcdefghi"[:levels]
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


# 9 ** 6 = 531441 nodes: past the guard, yet small enough that a wb without it answers (with
# another message) instead of running out of memory, as the 9 ** 9 of the audit did
BOMB = alias_bomb(6)


@pytest.mark.parametrize("where, args", [
    ("stages/toy/shapes.lock.yaml", ["shapes", "toy", "a", "--check", "--in-process"]),
    ("wb.yaml", ["hosts"]),
    ("stages/toy/kernel.yaml", ["run", "a"]),
])
def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(toy_ws, capsys, where, args):
    """A few hundred bytes of aliases to aliases ("billion laughs") in any YAML file wb reads
    (a shapes lock, wb.yaml's hosts, kernel.yaml) is refused by the one YAML reader for what
    its aliases would expand to, in one line, exit 2; before, the expanded value reached
    validation and a message's repr() and ran wb out of memory. The file is left as it was."""
    path = toy_ws / where
    if where == "stages/toy/shapes.lock.yaml":
        content = BOMB + "kernel: toy\nstages: {a: {x: {records: {q: {layout: *f}}}}}\n"
    elif where == "wb.yaml":
        content = BOMB + "hosts: {a: {ssh: h, path: p, env: {A: *f}}}\n"
    else:
        content = BOMB + path.read_text().replace("\ntitle: Toy torch kernel (tests)", "\ntitle: *f", 1)
    path.write_text(content)
    err = one_line_error(capsys, *args)
    assert str(path) in err and "aliases expand to over 100,000 nodes" in err and len(err) < 300, err[:300]
    assert path.read_text() == content


def test_aliases_a_file_may_use_still_work_and_an_alias_loop_is_refused(tmp_path):
    """The guard counts what aliases add, so an ordinary anchor (a shared mapping) reads as
    before; an alias inside the node it names (a loop, endless when expanded) is one
    SchemaError; so is an integer longer than Python's int() takes (a ValueError before)."""
    from workbench.schemas import SchemaError, safe_load_yaml

    assert safe_load_yaml("p: &p {n: 1, m: 2}\nq: *p\n", "f") == {"p": {"n": 1, "m": 2}, "q": {"n": 1, "m": 2}}
    with pytest.raises(SchemaError, match="alias bomb"):
        safe_load_yaml(alias_bomb(6), "f")
    assert len(safe_load_yaml(alias_bomb(5), "f")["e"]) == 9  # 9 ** 5 nodes: under the limit
    with pytest.raises(SchemaError, match="refers to a node that holds it"):
        safe_load_yaml("a: &a [1, *a]\n", "f")
    with pytest.raises(SchemaError, match="not valid YAML: .*digits"):
        safe_load_yaml("a: " + "1" * 5000 + "\n", "f")


def test_a_key_given_twice_in_a_yaml_file_is_refused_with_its_line(toy_ws, capsys):
    """YAML keeps the last of two equal keys without a word: a second `timeout:` in kernel.yaml
    silently set every stage's timeout, a second parameter replaced the first's choices. Every
    YAML file wb reads now refuses it in one line, exit 2, naming the line; an anchor merged
    with `<<` and then overridden is not a repeat."""
    from workbench.schemas import SchemaError, safe_load_yaml

    path = toy_ws / "stages/toy/kernel.yaml"
    text = path.read_text()
    lines = text.splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("title:"))
    path.write_text("\n".join(lines[:title + 1] + ["title: again"] + lines[title + 1:]) + "\n")
    err = one_line_error(capsys, "run", "a")
    assert str(path) in err and f"line {title + 2}: the key 'title' is given twice" in err, err
    assert safe_load_yaml("b: &b {k: 1}\nc:\n  <<: *b\n  k: 2\n", "f") == {"b": {"k": 1}, "c": {"k": 2}}
    with pytest.raises(SchemaError, match="line 3: the key 'y' is given twice"):
        safe_load_yaml("x:\n  y: 1\n  y: 2\n", "f")


def test_a_broken_shapes_lock_names_the_line_and_a_huge_integer_not_pythons_advice(toy_ws, capsys):
    """A YAML syntax error in a shapes lock said only 'not valid YAML: while parsing a flow
    node' (kernel.yaml's said where); an integer past int()'s digits ended in Python's advice
    to call sys.set_int_max_str_digits()."""
    from workbench.schemas import SchemaError, safe_load_yaml

    path = toy_ws / "stages/toy/shapes.lock.yaml"
    path.write_text("kernel: toy\nstages: {a: [\n")
    err = one_line_error(capsys, "shapes", "toy", "a", "--check", "--in-process")
    assert str(path) in err and "(line " in err, err
    with pytest.raises(SchemaError) as info:
        safe_load_yaml("a: " + "1" * 5000 + "\n", "f")
    assert "digits" in str(info.value) and "set_int_max_str_digits" not in str(info.value)


def test_a_message_shows_only_the_start_of_a_huge_value(toy_ws, capsys):
    """`short` builds only the first characters of a value's repr: a list of 100000 items
    costs a handful of their reprs, not all of them (before, the whole repr was built and then
    cut, which is how a 9 ** 9 alias bomb ran wb out of memory); and a host's env value that
    is a long list is a short line, not a 100 KB one (hosts' messages repr'd the value)."""
    from workbench.schemas import short

    calls = []

    class Item:
        def __repr__(self):
            calls.append(1)
            return "item"

    text = short([[Item()] * 1000] * 100)
    assert text.startswith("[[item, item") and text.endswith("…") and len(text) == 60
    assert len(calls) < 60
    assert short({"a": (1,), "b": ["x"]}) == repr({"a": (1,), "b": ["x"]})
    assert short("y" * 10**6) == "'" + "y" * 58 + "…"
    (toy_ws / "wb.yaml").write_text("hosts: {a: {ssh: h, path: p, env: {A: [" + ", ".join(["xx"] * 20000) + "]}}}\n")
    err = one_line_error(capsys, "hosts")
    assert "env" in err and len(err) < 400, err[:500]


@pytest.mark.parametrize("damage, fragment", [
    (lambda ws: (ws / "wb.yaml").write_bytes(b"kernels: \xff\xfe\n"), "wb.yaml: is not UTF-8 text"),
    (lambda ws: (ws / "wb.yaml").write_bytes(b"#" * (5 * 1024 * 1024)), "wb.yaml: is 5.0 MiB, over wb's limit"),
])
def test_a_workspace_config_that_is_not_sane_text_is_one_line(toy_ws, capsys, damage, fragment):
    damage(toy_ws)
    assert fragment in one_line_error(capsys, "list")


@pytest.mark.parametrize("value", ["[toy]", "{toy: 1}", "true"])
def test_a_default_kernel_that_is_no_name_is_one_line(toy_ws, capsys, value):
    """default_kernel: [toy] in wb.yaml was a TypeError traceback (unhashable list) for every
    command that resolves a stage."""
    (toy_ws / "wb.yaml").write_text(f"default_kernel: {value}\n")
    err = one_line_error(capsys, "run", "a")
    assert "default_kernel in the workspace config: expected the name of a kernel in stages/, got" in err, err


@pytest.mark.parametrize("write, says", [
    (lambda ws: (ws / "wb.yaml").write_text("default-kernel: toy\n"),
     "wb.yaml: unknown setting 'default-kernel' (did you mean default_kernel?); known: default_kernel, hosts"),
    (lambda ws: ((ws / "wb.yaml").unlink(), (ws / "pyproject.toml").write_text('[tool.wb]\nhost = []\n')),
     "pyproject.toml [tool.wb]: unknown setting 'host' (did you mean hosts?)"),
])
def test_an_unknown_setting_in_the_workspace_config_is_one_line_with_a_did_you_mean(toy_ws, capsys, write, says):
    """default-kernel: toy in wb.yaml was ignored without a word (the default kernel silently
    not set), while kernel.yaml refuses an unknown key."""
    write(toy_ws)
    err = one_line_error(capsys, "list")
    assert says in err, err


def test_compile_of_a_stage_that_is_not_cute_is_one_line_and_records_nothing(toy_ws, capsys):
    """`wb compile` of a plain PyTorch stage recorded a COMPILE_ERROR run ("no cubin was
    produced") each time; `wb shapes` already said what it is."""
    with pytest.raises(SystemExit) as exc:
        main(["compile", "a", "--in-process"])
    err = capsys.readouterr().err.strip().splitlines()  # the compile's progress lines, then the error
    assert exc.value.code == 2
    assert err[-1] == "wb: error: toy/stage-a is not a CuTe DSL stage (is_cute = False): wb compile builds CuTe DSL stages"
    assert not (toy_ws / "runs").exists() or not any(p.is_dir() and p.name[:1].isdigit() for p in (toy_ws / "runs").iterdir())


@pytest.mark.parametrize("gpus, why", [
    ("abc", "'abc' is not a GPU index or UUID"), ("-1", "'-1' is not a GPU index or UUID"), ("0,,1", "an empty entry"),
    ("GPU", "'GPU' is not a GPU index or UUID"), ("0,0", "'0' and '0' name one card"),
    # CUDA reads 00 as card 0, and a UUID's prefix (any case) as that card
    ("0,00", "'00' and '0' name one card"), ("GPU-8f3c12,GPU-8F3C", "'GPU-8F3C' and 'GPU-8f3c12' name one card"),
])
def test_a_gpu_list_that_names_no_card_or_one_card_twice_is_refused(toy_ws, capsys, gpus, why):
    """--gpus abc and -1 ran lanes named gpuabc and gpu-1 that no GPU backs; 0,0 would put two
    lanes on one card, and so did 0,00 and a UUID given twice in other forms."""
    err = one_line_error(capsys, "sweep", "a", "--gpus", gpus)
    assert f"--gpus {gpus!r}: {why}" in err and "expected all, none, or distinct GPU indices or UUIDs" in err


def test_an_empty_gpu_list_means_none_as_in_wb_yaml(toy_ws, wb, monkeypatch):
    """--gpus "" ran on every GPU while a host's `gpus: ""` means none: both mean none now
    (two GPUs made visible here; without --gpus the sweep takes both)."""
    from workbench.remote import sweep as sweep_lib
    from workbench.schemas.hosts import parse_gpus

    assert parse_gpus("", ValueError) == ()
    monkeypatch.setattr(sweep_lib, "visible_gpus", lambda: ["0", "1"])
    assert [lane.name for lane in sweep_lib.local_lanes(None)] == ["gpu0", "gpu1"]
    ran = wb("sweep", "a", "--n", "128", "--gpus", "", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["lanes"] == ["local"]


@pytest.mark.parametrize("line, shown", [
    ('raise SystemExit("boom")', "SystemExit: boom"),
    ("raise GeneratorExit", "GeneratorExit"),  # a BaseException, not an Exception: it was a traceback, exit 1
    ("class Odd(BaseException): pass\nraise Odd('x')", "Odd: x"),
])
def test_a_fixture_module_that_exits_on_import_is_one_line_exit_2(toy_ws, capsys, line, shown):
    """`raise SystemExit("boom")` in a fixture module made `wb fixtures` print boom and exit 1;
    a BaseException of another kind (GeneratorExit, its own) was a traceback."""
    (toy_ws / "fixtures" / "zz_exits.py").write_text(line + "\n")
    err = one_line_error(capsys, "fixtures")
    assert f"zz_exits.py: fixture module failed to import: {shown}" in err


@pytest.mark.parametrize("body, shown", [
    ("return None", "returned NoneType, not a dict of the stage's input tensors"),  # a forgotten return
    ("return [torch.ones(4)]", "returned list, not a dict of the stage's input tensors"),
    ("return {'x': [1.0, 2.0]}", "made x=list, the stage expects"),
])
def test_a_fixture_that_returns_no_dict_of_tensors_is_one_line_not_a_kernel_crash(toy_ws, wb, body, shown):
    """A fixture returning None or a list was recorded as the kernel's CRASH ('NoneType' object
    has no attribute 'get'), and MEMORY.md's status said the stage crashed; a dict of the wrong
    shapes was already one line."""
    (toy_ws / "fixtures" / "zz_bad.py").write_text(
        "import torch\nfrom workbench.kernels.fixtures import fixture\n\n"
        "@fixture('zz-bad', isolates='x', hides='y', needs=('x',))\n"
        f"def zz_bad(specs, p, seed, device):\n    {body}\n"
    )
    done = wb("run", "a", "-f", "zz-bad")
    assert done.returncode == 2, (done.stdout, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("wb: error: fixture 'zz-bad'") and shown in last, last
    assert "Traceback" not in done.stderr and "CRASH" not in done.stdout + done.stderr
    assert not (toy_ws / "MEMORY.md").exists() and json.loads(wb("runs", "--json").stdout) == []  # nothing recorded


@pytest.mark.parametrize("command", [("fixtures",), ("run", "a", "--n", "128")])
def test_a_fixture_module_that_calls_os_exit_is_one_line_exit_2(toy_ws, command):
    """os._exit(0) in a fixture module ended wb itself with exit 0 and no word: `wb fixtures`
    printed nothing, and `wb run` (which loads the fixtures to plan) seemed to succeed. In a
    process of its own (os._exit would end the test's)."""
    from conftest import run_wb_process

    (toy_ws / "fixtures" / "zz_exits.py").write_text("import os\nos._exit(0)\n")
    done = run_wb_process(*command, cwd=toy_ws)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines()[-1].endswith(
        "zz_exits.py: fixture module failed to import: it called os._exit(0), which would end wb"
    )


@pytest.mark.parametrize("decorator, fragment", [
    ("@fixture", '@fixture needs a name: write @fixture("zz_bad"'),  # registered nothing, silently
    ("@fixture(3)", "@fixture(3): expected a name of letters"),  # a TypeError traceback in wb fixtures
    ('@fixture("zz-bad", needs="x")', "needs: expected a tuple of input names"),  # read as needs x
    ('@fixture("zz-bad", needs=("x",), seeds="2")', "seeds: expected a whole number of seeds"),  # a CRASH record at run
    ('@fixture("zz-bad", needs=("x",), seeds=10**9)', "seeds: expected a whole number of seeds, 1 to 1000"),  # the worker listed 10**9 cases
])
def test_a_fixture_registered_with_wrong_arguments_is_its_modules_one_line_error(toy_ws, capsys, decorator, fragment):
    """@fixture's arguments were taken as given: a bare @fixture registered nothing, needs="xy"
    meant inputs x and y, seeds="2" failed the run (recorded as the kernel's CRASH), a name that
    is no text was a traceback. Each is now the module's import error, naming the file."""
    from workbench.kernels.fixtures import forget_modules

    (toy_ws / "fixtures" / "zz_bad.py").write_text(
        f"from workbench.kernels.fixtures import fixture\n\n\n{decorator}\ndef zz_bad(specs, p, seed, device):\n    return {{}}\n")
    try:
        for args in (["fixtures"], ["run", "a"]):
            err = one_line_error(capsys, *args)
            assert "zz_bad.py: fixture module failed to import: TypeError: " in err and fragment in err, err
    finally:
        forget_modules()
    assert not list((toy_ws / "runs").glob("2*"))


def test_an_unknown_fixture_in_kernel_yaml_names_kernel_yaml_and_the_stage(toy_ws, capsys):
    """A typo in a stage's fixtures: list said only "unknown fixture 'toy-randon'", as if the
    command line had named it."""
    path = toy_ws / "stages/toy/kernel.yaml"
    path.write_text(path.read_text().replace("fixtures: [toy-random]", "fixtures: [toy-randon]"))
    err = one_line_error(capsys, "run", "b")
    assert "kernel.yaml: stage b's fixtures: unknown fixture 'toy-randon' (did you mean toy-random" in err, err
    assert not list((toy_ws / "runs").glob("2*"))


@pytest.mark.parametrize("args, fragment", [
    (["import", "."], ". holds this workspace's own state (.wb): import its runs/ folder"),
    (["report", ""], "an empty run selector"),
    (["-w", "stages/toy/kernel.yaml", "list"], "kernel.yaml is not a folder"),
])
def test_odd_targets_are_one_line(toy_ws, capsys, args, fragment):
    """wb import . copied the copy being made (a 4 KB 'File name too long' line); '' was an
    'ambiguous' selector; a file given as the workspace 'did not exist'."""
    (toy_ws / ".wb").mkdir(exist_ok=True)
    assert fragment in one_line_error(capsys, *args)


@pytest.mark.parametrize("args", [
    ["run", "a", "--host", ""], ["run", "a", "--host", " "], ["bench", "a", "--host", ""], ["shapes", "toy", "--host", ""],
    ["sweep", "a", "--n", "128", "--host", ""], ["sweep", "a", "--n", "128", "--host", "a,"],
    ["sweep", "a", "--n", "128", "--slurm", ""], ["ps", "--host", ""], ["kill", "--host", ""],
])
def test_an_empty_host_or_partition_is_refused_not_taken_for_none(toy_ws, capsys, args):
    """`--host ''` (run, bench, shapes, sweep, ps, kill), an empty entry in sweep's host list
    and `--slurm ''` read as "not given": the work ran on this machine instead, without a
    word. Each is one line naming the option, exit 2, and nothing ran."""
    flag = "--slurm" if "--slurm" in args else "--host"
    err = one_line_error(capsys, *args)
    assert f"{flag} '" in err and "expected" in err, err
    assert not list((toy_ws / "runs").glob("2*"))


# ---------------------------------------------------------------- a remote wb's ps / kill answer
@pytest.mark.parametrize("command", [["ps"], ["kill", "--all"]])
@pytest.mark.parametrize("answer", [{"rows": []}, "text", [1, 2], None])
def test_a_remote_answer_that_is_not_a_list_of_objects_is_one_line(toy_ws, capsys, monkeypatch, command, answer):
    """`wb ps --host` rendered whatever the remote wb printed: an object, or a list of
    numbers, was a traceback (KeyError / TypeError) instead of one line."""
    from workbench.remote import client

    monkeypatch.setattr(client, "run_wb_json", lambda *a, **k: answer)
    err = one_line_error(capsys, *command, "--host", "box")
    assert "host box: `wb " in err and "not a list of objects" in err


def test_remote_ps_rows_of_another_wb_version_render_without_a_traceback(toy_ws, capsys, monkeypatch):
    """Rows missing fields or with fields of other types (another wb version there) show as
    text, markup escaped; `wb kill` results likewise."""
    from workbench.remote import client

    rows = [{"pid": 12, "state": "idle", "age_s": "long", "gpu_mib": "[red]9[/]"}, {"kind": ["x"], "age_s": float("nan")}, {}]
    monkeypatch.setattr(client, "run_wb_json", lambda *a, **k: rows)
    with pytest.raises(SystemExit) as exc:
        main(["ps", "--host", "box"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "12" in out and "idle" in out and "[red]9[/]" in out and "['x']" in out
    monkeypatch.setattr(client, "run_wb_json", lambda *a, **k: [{"killed": "yes", "message": 5}, {}])
    with pytest.raises(SystemExit) as exc:
        main(["kill", "7", "--host", "box"])
    assert exc.value.code == 1  # "yes" is not True: not counted as killed
    assert "5" in capsys.readouterr().out


def test_accept_keeps_the_locks_keys_it_does_not_know(toy_ws):
    """docs/validation.md: unknown keys are kept. `wb shapes --accept` rebuilt the lock from
    version, kernel and stages alone and dropped the rest (a team's `owner:`)."""
    from workbench.workspace import find_workspace

    ws = find_workspace()
    shapes.accept(ws, "toy", [_compiled()])
    lock = toy_ws / "stages/toy/shapes.lock.yaml"
    lock.write_text(lock.read_text() + "owner: team-x\n")
    shapes.accept(ws, "toy", [_compiled("b")])
    assert "owner: team-x" in lock.read_text() and set(shapes.read_lock(ws, "toy")["stages"]) == {"a", "b"}


def test_json_nested_past_the_decoder_is_no_traceback(toy_ws, tmp_path):
    """'[' * 100000 raises RecursionError, not ValueError: a MEMORY.md data line, wb's own
    pending-import list and an export's manifest.json each stopped wb with a traceback."""
    from workbench.export.exported import read_manifest
    from workbench.records import memory

    deep = "[" * 100_000
    assert memory._data_of(f"<!-- wb:data {deep} -->") is None  # read as no data, as other broken data lines are
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "manifest.json").write_text(deep)
    with pytest.raises(UserError, match="JSON nested too deeply"):
        read_manifest(tmp_path, type("Spec", (), {"id": "fmha/stage-d"})())


def test_a_yaml_mistake_in_wb_yaml_names_its_line_and_a_newer_version_is_said_once(toy_ws, capsys):
    """wb.yaml's YAML errors gave no line (kernel.yaml's did); a MEMORY.json of a newer wb said
    "got 99 (written by a newer wb?), got 99"."""
    (toy_ws / "wb.yaml").write_text("hosts:\n\t- name: x\n")
    err = one_line_error(capsys, "list")
    assert "wb.yaml: not valid YAML (line 2): found character '\\t'" in err
    (toy_ws / "wb.yaml").write_text("")
    (toy_ws / "MEMORY.json").write_text('{"version": 99}')
    from workbench.records import memory
    from workbench.schemas import SchemaError
    from workbench.workspace import find_workspace

    with pytest.raises((SchemaError, UserError)) as err:
        memory.update_data_block(find_workspace(), "shapes", lambda old: old)
    assert str(err.value).count("got 99") == 1, str(err.value)


def test_stages_that_is_not_a_folder_is_named_not_taken_for_no_kernels(toy_ws, wb):
    """`stages` a file (or a link loop) made `wb list` say "no kernels in stages/ yet", exit 0,
    as if the folder were empty."""
    import shutil

    shutil.rmtree(toy_ws / "stages")
    (toy_ws / "stages").write_text("notes\n")
    proc = wb("list", cwd=toy_ws)
    assert "stages is not a folder (a file)" in proc.stderr, proc.stderr


def test_shapes_refuses_a_size_given_by_n_and_by_p(toy_ws, capsys):
    """`wb shapes KERNEL STAGE --n 256 -p n=128` compiled n = 256 and dropped the -p value
    without a word (wb run and wb sweep refuse it). One line, exit 2, before any compile."""
    err = one_line_error(capsys, "shapes", "toy", "a", "--n", "256", "-p", "n=128", "--in-process")
    assert "parameter n is given twice (--n and -p n=...)" in err, err


@pytest.mark.parametrize("target, message", [("/nonexistent-wb-test", "does not exist (a dangling link?)"),
                                             ("kernel.yaml", "Too many levels of symbolic links")])
def test_a_kernel_yaml_that_is_a_broken_link_is_named_not_left_out(toy_ws, capsys, target, message):
    """A stages/KERNEL/kernel.yaml that is a dangling or self-looping link was skipped by the
    folder scan (a glob), so the kernel vanished without a word: `wb list` said "no kernels
    yet" and exited 0. It is now that kernel.yaml's one-line error, exit 2."""
    path = toy_ws / "stages/toy/kernel.yaml"
    path.unlink()
    path.symlink_to(target)
    err = one_line_error(capsys, "list")
    assert str(path) in err and message in err, err


def test_wb_list_with_stages_a_file_is_one_line_exit_2(toy_ws, capsys):
    """stages/ a file: `wb list` printed "no kernels in stages/ yet" beside a warning and exited
    0, as for an empty workspace (`wb new kernel` in the same state already refused)."""
    import shutil

    shutil.rmtree(toy_ws / "stages")
    (toy_ws / "stages").write_text("x\n")
    err = one_line_error(capsys, "list")
    assert "stages is not a folder (a file)" in err


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_workspace_is_a_slip_not_the_cwd(toy_ws, capsys, value):
    """`-w ""` (a variable that expanded to nothing) read as Path("") = "." and ran in whatever
    workspace the cwd was in."""
    assert f"--workspace {value!r}: expected a workspace folder" in one_line_error(capsys, "-w", value, "runs")
