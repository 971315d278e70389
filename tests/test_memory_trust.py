"""MEMORY.md as an input: what a record field, a hand edit or the file itself can do to it.

Each test reproduces an attack or accident seen on the issue "Trust nothing that comes in"
(items 1, 4, 5) and proves wb now keeps the file's structure and every hand-written byte.
"""

import errno
import json
import os
import stat
import tempfile

import pytest

from workbench.records import memory
from workbench.errors import UserError
from workbench.records.store import new_run_dir, read_record, write_record
from workbench.workspace import Workspace

INJECTION = "bf16\n<!-- wb:end log -->\nINJECTED\n<!-- wb:begin log -->"


def record(i: int, **params) -> dict:
    return {
        "id": f"20261203-1000{i // 60 % 60:02d}-{i:06d}",
        "stage": "fmha/stage-d",
        "verdict": "PASS",
        "params": {"n": 1024, "dtype": "bf16", **params},
        "variants": {},
        "started": "2026-12-03T10:00:00+00:00",
        "provenance": {"commit": "abcdef1234567", "dirty": False, "gpu": "NVIDIA H200"},
    }


def log_entries(ws: Workspace) -> list[str]:
    log = memory.block_content(ws.memory_path.read_text(), "log")
    return [line for line in log.splitlines() if line.startswith("- ")]


def test_a_record_field_cannot_split_a_block(tmp_path):
    """Item 1: a parameter holding newlines and marker text is escaped onto one line; the
    log keeps its 100 lines through the next updates and the status keeps every stage."""
    ws = Workspace(tmp_path)
    for i in range(memory.LOG_CAP):
        memory.record_run(ws, record(i))
    memory.record_run(ws, record(500, dtype=INJECTION))
    memory.record_run(ws, {**record(501), "stage": "fmha/stage-c"})
    text = ws.memory_path.read_text()
    memory._scan(memory.split_lines(text))  # well formed
    assert "INJECTED" not in text.replace("INJECTED &lt;!-- wb:begin log --&gt;", "").split("<!-- wb:end log -->")[-1]
    assert [line for line in text.splitlines() if line.strip() == "<!-- wb:begin log -->"] == ["<!-- wb:begin log -->"]
    assert len(log_entries(ws)) == memory.LOG_CAP
    status = memory.block_content(text, "status")
    assert "fmha/stage-c" in status and "fmha/stage-d" in status
    cases = memory.read_data(memory.data_path(ws.memory_path))["status"]["fmha/stage-d"]["cases"]
    assert [key for key in cases if "INJECTED" in key] == ["dtype=bf16 &lt;!-- wb:end log --> INJECTED &lt;!-- wb:begin log -->"]


def test_a_record_with_control_characters_in_a_parameter_is_not_a_record(tmp_path):
    """Item 1 at the boundary: such a run.json is skipped by readers (and refused by import)."""
    d = new_run_dir(tmp_path)
    write_record(d, record(1, dtype=INJECTION))
    with pytest.warns(UserWarning, match=r"params\.dtype"):
        assert read_record(d) is None


def test_a_typed_in_marker_pair_inside_a_block_stops_wb_and_loses_nothing(tmp_path):
    """Item 4: a begin/end log pair typed inside the status block used to make the next update
    delete the real 100-line log as a 'duplicate'. Now: one line naming the lines, no write."""
    ws = Workspace(tmp_path)
    for i in range(memory.LOG_CAP):
        memory.record_run(ws, record(i))
    text = ws.memory_path.read_text()
    broken = text.replace("## Status\n", "## Status\n<!-- wb:begin log -->\nmy notes\n<!-- wb:end log -->\n", 1)
    ws.memory_path.write_text(broken)
    begin_line = broken.splitlines().index("## Status") + 2
    with pytest.raises(memory.MarkerError, match=rf"line {begin_line} begins block 'log' inside block 'status'"):
        memory.record_run(ws, record(999))
    assert ws.memory_path.read_text() == broken


EXAMPLE = (
    "# Team memory\n\nwb keeps its blocks between markers like these:\n\n"
    "```markdown\n<!-- wb:begin status -->\n| stage | verdict |\n<!-- wb:end status -->\n```\n\n"
    "~~~\n<!-- wb:begin log -->\n~~~\n"
)


def test_markers_shown_in_a_code_example_are_hand_text_not_blocks(tmp_path):
    """A marker pair inside a closed code fence (a README-style example, or a lone marker in
    one) is not a block: wb used to render its status into the example, or stop at the lone
    begin. Now the example stays byte for byte and wb's blocks are appended after it."""
    ws = Workspace(tmp_path)
    ws.memory_path.write_text(EXAMPLE)
    memory.record_run(ws, record(1))
    memory.record_run(ws, record(2))
    text = ws.memory_path.read_text()
    assert text.startswith(EXAMPLE)
    after = text[len(EXAMPLE):]
    assert after.count("<!-- wb:begin status -->") == 1 and after.count("<!-- wb:begin log -->") == 1
    assert "fmha/stage-d" in memory.block_content(after, "status")
    assert len(log_entries(ws)) == 2


def test_a_fence_never_closed_hides_no_block(tmp_path):
    """A stray ``` (a fence never closed) before wb's blocks: the blocks are still found, so an
    update renders them in place instead of appending a new set each time."""
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))
    ws.memory_path.write_text("Half an example:\n```\n" + ws.memory_path.read_text())
    memory.record_run(ws, record(2))
    memory.record_run(ws, record(3))
    text = ws.memory_path.read_text()
    assert text.count("<!-- wb:begin log -->") == 1 and text.count("<!-- wb:begin status -->") == 1
    assert len(log_entries(ws)) == 3


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t.replace("<!-- wb:end status -->\n", "", 1), r"block 'status' begun at line \d+ has no end|begins block 'log' inside block 'status'"),
        (lambda t: t.replace("<!-- wb:begin log -->\n", "", 1), r"line \d+ ends block 'log', which was never begun"),
        (lambda t: t + "<!-- wb:begin status -->\nx\n<!-- wb:end status -->\n", r"block 'status' appears twice \(lines \d+-\d+ and from line \d+\)"),
        (lambda t: t.replace("<!-- wb:end status -->\n", "", 1).replace("<!-- wb:end log -->\n", "<!-- wb:end log -->\n<!-- wb:end status -->\n"), r"inside block 'status'"),
    ],
    ids=["unbalanced-begin", "unbalanced-end", "duplicate", "overlapping"],
)
def test_broken_markers_are_one_line_and_no_write(tmp_path, damage, message):
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))
    broken = damage(ws.memory_path.read_text())
    ws.memory_path.write_text(broken)
    with pytest.raises(memory.MarkerError, match=message) as info:
        memory.record_run(ws, record(2))
    assert "\n" not in str(info.value)
    assert ws.memory_path.read_text() == broken


def test_mode_is_kept_and_new_files_follow_the_umask(tmp_path):
    """Item 5: every write used to reset MEMORY.md (and new run.json) to 0600."""
    ws = Workspace(tmp_path)
    old = os.umask(0o022)
    try:
        memory.record_run(ws, record(1))
        assert stat.S_IMODE(ws.memory_path.stat().st_mode) == 0o644
        run = new_run_dir(tmp_path / "runs")
        write_record(run, record(2))
        assert stat.S_IMODE((run / "run.json").stat().st_mode) == 0o644
        ws.memory_path.chmod(0o640)
        memory.record_run(ws, record(3))
        assert stat.S_IMODE(ws.memory_path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_a_read_only_memory_is_refused_not_replaced(tmp_path):
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))
    before = ws.memory_path.read_bytes()
    ws.memory_path.chmod(0o444)
    with pytest.raises(UserError, match=r"MEMORY.md is read-only \(mode 0444\)"):
        memory.record_run(ws, record(2))
    assert ws.memory_path.read_bytes() == before and stat.S_IMODE(ws.memory_path.stat().st_mode) == 0o444


def test_a_symlinked_memory_stays_a_symlink(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    shared = tmp_path / "shared" / "MEMORY.md"
    shared.parent.mkdir()
    shared.write_text("# Shared memory\n")
    ws.memory_path.symlink_to(shared)
    memory.record_run(ws, record(1))
    assert ws.memory_path.is_symlink()
    assert shared.read_text().startswith("# Shared memory\n") and "<!-- wb:begin status -->" in shared.read_text()


def test_crlf_endings_stay_crlf(tmp_path):
    ws = Workspace(tmp_path)
    ws.memory_path.write_bytes(b"# Notes\r\n\r\n## Lessons\r\n\r\n- one\r\n")
    memory.record_run(ws, record(1))
    memory.add_note(ws, "two")
    raw = ws.memory_path.read_bytes()
    assert raw.startswith(b"# Notes\r\n\r\n## Lessons\r\n\r\n- one\r\n- ")
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_invalid_utf8_and_a_folder_are_one_line(tmp_path):
    ws = Workspace(tmp_path)
    ws.memory_path.write_bytes(b"# Notes\n\nok\n\xff\xfe broken\n")
    with pytest.raises(UserError, match=r"MEMORY.md: is not UTF-8 text \(byte 12, line 4\)"):
        memory.record_run(ws, record(1))
    ws.memory_path.unlink()
    ws.memory_path.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        memory.add_note(ws, "x")


def test_a_read_only_filesystem_is_one_line(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))

    def refuse(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    before = ws.memory_path.read_bytes(), memory.data_path(ws.memory_path).read_bytes()
    with pytest.raises(UserError, match=r"cannot write .*MEMORY\.json: Read-only file system"):
        memory.record_run(ws, record(2))
    assert (ws.memory_path.read_bytes(), memory.data_path(ws.memory_path).read_bytes()) == before


def test_cli_note_on_a_broken_memory_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from workbench.cli import main

    (tmp_path / "wb.yaml").write_text("{}\n")
    (tmp_path / "MEMORY.md").write_bytes(b"\xff\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["note", "a lesson"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "not UTF-8" in err and "Traceback" not in err


def test_after_a_run_a_memory_wb_cannot_update_is_a_warning(tmp_path):
    """The record is already in runs/: a broken MEMORY.md must not turn the run into an error."""
    ws = Workspace(tmp_path)
    ws.memory_path.write_bytes(b"\xff\n")
    with pytest.warns(UserWarning, match="MEMORY.md not updated: .*not UTF-8"):
        memory.update_blocks_or_warn(ws, memory.run_edits([record(1)]))
    assert ws.memory_path.read_bytes() == b"\xff\n"


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_memory_data_file_that_never_ends_is_refused_not_read(toy_ws, kind):
    """MEMORY.json as a FIFO blocked `wb run` for ever after its fixtures; as a link to an
    endless device it was read until the kernel killed wb (18 GB). The run is recorded and
    MEMORY.md is left alone with one warning naming the file."""
    from conftest import run_wb_process

    data = toy_ws / "MEMORY.json"
    data.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(data)
    else:
        data.symlink_to("/dev/zero")
    done = run_wb_process("run", "b", "--json", cwd=toy_ws, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MEMORY.json: is not a regular file" in done.stderr
    assert (toy_ws / "runs" / __import__("json").loads(done.stdout)["id"] / "run.json").is_file()


def test_a_stage_report_wb_cannot_write_is_a_warning_and_memory_is_still_updated(toy_ws, wb):
    """runs/reports/<stage>.md replaced by a FIFO: the run is recorded, its verdict is the exit
    status, MEMORY.md is updated, and the report is one warning (it was exit 2 and no MEMORY.md)."""
    import json as _json

    (toy_ws / "runs" / "reports").mkdir(parents=True)
    os.mkfifo(toy_ws / "runs" / "reports" / "toy-stage-a.md")
    done = wb("run", "a", "--json")
    assert done.returncode == 0, done.stderr
    assert "report not written: cannot write" in done.stderr and "not a regular file" in done.stderr
    assert _json.loads(done.stdout)["id"] in (toy_ws / "MEMORY.md").read_text()


def test_held_signals_defer_ctrl_c_and_sigterm_to_the_end_of_the_outermost_hold():
    """Ctrl-C was ignored (SIG_IGN: lost) while a record was written, and SIGTERM not held at
    all: a TERM during the write left a record without report or MEMORY.md line."""
    import signal

    from workbench.interrupts import held_signals

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            with held_signals():  # a nested hold does not end the outer one
                os.kill(os.getpid(), signal.SIGINT)
            done.append("inner")
            done.append("outer")
    assert done == ["inner", "outer"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with held_signals():
        pass  # nothing came: nothing raised


def test_a_sigterm_while_the_record_is_made_lands_after_it_is_written(toy_ws, monkeypatch):
    """The second signal of a Ctrl-C then TERM (a batch system's kill) came while run_stage
    made the INTERRUPTED record: an empty run folder, or a record with no report and no
    MEMORY.md line. Now the record is whole, then wb stops."""
    import signal

    from workbench.kernels.registry import load_kernels
    from workbench.run import execute

    real = execute.worker_result

    def result_then_sigterm(outcome, run_dir):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(outcome, run_dir)

    monkeypatch.setattr(execute, "worker_result", result_then_sigterm)
    ws = Workspace(toy_ws)
    spec = load_kernels(ws)["toy"].stage("a")
    with pytest.raises(KeyboardInterrupt):
        execute.run_stage(ws, spec, spec.resolve_params({}), spec.resolve_variants({}), warm=False)
    (run_dir,) = [p for p in (toy_ws / "runs").iterdir() if p.name[:1].isdigit()]
    assert (run_dir / "run.json").is_file() and (run_dir / "report.md").is_file()
    assert run_dir.name in (toy_ws / "MEMORY.md").read_text()


def test_a_report_path_that_cannot_be_written_is_a_warning_and_memory_still_updates(toy_ws, wb):
    """runs/reports as a file made `wb run` end in a FileExistsError traceback from the atomic
    writer (its mkdir and stat sat outside its error handling), after the record but before
    MEMORY.md; `wb sweep` lost its table the same way. Now: one warning, the record and
    MEMORY.md written, the sweep's table printed."""
    reports = toy_ws / "runs" / "reports"
    reports.parent.mkdir(parents=True, exist_ok=True)
    reports.write_text("not a folder\n")
    ran = wb("run", "a", "--json")
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr and "report not written" in ran.stderr
    run_id = json.loads(ran.stdout)["id"]
    assert run_id in (toy_ws / "MEMORY.md").read_text()
    swept = wb("sweep", "a", "--n", "128", "--gpus", "none")
    assert swept.returncode == 0, swept.stderr
    assert "sweep report not written" in swept.stderr and "PASS" in swept.stdout


def test_writing_through_a_dangling_link_makes_no_folders_elsewhere(tmp_path):
    """A dangling link's target folder was made (anywhere on disk) before the write; open()
    would refuse it. Now, where links are followed (MEMORY.md), it is one UserError and nothing
    is made; elsewhere the link is replaced by the file."""
    from workbench.errors import UserError
    from workbench.files import atomic_write_text

    link = tmp_path / "report.md"
    link.symlink_to(tmp_path / "nowhere" / "deeper" / "report.md")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_text(link, "x\n", follow_link=True)
    assert not (tmp_path / "nowhere").exists()
    atomic_write_text(link, "x\n")
    assert not link.is_symlink() and link.read_text() == "x\n" and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("link_to", ["a file outside", "itself"])
def test_a_link_in_wbs_own_folders_is_replaced_not_written_through(toy_ws, wb, tmp_path, link_to):
    """runs/reports/toy-stage-a.md a link to a file elsewhere: every `wb run` overwrote that file
    with the stage report (in a probe run as root, /etc/passwd). A link loop there was a warning
    and no report. wb alone writes runs/: the link is replaced by the report, the file it
    pointed to is left as it was; MEMORY.md, which a team may share by a link, is still written
    through (test_a_symlinked_memory_stays_a_symlink)."""
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    reports = toy_ws / "runs" / "reports"
    reports.mkdir(parents=True)
    report = reports / "toy-stage-a.md"
    report.symlink_to(outside if link_to == "a file outside" else "toy-stage-a.md")
    ran = wb("run", "a", "--json")
    assert ran.returncode == 0 and "report not written" not in ran.stderr, ran.stderr
    assert outside.read_text() == "keep me\n"
    assert not report.is_symlink() and json.loads(ran.stdout)["id"] in report.read_text()


def test_a_dangling_memory_link_writes_nothing_outside_the_workspace(toy_ws, wb, tmp_path):
    """MEMORY.md a link into a folder that does not exist: `wb run` made that folder (anywhere
    on disk) and wrote MEMORY.md and MEMORY.json there, `wb note` then wrote on. Now the run is
    recorded with a one-line warning naming the link, `wb note` is one line and exit 2, and no
    folder is made; a link to an existing file is still written through."""
    elsewhere = tmp_path / "nowhere" / "MEMORY.md"
    (toy_ws / "MEMORY.md").symlink_to(elsewhere)
    ran = wb("run", "a", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["verdict"] == "PASS" and "Traceback" not in ran.stderr
    assert "MEMORY.md not updated" in ran.stderr and "whose folder does not exist" in ran.stderr
    noted = wb("note", "a lesson")
    assert noted.returncode == 2 and noted.stderr.startswith("wb: error: ") and len(noted.stderr.splitlines()) == 1
    assert "whose folder does not exist" in noted.stderr
    assert not (tmp_path / "nowhere").exists() and not (toy_ws / "MEMORY.json").exists()
    elsewhere.parent.mkdir()
    elsewhere.write_text("# Shared\n")
    assert wb("run", "a").returncode == 0 and wb("note", "a lesson").returncode == 0
    assert (toy_ws / "MEMORY.md").is_symlink() and (tmp_path / "nowhere" / "MEMORY.json").is_file()
    text = elsewhere.read_text()
    assert text.startswith("# Shared\n") and "<!-- wb:begin status -->" in text and "a lesson" in text


def test_a_memory_lock_held_too_long_is_a_warning_after_the_record(toy_ws, wb, monkeypatch):
    """Another wb holding MEMORY.md's lock past the wait (suspended mid-update) made the run end
    in a filelock.Timeout traceback, its verdict never shown. Now: a one-line warning, the
    record written, the verdict printed."""
    from filelock import FileLock

    from workbench.records import memory as memory_lib

    monkeypatch.setattr(memory_lib, "LOCK_WAIT", 0.2)
    (toy_ws / ".wb").mkdir(exist_ok=True)
    holder = FileLock(str(toy_ws / ".wb" / "memory.lock"))
    holder.acquire()
    try:
        ran = wb("run", "a", "--json")
    finally:
        holder.release()
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr and "MEMORY.md not updated" in ran.stderr and "held for 0 s" in ran.stderr
    assert json.loads(ran.stdout)["verdict"] == "PASS"


def test_a_memory_md_that_keeps_changing_is_not_written_over(toy_ws, monkeypatch):
    """After 20 reads that each saw MEMORY.md change, wb wrote anyway what it had composed from
    an older text: the hand edit in between was lost. Now it gives up, with the file as it is."""
    from workbench.errors import UserError
    from workbench.records import memory as memory_lib
    from workbench.workspace import Workspace

    ws = Workspace(toy_ws)
    path = ws.memory_path
    path.write_text("# MEMORY\n\nhand text 0\n")
    real_read = memory_lib.read_memory
    edits = iter(range(1, 1000))

    def editor_saves_between_reads(p):
        text = real_read(p)
        path.write_text(f"# MEMORY\n\nhand text {next(edits)}\n")  # a save lands after every read
        return text

    monkeypatch.setattr(memory_lib, "read_memory", editor_saves_between_reads)
    with pytest.raises(UserError, match="kept changing"):
        memory_lib.add_note(ws, "a lesson")
    monkeypatch.setattr(memory_lib, "read_memory", real_read)
    assert path.read_text().startswith("# MEMORY\n\nhand text ") and "a lesson" not in path.read_text()


def test_a_note_keeps_no_terminal_escapes_and_an_empty_stage_is_refused(toy_ws, wb):
    """`wb note $'\\x1b[31mred\\x1b[0m'` wrote the escape bytes into MEMORY.md (and echoed all of a
    20,000-character note); `--stage ''` was taken as no stage."""
    added = wb("note", "\x1b[31mred\x1b[0m and " + "x" * 20000)
    assert added.returncode == 0, added.stderr
    text = (toy_ws / "MEMORY.md").read_text()
    assert "\x1b" not in text and "[31mred [0m and xxx" in text and "x" * 20000 in text
    assert len(added.stdout) < 1000
    refused = wb("note", "y", "--stage", "")
    assert refused.returncode == 2 and "--stage is empty" in refused.stderr


def test_a_hand_edit_saved_while_wb_writes_memory_md_is_kept(toy_ws, monkeypatch):
    """An editor's save that landed after wb's last read but before its rename was written
    over (a helper's stress test lost 2-3 of ~600 appended lines). wb now checks again just
    before the rename, and a changed file is read and composed again."""
    from workbench.files import os as files_os
    from workbench.records import memory as memory_lib
    from workbench.workspace import Workspace

    ws = Workspace(toy_ws)
    ws.memory_path.write_text("# MEMORY\n\nhand text\n")
    real_fsync = files_os.fsync
    saved = []

    def editor_saves_during_the_write(fd):
        real_fsync(fd)
        if not saved and ".MEMORY.md." in os.readlink(f"/proc/self/fd/{fd}"):
            saved.append(True)
            ws.memory_path.write_text(ws.memory_path.read_text() + "a line saved meanwhile\n")

    monkeypatch.setattr(files_os, "fsync", editor_saves_during_the_write)
    memory_lib.add_note(ws, "a lesson")
    text = ws.memory_path.read_text()
    assert saved and "a line saved meanwhile" in text and "a lesson" in text


def test_characters_isdigit_takes_but_int_refuses_are_text_in_memorys_blocks():
    """"²" is a digit to str.isdigit() but not to int(): a hand-edited MEMORY.json case key or
    a bench case "n=²" gave a ValueError traceback in wb run and wb import; they sort and
    place as text now, and real numbers as numbers."""
    from workbench.records.memory import _case_sort_key, _n_key, _speed_place

    assert _n_key("²") == (1, 0, "²") and _n_key("4096") == (0, 4096, "")
    assert sorted(["n=4096", "n=²", "n=512"], key=_case_sort_key) == ["n=512", "n=4096", "n=²"]
    assert _speed_place("fmha/stage-d · n=² d=128 · H200", {}) == ("d=128", None)
    assert _speed_place("fmha/stage-d · n=4096 m=4096 d=128 · H200", {}) == ("d=128", 4096)
    from workbench.schemas.hosts import parse_gpus

    with pytest.raises(ValueError):
        parse_gpus("²", ValueError)
