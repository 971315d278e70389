"""`wb import`: all or nothing, with limits, never following a link.

Each test reproduces a way an import used to leave a third state (runs copied, MEMORY.md not
updated, and a second import saying "nothing new"), to write gigabytes, or to copy a file
from outside the imported folder (issue "Trust nothing that comes in", items 3 and 11).
"""

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from conftest import unlistable
from workbench.records import memory
from workbench.errors import UserError
from workbench.records.importer import Limits, import_runs
from workbench.records.store import run_ids
from workbench.workspace import Workspace


def make_runs(folder: Path, count: int = 3, **override) -> list[str]:
    ids = []
    for i in range(count):
        rid = f"20261203-0900{i:02d}-{i:06d}"
        d = folder / "runs" / rid
        d.mkdir(parents=True)
        record = {
            "schema": 1, "kind": "run", "stage": "toy/stage-a", "verdict": "PASS", "params": {"n": 128 * (i + 1), "dtype": "bf16"},
            "variants": {"bug": "none"}, "started": "2026-12-03T09:00:00+00:00", "provenance": {"gpu": "NVIDIA H200"}, **override,
        }
        (d / "run.json").write_text(json.dumps(record))
        (d / "report.md").write_text(f"# run {rid}\n")
        ids.append(rid)
    return ids


def tarball(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder / "runs", arcname="runs")
    return out


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "wb.yaml").write_text("{}\n")
    (root / "MEMORY.md").write_text("# Team memory\n\nhand text\n")
    return Workspace(root)


def state(ws: Workspace) -> tuple:
    """Everything an import may change: the run ids, MEMORY.md's and MEMORY.json's bytes, the reports."""
    reports = sorted(p.name for p in (ws.runs_dir / "reports").glob("*")) if (ws.runs_dir / "reports").is_dir() else []
    memory_bytes = ws.memory_path.read_bytes() if ws.memory_path.is_file() else None
    sidecar = memory.data_path(ws.memory_path)
    return run_ids(ws.runs_dir), memory_bytes, sidecar.read_bytes() if sidecar.is_file() else None, reports


def test_import_of_a_tarball_reaches_runs_memory_and_reports(ws, tmp_path):
    ids = make_runs(tmp_path / "src")
    done = import_runs(ws, tarball(tmp_path / "src", tmp_path / "runs.tgz"))
    assert [r["id"] for r in done.records] == ids and run_ids(ws.runs_dir) == ids
    status = memory.block_content(ws.memory_path.read_text(), "status")
    assert f"| toy/stage-a | {ids[-1]} | PASS | 3/3 |" in status
    saved = memory.read_data(memory.data_path(ws.memory_path))["status"]["toy/stage-a"]["cases"]
    assert saved == {"dtype=bf16": {"128": "PASS", "256": "PASS", "384": "PASS"}}
    assert ws.memory_path.read_text().startswith("# Team memory\n\nhand text\n")
    assert (ws.runs_dir / "reports" / "toy-stage-a.md").is_file()
    assert import_runs(ws, tmp_path / "runs.tgz").records == []  # already here


@pytest.mark.parametrize("breakage", ["not-utf8", "folder", "broken-markers", "broken-memory-json"])
def test_a_memory_wb_cannot_update_leaves_nothing_imported(ws, tmp_path, breakage):
    """The runs used to be copied before MEMORY.md failed: a second import then said
    'nothing new' and they never reached MEMORY.md. Now nothing moves; after the fix,
    the same import brings everything."""
    ids = make_runs(tmp_path / "src")
    archive = tarball(tmp_path / "src", tmp_path / "runs.tgz")
    good = ws.memory_path.read_bytes()
    if breakage == "not-utf8":
        ws.memory_path.write_bytes(good + b"\xff\n")
    elif breakage == "folder":
        ws.memory_path.unlink()
        ws.memory_path.mkdir()
    elif breakage == "broken-markers":
        ws.memory_path.write_bytes(good + b"<!-- wb:begin status -->\n")
    else:
        memory.data_path(ws.memory_path).write_text('{"version": 1, "status": [')
    before = state(ws)
    with pytest.raises(UserError):
        import_runs(ws, archive)
    assert state(ws) == before
    assert not list(ws.state_dir.glob("import-*"))
    if ws.memory_path.is_dir():
        ws.memory_path.rmdir()
    ws.memory_path.write_bytes(good)
    memory.data_path(ws.memory_path).unlink(missing_ok=True)
    assert [r["id"] for r in import_runs(ws, archive).records] == ids
    assert "toy/stage-a" in memory.block_content(ws.memory_path.read_text(), "status")


def test_memory_md_failing_after_memory_json_was_written_undoes_both(ws, tmp_path, monkeypatch):
    """MEMORY.json is written first: when MEMORY.md then fails (disk full), MEMORY.json is put
    back and the runs are taken out again, so a second import still brings everything."""
    make_runs(tmp_path / "old", 1)
    import_runs(ws, tmp_path / "old")
    ids = make_runs(tmp_path / "src", 3, stage="toy/stage-b")
    before = state(ws)
    real = memory.atomic_write_text

    def disk_full_for_memory_md(path, text, newline=None, **kwargs):
        if Path(path).name == "MEMORY.md":
            raise UserError(f"cannot write {path}: No space left on device")
        real(path, text, newline, **kwargs)

    monkeypatch.setattr(memory, "atomic_write_text", disk_full_for_memory_md)
    with pytest.raises(UserError, match="No space left on device"):
        import_runs(ws, tmp_path / "src")
    assert state(ws) == before
    monkeypatch.undo()
    assert [r["id"] for r in import_runs(ws, tmp_path / "src").records] == ids[1:]  # ids[0] came with "old"
    assert "toy/stage-b" in memory.read_data(memory.data_path(ws.memory_path))["status"]


@pytest.mark.parametrize("bad", [{"verdict": {"x": 1}}, {"params": [1, 2]}, {"params": {"dtype": "bf16\n<!-- wb:end log -->"}}])
def test_one_malformed_record_refuses_the_whole_import(ws, tmp_path, bad):
    make_runs(tmp_path / "src", 2)
    make_runs(tmp_path / "other", 1, **bad)
    shutil.copytree(tmp_path / "other" / "runs", tmp_path / "src" / "runs", dirs_exist_ok=True)
    (tmp_path / "src/runs/20261203-090000-000000").rename(tmp_path / "src/runs/20261203-090009-000009")
    shutil.copytree(tmp_path / "other/runs/20261203-090000-000000", tmp_path / "src/runs/20261203-090000-000000")
    before = state(ws)
    key = next(iter(bad))
    with pytest.raises(UserError, match=rf"run\.json: {key}") as err:
        import_runs(ws, tmp_path / "src")
    assert state(ws) == before
    # named where it is in the source (the staging folder under .wb is gone by then)
    assert str(err.value).startswith(f"{tmp_path / 'src'}: runs/20261203-090000-000000/run.json: {key}"), str(err.value)


def _zeros_bomb(path: Path, gib: int = 1) -> Path:
    """A ~1 MB .tgz whose one member is `gib` GiB of zeros (gzip members concatenated)."""
    header = tarfile.TarInfo("runs/20261203-090000-000000/zeros.bin")
    header.size = gib << 30
    chunk = zlib.compressobj(9, zlib.DEFLATED, 31)
    one_mib = chunk.compress(b"\0" * (1 << 20)) + chunk.flush()
    with open(path, "wb") as fh:
        head = zlib.compressobj(9, zlib.DEFLATED, 31)
        fh.write(head.compress(header.tobuf(format=tarfile.GNU_FORMAT)) + head.flush())
        for _ in range(gib << 10):
            fh.write(one_mib)
    return path


def test_a_zip_bomb_is_refused_before_writing(ws, tmp_path):
    bomb = _zeros_bomb(tmp_path / "bomb.tgz")
    assert bomb.stat().st_size < 4 << 20
    before = state(ws)
    with pytest.raises(UserError, match="zeros.bin is 1024 MiB, over the 256 MiB a file may have"):
        import_runs(ws, bomb)
    assert state(ws) == before
    written = sum(p.stat().st_size for p in ws.root.rglob("*") if p.is_file())
    assert written < 1 << 20


def test_total_and_count_limits(ws, tmp_path):
    make_runs(tmp_path / "src", 3)
    for rid in run_ids(tmp_path / "src" / "runs"):
        (tmp_path / "src" / "runs" / rid / "pic.png").write_bytes(os.urandom(40_000))
    with pytest.raises(UserError, match="holds over 0 MiB"):
        import_runs(ws, tmp_path / "src", Limits(file_bytes=1 << 20, total_bytes=100_000))
    with pytest.raises(UserError, match="holds over 5 files"):
        import_runs(ws, tmp_path / "src", Limits(files=5))
    assert run_ids(ws.runs_dir) == []


def test_links_are_refused_in_folders_and_archives(ws, tmp_path):
    """`wb import DIR` followed a symlink out of DIR and copied the outside file; a dangling
    one was a traceback. Both are one line now, and nothing is imported."""
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    make_runs(tmp_path / "src", 2)
    link = tmp_path / "src/runs/20261203-090000-000000/notes.txt"
    link.symlink_to(secret)
    with pytest.raises(UserError, match=r"notes.txt is a link: wb imports regular files and folders only"):
        import_runs(ws, tmp_path / "src")
    link.unlink()
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"notes.txt is a link"):
        import_runs(ws, tmp_path / "src")
    with tarfile.open(tmp_path / "links.tgz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "runs", arcname="runs")
    with pytest.raises(UserError, match=r"notes.txt is a link"):
        import_runs(ws, tmp_path / "links.tgz")
    assert run_ids(ws.runs_dir) == [] and not any(ws.root.rglob("notes.txt"))


def test_a_folder_that_cannot_be_listed_refuses_the_import(ws, tmp_path, monkeypatch):
    """os.walk skipped a folder it could not list, in silence: its run came in without its
    files (or not at all). Now one line names it and nothing is imported."""
    ids = make_runs(tmp_path / "src", 2)
    unlistable(monkeypatch, (tmp_path / "src/runs" / ids[1]).resolve())
    with pytest.raises(UserError, match=rf"cannot read runs/{ids[1]}: Permission denied; nothing was imported"):
        import_runs(ws, tmp_path / "src")
    assert run_ids(ws.runs_dir) == []


def test_a_source_nested_past_the_depth_limit_is_refused_and_a_deep_leftover_is_removed(ws, tmp_path):
    """A run folder holding 1500 nested folders (or an archive member that deep) raised
    RecursionError in the walk and again in the staging folder's removal, a traceback; the
    staging folder left in .wb/ then raised it in every later import. The depth is refused in one
    line, and a deep leftover of an older wb is removed by the next import, which goes on."""
    ids = make_runs(tmp_path / "src", 1)

    def nest(top: Path, levels: int) -> None:
        here = os.getcwd()
        os.chdir(top)
        try:
            for _ in range(levels):
                os.mkdir("a")
                os.chdir("a")
            Path("f").write_text("x")
        finally:
            os.chdir(here)

    try:
        nest(tmp_path / "src/runs" / ids[0], 1500)
        with pytest.raises(UserError, match="is nested over 32 folders deep; nothing was imported"):
            import_runs(ws, tmp_path / "src")
        deep = tarfile.TarInfo("runs/" + ids[0] + "/" + "a/" * 1200 + "f")
        with tarfile.open(tmp_path / "deep.tgz", "w:gz") as tar:
            tar.addfile(deep, io.BytesIO(b""))
        with pytest.raises(UserError, match="is nested over 32 folders deep; nothing was imported"):
            import_runs(ws, tmp_path / "deep.tgz")
        assert run_ids(ws.runs_dir) == []
        ws.state_dir.mkdir(parents=True, exist_ok=True)
        (ws.state_dir / "import-old").mkdir()
        nest(ws.state_dir / "import-old", 1500)  # what an older wb left behind
        good = make_runs(tmp_path / "good", 1)
        import_runs(ws, tmp_path / "good")
        assert run_ids(ws.runs_dir) == good and not (ws.state_dir / "import-old").exists()
    finally:
        # pytest's own tmp cleanup (a recursive rmtree on Python 3.11) raises RecursionError on
        # a tree this deep when it prunes old sessions, which failed a whole CI run.
        for deep_tree in (tmp_path / "src", ws.state_dir / "import-old"):
            subprocess.run(["rm", "-rf", "--", str(deep_tree)], check=True)


def test_bench_records_without_provenance_or_with_no_speed_import_without_nonsense(ws, tmp_path):
    """A bench record without `provenance` raised KeyError (a traceback) in the speed block;
    tflops of NaN, inf, -5 or 1e308 (the schema reads them) reached MEMORY.md as 'nan ×nan',
    '-5 ×-0.01' or a 309-digit cell, and a peer of -1 gave '×-500.00'. Now the card is '?' and a
    value that is no speed shows the case's verdict, as the perf doc does."""
    bench = lambda t, peer: [{"case": "n=128", "verdict": "PASS", "tflops": t, "peers": {"p": {"tflops": peer}}}]  # noqa: E731
    make_runs(tmp_path / "src", 1, kind="bench", bench=bench(float("nan"), -1.0))
    record = tmp_path / "src/runs/20261203-090000-000000/run.json"
    data = json.loads(record.read_text())
    del data["provenance"]
    record.write_text(json.dumps(data))
    import_runs(ws, tmp_path / "src")
    text = ws.memory_path.read_text()
    assert "toy/stage-a · n=128 · ?" in memory.data_path(ws.memory_path).read_text()
    assert "nan" not in text and "×-" not in text
    for i, (t, peer) in enumerate([(float("inf"), 5.0), (-5.0, 5.0), (1e308, 5.0), (400.0, -1.0)]):
        make_runs(tmp_path / f"src{i}", 1, kind="bench", bench=bench(t, peer),
                  started=f"2026-12-03T09:0{i + 1}:00+00:00")
        src = tmp_path / f"src{i}/runs"
        src.joinpath("20261203-090000-000000").rename(src / f"20261203-0901{i:02d}-000000")
        import_runs(ws, tmp_path / f"src{i}")
        text = ws.memory_path.read_text()
        assert "inf" not in text and "×-" not in text and "-5" not in text and not re.search(r"\d{12}", text), text
    assert "| 400 |" in text, text  # a real speed beside a peer that is none: no ratio


def test_path_traversal_in_an_archive_is_refused(ws, tmp_path):
    evil = tmp_path / "evil.tgz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("runs/../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match=r"runs/\.\./\.\./escaped.txt climbs out of its folder \('\.\.'\); nothing was imported"):
        import_runs(ws, evil)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_an_archive_member_beside_runs_is_refused_not_silently_dropped(ws, tmp_path):
    """`runs/../<id>/run.json` stayed inside the staging folder, so the tar filter let it
    through, but no run is read beside runs/: the run was dropped and the import said
    "nothing new". Any '..' in a member's name now refuses the import in one line."""
    ids = make_runs(tmp_path / "src", 1)
    with tarfile.open(tmp_path / "odd.tgz", "w:gz") as tar:
        tar.add(tmp_path / "src/runs", arcname="runs")
        tar.add(tmp_path / "src/runs" / ids[0], arcname=f"runs/../{ids[0][:-1]}9")
    with pytest.raises(UserError, match=r"climbs out of its folder \('\.\.'\); nothing was imported"):
        import_runs(ws, tmp_path / "odd.tgz")
    assert run_ids(ws.runs_dir) == []


def test_cli_import_errors_are_one_line(ws, tmp_path, capsys, monkeypatch):
    from workbench.cli import main

    monkeypatch.chdir(ws.root)
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball at all")
    for argv in (["import", str(tmp_path / "junk.tgz")], ["import", str(tmp_path / "missing")], ["import", str(_zeros_bomb(tmp_path / "b.tgz"))]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_ctrl_c_while_runs_move_into_runs_waits_until_the_import_is_whole(ws, tmp_path, monkeypatch):
    """A Ctrl-C between a run's rename into runs/ and its note in the undo list left that run in
    runs/ but not in MEMORY.md, and no later import would publish it. Now the signal waits for
    the import to finish (every run in runs/ and MEMORY.md), then stops wb."""
    import signal

    from workbench.records import importer

    ids = make_runs(tmp_path / "src")
    real_rename = os.rename

    def rename_then_ctrl_c(src, dst):
        real_rename(src, dst)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(importer.os, "rename", rename_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        import_runs(ws, tmp_path / "src")
    text = ws.memory_path.read_text()
    assert all((ws.runs_dir / i / "run.json").is_file() and i in text for i in ids)


def test_an_import_killed_between_its_renames_and_memory_md_is_finished_by_the_next(ws, tmp_path):
    """kill -9 of `wb import` after some runs were renamed into runs/ but before MEMORY.md
    (no handler runs for SIGKILL): those runs never reached MEMORY.md, since every later import
    skipped them as already here, and the staging folder (tens of MB) stayed in .wb. The import
    leaves a list of the runs it moves; the next one publishes them and removes the leftovers."""
    ws.runs_dir.mkdir(parents=True)
    killed = []
    for rid in make_runs(tmp_path / "killed", count=2):  # where the killed import had renamed them
        killed.append(rid.replace("-0900", "-0800"))
        shutil.move(str(tmp_path / "killed" / "runs" / rid), str(ws.runs_dir / killed[-1]))
    ws.ensure_state_dir()
    (ws.state_dir / "import-pending.json").write_text(json.dumps(killed))
    leftover = ws.state_dir / "import-abc123" / "source"
    leftover.mkdir(parents=True)
    (leftover / "big").write_bytes(b"x" * 1000)
    later = make_runs(tmp_path / "later", count=3, stage="toy/stage-b")
    with pytest.warns(UserWarning, match=r"an earlier import was killed before MEMORY.md: its 2 run\(s\)"):
        done = import_runs(ws, tarball(tmp_path / "later", tmp_path / "later.tgz"))
    assert [r["id"] for r in done.records] == later  # the new import, as usual
    log = memory.block_content(ws.memory_path.read_text(), "log")
    assert all(rid in log for rid in killed + later), log
    assert log.count(killed[0]) == 1
    assert not (ws.state_dir / "import-pending.json").exists() and not (ws.state_dir / "import-abc123").exists()


def test_folders_whose_names_are_no_run_ids_are_named_not_silently_dropped(ws, tmp_path):
    """A tarball with runs/notanid/run.json said "imported 0 run(s) … nothing new"."""
    ids = make_runs(tmp_path / "src", count=1)
    shutil.copytree(tmp_path / "src" / "runs" / ids[0], tmp_path / "src" / "runs" / "notanid")
    (tmp_path / "src" / "runs" / "reports").mkdir()  # wb's own stage reports: not a run, not news
    done = import_runs(ws, tmp_path / "src")
    assert [r["id"] for r in done.records] == ids and done.not_runs == ["notanid"]


def test_import_json_names_each_imported_run_and_what_was_left_out(ws, tmp_path, wb):
    """A script (the GPU round trip: import, then `wb bench --sweep --from RUN`) reads the run ids
    from --json instead of scraping the summary line."""
    ids = make_runs(tmp_path / "src", count=2)
    (tmp_path / "src" / "runs" / "notanid").mkdir()
    (tmp_path / "src" / "runs" / "20261203-095959-000009").mkdir()  # unfinished where it was made
    proc = wb("import", str(tmp_path / "src"), "--json", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [(r["id"], r["stage"], r["verdict"]) for r in out["imported"]] == [(i, "toy/stage-a", "PASS") for i in ids]
    assert out["without_record"] == ["20261203-095959-000009"] and out["not_runs"] == ["notanid"]
    again = json.loads(wb("import", str(tmp_path / "src"), "--json", cwd=ws.root).stdout)
    assert again["imported"] == [] and again["already_here"] == ids and again["taken"] == []  # runs already here are skipped


def test_a_run_whose_id_is_taken_here_by_another_run_is_named_not_silently_dropped(ws, tmp_path, wb):
    """A run id this workspace holds for a different run (another machine's run of the same
    microsecond, a record edited since) was skipped like a run already here, and the import
    said "nothing new": the incoming run was lost without a word. The summary now tells the
    two apart and names the ids it left out."""
    ids = make_runs(tmp_path / "src", count=2)
    assert wb("import", str(tmp_path / "src"), cwd=ws.root).returncode == 0
    other = make_runs(tmp_path / "other", count=2, verdict="FAIL")
    proc = wb("import", str(tmp_path / "other"), cwd=ws.root)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "imported 0 run(s)" in text, proc.stdout + proc.stderr
    assert f"not imported: 2 run(s) whose ids runs/ holds for other runs" in text and other[0] in text, text
    out = json.loads(wb("import", str(tmp_path / "src"), "--json", cwd=ws.root).stdout)
    assert out["already_here"] == ids and out["taken"] == []
    out = json.loads(wb("import", str(tmp_path / "other"), "--json", cwd=ws.root).stdout)
    assert out["already_here"] == [] and out["taken"] == other
    assert "(2 already here)" in " ".join(wb("import", str(tmp_path / "src"), cwd=ws.root).stdout.split())


def test_an_import_into_a_runs_folder_wb_cannot_write_names_it(ws, tmp_path, monkeypatch):
    """It said only "import failed and was undone: Permission denied"."""
    make_runs(tmp_path / "src", count=1)
    ws.runs_dir.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == ws.runs_dir else real_access(path, mode, **kw))
    with pytest.raises(UserError, match=r"runs is not writable"):
        import_runs(ws, tmp_path / "src")
    assert run_ids(ws.runs_dir) == []


def test_a_stage_report_wb_cannot_write_after_an_import_is_a_warning(ws, tmp_path, wb):
    """With runs/reports a file, wb import moved the runs in and updated MEMORY.md, then
    ended with 'wb: error: cannot write .../reports/...' and exit 2: the user took the import
    for failed, and the next import said "nothing new"."""
    ids = make_runs(tmp_path / "src", count=1)
    ws.runs_dir.mkdir()
    (ws.runs_dir / "reports").write_text("in the way\n")
    proc = wb("import", tmp_path / "src", cwd=ws.root)
    assert proc.returncode == 0, proc.stderr
    assert "imported 1 run(s)" in proc.stdout and "Traceback" not in proc.stderr
    assert "wb: warning: stage report not written" in proc.stderr and "wb: error" not in proc.stderr
    assert run_ids(ws.runs_dir) == ids and ids[0] in ws.memory_path.read_text()
    assert (ws.runs_dir / "reports").read_text() == "in the way\n"


def test_a_workspace_path_with_brackets_is_printed_as_it_is(tmp_path, wb):
    """The paths wb import and wb run print were rich markup: a workspace under 'copy [wip]'
    was named '.../copy /ws/runs', and one under 'x[' + '/y]' ended in a MarkupError
    traceback after the runs were imported."""
    from workbench.cli.render import render_run
    from workbench.records.store import load_record
    from workbench.terminal import console

    for parent in ("copy [wip]", "x[/y]"):
        root = tmp_path / parent / "ws"
        root.mkdir(parents=True)
        (root / "wb.yaml").write_text("{}\n")
        source = tmp_path / f"src-{len(parent)}"
        make_runs(source, count=1)
        proc = wb("import", source, cwd=root)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert f"into {root / 'runs'}: 1 PASS" in proc.stdout, proc.stdout
        (run_id,) = run_ids(root / "runs")
        with console.capture() as shown:  # what wb run prints under its table
            render_run(load_record(root / "runs" / run_id))
        assert f"report: {root / 'runs' / run_id}/report.md" in shown.get().replace("\n", "")


def test_an_import_that_waits_past_its_limit_for_another_is_one_line_and_changes_nothing(ws, tmp_path, monkeypatch):
    """A second wb import waiting on a running one ended, after 10 minutes, in filelock's
    Timeout traceback; it says which lock it waited for now (the limit shortened here)."""
    from filelock import FileLock

    from workbench.records import importer

    make_runs(tmp_path / "src", 1)
    before = state(ws)
    monkeypatch.setattr(importer, "LOCK_WAIT_S", 0.2)
    ws.ensure_state_dir()
    with FileLock(str(ws.state_dir / "import.lock")):  # another wb import holds it
        with pytest.raises(UserError, match=r"another wb import into this workspace has held .*import\.lock for 0 s"):
            import_runs(ws, tmp_path / "src")
    assert state(ws) == before
    assert [r["id"] for r in import_runs(ws, tmp_path / "src").records] == run_ids(tmp_path / "src" / "runs")


def test_a_run_folder_whose_name_ends_in_a_newline_is_no_run_id(ws, tmp_path):
    """The run id check ended in `$`, which matches before a final newline: an archive's
    `runs/<id>\\n/run.json` passed as a run beside the real <id> (listed twice, the MEMORY.md
    log holding the newline). Such a folder, or one of other scripts' digits, is no run id."""
    from workbench.records.store import is_run_id

    ids = make_runs(tmp_path / "src", 1)
    assert is_run_id(ids[0]) and not is_run_id(ids[0] + "\n") and not is_run_id("٢٠٢٦١٢٠٣-090000-000000")
    record = (tmp_path / "src/runs" / ids[0] / "run.json").read_bytes()
    with tarfile.open(tmp_path / "nl.tgz", "w:gz") as tar:
        member = tarfile.TarInfo(f"runs/{ids[0]}\n/run.json")
        member.size = len(record)
        tar.addfile(member, io.BytesIO(record))
    done = import_runs(ws, tmp_path / "nl.tgz")
    assert done.records == [] and done.not_runs == [ids[0] + "\n"] and run_ids(ws.runs_dir) == []


def test_runs_dated_ahead_of_this_clock_are_named_since_last_would_name_them(ws, tmp_path, wb):
    """Run ids are this machine's local time. A GPU box on UTC imported into a workspace west
    of it (or a clock ahead) gave runs that sorted after every run made here for hours, so
    `wb last` kept naming the import. The import now says which runs are dated ahead."""
    from datetime import datetime, timedelta

    from workbench.records.importer import dated_ahead

    now = datetime(2026, 12, 6, 9, 0, 0)
    assert dated_ahead(["20261206-090500-000000", "20261206-091100-000000", "20261399-000000-000000"], now) == [
        "20261206-091100-000000"
    ]  # 5 minutes ahead is a clock's drift; 11 is not; a month 13 has no date to compare
    make_runs(tmp_path / "src", count=1)
    future = (datetime.now() + timedelta(hours=8)).strftime("%Y%m%d-%H%M%S-000001")
    shutil.copytree(tmp_path / "src" / "runs" / "20261203-090000-000000", tmp_path / "src" / "runs" / future)
    proc = wb("import", str(tmp_path / "src"), cwd=ws.root)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "1 imported run(s) are dated ahead of this machine's clock" in text and future in text, text
    assert "20261203-090000-000000" not in text.split("dated ahead")[1]
    again = json.loads(wb("import", str(tmp_path / "src"), "--json", cwd=ws.root).stdout)
    assert again["ahead"] == []  # nothing new imported: nothing to warn of
