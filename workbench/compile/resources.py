"""What a compiled kernel costs, and the checks the DSL does not make at compile time.

Sources, all available without a GPU:
  * ptxas's own report (`remarks{ptx}` compiler option, captured during the compile):
    registers, barriers, stack frame, spill store/load bytes, per kernel;
  * the cubin (ELF): register count (`.nv.info` EIATTR_REGCOUNT), static shared memory
    (`.nv.shared.<kernel>`), stack frame, as a fallback and cross-check;
  * the traced IR (workbench.compile.trace): the shared memory each kernel allocates (its launch's
    dynamic smem) and every TMA atom's gmem tensor and box;
  * SASS from nvdisasm when installed (`pip install 'cute-wb[sass]'`, i.e. PyPI
    nvidia-cuda-nvdisasm): which tensor-core and TMA instructions appear.

Checks (each a dict {level: error|warning, check, message, location}):
  * smem: dynamic + static shared memory over the arch's capacity (the launch would fail);
  * spills: a kernel whose ptxas report has spill stores or loads (a warning: slower, not wrong);
  * tma: a TMA tensor whose base alignment, strides or contiguous box extent cannot meet
    TMA's 16-byte rules (the copy would fault or the descriptor creation would fail).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

from workbench.compile.layouts import describe_type, elem_bytes, parse_tuple, shape_of, split_top

# Max dynamic shared memory per block (opt-in), bytes; mirrors the DSL's own table.
SMEM_CAPACITY = {
    "sm_80": 163 * 1024,
    "sm_86": 99 * 1024,
    "sm_87": 163 * 1024,
    "sm_89": 99 * 1024,
    "sm_90": 227 * 1024,
    "sm_100": 227 * 1024,
    "sm_101": 227 * 1024,
    "sm_103": 227 * 1024,
    "sm_107": 327 * 1024,
    "sm_110": 227 * 1024,
    "sm_120": 99 * 1024,
    "sm_121": 99 * 1024,
}

# SASS mnemonics worth naming: tensor cores, TMA, bulk copies, async barriers.
SASS_OF_INTEREST = (
    "HGMMA", "IGMMA", "QGMMA", "BGMMA", "HMMA", "IMMA", "UTCHMMA", "UTCQMMA", "UTCIMMA", "UTCMMA",
    "UTMALDG", "UTMASTG", "UTMAREDG", "UTMAPF", "UTMACCTL", "UBLKCP", "UBLKRED", "UBLKPF",
    "LDSM", "STSM", "LDGSTS", "WARPGROUP", "SYNCS", "UTCBAR", "LDTM", "STTM",
)


def short_kernel_name(name: str) -> str:
    """A DSL kernel's name without its generated parts: ``kernel_cutlass_kernel_stagesfmha
    stage_d_fmhaFmhaForward_object_at__...`` -> ``stagesfmhastage_d_fmhaFmhaForward``; a
    kernel object with its own ``__str__`` (``..FmhaForward_192x128_CopyAtom_...``) keeps it
    up to its first argument's atom."""
    name = name.removeprefix("kernel_cutlass_kernel_").removeprefix("kernel_cutlass_")
    return re.split(r"_object_at_|_CopyAtom", name)[0][:80]


def smem_capacity(arch: str) -> int | None:
    """Shared memory a block may use on `arch` (sm_90a -> sm_90), bytes."""
    base = re.sub(r"[af]$", "", arch)
    if base in SMEM_CAPACITY:
        return SMEM_CAPACITY[base]
    try:  # newer archs the DSL knows
        from cutlass.memory import get_smem_capacity_in_bytes

        return int(get_smem_capacity_in_bytes(base))
    except Exception:
        return None


# --------------------------------------------------------------------------------------
# ptxas report
# --------------------------------------------------------------------------------------
_PTXAS_FUNC = re.compile(r"Compiling entry function\s+'([^']+)'")
_PTXAS_PROPS = re.compile(r"Function properties for\s+(\S+)")
_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse_ptxas(text: str) -> dict[str, dict[str, int]]:
    """Per kernel: registers, barriers, stack_bytes, spill_store_bytes, spill_load_bytes.

    Reads the facts in the order they appear, across line breaks: the DSL quotes ptxas's
    log inside a wrapped remark when ptxas spills, with kernel names on their own lines."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    facts = sorted(
        (m.start(), kind, m)
        for kind, pattern in (("func", _PTXAS_FUNC), ("func", _PTXAS_PROPS), ("stack", _PTXAS_STACK), ("used", _PTXAS_USED))
        for m in pattern.finditer(text)
    )
    out: dict[str, dict[str, int]] = {}
    current = None
    for _, kind, m in facts:
        if kind == "func":
            current = out.setdefault(m.group(1), {})
        elif current is None:
            continue
        elif kind == "stack":
            current.update(stack_bytes=int(m.group(1)), spill_store_bytes=int(m.group(2)), spill_load_bytes=int(m.group(3)))
        else:
            current["registers"] = int(m.group(1))
            if m.group(2) is not None:
                current["barriers"] = int(m.group(2))
            if m.group(3) is not None:
                current["ptxas_smem_bytes"] = int(m.group(3))
    return out


# --------------------------------------------------------------------------------------
# cubin (ELF64)
# --------------------------------------------------------------------------------------
EIATTR_FRAME_SIZE = 0x11
EIATTR_MIN_STACK_SIZE = 0x12
EIATTR_MAX_STACK_SIZE = 0x23
EIATTR_REGCOUNT = 0x2F


def parse_cubin(data: bytes) -> dict[str, dict[str, int]]:
    """Per kernel: registers, stack_bytes, static_smem_bytes, barriers (from the ELF)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return {}
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        name, stype, flags, _addr, offset, size, link, info, _align, entsize = struct.unpack_from("<IIQQQQIIQQ", data, off)
        sections.append({"name": name, "type": stype, "flags": flags, "offset": offset, "size": size, "link": link, "info": info, "entsize": entsize})
    strtab = sections[shstrndx]

    def sname(sec) -> str:
        start = strtab["offset"] + sec["name"]
        return data[start : data.index(b"\0", start)].decode(errors="replace")

    for sec in sections:
        sec["sname"] = sname(sec)
    kernels: dict[str, dict[str, int]] = {}
    for sec in sections:
        n = sec["sname"]
        if n.startswith(".text."):
            k = kernels.setdefault(n[len(".text.") :], {})
            k["registers"] = sec["info"] >> 24
            k["barriers"] = (sec["flags"] >> 20) & 0x7F
        elif n.startswith(".nv.shared.") and not n.startswith(".nv.shared.reserved"):
            kernels.setdefault(n[len(".nv.shared.") :], {})["static_smem_bytes"] = sec["size"]
    reserved = sum(s["size"] for s in sections if s["sname"].startswith(".nv.shared.reserved"))
    # symbol table: index -> name, for the global .nv.info attributes
    symtab = next((s for s in sections if s["sname"] == ".symtab"), None)
    symbols: list[str] = []
    if symtab is not None:
        names = sections[symtab["link"]]
        for j in range(symtab["size"] // 24):
            st_name = struct.unpack_from("<I", data, symtab["offset"] + j * 24)[0]
            start = names["offset"] + st_name
            symbols.append(data[start : data.index(b"\0", start)].decode(errors="replace"))
    for sec in sections:
        if sec["sname"] != ".nv.info":
            continue
        pos, end = sec["offset"], sec["offset"] + sec["size"]
        while pos + 4 <= end:
            fmt, attr = data[pos], data[pos + 1]
            if fmt == 0x04:
                size = struct.unpack_from("<H", data, pos + 2)[0]
                if size == 8 and attr in (EIATTR_REGCOUNT, EIATTR_FRAME_SIZE, EIATTR_MAX_STACK_SIZE):
                    sym, value = struct.unpack_from("<II", data, pos + 4)
                    kname = symbols[sym] if sym < len(symbols) else str(sym)
                    k = kernels.setdefault(kname, {})
                    if attr == EIATTR_REGCOUNT:
                        k["registers"] = value
                    elif attr == EIATTR_FRAME_SIZE:
                        k["stack_bytes"] = value
                    elif attr == EIATTR_MAX_STACK_SIZE:
                        k["max_stack_bytes"] = value
                pos += 4 + size
            elif fmt == 0x03:  # EIFMT_HVAL: 2-byte value
                pos += 4
            elif fmt == 0x02:  # EIFMT_BVAL
                pos += 4
            else:  # EIFMT_NVAL and unknown: no payload
                pos += 2
    for k in kernels.values():
        if reserved:
            k["reserved_smem_bytes"] = reserved
    return kernels


# --------------------------------------------------------------------------------------
# SASS (nvdisasm)
# --------------------------------------------------------------------------------------
def find_nvdisasm() -> str | None:
    found = shutil.which("nvdisasm")
    if found:
        return found
    try:
        import nvidia  # the PyPI CUDA packages install under nvidia/cu*/bin

        for root in getattr(nvidia, "__path__", []):
            for candidate in sorted(Path(root).glob("cu*/bin/nvdisasm")) + sorted(Path(root).glob("cuda_nvdisasm/bin/nvdisasm")):
                if os.access(candidate, os.X_OK):
                    return str(candidate)
    except Exception:
        pass
    for candidate in sorted(Path("/usr/local").glob("cuda*/bin/nvdisasm")):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def disassemble(cubin: bytes, workdir: Path) -> tuple[str | None, str | None]:
    """(SASS text, None) or (None, why not)."""
    tool = find_nvdisasm()
    if tool is None:
        return None, "nvdisasm not found (pip install 'cute-wb[sass]' installs it)"
    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    try:
        proc = subprocess.run([tool, "-c", str(path)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nvdisasm failed: {exc}"
    if proc.returncode != 0:
        return None, f"nvdisasm failed: {proc.stderr.strip()[:300]}"
    return proc.stdout, None


_SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")


def sass_instructions(sass: str) -> dict[str, int]:
    """Counts of the interesting SASS instructions (by base mnemonic, e.g. HGMMA.64x128x16)."""
    counts: dict[str, int] = {}
    for line in sass.splitlines():
        m = _SASS_LINE.match(line)
        if not m:
            continue
        full = m.group(1)
        base = full.split(".")[0]
        if base in SASS_OF_INTEREST:
            key = ".".join(full.split(".")[:2]) if base in ("UTMALDG", "UTMASTG", "HGMMA", "UTMAPF", "UBLKCP") else base
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------
def check_smem(kernels: list[dict], arch: str) -> list[dict]:
    capacity = smem_capacity(arch)
    out = []
    if capacity is None:
        return out
    for k in kernels:
        total = (k.get("dynamic_smem_bytes") or 0) + user_static_smem(k, arch)
        if total > capacity:
            out.append(
                {
                    "level": "error",
                    "check": "smem",
                    "kernel": k.get("name"),
                    "location": k.get("location"),
                    "message": (
                        f"shared memory {total} bytes ({_kib(total)}) is over {arch}'s capacity of {capacity} bytes "
                        f"({_kib(capacity)}): dynamic {k.get('dynamic_smem_bytes') or 0} + static {user_static_smem(k, arch)}; "
                        "the launch would fail. Use fewer pipeline stages or smaller tiles."
                    ),
                }
            )
        elif total > 0.95 * capacity:
            out.append(
                {
                    "level": "warning",
                    "check": "smem",
                    "kernel": k.get("name"),
                    "location": k.get("location"),
                    "message": f"shared memory {total} bytes is within 5% of {arch}'s capacity ({capacity} bytes)",
                }
            )
    return out


def check_spills(kernels: list[dict]) -> list[dict]:
    """A warning per kernel whose ptxas report has spill stores or loads: each spilled value
    goes to local memory (through L1 to HBM) and back, usually inside the main loop."""
    out = []
    for k in kernels:
        stores, loads = k.get("spill_store_bytes") or 0, k.get("spill_load_bytes") or 0
        if stores or loads:
            out.append(
                {
                    "level": "warning",
                    "check": "spills",
                    "kernel": k.get("name"),
                    "location": k.get("location"),
                    "message": (
                        f"{short_kernel_name(str(k.get('name')))} spills {stores} B stored / {loads} B loaded to local "
                        f"memory per thread (ptxas; {k.get('registers')} registers at launch): slower, not wrong"
                    ),
                }
            )
    return out


def user_static_smem(kernel: dict, arch: str) -> int:
    """Static shared memory the kernel declares, less the 1 KiB that sm_90+ cubins reserve
    for the system (`.nv.shared.<kernel>` includes it; the 227 KiB limit excludes it)."""
    static = kernel.get("static_smem_bytes") or 0
    m = re.match(r"sm_(\d+)", arch)
    if m and int(m.group(1)) >= 90 and static >= 1024:
        static -= 1024
    return static


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def _basis_modes(gbasis: str) -> list[tuple[int, int | None]]:
    """'(64,128):(1@1,1@0)' -> [(64, 1), (128, 0)]: box extent and the gmem mode it walks."""
    shape = parse_tuple(shape_of(gbasis))
    parts = split_top(gbasis.rsplit(" o ", 1)[-1], ":")
    stride = parse_tuple(parts[1]) if len(parts) > 1 else None

    def leaves(node):
        if isinstance(node, list):
            for c in node:
                yield from leaves(c)
        else:
            yield node

    shapes = list(leaves(shape))
    strides = list(leaves(stride)) if stride is not None else [None] * len(shapes)
    out = []
    for s, d in zip(shapes, strides):
        try:
            extent = int(s)
        except (TypeError, ValueError):
            continue
        mode = None
        m = re.fullmatch(r"\d+@(\d+)", d or "")
        if m:
            mode = int(m.group(1))
        out.append((extent, mode))
    return out


def _stride_leaves(layout: str) -> list[tuple[str, str]]:
    """(extent, stride) per top-level gmem mode (flattened), from SHAPE:STRIDE."""
    parts = split_top(layout.rsplit(" o ", 1)[-1], ":")
    if len(parts) < 2:
        return []
    shape, stride = parse_tuple(parts[0]), parse_tuple(parts[1])
    if not isinstance(shape, list):
        shape, stride = [shape], [stride]

    def flat(node):
        if isinstance(node, list):
            out = []
            for c in node:
                out += flat(c)
            return out
        return [node]

    return [(flat(s)[0] if isinstance(s, list) else s, flat(d)[0] if isinstance(d, list) else d) for s, d in zip(shape, stride)]


def _divisibility(value: str) -> int | None:
    m = re.search(r"div=(\d+)", value)
    return int(m.group(1)) if m else None


def check_tma(atoms: list[dict]) -> list[dict]:
    """TMA's 16-byte rules, for every TMA atom built while tracing."""
    out = []
    for atom in atoms:
        where = atom.get("location")
        gmem = describe_type(atom.get("gmem_type") or "")
        if not gmem or gmem.get("what") != "tensor":
            continue
        width = elem_bytes(gmem.get("dtype"))
        label = f"TMA tensor {gmem['type']}"

        def add(level, message):
            out.append({"level": level, "check": "tma", "location": where, "source": atom.get("source"), "message": message})

        align = gmem.get("align")
        if align is None or align < 16:
            add(
                "error" if align is not None else "warning",
                f"{label}: base address known to be only {align or 'element'}-byte aligned; TMA needs 16 bytes "
                "(make the fake/real tensor with assumed_align=16 and 16-byte aligned data)",
            )
        modes = _stride_leaves(gmem["layout"])
        contiguous = [i for i, (_, d) in enumerate(modes) if d == "1"]
        if not contiguous:
            add("error", f"{label}: no mode has stride 1; TMA needs a contiguous innermost dimension")
        if width:
            unproven = []
            for i, (_, d) in enumerate(modes):
                if d in ("1", "0"):
                    continue
                if d.startswith("?"):
                    div = _divisibility(d)
                    if div is None or (div * width) % 16:
                        unproven.append(str(i))
                    continue
                try:
                    stride = int(d)
                except ValueError:
                    continue
                if (stride * width) % 16:
                    add(
                        "error",
                        f"{label}: stride of mode {i} is {stride} elements = {stride * width} bytes, not a multiple of 16; "
                        "TMA cannot address this tensor (pad the row pitch to 16 bytes)",
                    )
            if unproven:
                add(
                    "warning",
                    f"{label}: the stride{'s' if len(unproven) > 1 else ''} of mode{'s' if len(unproven) > 1 else ''} "
                    f"{', '.join(unproven)} {'are' if len(unproven) > 1 else 'is'} dynamic and not known to be a multiple "
                    "of 16 bytes, which TMA needs at run time (declare it, e.g. a stride of "
                    f"sym_int64(divisibility={16 // width if 16 % width == 0 else 16}) elements)",
                )
        m = re.search(r'tma_gbasis = <"([^"]+)">', atom.get("atom_type") or "")
        if m and width and contiguous:
            basis = _basis_modes(m.group(1))
            inner = [extent for extent, mode in basis if mode == contiguous[0]]
            if inner:
                box_bytes = inner[0] * width
                if box_bytes % 16:
                    add(
                        "error",
                        f"{label}: the TMA box's contiguous extent is {inner[0]} elements = {box_bytes} bytes, "
                        "not a multiple of 16 (make the tile's contiguous extent a multiple of 16 bytes)",
                    )
            for extent, _mode in basis:
                if extent > 256:
                    add("error", f"{label}: a TMA box dimension is {extent} > 256, TMA's limit")
    return out


def summarize(
    arch: str,
    trace_kernels: list[dict],
    tma_atoms: list[dict],
    ptxas_text: str | None = None,
    cubins: list[bytes] | None = None,
) -> dict[str, Any]:
    """Resources per kernel and the checks, as plain data."""
    ptxas = parse_ptxas(ptxas_text or "")
    from_cubin: dict[str, dict[str, int]] = {}
    for blob in cubins or []:
        try:
            from_cubin.update(parse_cubin(blob))
        except Exception:
            pass
    kernels = []
    names = [k["name"] for k in trace_kernels] or list(dict.fromkeys([*ptxas, *from_cubin]))
    traced = {k["name"]: k for k in trace_kernels}
    for name in names:
        t = traced.get(name, {})
        p, c = ptxas.get(name, {}), from_cubin.get(name, {})
        kernels.append(
            {
                "name": name,
                "location": t.get("location"),
                "registers": p.get("registers", c.get("registers")),
                "barriers": p.get("barriers", c.get("barriers")),
                "stack_bytes": p.get("stack_bytes", c.get("stack_bytes")),
                "spill_store_bytes": p.get("spill_store_bytes"),
                "spill_load_bytes": p.get("spill_load_bytes"),
                "dynamic_smem_bytes": t.get("smem_bytes"),
                "smem_fields": t.get("smem_fields") or [],
                "static_smem_bytes": c.get("static_smem_bytes", 0),
                "reserved_smem_bytes": c.get("reserved_smem_bytes", 0),
            }
        )
    checks = []
    for check in check_smem(kernels, arch) + check_spills(kernels) + check_tma(tma_atoms):
        if not any(c["message"] == check["message"] for c in checks):  # K and V share a tensor type
            checks.append(check)
    return {"arch": arch, "smem_capacity_bytes": smem_capacity(arch), "kernels": kernels, "checks": checks}
