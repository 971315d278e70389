"""MEMORY.json: the machine data behind MEMORY.md's status, speed and shapes blocks.

tests/data/MEMORY-before-sidecar.md is this repo's MEMORY.md as it was when those blocks
kept their data in `<!-- wb:data {...} -->` lines (95 KB, status and speed with a row per
parameter set). The first update moves every block's data into MEMORY.json and renders
short blocks; nothing is lost, and a broken MEMORY.json stops wb without a write.
"""

import json
import shutil
from pathlib import Path

import pytest

from workbench.records import memory
from workbench.errors import UserError
from workbench.schemas import SchemaError
from workbench.workspace import Workspace

LEGACY = Path(__file__).parent / "data" / "MEMORY-before-sidecar.md"


def legacy_ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path)
    shutil.copyfile(LEGACY, ws.memory_path)
    return ws


def outside_blocks(text: str) -> str:
    lines = memory.split_lines(text)
    inside = {i for b in memory._scan(lines).values() for i in range(b.begin, b.end + 1)}
    return "".join(line for i, line in enumerate(lines) if i not in inside)


def legacy_blobs() -> dict:
    text = LEGACY.read_text()
    return {name: memory._data_of(memory.block_content(text, name)) for name in ("status", "speed", "shapes")}


def record(i: int, stage: str = "fmha/stage-c", verdict: str = "PASS") -> dict:
    return {
        "id": f"20261204-1000{i // 60 % 60:02d}-{i:06d}",
        "stage": stage,
        "verdict": verdict,
        "params": {"n": 512, "d": 128, "dtype": "bf16"},
        "variants": {},
        "started": "2026-12-04T10:00:00+00:00",
        "provenance": {"commit": "abcdef1234567", "dirty": False, "gpu": "NVIDIA H200"},
    }


def test_the_legacy_memory_moves_into_memory_json_and_loses_nothing(tmp_path):
    ws = legacy_ws(tmp_path)
    blobs = legacy_blobs()
    assert all(blobs.values())  # the fixture really holds the three wb:data lines
    before = ws.memory_path.read_text()

    memory.update_blocks(ws, {})  # any update migrates; this one adds nothing

    after = ws.memory_path.read_text()
    saved = json.loads(memory.data_path(ws.memory_path).read_text())
    assert {name: saved[name] for name in blobs} == blobs and saved["version"] == 1
    assert outside_blocks(after) == outside_blocks(before)  # hand text byte for byte, nothing moved out of a block
    assert memory.block_content(after, "log") == memory.block_content(before, "log")
    assert "wb:data" not in after and "<br>" not in memory.block_content(after, "status")
    status = memory.block_content(after, "status").splitlines()
    assert len(status) <= 40
    for stage, entry in blobs["status"].items():
        rows = [line for line in status if line.startswith(f"| {stage} |")]
        real = [v for key, per_n in entry["cases"].items() if "bug=" not in key for v in per_n.values()]
        assert len(rows) == 1 and f"| {real.count('PASS')}/{len(real)} |" in rows[0] and entry["last_run"] in rows[0]
    assert len(after) < len(before) / 2


def test_the_legacy_speed_data_reads_as_one_table_per_card(tmp_path):
    """As this repo's MEMORY.md was migrated: with a speed edit of no records, which places
    every old entry in its row (the case without n) and column (n)."""
    from workbench.records.speed import legacy_row, speed_edit

    ws = legacy_ws(tmp_path)
    memory.update_blocks(ws, {"speed": speed_edit([], Workspace(Path(__file__).resolve().parents[1]))})
    speed = memory.block_content(ws.memory_path.read_text(), "speed")
    tables = {title: body for title, body in zip(speed.split("**")[1::2], speed.split("**")[2::2])}
    blob = legacy_blobs()["speed"]
    assert sorted(tables) == sorted({f"fmha/stage-d · {key.rsplit(' · ', 1)[1]}" for key in blob})
    for key, entry in blob.items():
        row, n = legacy_row(Workspace(Path(__file__).resolve().parents[1]), *key.split(" · ")[:2])
        line = next(line for line in tables[f"fmha/stage-d · {key.rsplit(' · ', 1)[1]}"].splitlines() if line.startswith(f"| {row} |"))
        column = tables[f"fmha/stage-d · {key.rsplit(' · ', 1)[1]}"].splitlines()[2].split(" | ").index(f"n={n}")
        assert line.split(" | ")[column].startswith(f"{entry['tflops']:.0f}"), (key, line)
    assert len(speed.splitlines()) < len(blob)


def test_a_failing_case_shows_on_its_stage_line_and_injected_bugs_are_counted_apart(tmp_path):
    """The legacy stage C ran deliberately broken variants: the cases with an injected bug
    (bug=...) are counted apart, as caught when they did not pass (8 of 9: the stuck pipeline
    hung, ...); the worst real failing case is the rescale=off one (wrong on purpose too, but
    not named a bug)."""
    ws = legacy_ws(tmp_path)
    memory.update_blocks(ws, {})
    row = next(line for line in memory.block_content(ws.memory_path.read_text(), "status").splitlines() if line.startswith("| fmha/stage-c |"))
    assert "| 34/35 | FAIL m=256 d=128 dtype=bf16 rescale=off n=1024 | 8/9 |" in row
    assert "stuck_pipeline" not in row


def test_a_run_with_an_injected_bug_is_never_the_stages_last_run():
    edit = memory.run_edits([record(1), {**record(2, verdict="RACE"), "variants_changed": {"bug": "o_race"}},
                             {**record(3, verdict="FAIL"), "variants_changed": {"mask_bug": "none", "softcap_bug": "late"}}])["status"]
    entry = edit.merge(None)["fmha/stage-c"]
    assert (entry["last_run"], entry["verdict"]) == (record(1)["id"], "PASS")
    assert entry["cases"]["d=128 dtype=bf16 bug=o_race"] == {"512": "RACE"}
    row = next(line for line in memory.render_status({"fmha/stage-c": entry}).splitlines() if line.startswith("| fmha/stage-c |"))
    assert "| 1/1 | - | 2/2 |" in row  # the plain case passes; both injected bugs were caught


def test_variant_values_declared_wrong_on_purpose_are_counted_with_the_injected_bugs(tmp_path):
    """Stage C's rescale=off is wrong on purpose but not named a bug: its failing case was the
    stage's "worst failing case" (34/35 above). With kernel.yaml's `wrong_on_purpose` the next
    update counts it, and the case stored under its old key, with the injected bugs, and a run
    of it never becomes the stage's last run."""
    ws = legacy_ws(tmp_path)
    on_purpose = {"fmha/stage-c": ["rescale=off"]}
    broken = {**record(2, verdict="FAIL"), "variants_changed": {"rescale": "off"}}
    edit = memory.run_edits([record(1), broken], {}, on_purpose)
    memory.update_blocks(ws, edit)
    data = memory.read_data(memory.data_path(ws.memory_path))["status"]["fmha/stage-c"]
    assert data["wrong_on_purpose"] == ["rescale=off"] and data["last_run"] == record(1)["id"]
    row = next(line for line in memory.block_content(ws.memory_path.read_text(), "status").splitlines() if line.startswith("| fmha/stage-c |"))
    assert "| 35/35 | - | 10/11 |" in row, row  # + the new plain case; the stored and new rescale=off cases caught
    assert "rescale=off" not in row
    # declared no more (kernel.yaml edited): the case is an ordinary failing one again
    memory.update_blocks(ws, memory.run_edits([record(3)], {}, {"fmha/stage-c": []}))
    row = next(line for line in memory.block_content(ws.memory_path.read_text(), "status").splitlines() if line.startswith("| fmha/stage-c |"))
    assert "rescale=off" in row and "| 35/37 |" in row, row


def test_a_block_opening_sentence_written_by_an_older_wb_is_replaced_not_kept_as_hand_text(tmp_path):
    """A status block whose opening sentence an older wb worded differently: the update kept
    that sentence below the block as if a person had written it (seen when the sentence gained
    `wrong_on_purpose`). It is wb's own line: replaced; a person's line there is still kept."""
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))
    text = ws.memory_path.read_text()
    current = next(line for line in text.splitlines() if line.startswith("The last run of every stage;"))
    older = "The last run of every stage; cases: the latest verdict per parameter set and n (an older wording)."
    ws.memory_path.write_text(text.replace(current, older + "\nA person's line inside the block."))
    memory.record_run(ws, record(2))
    after = ws.memory_path.read_text()
    assert older not in after and after.count(current) == 1
    assert "A person's line inside the block." in after


def test_migration_happens_once_and_updates_after_it_change_only_what_they_add(tmp_path):
    ws = legacy_ws(tmp_path)
    memory.update_blocks(ws, {})
    sidecar = memory.data_path(ws.memory_path)
    first = ws.memory_path.read_bytes(), sidecar.read_bytes()
    memory.update_blocks(ws, {})
    assert (ws.memory_path.read_bytes(), sidecar.read_bytes()) == first
    memory.record_run(ws, record(1, "fmha/stage-e"))
    data = memory.read_data(sidecar)
    assert data["status"]["fmha/stage-e"]["cases"] == {"d=128 dtype=bf16": {"512": "PASS"}}
    assert {k: v for k, v in data["status"].items() if k != "fmha/stage-e"} == legacy_blobs()["status"]


def test_a_run_on_a_legacy_memory_migrates_and_adds_the_run(tmp_path):
    ws = legacy_ws(tmp_path)
    memory.record_run(ws, record(1, verdict="FAIL"))
    data = memory.read_data(memory.data_path(ws.memory_path))
    old_c = legacy_blobs()["status"]["fmha/stage-c"]
    assert data["status"]["fmha/stage-c"]["cases"]["d=128 dtype=bf16"] == {**old_c["cases"]["d=128 dtype=bf16"], "512": "FAIL"}
    assert data["speed"] == legacy_blobs()["speed"]


def test_a_hand_line_inside_a_legacy_block_is_kept_below_it(tmp_path):
    ws = legacy_ws(tmp_path)
    text = ws.memory_path.read_text().replace("## Speed\n", "## Speed\nHAND-typed inside the speed block\n", 1)
    ws.memory_path.write_text(text)
    memory.update_blocks(ws, {})
    after = ws.memory_path.read_text()
    assert "HAND-typed inside the speed block" in after and "HAND" not in memory.block_content(after, "speed")
    assert after.index("<!-- wb:end speed -->") < after.index("HAND-typed")


def test_memory_json_wins_over_a_wb_data_line_a_merge_brought_back(tmp_path):
    """A branch from before MEMORY.json merged in: its wb:data fills what MEMORY.json lacks."""
    ws = legacy_ws(tmp_path)
    memory.update_blocks(ws, {})
    memory.record_run(ws, record(1, "fmha/stage-c"))
    mine = memory.read_data(memory.data_path(ws.memory_path))["status"]["fmha/stage-c"]
    theirs = {"fmha/stage-c": {"verdict": "FAIL", "last_run": "20261101-000000-000000", "cases": {}}, "other/stage-a": {"verdict": "PASS", "last_run": "20261101-000000-000001"}}
    blob = json.dumps(theirs).replace("<", "\\u003c")
    text = ws.memory_path.read_text().replace("## Status\n", f"## Status\n<!-- wb:data {blob} -->\n", 1)
    ws.memory_path.write_text(text)
    memory.update_blocks(ws, {})
    status = memory.read_data(memory.data_path(ws.memory_path))["status"]
    assert status["fmha/stage-c"] == mine and status["other/stage-a"]["verdict"] == "PASS"
    assert "wb:data" not in ws.memory_path.read_text()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("{ not json", r"MEMORY\.json: not valid JSON"),
        ('{"version": 1, "status": {"k/stage-a": {"verdict": 3}}}', r"MEMORY\.json: status\.k/stage-a\.verdict: Input should be a valid string"),
        ('{"version": 9}', r"MEMORY\.json: version: expected 1 or lower, got 9"),
        ("<<<<<<< HEAD\n{}\n=======\n{}\n>>>>>>> theirs\n", r"MEMORY\.json: not valid JSON"),
    ],
    ids=["not-json", "wrong-type", "newer-version", "merge-conflict"],
)
def test_a_broken_memory_json_stops_wb_with_one_line_and_no_write(tmp_path, damage, message):
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))
    sidecar = memory.data_path(ws.memory_path)
    sidecar.write_text(damage)
    before = ws.memory_path.read_bytes()
    with pytest.raises(SchemaError, match=message) as info:
        memory.record_run(ws, record(2))
    assert "\n" not in str(info.value) and "restore it" in str(info.value)
    assert ws.memory_path.read_bytes() == before and sidecar.read_text() == damage
    with pytest.warns(UserWarning, match=r"MEMORY.md not updated: .*MEMORY\.json"):
        memory.update_blocks_or_warn(ws, memory.run_edits([record(3)]))
    assert sidecar.read_text() == damage


def test_memory_json_is_put_back_when_memory_md_cannot_be_written(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))
    sidecar = memory.data_path(ws.memory_path)
    before = ws.memory_path.read_bytes(), sidecar.read_bytes()
    real = memory.atomic_write_text

    def fail_on_memory_md(path, text, newline=None, **kwargs):
        if Path(path).name == "MEMORY.md":
            raise UserError(f"cannot write {path}: No space left on device")
        real(path, text, newline, **kwargs)

    monkeypatch.setattr(memory, "atomic_write_text", fail_on_memory_md)
    with pytest.raises(UserError, match="No space left"):
        memory.record_run(ws, record(2, "fmha/stage-d"))
    assert (ws.memory_path.read_bytes(), sidecar.read_bytes()) == before
    ws.memory_path.unlink()
    sidecar.unlink()
    with pytest.raises(UserError, match="No space left"):
        memory.record_run(ws, record(3))
    assert not sidecar.exists()  # a MEMORY.json that did not exist before does not stay behind


def test_a_linked_memory_md_keeps_its_data_beside_its_target(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    (tmp_path / "shared").mkdir()
    ws.memory_path.symlink_to(tmp_path / "shared" / "MEMORY.md")
    memory.record_run(ws, record(1))
    assert (tmp_path / "shared" / "MEMORY.json").is_file() and not (ws.root / "MEMORY.json").exists()


def test_numbers_too_long_for_int_in_memory_json_keys_do_not_stop_a_render(tmp_path):
    """A hand-edited MEMORY.json with a status key (an n) of 5000 digits passed the schema and
    then stopped every run and import with 'Exceeds the limit (4300 digits) for integer string
    conversion', naming no file. Such a number now sorts as text."""
    ws = Workspace(tmp_path)
    memory.record_run(ws, record(1))
    path = memory.data_path(ws.memory_path)
    data = json.loads(path.read_text())
    cases = data["status"]["fmha/stage-c"]["cases"]
    row = next(iter(cases))
    cases[row] = {**cases[row], "9" * 5000: "PASS", "12": "FAIL"}
    data["speed"] = {f"fmha/stage-c · d=128 n={'7' * 5000} · NVIDIA H200": {"tflops": 1.0, "run": record(1)["id"]}}
    path.write_text(json.dumps(data))
    memory.record_run(ws, record(2))  # renders every block again
    status = memory.block_content(ws.memory_path.read_text(), "status")
    assert "| fmha/stage-c |" in status
    assert memory._case_sort_key(f"n={'9' * 5000}") > memory._case_sort_key("n=12")
