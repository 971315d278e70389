"""MEMORY.md: wb edits only its blocks, and no hand-written line is ever lost —
through concurrent updates from several processes (the random property test of every byte
outside the blocks is tests/test_memory_property.py)."""

import multiprocessing
import random
import re
from pathlib import Path

import pytest

from workbench.records import memory
from workbench.workspace import Workspace


def fake_record(i: int, stage: str = "toy/stage-a", verdict: str = "PASS", n: int = 128) -> dict:
    return {
        "id": f"20261127-1200{i // 60 % 60:02d}-{i:06d}",
        "stage": stage,
        "verdict": verdict,
        "params": {"n": n, "dtype": "bf16"},
        "variants": {},
        "started": "2026-11-27T12:00:00+00:00",
        "provenance": {"commit": "abcdef1234567", "dirty": False, "gpu": "NVIDIA H100"},
    }


def shapes_update(ws, i):
    snapshot = {"sm_90a": {"probes": [["tQsQ", f"(64,{i})", 1]], "ops": 3}}
    memory.update_data_block(ws, "shapes", lambda old: {**(old or {}), f"k/stage-{'abcdefg'[i % 7]}": snapshot})


def hand_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "HAND-" in line]


def test_update_keeps_hand_text_byte_for_byte(tmp_path):
    ws = Workspace(tmp_path)
    hand = "# My notes\n\nSome *hand* text   with spaces\n\n## Lessons\n\n- old lesson\n\nTrailing line without newline"
    ws.memory_path.write_text(hand)
    memory.record_run(ws, fake_record(1))
    text = ws.memory_path.read_text()
    assert text.startswith(hand + "\n")
    memory.record_run(ws, fake_record(2, verdict="FAIL", n=256))
    text2 = ws.memory_path.read_text()
    assert text2.startswith(hand + "\n")
    status = memory.block_content(text2, "status")
    assert "| toy/stage-a | 20261127-120000-000002 | FAIL | 1/2 | FAIL dtype=bf16 n=256 |" in status
    log = memory.block_content(text2, "log")
    assert log.index(fake_record(2)["id"]) < log.index(fake_record(1)["id"])


def test_a_case_has_one_key_whatever_the_parameter_order_and_parameters_added_since(tmp_path):
    """Status cases are keyed by the parameters that differ from kernel.yaml's defaults, in its
    order: -p given in another order, or a parameter the stage gained later (at its default),
    is the same case, and a key written before folds into it (its later verdict wins)."""
    ws = Workspace(tmp_path)
    defaults = {"toy/stage-d": {"m": "=n", "n": 128, "d": 128, "heads": 4, "kv_heads": "=heads", "causal": False, "softcap": 0.0}}

    def run(i, params, verdict):
        return {**fake_record(i, stage="toy/stage-d", verdict=verdict), "params": params}

    old = {"toy/stage-d": {"verdict": "FAIL", "last_run": "20261127-110000-000000", "cases": {
        "d=64 heads=4 causal=True kv_heads=4": {"4096": "FAIL"},  # written before softcap existed, kv_heads last
        "d=64 heads=8 kv_heads=2 causal=False softcap=0.0": {"1024": "PASS"},
    }}}
    memory.update_data_block(ws, "status", lambda _: old)
    memory.update_blocks(ws, memory.run_edits([
        run(1, {"n": 4096, "kv_heads": 4, "causal": True, "d": 64, "softcap": 0.0, "heads": 4}, "PASS"),
        run(2, {"heads": 8, "d": 64, "kv_heads": 2, "n": 1024, "softcap": 0.0, "causal": False}, "PASS"),
    ], defaults))
    cases = memory.read_data(ws.root / "MEMORY.json")["status"]["toy/stage-d"]["cases"]
    assert cases == {"d=64 causal=True": {"4096": "PASS"}, "d=64 heads=8 kv_heads=2": {"1024": "PASS"}}
    assert "| 2/2 | - |" in memory.block_content(ws.memory_path.read_text(), "status")


def test_log_is_capped_newest_first(tmp_path):
    ws = Workspace(tmp_path)
    for i in range(memory.LOG_CAP + 20):
        memory.record_run(ws, fake_record(i))
    log = memory.block_content(ws.memory_path.read_text(), "log")
    entries = [line for line in log.splitlines() if line.startswith("- ")]
    assert len(entries) == memory.LOG_CAP
    assert fake_record(memory.LOG_CAP + 19)["id"] in entries[0]


def test_note_goes_into_lessons(tmp_path):
    ws = Workspace(tmp_path)
    ws.memory_path.write_text("# M\n\n## Lessons\n\n- first\n\n## Other\n\ntext\n")
    line, added = memory.add_note(ws, "TMA coords:  mode 2 is the KV tile index", "fmha/stage-c")
    text = ws.memory_path.read_text()
    assert re.search(r"- \d{4}-\d{2}-\d{2} \[fmha/stage-c\] TMA coords: mode 2 is the KV tile index", line)
    assert added
    assert text.index("- first") < text.index(line) < text.index("## Other")
    assert text.endswith("## Other\n\ntext\n")


def test_a_note_cannot_open_an_html_comment_that_hides_the_rest_of_memory(tmp_path):
    """`wb note "<!--"` went in as typed: rendered, MEMORY.md then showed nothing after it,
    wb's own blocks included. The opening is written as an entity, which renders the same."""
    ws = Workspace(tmp_path)
    ws.memory_path.write_text("# M\n\n## Lessons\n\n## Other\n\n<!-- wb:begin speed -->\n<!-- wb:end speed -->\n")
    line, _ = memory.add_note(ws, "use <!-- sparingly")
    text = ws.memory_path.read_text()
    assert line.endswith("use &lt;!-- sparingly") and text.count("<!--") == 2


def test_a_lessons_heading_inside_a_code_fence_is_not_the_section(tmp_path):
    """A fenced example holding `## Lessons` above the real section got the new lesson inside
    the fence."""
    ws = Workspace(tmp_path)
    ws.memory_path.write_text("# M\n\nExample:\n\n```\n## Lessons\n- an example\n```\n\n## Lessons\n\n- first\n")
    line, _ = memory.add_note(ws, "a lesson")
    text = ws.memory_path.read_text()
    assert text.index("- first") < text.index(line) and text.count("```") == 2
    assert text.index(line) > text.rindex("```")


def test_text_typed_inside_a_block_is_kept_below_it(tmp_path):
    ws = Workspace(tmp_path)
    memory.record_run(ws, fake_record(1))
    text = ws.memory_path.read_text()
    text = text.replace("## Status\n", "## Status\nHAND-inside the block\n")
    ws.memory_path.write_text(text)
    memory.record_run(ws, fake_record(2))
    after = ws.memory_path.read_text()
    assert "HAND-inside the block" in after
    assert "HAND-inside" not in (memory.block_content(after, "status") or "")


def _worker(root: str, worker: int, count: int) -> None:
    ws = Workspace(Path(root))
    for i in range(count):
        memory.record_run(ws, fake_record(worker * 1000 + i, stage=f"k/stage-{'abcd'[worker]}", n=128 * (1 + i % 3)))
        if i % 5 == 0:
            memory.add_note(ws, f"HAND-note-w{worker}-{i}")
        if i % 7 == 0:
            shapes_update(ws, i)


@pytest.mark.slow
def test_concurrent_processes_lose_no_update_and_no_hand_text(tmp_path):
    from filelock import FileLock

    ws = Workspace(tmp_path)
    ws.memory_path.write_text(memory.TEMPLATE + "HAND-start\n")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    hand = ["HAND-start"]
    rng = random.Random(7)
    # Meanwhile a person edits the file (saving through the same lock, as an editor save is one write).
    for k in range(60):
        ws.state_dir.mkdir(exist_ok=True)
        with FileLock(str(ws.state_dir / "memory.lock")):
            lines = ws.memory_path.read_text().splitlines(keepends=True)
            lines.insert(rng.randrange(len(lines) + 1), f"HAND-live-{k}\n")
            ws.memory_path.write_text("".join(lines))
        hand.append(f"HAND-live-{k}")
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    text = ws.memory_path.read_text()
    lines = text.splitlines()
    assert [h for h in hand if h not in lines] == []
    notes = [line for line in lines if "HAND-note-w" in line]
    assert len(notes) == 4 * 8
    status = memory.block_content(text, "status")
    for w in range(4):
        assert f"k/stage-{'abcd'[w]}" in status


def test_a_hand_typed_row_naming_a_stage_is_kept(tmp_path):
    """A row was wb's when its first cell named a stage, so a person's two-cell row about that
    stage vanished at the next run; wb's rows have its table's width."""
    ws = Workspace(tmp_path)
    memory.record_run(ws, fake_record(1))
    text = ws.memory_path.read_text()
    old_row = next(line for line in text.splitlines() if line.startswith("| toy/stage-a |"))
    stale = old_row.replace("| PASS |", "| FAIL |", 1)  # as an older wb wrote it: still wb's
    text = text.replace(old_row, f"{stale}\n| toy/stage-a | HAND-why it is slow |")
    ws.memory_path.write_text(text)
    memory.record_run(ws, fake_record(2))
    after = ws.memory_path.read_text()
    assert "| toy/stage-a | HAND-why it is slow |" in after
    assert stale not in after


def test_an_older_run_folded_in_later_does_not_become_the_last_run(tmp_path):
    """`wb import` folds in runs made elsewhere, often before the newest local one: the stage's
    status then named the imported, older run as its last (and its verdict)."""
    ws = Workspace(tmp_path)
    memory.record_run(ws, fake_record(50, verdict="PASS"))
    memory.update_blocks(ws, memory.run_edits([fake_record(7, verdict="FAIL", n=256)]))
    status = memory.read_data(memory.data_path(ws.memory_path))["status"]["toy/stage-a"]
    assert status["last_run"] == fake_record(50)["id"] and status["verdict"] == "PASS"
    assert status["cases"]["dtype=bf16"] == {"128": "PASS", "256": "FAIL"}  # its case still counts


def test_a_nan_typed_into_memory_json_is_written_back_as_null(tmp_path):
    """MEMORY.json with a hand-typed NaN was read and written back with NaN, which is not JSON."""
    import json

    ws = Workspace(tmp_path)
    memory.record_run(ws, fake_record(1))
    data_file = memory.data_path(ws.memory_path)
    data = json.loads(data_file.read_text())
    data["speed"] = {"toy/stage-a · n=128 · G": {"tflops": float("nan"), "run": "x"}}
    data_file.write_text(json.dumps(data))
    memory.record_run(ws, fake_record(2))

    def refuse(name):
        raise AssertionError(f"{name} in MEMORY.json")

    written = json.loads(data_file.read_text(), parse_constant=refuse)
    assert written["speed"]["toy/stage-a · n=128 · G"]["tflops"] is None


def test_a_note_given_twice_is_kept_once(tmp_path):
    """`wb note` whose output was lost (a full stdout: exit 2 after the lesson was written) is
    retried: the retry duplicated the lesson. The section holds each line once; another lesson
    still goes in after it."""
    ws = Workspace(tmp_path)
    ws.memory_path.write_text("# M\n\n## Lessons\n\n- first\n\n## Other\n\ntext\n")
    line, added = memory.add_note(ws, "a lesson", "fmha/stage-c")
    once = ws.memory_path.read_text()
    assert added and memory.add_note(ws, "a  lesson", "fmha/stage-c") == (line, False)  # the same line once made one
    assert ws.memory_path.read_text() == once and once.count(line) == 1
    other, added = memory.add_note(ws, "a lesson")  # not about the stage: another line
    assert ws.memory_path.read_text().count("a lesson") == 2 and other != line and added


def test_wb_note_says_added_or_already_in_as_the_section_holds_it(toy_ws, wb):
    """`wb note` decided "already in" from a read of the whole file before add_note read it again
    under its lock: the lesson's line quoted elsewhere (a code example) made it say "already in"
    while add_note added it to the Lessons section. The message now comes from the edit itself."""
    line = memory.lesson_line("a lesson")
    (toy_ws / "MEMORY.md").write_text(f"# M\n\n```\n{line}\n```\n\n## Lessons\n\n- first\n")
    first = wb("note", "a lesson")
    assert first.returncode == 0 and first.stdout.startswith("added to MEMORY.md: "), first.stdout
    assert (toy_ws / "MEMORY.md").read_text().count(line) == 2
    again = wb("note", "a lesson")
    assert again.returncode == 0 and again.stdout.startswith("already in MEMORY.md: "), again.stdout
    assert (toy_ws / "MEMORY.md").read_text().count(line) == 2
