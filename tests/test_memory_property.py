"""MEMORY.md property: wb never changes a byte it did not write.

1000 random edit sequences, each starting from random hand text (LF and CRLF endings, a
byte-order mark, no final newline, marker-like lines that are not markers, HTML comments,
tables, non-ASCII) and interleaving hand edits outside the blocks with wb's updates
(status/log, shapes, speed, notes) and with hand edits that break the markers. After every
wb update the text outside wb's blocks is what it was (bar line endings wb adds at the end of
the file before appending a block), the BOM is where it was, and a broken marker makes wb
refuse with one line naming the line and leave the file byte for byte as it was. Concurrent
writers killed with SIGKILL mid-update are the second test.
"""

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from workbench.records import memory
from workbench.workspace import Workspace

HAND_LINES = [
    "plain note",
    "**bold** and `code`",
    "<!-- a comment of my own -->",
    "<!-- wb:begin -->",  # no name: not a marker
    "<!-- wb:begin log --> trailing text",  # text after the marker: not a marker
    "`<!-- wb:end status -->` quoted in code",
    "<!-- wb: begin status -->",  # a space after the colon: not a marker
    "<!--wb:data {\"x\": 1}-->",
    "| a | b |",
    "## Lessons",
    "## Status",
    "- 2026-01-01 00:00 fake/stage **PASS** looks like a log line · 20260101-000000-000000 · abc",
    "ünïcödé — ✓ 漢字",
    "tab\there",
    "",
    "   ",
    "form\x0cfeed and lone\rcarriage return",
]

EXACT_MARKERS = ["<!-- wb:begin log -->", "<!-- wb:end status -->", "<!-- wb:begin status -->", "<!-- wb:end shapes -->"]


def hand_text(rng: random.Random) -> str:
    nl = rng.choice(["\n", "\r\n"])
    lines = [rng.choice(HAND_LINES) for _ in range(rng.randrange(0, 12))]
    text = nl.join(lines)
    if lines and rng.random() < 0.7:
        text += nl
    if rng.random() < 0.3:
        text = memory.BOM + text
    return text


def outside_blocks(raw: bytes) -> str:
    """The file's text with every wb block (begin to end marker) taken out."""
    text = raw.decode("utf-8")
    lines = memory.split_lines(text.removeprefix(memory.BOM))
    blocks = memory._scan(lines)
    inside = {i for b in blocks.values() for i in range(b.begin, b.end + 1)}
    return "".join(line for i, line in enumerate(lines) if i not in inside)


def same_hand_text(before: str, after: str) -> bool:
    """Equal, except blank lines and line endings wb may add at the very end."""
    return before.rstrip("\r\n \t") == after.rstrip("\r\n \t") and after.startswith(before.rstrip("\r\n \t"))


def record(i: int, stage: str) -> dict:
    return {
        "id": f"20261203-1200{i % 60:02d}-{i:06d}",
        "stage": stage,
        "verdict": random.Random(i).choice(["PASS", "FAIL", "HANG"]),
        "params": {"n": 128 * (1 + i % 3), "dtype": "bf16"},
        "variants": {},
        "started": "2026-12-03T12:00:00+00:00",
        "provenance": {"commit": "abcdef1234567", "dirty": False, "gpu": "NVIDIA H200"},
    }


def wb_update(ws: Workspace, rng: random.Random, step: int) -> None:
    op = rng.randrange(4)
    if op == 0:
        memory.record_run(ws, record(step, rng.choice(["k/stage-a", "k/stage-b"])))
    elif op == 1:
        snapshot = {"sm_90a": {"probes": [["tQsQ", f"(64,{step})", 1]], "ops": 3}}
        memory.update_data_block(ws, "shapes", lambda old: {**(old or {}), f"k/stage-{'abcde'[step % 5]}": snapshot})
    elif op == 2:
        from workbench.records.speed import speed_edit

        memory.update_blocks(ws, {"speed": speed_edit([{**record(step, "k/stage-d"), "kind": "bench", "bench": [{"case": f"s={step % 3}", "tflops": 100.0 + step}]}])})
    else:
        memory.add_note(ws, f"lesson {step}")


def hand_insert(raw: bytes, rng: random.Random) -> bytes:
    """A person adds a line somewhere outside the blocks (between two lines)."""
    text = raw.decode("utf-8")
    bom = text.startswith(memory.BOM)
    lines = memory.split_lines(text.removeprefix(memory.BOM))
    blocks = memory._scan(lines)
    inside = {i for b in blocks.values() for i in range(b.begin + 1, b.end + 1)}
    spots = [i for i in range(len(lines) + 1) if i not in inside and (i == 0 or lines[i - 1].endswith("\n"))]
    at = rng.choice(spots)
    lines.insert(at, rng.choice(HAND_LINES) + rng.choice(["\n", "\r\n"]))
    return ((memory.BOM if bom else "") + "".join(lines)).encode("utf-8")


def test_a_thousand_random_sequences_never_change_hand_text(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this test is about
    rng = random.Random(20261203)
    refusals = 0
    for seq in range(1000):
        ws = Workspace(tmp_path / f"ws{seq}")
        ws.root.mkdir()
        path = ws.memory_path
        path.write_bytes(hand_text(rng).encode("utf-8"))
        for step in range(rng.randrange(3, 7)):
            before = path.read_bytes()
            roll = rng.random()
            if roll < 0.25:
                path.write_bytes(hand_insert(before, rng))
                continue
            if roll < 0.35:  # a hand edit that breaks the markers: wb must refuse and touch nothing
                text = before.decode("utf-8")
                lines = memory.split_lines(text)
                lines.insert(rng.randrange(len(lines) + 1), rng.choice(EXACT_MARKERS) + "\n")
                broken = "".join(lines).encode("utf-8")
                try:
                    memory._scan(memory.split_lines(broken.decode("utf-8").removeprefix(memory.BOM)))
                except memory.MarkerError:
                    path.write_bytes(broken)
                    with pytest.raises(memory.MarkerError, match=r"line \d+"):
                        wb_update(ws, rng, seq * 10 + step)
                    assert path.read_bytes() == broken, f"sequence {seq}: a refused update changed the file"
                    refusals += 1
                    path.write_bytes(before)  # the person undoes it
                continue
            wb_update(ws, rng, seq * 10 + step)
            after = path.read_bytes()
            assert after.startswith(b"\xef\xbb\xbf") == before.startswith(b"\xef\xbb\xbf"), f"sequence {seq}: BOM moved"
            hand_before, hand_after = outside_blocks(before), outside_blocks(after)
            if not same_hand_text(hand_before, hand_after):
                # a lesson is the one thing wb adds outside its blocks: take it out and compare again
                lesson = next((line for line in memory.split_lines(hand_after) if line not in memory.split_lines(hand_before) and "lesson" in line), None)
                assert lesson is not None, f"sequence {seq}: hand text changed:\n{hand_before!r}\n->\n{hand_after!r}"
                hand_after = hand_after.replace(lesson, "", 1)
                assert all(line in hand_after for line in memory.split_lines(hand_before) if line.strip()), f"sequence {seq}: lost hand lines"
    assert refusals > 50  # the refusal path was really exercised


def _hammer(root: str, worker: int, count: int) -> None:
    ws = Workspace(Path(root))
    for i in range(count):
        memory.record_run(ws, record(worker * 1000 + i, f"k/stage-{'abcd'[worker]}"))


@pytest.mark.slow
def test_writers_killed_mid_update_lose_nothing_and_leave_no_temp_files(tmp_path):
    """Four processes update MEMORY.md in a loop and are killed with SIGKILL at random; a
    person's hand lines survive, the file is always well formed, and the next update removes
    the temporary files the killed writers left."""
    ws = Workspace(tmp_path)
    hand = "# Team\r\n\r\nHAND-1 written on Windows\r\n<!-- not a marker -->\r\n"
    ws.memory_path.write_bytes(hand.encode())
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(3)
    for round_ in range(6):
        procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 200)) for w in range(4)]
        for p in procs:
            p.start()
        time.sleep(rng.uniform(0.05, 0.3))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join(10)
        raw = ws.memory_path.read_bytes()
        assert same_hand_text(hand, outside_blocks(raw)), f"round {round_}: hand text changed"
    memory.record_run(ws, record(1, "k/stage-a"))
    assert not list(tmp_path.glob(".MEMORY.md.*.tmp"))
    text = ws.memory_path.read_bytes().decode()
    assert text.startswith(hand) and "\r\n<!-- wb:begin status -->\r\n" in text
