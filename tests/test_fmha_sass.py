"""Every FMHA stage compiles for sm_90a to the fast path: its SASS has tensor-core WGMMA
(HGMMA) and TMA loads (UTMALDG), read by `wb compile` through nvdisasm. A stage that
silently falls back to a slower path fails here, on any machine, no GPU needed."""

import json
import re
from pathlib import Path

import pytest

from workbench.compile.resources import find_nvdisasm

pytestmark = [
    pytest.mark.skipif(find_nvdisasm() is None, reason="nvdisasm not installed (pip install 'cute-wb[sass]')"),
    pytest.mark.slow,  # each test is a cold sm_90a compile of an FMHA stage (--keep forces one)
]



def assert_fast_path(rec: dict) -> None:
    """A compile record's SASS has tensor-core WGMMA and TMA loads and no pre-Hopper MMA."""
    found = rec["sass"]["instructions"]
    assert any(name.startswith("HGMMA") for name in found), found
    assert any(name.startswith("UTMALDG") for name in found), found
    assert not any(name.startswith("HMMA") for name in found), found  # no pre-Hopper MMA fallback


@pytest.mark.parametrize("stage", ["a", "b", "c"])  # (d: every default below)
def test_stage_sass_has_wgmma_and_tma(fmha_ws, wb, stage):
    proc = wb("compile", stage, "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert_fast_path(json.loads(proc.stdout))


def sass_paths(rec: dict) -> list[str]:
    """Each kernel's kept SASS (``--keep sass``) of a compile record, in kernel order."""
    paths = [p for name, p in sorted(rec["artifacts"].items()) if name.endswith(".sass")]
    assert paths, rec["artifacts"]
    return paths


def opcode_counts(rec: dict, ws: Path, opcode: str) -> list[int]:
    """How many ``opcode`` instructions each kernel's kept SASS of a compile record has."""
    paths = sass_paths(rec)
    pattern = rf"^\s+/\*[0-9a-f]{{4,}}\*/\s+(?:@!?U?P\w+\s+)?{opcode}\b"
    return [len(re.findall(pattern, (ws / path).read_text(), re.M)) for path in paths]


def descriptors_via_vector_registers(rec: dict, ws: Path) -> list[int]:
    """Per kernel of a compile record's kept SASS: the R2UR instructions among the three after
    each HGMMA, i.e. wgmma descriptors built in vector registers and moved to uniform ones one
    at a time (a kernel whose ring indices, carried around a loop over work tiles, were not
    known warp-uniform did so: 80 R2UR, 6 % slower on an H100; perf-notes round 24)."""
    counts = []
    for path in sass_paths(rec):
        lines = [line for line in (ws / path).read_text().splitlines() if re.match(r"^\s+/\*[0-9a-f]{4,}\*/", line)]
        counts.append(sum(1 for i, line in enumerate(lines) if " HGMMA" in line
                          for nxt in lines[i + 1:i + 4] if re.search(r"\bR2UR\b", nxt)))
    return counts


@pytest.mark.parametrize("d,causal", [(64, "false"), (64, "true"), (128, "false"), (128, "true"), (96, "false"),
                                     (96, "true"), (192, "true"), (256, "false")])
def test_stage_d_defaults_do_not_spill(fmha_ws, wb, d, causal):
    """Each default stage-D configuration compiles to WGMMA and TMA and fits its registers, every kernel of it (causal d=64
    and 96 build a 128-row and a 192-row kernel, non-causal d=64 two 192 x 128 ones, the second
    round robin, non-causal d=128 a 128 x 128, a 192 x 128 and a
    128 x 176 one), each named by the geometry's tile. A spilling
    schedule ran at a third of the speed on an H200 (d=64 with 3 consumer WGs and pingpong:
    124 vs 315 TFLOP/s)."""
    from stages.fmha import geometry as G

    proc = wb("compile", "d", "--d", str(d), "-p", f"causal={causal}", "--keep", "sass", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    assert_fast_path(rec)
    kernels = rec["resources"]["kernels"]
    tiles = G.tiles(d, causal=causal == "true")
    longs = G.long_kernels(d, causal == "true", False, False, False)
    expected = [f"{g.consumers * 64}x{g.tile_n}_" for g in [tiles] + [long.tiles(d, causal=causal == "true") for long in longs]]
    assert len(expected) == {(64, "true"): 2, (64, "false"): 2, (96, "true"): 2, (128, "false"): 3}.get((d, causal), 1)
    assert [k["name"].split("FmhaForward_")[1].split("_")[0] + "_" for k in kernels] == expected, [k["name"] for k in kernels]
    for kernel in kernels:
        assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel
    assert descriptors_via_vector_registers(rec, fmha_ws) == [0] * len(kernels)
    # no wgmma serialization (ptxas C7512/C7513 put a WARPGROUP.DEPBAR behind every HGMMA: 32;
    # 12 with 3 consumer WGs), per copy of the consumer loop: non-causal d = 64 has a second, the
    # short tile its WGs share (short_tile.py)
    loops = 2 if (d, causal) == (64, "false") else 1
    assert all(n <= 12 * loops for n in opcode_counts(rec, fmha_ws, "WARPGROUP")), opcode_counts(rec, fmha_ws, "WARPGROUP")
    # the masked first visit costs one select per S element (64 per thread; causal 192-row
    # tiles mask two visits); an ``if`` around the store compiled to a chain of ~1000 FSEL,
    # 2.9 us of every 16 us d=64 work tile (H200)
    assert all(n <= 3 * 64 + 32 for n in opcode_counts(rec, fmha_ws, "FSEL")), opcode_counts(rec, fmha_ws, "FSEL")


@pytest.mark.parametrize("schedule", ["overlap", "pingpong"])
def test_three_consumer_wgs_with_overlap_fit_160_registers(fmha_ws, wb, schedule):
    """d=64 with 3 consumer WGs (160 registers each) and the overlap schedules: no spills.
    The S accumulator must be a fresh tensor per step; when one tensor was reused, the
    previous P (64 fp32) stayed live across the QK^T issue and ptxas spilled 512 B."""
    for causal in ("false", "true"):
        proc = wb("compile", "d", "--d", "64", "-p", f"causal={causal}", "-V", "consumers=3",
                  "-V", f"schedule={schedule}", "-V", "persistent=off", "--json", cwd=fmha_ws, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        (kernel,) = json.loads(proc.stdout)["resources"]["kernels"]
        # (causal 192-row tiles spilled 40-64 B while the mask compiled to a select chain)
        assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel


def tile_loop_tails(sass: str) -> list[int]:
    """For each steady KV loop of the SASS (a loop whose body holds a KV tile's MMAs and
    exponents and little else: at most 1.5 times the shortest such body, since the persistent
    loops that hold one also hold a peeled tile or the epilogue): how many instructions follow
    its last MUFU.EX2 up to the back-edge."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", line))}
    loops = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
        if not m or labels.get(m.group(1), i) >= i:
            continue
        body = [x for x in lines[labels[m.group(1)]:i + 1] if re.match(r"^\s+/\*[0-9a-f]{4,}\*/", x)]
        ex2 = [k for k, x in enumerate(body) if "MUFU.EX2" in x]
        if len(ex2) >= 32 and sum("HGMMA" in x for x in body) >= 8:
            loops.append((len(body), len(body) - 1 - ex2[-1]))
    shortest = min(size for size, _ in loops)
    return [tail for size, tail in loops if size <= 1.5 * shortest]


def test_sum_init_alpha_issues_the_o_rescale_among_the_exponents(fmha_ws, wb):
    """d = 64's default, sum_init=alpha (a tile's row sum starts from alpha l, FlashAttention-4's
    order). With the sum from 0, d = 64's steady loop ended 39 instructions after its last exp2:
    alpha's two exp2s came after the tile's 64, then the row sum and O's 32 multiplies waiting on
    them (d = 128: 71). From alpha l, alpha is needed before the P exponents, and ptxas issues it
    and O *= alpha among them: at most a dozen instructions follow the last. No spill, no wgmma
    serialization. Both kernels: the dynamic one and its round-robin twin from m = 8192."""
    proc = wb("compile", "d", "--d", "64", "--keep", "sass", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    kernels = rec["resources"]["kernels"]
    assert len(kernels) == 2, kernels
    for kernel in kernels:
        assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel
    # 8 per consumer loop: whole tiles and the shared short tile in the dynamic kernel, whole tiles alone round robin
    assert sorted(opcode_counts(rec, fmha_ws, "WARPGROUP")) == [8, 16]
    for path in sass_paths(rec):
        tails = tile_loop_tails((fmha_ws / path).read_text())
        assert tails and max(tails) <= 12, (path, tails)


def _stage_d_sass(tmp_path: Path, **kernel_kwargs) -> str:
    """SASS of stage D (d=64, bf16, non-causal, 4 heads) built in-process with ``kernel_kwargs``."""
    import subprocess

    from cutlass import Int32
    from cutlass.cute.runtime import make_fake_stream

    from stages.fmha import common, host
    from stages.fmha import stage_d_fmha as sd
    from workbench.compile.trace import tracing

    dtype = common.cute_dtype("bf16")
    kernel = sd.FmhaForward(dtype, 64, 4, 4, **kernel_kwargs)
    fake = [host.fake_tensor(dtype, 4) for _ in range(4)]
    tmp_path.mkdir(parents=True, exist_ok=True)
    with tracing("stage-d", "sm_90a", dump_dir=str(tmp_path)):
        host.compile_for("sm_90a", kernel, *fake, host.fake_tensor(sd.Float32, 3), host.fake_tensor(Int32, 1), Int32(1), make_fake_stream())
    (cubin,) = tmp_path.glob("*.cubin")
    return subprocess.run([find_nvdisasm(), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout


def test_stage_d_trace_stamps_only_when_asked(tmp_path):
    """trace=True (benchmarks/trace_tiles.py) reads the SM clock at every stamp site: 8 per
    consumer work tile, 4 per producer tile, and at each CTA's start and end; the default
    kernel reads no clock at all (the stamps are compile-time no-ops)."""
    clock_reads = re.compile(r"SR_CLOCKLO")
    traced = _stage_d_sass(tmp_path / "on", trace=True)
    plain = _stage_d_sass(tmp_path / "off")
    assert len(clock_reads.findall(traced)) >= 8 + 4 + 2
    assert "SR_GLOBALTIMER" in traced
    assert not clock_reads.findall(plain) and "SR_GLOBALTIMER" not in plain


def test_p_through_shared_memory_frees_the_registers_of_192_row_tiles_at_d96(fmha_ws, wb):
    """p_operand=smem: P goes to the PV MMA through the WG's shared-memory tile (stmatrix, then
    descriptors), so d = 96 fits 3 consumer WGs (192 x 144 tiles, d = 96's default) at 160
    registers; with P in registers 192-row tiles spill (96 B at 192 x 128)."""
    args = ["compile", "d", "--d", "96", "-V", "consumers=3", "--keep", "sass", "--json"]
    proc = wb(*args, "-V", "p_operand=smem", "-V", "p_sync=wg", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    (kernel,) = rec["resources"]["kernels"]
    assert "FmhaForward_192x144" in kernel["name"]
    assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel
    (sass,) = [(fmha_ws / p).read_text() for name, p in rec["artifacts"].items() if name.endswith(".sass")]
    pv = re.findall(r"HGMMA\.64x96x16\S* R\d+, (\S+),", sass)
    assert pv and all(a.startswith("gdesc[") for a in pv), pv  # A (P) read by descriptor, never registers
    assert len(re.findall(r"\bSTSM\b", sass)) >= 8  # P stored with stmatrix
    assert all(n <= 12 for n in opcode_counts(rec, fmha_ws, "WARPGROUP"))
    refused = wb(*args, "-V", "p_operand=regs", cwd=fmha_ws, timeout=600)
    assert refused.returncode == 2 and "p_operand=smem" in refused.stderr
    # p_sync=warp (d = 96 non-causal's default, p_sync=auto): the PV MMA waits for the warp's own
    # P stores only, so the WG's named barrier after each P store (the peeled first tile's and the
    # loop's) is gone
    warp = wb(*args, "-V", "p_operand=smem", cwd=fmha_ws, timeout=600)
    assert warp.returncode == 0, warp.stdout[-2000:] + warp.stderr[-2000:]
    warp_rec = json.loads(warp.stdout)
    (warp_kernel,) = warp_rec["resources"]["kernels"]
    assert (warp_kernel["spill_store_bytes"], warp_kernel["spill_load_bytes"]) == (0, 0), warp_kernel
    (wg_bars,), (warp_bars,) = opcode_counts(rec, fmha_ws, "BAR"), opcode_counts(warp_rec, fmha_ws, "BAR")
    assert warp_bars == wg_bars - 2, (wg_bars, warp_bars)


@pytest.mark.parametrize("row_sum", ["fp32", "rounded"])
def test_lazy_rescale_puts_the_o_multiply_behind_a_warp_vote(fmha_ws, wb, row_sum):
    """d = 256's default (lazy_rescale auto: on where O is 256 wide, 128 FMULs of O per thread
    per KV tile), and with the rounded row sum: the warp votes whether any of its rows moved its
    max and branches around the whole multiply; no spill, and neither the branch nor the sum
    makes ptxas serialize the wgmma."""
    proc = wb("compile", "d", "--d", "256", "-V", f"row_sum={row_sum}", "--keep", "sass", "--json", cwd=fmha_ws, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rec = json.loads(proc.stdout)
    (kernel,) = rec["resources"]["kernels"]
    assert (kernel["spill_store_bytes"], kernel["spill_load_bytes"]) == (0, 0), kernel
    # 8: one arrive and one wait per MMA group, as with the rescale always on. The rounded row
    # sum reads the PV operand after its issue; read as 16-bit values it let LLVM pack the
    # operand late, between the PV wgmmas, and ptxas put an arrive before each: 16
    assert opcode_counts(rec, fmha_ws, "WARPGROUP") == [8]
    (sass,) = [(fmha_ws / p).read_text() for name, p in rec["artifacts"].items() if name.endswith(".sass")]
    ops = [m.group(1) for m in re.finditer(r"^\s+/\*[0-9a-f]{4,}\*/\s+((?:@!?U?P\w+\s+)?[A-Z][A-Z0-9_.]*)", sass, re.M)]
    votes = [i for i, op in enumerate(ops) if op.startswith("VOTE.ANY")]
    assert votes, "no warp vote"
    guarded = []
    for v in votes:
        branch = next(i for i in range(v + 1, len(ops)) if "BRA" in ops[i])
        assert ops[branch].startswith("@"), ops[branch]  # a conditional branch: the skip
        run = 0
        while branch + 1 + run < len(ops) and ops[branch + 1 + run] == "FMUL":
            run += 1
        guarded.append(run)
    assert max(guarded) >= 128, guarded  # O's 128 fp32 values per thread, all behind the branch


@pytest.mark.parametrize("d, dv, causal, consumers, given, expected", [
    (64, None, False, None, "auto", True),    # 192-row kernels (3 consumer WGs): +0-4 % on an H100
    (96, None, False, None, "auto", True),
    (64, None, True, 3, "auto", True),        # causal d = 64's long kernel (from m = 4096)
    (64, None, True, None, "auto", False),    # its 128-row kernel: -1-2 % at s = 1024
    (128, None, False, None, "auto", False),  # -3 % at d = 128 non-causal
    (192, 128, False, None, "auto", False),
    (256, None, False, None, "auto", False),
    (128, None, False, None, "alpha", True),  # an explicit choice wins either way
    (64, None, False, None, "zero", False),
])
def test_sum_init_auto_is_alpha_in_the_three_wg_kernels(d, dv, causal, consumers, given, expected):
    import cutlass

    from stages.fmha.stage_d_fmha import FmhaForward

    kernel = FmhaForward(cutlass.BFloat16, d, 4, 4, dv=dv, causal=causal, consumers=consumers, sum_init=given)
    assert kernel.sum_from_alpha is expected


@pytest.mark.parametrize("d, dv, given, expected", [
    (256, None, "auto", True),    # O 256 wide: the rescale is worth skipping
    (256, 128, "auto", False),    # 256/128: O is d = 128's width, where it measured a wash
    (128, None, "auto", False),
    (64, None, "auto", False),
    (256, None, "off", False),    # an explicit choice wins either way
    (128, None, "on", True),
])
def test_lazy_rescale_auto_is_on_where_o_is_256_wide(d, dv, given, expected):
    import cutlass

    from stages.fmha.stage_d_fmha import FmhaForward

    kernel = FmhaForward(cutlass.BFloat16, d, 4, 4, dv=dv, lazy_rescale=given)
    assert kernel.lazy_rescale is expected
    assert kernel.rounded_sum is False  # row_sum=rounded is asked for, never implied (not GPU-verified)
    assert FmhaForward(cutlass.BFloat16, d, 4, 4, dv=dv, lazy_rescale=given, row_sum="rounded").rounded_sum is True
