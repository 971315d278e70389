"""Every user mistake is one line on stderr, exit code 2, no traceback (WB_DEBUG=1 shows it)."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, run_wb_process


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert err.startswith("wb: error:") and err.count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["run", "stage-z"], ["no stage 'stage-z'", "stage-a (double)"]),
        (["run", "doubel"], ["did you mean double"]),
        (["run", "tyo/a"], ["unknown kernel 'tyo'", "did you mean toy"]),
        (["run", "a", "--fixture", "toy-randm"], ["unknown fixture 'toy-randm'", "did you mean toy-random"]),
        (["run", "a", "--n", "100"], ["n=100 is below the minimum 128"]),
        (["run", "a", "--n", "200"], ["n=200 must be a multiple of 128", "nearest: 256"]),
        (["run", "a", "--n", "8192"], ["above the maximum 4096"]),
        (["run", "a", "--dtype", "fp8"], ["dtype=fp8 is not allowed", "bf16, fp16"]),
        (["run", "a", "-p", "m=3"], ["has no parameter 'm'"]),
        (["run", "a", "--n", "256", "-p", "n=512"], ["parameter n is given twice (--n and -p n=...)"]),
        (["compile", "a", "--n", "256", "-p", "n=128"], ["parameter n is given twice"]),
        (["run", "a", "-p", "n"], ["must look like key=value"]),
        # a repeated key: the last one silently won (sweep and bench refused it already)
        (["run", "a", "-p", "batch=1", "-p", "batch=2"], ["--param batch is given twice (1 and 2)"]),
        (["compile", "a", "-V", "bug=none", "-V", "bug=kv_tile0"], ["--variant bug is given twice"]),
        (["shapes", "toy", "a", "-p", "batch=1", "-p", "batch=2"], ["--param batch is given twice"]),
        # -f is checked before the GPU check or a worker, as wb sweep checks it
        (["run", "a", "-f", "nofixture"], ["unknown fixture 'nofixture'"]),
        (["run", "a", "-f", "toy-ones", "-f", "toy-ones"], ["--fixture toy-ones is given twice"]),  # it ran twice, two rows
        (["sweep", "a", "-f", "toy-ones", "-f", "toy-ones"], ["--fixture toy-ones is given twice"]),
        # click's own mistakes (a value of the wrong type, an unknown option or command): one line too
        (["run", "a", "--n", "abc"], ["Invalid value for '--n'", "see `wb run -h`"]),
        (["run", "a", "--no-such-option"], ["No such option: --no-such-option", "see `wb run -h`"]),
        (["runz"], ["No such command 'runz'", "see `wb -h`"]),
        (["run"], ["Missing argument 'stage'", "see `wb run -h`"]),
        (["run", "a", "-V", "bug=maybe"], ["variant bug=maybe is not allowed"]),
        (["run", "a", "-V", "sofmax=exp"], ["has no variant 'sofmax'"]),
        (["run", "a", "--timeout", "-1"], ["--timeout must be a positive"]),
        (["run", "///"], ["is not a stage"]),
        (["diff-run", "nope"], ["no run matches 'nope'"]),
        (["report", "zzz"], ["kernel toy has no stage 'zzz'", "nor is 'zzz' a run"]),
        (["explain", "last~3"], ["no runs recorded yet"]),
        (["runs", "q"], ["no stage 'q'"]),
        (["note", " "], ["the note is empty"]),
        (["note", "\x1b\u200b\u2028"], ["the note is empty"]),  # an escape and invisible characters: spaces in MEMORY.md
        (["new", "kernel", "Bad-Name"], ["must be a lowercase Python identifier"]),
        (["new", "kernel", "toy"], ["already exists"]),
    ],
)
def test_user_errors_are_one_line(toy_ws, wb, args, fragments):
    assert_one_line_error(wb(*args), *fragments)


def test_no_workspace(tmp_path):
    # In a real process: the exit status and the one line are what a shell sees.
    assert_one_line_error(run_wb_process("list", cwd=tmp_path), "no wb workspace at or above")


def test_workspace_flag_and_env_override_the_search(toy_ws, tmp_path, wb):
    assert wb("--workspace", str(toy_ws), "list", cwd=tmp_path).returncode == 0
    assert wb("list", cwd=tmp_path, env={"WB_WORKSPACE": str(toy_ws)}).returncode == 0
    assert_one_line_error(wb("--workspace", str(tmp_path / "nowhere"), "list", cwd=tmp_path), "does not exist")


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda t: t.replace("letter: b", "letter: B"), ["stages[1].letter: expected one lowercase letter"]),
        (lambda t: t.replace("module: stage_b.py", "module: stage_b"), ["stages[1].module: expected a .py file"]),
        (lambda t: t.replace("timeout: 20", "timeout: soon"), ["timeout: expected a positive number"]),
        (lambda t: t.replace("  n: {default: 128,", "  n: {defualt: 128,"), ["parameters.n.defualt: expected one of"]),
        (lambda t: t + "\n  - [unclosed", ["not valid YAML"]),
        (lambda t: t.replace("kernel: toy", "kernel: other"), ["kernel: expected the folder's name 'toy'"]),
        (lambda t: t.replace("variants: {bug: [none, zero, nan, partial, sleep, crash, cuda_error, compile_error]}", "variants: {bug: []}"), ["stages[0].variants.bug: expected a non-empty list"]),
        (lambda t: t.replace("stages:", "stages: 3\nx:"), ["stages: expected a non-empty list"]),
        (lambda t: t.replace("variants: {bug: [none,", "variants: {bug: [off,"), ["stages[0].variants.bug: expected strings: quote on/off"]),
        (lambda t: t.replace("variants: {bug: [none,", "wrong_on_purpose: {bugs: [zero]}\n    variants: {bug: [none,"),
         ["stages[0].wrong_on_purpose.bugs: expected a variant of this stage (bug)"]),
        (lambda t: t.replace("variants: {bug: [none,", "wrong_on_purpose: {bug: [none]}\n    variants: {bug: [none,"),
         ["stages[0].wrong_on_purpose.bug: expected one of bug's values other than its default 'none'"]),
        (lambda t: t.replace("variants: {bug: [none,", "wrong_on_purpose: {bug: zero}\n    variants: {bug: [none,"),
         ["stages[0].wrong_on_purpose.bug: expected a non-empty list of the variant's values that are wrong on purpose"]),
        (lambda t: t.replace("variants: {bug: [none, zero,", "variants: {bug: [none, zero, none,"), ["stages[0].variants.bug: expected distinct values ('none' is given twice)"]),
        (lambda t: t.replace("module: stage_b.py", "module: stage_a.py"), ["stages[1].module: expected a module of its own (stage a has stage_a.py)"]),
        (lambda t: t.replace("fixtures: [toy-random, toy-ones]", "fixtures: []"), ["stages[0].fixtures: expected a non-empty list of fixture names"]),
    ],
)
def test_malformed_kernel_yaml_names_file_key_and_expectation(toy_ws, wb, edit, fragments):
    path = toy_ws / "stages/toy/kernel.yaml"
    path.write_text(edit(path.read_text()))
    assert_one_line_error(wb("list"), str(path), *fragments)


@pytest.mark.parametrize("wb_call", ["in-process", "process"])
def test_debug_env_shows_the_traceback(toy_ws, wb, wb_call):
    call = wb if wb_call == "in-process" else run_wb_process
    proc = call("run", "stage-z", env={"WB_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_every_command_has_help(wb, toy_ws):
    top = wb("--help")
    assert top.returncode == 0
    commands = ["list", "run", "runs", "diff-run", "report", "explain", "note", "fixtures", "new"]
    for command in commands:
        proc = wb(command, "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, command
        assert command in top.stdout


def test_json_output_is_strict_json_even_when_a_metric_is_nan(toy_ws, wb):
    """`wb run -V bug=nan --json` printed `"out_at_max": NaN` (and `wb runs --json` after it),
    which JSON.parse and other strict parsers refuse: --json spells them null."""
    import json as _json

    def strict(text):
        return _json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"{name} is not JSON")))

    ran = wb("run", "a", "-V", "bug=nan", "--json")
    assert ran.returncode == 1, ran.stderr
    record = strict(ran.stdout)
    assert record["verdict"] == "FAIL"
    on_disk = _json.loads((toy_ws / "runs" / record["id"] / "run.json").read_text())
    assert any(v != v for v in _walk(on_disk))  # the record itself keeps its NaN
    strict(wb("runs", "--json").stdout)


def test_json_output_of_a_record_nested_deep_but_within_the_readers_limit(toy_ws, wb):
    """A free-form field of a record (remote, a diagnosis) nested 800 deep passes the reader
    (it refuses about 1000) but `wb runs --json` and `wb explain --json` ended in a
    RecursionError traceback: the NaN-to-null pass recursed two frames a level."""
    import json as _json

    ran = wb("run", "a", "--json")
    record_id = _json.loads(ran.stdout)["id"]
    path = toy_ws / "runs" / record_id / "run.json"
    data = _json.loads(path.read_text())
    data["remote"] = {"k": _json.loads("[" * 800 + "1.5" + "]" * 800)}
    path.write_text(_json.dumps(data))
    for args in (("runs", "--json"), ("explain", record_id, "--json")):
        proc = wb(*args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (args, proc.stderr[-400:])
    deep = [r for r in _json.loads(wb("runs", "--json").stdout) if r["id"] == record_id][0]["remote"]["k"]
    for _ in range(800):
        (deep,) = deep
    assert deep == 1.5


def _walk(data):
    if isinstance(data, dict):
        for v in data.values():
            yield from _walk(v)
    elif isinstance(data, list):
        for v in data:
            yield from _walk(v)
    else:
        yield data


def test_ctrl_c_while_wb_loads_its_commands_is_one_line_and_130(toy_ws, wb, monkeypatch):
    """Loading the command modules sat outside main()'s handlers: a Ctrl-C in it (a slow disk,
    a cold start) printed a traceback instead of wb's one line and exit status 130."""
    import workbench.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_register", interrupted)
    proc = wb("list")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "wb: error: interrupted" and "Traceback" not in proc.stderr


def test_ctrl_c_inside_a_command_says_interrupted_and_exits_130(toy_ws, wb, monkeypatch):
    """typer turned a KeyboardInterrupt inside a command into a silent exit 130: wb shapes and
    wb compile stopped with nothing on stderr. Now it is wb's one line."""
    from workbench.kernels import registry

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "load_kernels", interrupted)
    proc = wb("list")
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "wb: error: interrupted" and "Traceback" not in proc.stderr


def test_ctrl_c_while_python_loads_wb_is_one_line_and_130(monkeypatch, capsys):
    """A Ctrl-C in wb's first ~50 ms (Python importing typer, rich and the command modules,
    before main() had a handler) printed a traceback. The entry point loads the CLI under one."""
    import importlib.abc
    import signal
    import sys

    from workbench import entry

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "workbench.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "workbench.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # the test process keeps its own handlers
    with pytest.raises(SystemExit) as exit_:
        entry.main()
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "wb: error: interrupted\n"


def test_one_broken_kernel_yaml_leaves_the_other_kernels_working(toy_ws, wb):
    """A typo in one kernel's kernel.yaml (right after `wb new kernel`, say) made every
    command fail for every kernel. Now the other kernels work, with one warning; asking for
    the broken kernel, and `wb list` (which shows them all), is its one-line error."""
    import shutil

    shutil.copytree(toy_ws / "stages" / "toy", toy_ws / "stages" / "k")
    (toy_ws / "stages" / "k" / "kernel.yaml").write_text("kernel: k\nstages: [\n")
    ran = wb("run", "a", "--json")
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.count("k/kernel.yaml: not valid YAML") == 1 and "kernel k is left out until this is fixed" in ran.stderr
    assert_one_line_error(wb("run", "k/a"), "k/kernel.yaml: not valid YAML")
    assert_one_line_error(wb("report", "k/a"), "k/kernel.yaml: not valid YAML")  # (it said "no run matches 'k/a'")
    listed = wb("list")
    assert listed.returncode == 2 and "toy" in listed.stdout
    assert listed.stderr.strip().splitlines()[-1].startswith("wb: error:") and "k/kernel.yaml" in listed.stderr


@pytest.mark.parametrize("args", [["--seed", "99999999999999999999"], ["--seed", "-1"], ["--seeds", "0"], ["--seeds", "99999999999"]])
def test_a_seed_out_of_range_is_refused_before_anything_runs(toy_ws, wb, args):
    """--seed 99999999999999999999 crashed the fixture and was recorded as the kernel's CRASH;
    --seeds 99999999999 ran until the timeout and was recorded as a HANG."""
    for command in (["run", "a"], ["sweep", "a", "--n", "128"]):
        proc = wb(*command, *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (command, args, proc.stderr)
        assert "Invalid value for '--seed" in proc.stderr, proc.stderr
    assert not [p for p in (toy_ws / "runs").glob("2*")]


def test_an_error_about_a_huge_argument_stays_a_readable_line(toy_ws, wb):
    """wb runs <100k characters> repeated the whole argument in its one-line error."""
    proc = wb("runs", "q" * 100_000)
    assert_one_line_error(proc, "…")
    assert len(proc.stderr) < 600


def test_a_path_too_long_for_the_os_is_one_line(toy_ws, wb):
    """A path argument the OS refuses with ENAMETOOLONG (one name over 255 bytes, or a whole
    path over PATH_MAX) was an OSError traceback from the first stat of it: --workspace,
    WB_WORKSPACE, `wb import`, `wb run --exported`, `wb export -o`. Now each is one line naming
    the option, the path cut short and the OS's reason, exit 2."""
    for long in ("d" * 5000, "/".join(["e" * 200] * 30)):
        cases = [
            (wb("-w", long, "runs"), "workspace "),
            (wb("runs", env={"WB_WORKSPACE": long}), "workspace "),
            (wb("import", long), long[:100]),
            (wb("run", "a", "--exported", long), "--exported "),
            (wb("export", "a", "-o", long), "--out "),
        ]
        for proc, fragment in cases:
            assert_one_line_error(proc, fragment, "characters): File name too long")
            assert len(proc.stderr) < 300, proc.stderr


def test_a_wb_home_that_is_no_folder_is_named_in_a_warning(toy_ws, wb, monkeypatch):
    """WB_HOME=/dev/null silently turned the compile cache off."""
    monkeypatch.setenv("WB_HOME", "/dev/null")
    proc = wb("list")
    assert proc.returncode == 0
    assert "wb: warning: WB_HOME=/dev/null is not a folder" in proc.stderr


def test_a_wb_home_cache_that_is_no_folder_is_named_in_a_warning(toy_ws, wb, monkeypatch, tmp_path):
    """A file at WB_HOME/cache made every compile store fail and recompile, without a word."""
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("WB_HOME", str(tmp_path))
    proc = wb("list")
    assert proc.returncode == 0
    assert f"wb: warning: WB_HOME: {tmp_path / 'cache'} is not a folder (a file): compiled kernels are not kept" in proc.stderr
    (tmp_path / "cache").unlink()
    (tmp_path / "cache").mkdir()
    assert "warning" not in wb("list").stderr


def test_a_closed_or_failing_stdout_is_not_a_traceback(toy_ws):
    """`wb list >&-` crashed at import (sys.stdout is None); `wb list > /dev/full` was a
    traceback after the command ran; then a closed stdout became /dev/null and `wb list >&-`
    exited 0 with its output silently gone. Now both are a failed write: one line on stderr,
    exit 2, saying the command ran and its output is lost (as `ls >&-` says so)."""
    import subprocess
    import sys

    from conftest import REPO

    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    closed = subprocess.run(f"{sys.executable} -m workbench --version >&-", shell=True, cwd=toy_ws, env=env,
                            capture_output=False, stderr=subprocess.PIPE, text=True, timeout=120)
    assert closed.returncode == 2 and "Traceback" not in closed.stderr, closed.stderr
    assert closed.stderr.strip().count("\n") == 0 and "could not be written to stdout (Bad file descriptor)" in closed.stderr
    with open("/dev/full", "w") as full:
        failed = subprocess.run([sys.executable, "-m", "workbench", "list"], cwd=toy_ws, env=env, stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.strip().count("\n") == 0 and "the output could not be written to stdout" in failed.stderr


def test_sweep_names_the_flag_a_parameter_came_from(toy_ws, wb):
    """`wb sweep STAGE --n 128 -p <size>=256` for a stage whose size parameter is not n named a
    flag that does not exist (--rows where --n was meant)."""
    yaml = toy_ws / "stages/toy/kernel.yaml"
    text = yaml.read_text().replace("  n: {default: 128", "  rows: {default: 128").replace("    name: double\n", "    name: double\n    size: rows\n")
    yaml.write_text(text)
    assert_one_line_error(wb("sweep", "a", "--n", "128", "-p", "rows=256"), "parameter rows is given twice (--n and -p rows=...)")


def test_equal_defaults_resolve_in_chains_and_a_loop_is_named(toy_ws, wb):
    """kernel.yaml's '=other' defaults: one naming another '=' default said the other "is not a
    parameter" (a chain) and so did a loop of two; a chain now resolves, a loop is named, and
    as kernel.yaml's error (`wb list` passed it, exit 0: only a compile found it)."""
    yaml = toy_ws / "stages/toy/kernel.yaml"
    text = yaml.read_text()
    chain = "  rows2: {default: \"=rows1\", min: 1, max: 4096}\n  rows1: {default: \"=n\", min: 1, max: 4096}\n"
    yaml.write_text(text.replace("  dtype: {", chain + "  dtype: {", 1))
    from workbench.kernels.registry import load_kernel

    assert load_kernel(yaml).stage("a").resolve_params({"n": "256"})["rows2"] == 256
    loop = "  rows2: {default: \"=rows1\", min: 1, max: 4096}\n  rows1: {default: \"=rows2\", min: 1, max: 4096}\n"
    yaml.write_text(text.replace("  dtype: {", loop + "  dtype: {", 1))
    for args in (("run", "a"), ("list",)):
        assert_one_line_error(wb(*args), "(rows2 -> rows1 -> rows2 name each other)")


def test_a_sweep_of_a_stage_whose_module_is_missing_is_one_line(toy_ws, wb):
    """`wb run` said it in one line; `wb sweep` made an ERROR row per case, exited 1 and wrote
    a sweep report of them."""
    (toy_ws / "stages/toy/stage_b.py").unlink()
    assert_one_line_error(wb("sweep", "b", "--n", "128,256", "--gpus", "none"), "toy/stage-b: module", "stage_b.py does not exist")
    assert not list((toy_ws / "runs").glob("reports/*stage-b*"))


@pytest.mark.parametrize("args, fragments", [
    (["runs", ""], ["'' is not a stage"]),  # it listed every run
    (["shapes", "toy", ""], ["kernel toy has no stage ''"]),  # it compiled every stage
    (["shapes", "toy", "doubel"], ["(did you mean double?)"]),
    (["compile", "a", "--keep", ""], ["--keep '': name what to keep"]),  # it kept nothing, silently
    (["compile", "a", "--keep", "ptx,,sass"], ["--keep 'ptx,,sass'"]),
])
def test_names_are_read_alike_across_commands(toy_ws, wb, args, fragments):
    """An empty name, a near miss or an empty list item, as `wb run` reads them."""
    assert_one_line_error(wb(*args), *fragments)


@pytest.mark.parametrize(
    "name, value, args, fragments",
    [
        # a module-level float() of it broke every command importing the supervisor (wb runs too)
        ("WB_WORKER_IDLE", "abc", ["run", "a"], ["WB_WORKER_IDLE='abc' must be a number of seconds, 0 or more"]),
        ("WB_WORKER_IDLE", "-5", ["run", "a"], ["WB_WORKER_IDLE='-5' must be a number of seconds, 0 or more"]),
        # past time_t in the worker's socket timeout: a ConnectionResetError traceback, a half-made run folder
        ("WB_WORKER_IDLE", "1e10", ["run", "a"], ["WB_WORKER_IDLE='1e10' is over the 1e+08 seconds it can be"]),
        # int() of it: a traceback, and `wb compile` left a run folder with no record
        ("WB_COMPILE_JOBS", "abc", ["compile", "a"], ["WB_COMPILE_JOBS='abc' must be a whole number of workers"]),
        ("WB_COMPILE_JOBS", "2.5", ["shapes", "toy"], ["WB_COMPILE_JOBS='2.5' must be a whole number of workers"]),
        # 0 MiB read as a limit: "run.json is 0 MiB, over the 0 MiB a file may have"
        ("WB_IMPORT_MAX_MIB", "0", ["import", "stages"], ["WB_IMPORT_MAX_MIB='0' must be a whole number of MiB, above 0"]),
        ("WB_IMPORT_MAX_MIB", "nan", ["import", "stages"], ["WB_IMPORT_MAX_MIB='nan' must be a whole number of MiB"]),
    ],
)
def test_a_bad_numeric_setting_is_one_line_and_leaves_no_run_folder(toy_ws, wb, name, value, args, fragments):
    assert_one_line_error(wb(*args, env={name: value}), *fragments)
    assert not [p for p in (toy_ws / "runs").glob("2*")], "a run folder was left"
    listed = wb("runs", env={name: value})  # read where used: a command that does not use it works
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr


def test_a_bad_agent_grace_stops_the_agent_before_its_child_starts(toy_ws):
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.remote.agent", "--", "list"], cwd=toy_ws, capture_output=True, text=True,
        env={**os.environ, "WB_AGENT_GRACE": "soon", "PYTHONPATH": str(REPO)}, timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "wb: error: WB_AGENT_GRACE='soon' must be a number of seconds, 0 or more"
    assert "wb-agent" not in proc.stderr and proc.stdout == ""


def test_a_pipe_named_like_a_module_is_refused_not_read_forever(toy_ws):
    """A FIFO named fixtures/x.py or stages/toy/stage_a.py: `wb fixtures` and `wb run a` waited
    forever on its read (the YAML readers refused FIFOs, the module paths did not)."""
    fifo = toy_ws / "fixtures" / "pipe.py"
    os.mkfifo(fifo)
    assert_one_line_error(run_wb_process("fixtures", cwd=toy_ws, timeout=60), "pipe.py: not a regular file")
    fifo.unlink()
    module = toy_ws / "stages" / "toy" / "stage_a.py"
    module.unlink()
    os.mkfifo(module)
    assert_one_line_error(run_wb_process("run", "a", cwd=toy_ws, timeout=60), "stage_a.py is not a regular file")


def test_markup_in_a_kernel_title_or_the_workspace_path_is_printed_as_text(toy_ws, wb, tmp_path):
    """rich read '[/]' in a kernel's title (`wb list`) and in the workspace's path (`wb sweep`'s
    last line, after the cases had run) as a closing tag: a MarkupError traceback."""
    yaml_path = toy_ws / "stages" / "toy" / "kernel.yaml"
    text = yaml_path.read_text()
    title = next(line for line in text.splitlines() if line.startswith("title:"))
    yaml_path.write_text(text.replace(title, 'title: "a [/] b"'))
    listed = wb("list")
    assert listed.returncode == 0 and "a [/] b" in listed.stdout, listed.stderr
    yaml_path.write_text(text)
    odd = tmp_path / "t[" / "]w"
    odd.parent.mkdir()
    import shutil

    shutil.copytree(toy_ws, odd)
    swept = wb("sweep", "a", "--n", "128", "--gpus", "none", cwd=odd)
    assert swept.returncode == 0 and "Traceback" not in swept.stderr, swept.stderr
    assert "t[/]w" in swept.stdout.replace("\n", "")


def test_a_pyproject_whose_tool_is_not_a_table_is_not_a_workspace_config(toy_ws, wb):
    """`tool = 5` in a pyproject.toml (here or in any folder above) was an AttributeError
    traceback for every command."""
    (toy_ws / "wb.yaml").unlink()
    (toy_ws / "pyproject.toml").write_text("tool = 5\n")
    assert_one_line_error(wb("list", cwd=toy_ws), "no wb workspace at or above")


def test_a_second_ctrl_c_while_wb_says_interrupted_is_no_traceback(monkeypatch, capsys):
    """A Ctrl-C that came while the last line was printed (rich imports lazily there), or after
    it, was a traceback on top of it; one during rich's import at start-up was a traceback too
    (the import sat before cli.main's handler: entry.py now takes it under its own)."""
    from workbench import cli, entry, terminal

    def interrupted_again(message):
        raise KeyboardInterrupt

    monkeypatch.setattr(terminal, "error", interrupted_again)
    cli._say_interrupted()  # the second Ctrl-C is swallowed: wb is stopping anyway

    def escapes(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", escapes)
    monkeypatch.delenv("WB_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stopped:
        entry.main()
    assert stopped.value.code == 130


def test_a_sweep_with_a_broken_fixture_module_is_one_line_before_any_case(toy_ws, wb):
    """wb run said it in one line (exit 2); wb sweep made an ERROR row of it in every case and
    exited 1: a fixture module that fails to import, or a name in kernel.yaml's fixture list
    that no module defines."""
    broken = toy_ws / "fixtures" / "zz_broken.py"
    broken.write_text("raise RuntimeError('half-written')\n")
    swept = wb("sweep", "a", "--n", "128,256", "--gpus", "none")
    assert_one_line_error(swept, "zz_broken.py: fixture module failed to import: RuntimeError: half-written")
    assert not [p for p in (toy_ws / "runs").glob("2*")]
    broken.unlink()
    yaml_path = toy_ws / "stages" / "toy" / "kernel.yaml"
    yaml_path.write_text(yaml_path.read_text().replace("fixtures: [toy-random, toy-ones]", "fixtures: [toy-random, toy-nowhere]"))
    assert_one_line_error(wb("sweep", "a", "--n", "128", "--gpus", "none"), "unknown fixture 'toy-nowhere'")


@pytest.mark.parametrize("where", ["WB_WORKSPACE loop", "--workspace ~user", "WB_HOME ~user"])
def test_a_workspace_or_wb_home_that_cannot_be_resolved_is_one_line(toy_ws, wb, tmp_path, where):
    """A symbolic link loop as the workspace, or ~nosuchuser in it or in WB_HOME, was a
    RuntimeError traceback from pathlib (resolve, expanduser), exit 1."""
    loop = tmp_path / "loop1"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    if where == "WB_WORKSPACE loop":
        proc = wb("runs", env={"WB_WORKSPACE": str(loop)})
        fragment = "Symlink loop"
    elif where == "--workspace ~user":
        proc = wb("--workspace", "~wb-no-such-user/x", "runs")
        fragment = "workspace ~wb-no-such-user/x"
    else:
        proc = wb("runs", cwd=toy_ws, env={"WB_HOME": "~wb-no-such-user/h"})
        fragment = "WB_HOME='~wb-no-such-user/h'"
    assert_one_line_error(proc, fragment)


def test_wb_home_a_symlink_loop_is_a_warning_that_says_so(toy_ws, wb, tmp_path):
    loop = tmp_path / "loop1"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    proc = wb("list", cwd=toy_ws, env={"WB_HOME": str(loop)})
    assert proc.returncode == 0 and "WB_HOME" in proc.stderr and "a symlink loop" in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", ["note", "import", "run"])
@pytest.mark.parametrize("thing", ["folder", "dangling link"])
def test_something_at_the_path_of_wbs_own_lock_is_one_line(toy_ws, wb, tmp_path, command, thing):
    """A folder or a link at .wb/memory.lock (wb note), .wb/import.lock (wb import) or a warm
    worker's .wb/worker-TAG.lock (wb run) was filelock's IsADirectoryError or ELOOP traceback."""
    state = toy_ws / ".wb"
    state.mkdir(exist_ok=True)
    if command == "run":
        from workbench.run.supervisor import warm_tag
        from workbench.workspace import Workspace

        from conftest import REPO

        as_wb_runs = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # run_wb's
        name = f"worker-{warm_tag(Workspace(toy_ws), as_wb_runs)}.lock"
        args = ("run", "a")
    else:
        name = f"{'memory' if command == 'note' else 'import'}.lock"
        (tmp_path / "runs").mkdir()
        args = ("note", "a lesson") if command == "note" else ("import", str(tmp_path / "runs"))
    if thing == "folder":
        (state / name).mkdir()
    else:
        (state / name).symlink_to(tmp_path / "nowhere")
    assert_one_line_error(wb(*args, cwd=toy_ws), f"cannot take wb's lock {state / name}", "remove it")


@pytest.mark.parametrize("setting", ["WB_GIT_COMMIT=bad commit", "WB_GIT_COMMIT=" + "a" * 65, "WB_GIT_DIFF_HASH=" + "f" * 1200])
def test_a_git_setting_the_record_cannot_keep_is_refused_before_the_run(toy_ws, wb, setting):
    """WB_GIT_COMMIT='bad commit' (or over 64 characters) and a WB_GIT_DIFF_HASH over 1000
    were written into the record, which its own schema then refused: `wb runs`, report,
    diff-run and import skipped the run as corrupt after the verdict and exit 0."""
    name, _, value = setting.partition("=")
    assert_one_line_error(wb("run", "a", "--fixture", "toy-ones", env={name: value}), f"{name}=", "must be")
    assert not [p for p in (toy_ws / "runs").glob("2*")]


def test_text_parameters_are_kept_as_long_as_the_record_takes_them(toy_ws, wb):
    """A text parameter of 300 characters (kernel.yaml took defaults up to 300, the record
    200) or with a control character was written into a record that every reader then
    skipped as corrupt. Now both limits are one (1000 characters, no control characters):
    within it the run is recorded and read back, past it the value is refused up front."""
    import json as _json

    yaml = toy_ws / "stages/toy/kernel.yaml"
    yaml.write_text(yaml.read_text().replace("  dtype: {", f"  tag: {{default: \"{'d' * 250}\"}}\n  dtype: {{"))
    ran = wb("run", "a", "--fixture", "toy-ones", "-p", "tag=" + "t" * 999, "--json")
    assert ran.returncode == 0, ran.stderr
    run_id = _json.loads(ran.stdout)["id"]
    assert wb("run", "a", "--fixture", "toy-ones", "--json").returncode == 0  # the 250-character default
    listed = wb("runs", "--json")
    assert "skipping corrupt" not in listed.stderr, listed.stderr
    kept = {r["id"]: r["params"]["tag"] for r in _json.loads(listed.stdout)}
    assert kept[run_id] == "t" * 999 and "d" * 250 in kept.values()
    for bad in ("t" * 1001, "a\x01b"):
        assert_one_line_error(wb("run", "a", "--fixture", "toy-ones", "-p", "tag=" + bad), "tag=", "at most 1000 characters without control characters")


@pytest.mark.parametrize("value, traceback", [("0", False), ("off", False), ("", False), ("1", True)])
def test_wb_debug_0_is_off(toy_ws, wb, value, traceback):
    """WB_DEBUG=0 turned the tracebacks of user errors on, as WB_DEBUG=1 does."""
    proc = wb("run", "nosuchstage", env={"WB_DEBUG": value})
    assert ("Traceback" in proc.stderr) is traceback, proc.stderr


@pytest.mark.parametrize("command", ["report", "explain", "diff-run", "run"])
def test_a_huge_stage_or_run_name_is_cut_in_its_one_line(toy_ws, wb, command):
    """`wb report <100 000 characters>` echoed all of them in its error line (twice)."""
    done = wb(command, "a" * 100_000)
    assert_one_line_error(done, "…")
    assert len(done.stderr) < 600, len(done.stderr)


def test_columns_of_zero_is_no_width_not_an_empty_screen(toy_ws, wb):
    """COLUMNS=0 made rich draw in 0 columns: `wb runs` printed nothing, exit 0, and `wb run`
    no verdict. A new process: the console's width is set when wb starts."""
    from conftest import run_wb_process

    assert wb("run", "a").returncode == 0
    shown = run_wb_process("runs", cwd=toy_ws, env={"COLUMNS": "0"})
    assert shown.returncode == 0 and "toy/stage-a" in shown.stdout and "PASS" in shown.stdout, shown.stdout
