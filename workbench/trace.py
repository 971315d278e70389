"""Automatic capture from the traced IR: every TMA partition, tile, divide, slice and MMA
partition of a kernel, with its source line, without probe calls.

How: `cute.compile` runs trace-finalize hooks on the traced module before lowering it
(`CuTeDSL.trace_finalize_hooks`, a scoped context, so a stage's own `cute.compile` call
picks it up). With the DSL's line info on, every op's location is
`NameLoc("<source line text>", FileLineColLoc(file, line))` for the closest user frame, and
every result type embeds its layout string as the DSL prints it. `tracing()` turns line
info on for the compile (like nvcc -lineinfo it adds line tables, not instructions),
installs the hook and collects:

  * op records (see workbench.probe for the record format), kind="op";
  * per kernel: shared memory the kernel allocates (the smem struct allocas);
  * every TMA atom made on the host: the gmem tensor's type and the TMA box (for the
    16-byte checks in workbench.resources).

A record is kept only when its source line names the operation (`local_tile(` for
cute.local_tile, `[` for a slice, ...): ops that a library call builds internally on the
user's line (the divides inside `cute.autovec_copy`, say) are left out.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from workbench.probe import active_capture, record_from_type

# op name -> words that must appear in the op's source line for the op to be the user's own
CAPTURED_OPS: dict[str, tuple[str, ...]] = {
    "cute_nvgpu.atom.tma_partition": ("tma_partition",),
    "cute.local_tile": ("local_tile",),
    "cute.local_partition": ("local_partition",),
    "cute.zipped_divide": ("zipped_divide",),
    "cute.logical_divide": ("logical_divide",),
    "cute.tiled_divide": ("tiled_divide",),
    "cute.flat_divide": ("flat_divide",),
    "cute.slice": ("[",),
    "cute.tiled.mma.partition": ("partition_A", "partition_B", "partition_C", "partition_"),
    "cute.mma.make_fragment": ("make_fragment",),
    "cute.copy.make_fragment": ("make_fragment",),
    "cute.tiled.copy.retile": ("retile",),
    "cute.tile_to_shape": ("tile_to_shape",),
    "cute_nvgpu.atom.make_non_exec_tiled_tma_load": ("tma",),
    "cute_nvgpu.atom.make_non_exec_tiled_tma_store": ("tma",),
    "cute_nvgpu.atom.make_non_exec_tiled_tma_reduce": ("tma",),
}

_TMA_ATOM_OPS = (
    "cute_nvgpu.atom.make_non_exec_tiled_tma_load",
    "cute_nvgpu.atom.make_non_exec_tiled_tma_store",
    "cute_nvgpu.atom.make_non_exec_tiled_tma_reduce",
)

_ASSIGN_RE = re.compile(r"^\s*(?P<targets>[A-Za-z_][\w\.\s,\[\]\(\)]*?)\s*(?<![=!<>+\-*/])=(?!=)")
_SUBSCRIPT_RE = re.compile(r"([A-Za-z_][\w\.]*)\s*\[")


@dataclass
class KernelFacts:
    name: str
    location: str | None
    smem_bytes: int = 0  # shared memory the kernel's allocas ask for (dynamic smem)
    smem_fields: list[str] = field(default_factory=list)


@dataclass
class TmaAtom:
    op: str
    location: str | None
    source: str
    gmem_type: str
    atom_type: str
    smem_layout: str | None


@dataclass
class TraceState:
    stage: str | None = None
    ops: list[dict] = field(default_factory=list)
    kernels: list[KernelFacts] = field(default_factory=list)
    tma_atoms: list[TmaAtom] = field(default_factory=list)
    traced: int = 0  # modules seen (one per cute.compile)
    hook_error: str | None = None

    def hook(self, dsl: Any, module: Any, function_name: str) -> None:
        """trace_finalize hook: never raises (a broken capture must not break a compile)."""
        self.traced += 1
        try:
            _scan_module(self, module)
        except Exception as exc:  # pragma: no cover - defensive
            self.hook_error = f"{type(exc).__name__}: {exc}"


def location_of(loc: Any) -> tuple[str | None, str]:
    """(file:line, source text) of an MLIR location built by the DSL."""
    source = ""
    for _ in range(16):
        if loc is None:
            break
        try:
            if loc.is_a_file():
                return f"{loc.filename}:{loc.start_line}", source
            if loc.is_a_name():
                if not source:
                    source = loc.name_str
                loc = loc.child_loc
                continue
            if loc.is_a_callsite():
                loc = loc.callee
                continue
            if loc.is_a_fused():
                locs = list(loc.locations)
                loc = locs[0] if locs else None
                continue
        except Exception:
            break
        break
    return None, source


def _names_for(op_name: str, source: str, results: int, occurrence: int) -> list[str]:
    """Variable names of an op's results, read from its source line."""
    first_line = source.splitlines()[0] if source else ""
    if op_name == "cute.slice":
        subs = _SUBSCRIPT_RE.findall(first_line)
        m = _ASSIGN_RE.match(first_line)
        if m and len(subs) == 1:
            targets = [t.strip() for t in m.group("targets").split(",") if t.strip()]
            if len(targets) == 1:
                return [targets[0]]
        if subs:
            base = subs[occurrence % len(subs)]
            return [f"{base}[...]"]
    m = _ASSIGN_RE.match(first_line)
    if m:
        targets = [t.strip() for t in m.group("targets").split(",") if t.strip()]
        if len(targets) == results:
            return targets
        if len(targets) == 1:
            return [targets[0]] if results == 1 else [f"{targets[0]}[{i}]" for i in range(results)]
    short = op_name.rsplit(".", 1)[-1]
    return [f"<{short}>"] if results == 1 else [f"<{short}>[{i}]" for i in range(results)]


def _direct(op_name: str, source: str) -> bool:
    if not source:
        return True
    words = CAPTURED_OPS.get(op_name, ())
    return any(w in source for w in words)


def _smem_bytes(type_str: str) -> int | None:
    """Bytes of an smem alloca result `!cute.memref<i8, smem, align<..>, "8320:1">`."""
    from workbench.layouts import describe_type, elem_bytes

    facts = describe_type(type_str)
    if not facts or facts["memspace"] != "smem":
        return None
    layout = facts["layout"]
    from workbench.layouts import describe_layout

    size = describe_layout(layout)["size"]
    width = elem_bytes(facts["dtype"]) or 1
    return size * width if size is not None else None


def _scan_module(state: TraceState, module: Any) -> None:
    from cutlass._mlir import ir

    capture = active_capture()
    seen_at: dict[tuple[str | None, str], int] = {}
    current_kernel: list[KernelFacts] = []

    def visit(op: Any) -> Any:
        operation = op.operation if hasattr(op, "operation") else op
        name = operation.name
        if name == "cuda.kernel" or name == "gpu.func":
            where, _ = location_of(operation.location)
            try:
                sym = operation.attributes["sym_name"].value
            except Exception:
                sym = name
            facts = KernelFacts(sym, where)
            state.kernels.append(facts)
            current_kernel[:] = [facts]
            return ir.WalkResult.ADVANCE
        if name == "cute.memref.alloca" and current_kernel:
            try:
                fields = operation.attributes["smem.struct_fields"]
                field_list = [str(f).strip('"') for f in fields]
            except Exception:
                field_list = []
            for result in operation.results:
                size = _smem_bytes(str(result.type))
                if size:
                    current_kernel[0].smem_bytes += size
                    current_kernel[0].smem_fields += field_list
            return ir.WalkResult.ADVANCE
        if name in _TMA_ATOM_OPS:
            where, source = location_of(operation.location)
            try:
                smem_layout = str(operation.operands[1].type)
            except Exception:
                smem_layout = None
            state.tma_atoms.append(
                TmaAtom(name, where, source, str(operation.operands[0].type), str(operation.results[0].type), smem_layout)
            )
        if name not in CAPTURED_OPS:
            return ir.WalkResult.ADVANCE
        where, source = location_of(operation.location)
        if where is None or not _direct(name, source):
            return ir.WalkResult.ADVANCE
        key = (where, name)
        occurrence = seen_at.get(key, 0)
        seen_at[key] = occurrence + 1
        results = list(operation.results)
        names = _names_for(name, source, len(results), occurrence)
        for result, var in zip(results, names):
            record = record_from_type(var, where, source.splitlines()[0].strip() if source else "", str(result.type), name)
            if record is None:
                continue
            record["stage"] = state.stage
            if capture is not None:
                capture.add(record)
            else:
                state.ops.append(record)
        return ir.WalkResult.ADVANCE

    try:
        module.operation.walk(visit, walk_order=ir.WalkOrder.PRE_ORDER)
    except TypeError:
        module.operation.walk(visit)


@contextlib.contextmanager
def tracing(
    stage: str | None = None,
    arch: str | None = None,
    keep: tuple[str, ...] = ("cubin",),
    dump_dir: str | None = None,
    ptxas_report: bool = True,
) -> Iterator[TraceState]:
    """For the compiles inside this block: line info on, the capture hook installed, `arch`
    as the DSL's default architecture (stages that pass cute.GPUArch keep theirs), ptxas's
    resource report requested (remarks{ptx}) and the artifacts in `keep` (cubin, ptx)
    written to `dump_dir`. None of these change the generated instructions. The DSL's
    settings are restored afterwards."""
    from cutlass.cutlass_dsl import CuTeDSL

    dsl = CuTeDSL._get_dsl()
    envar = dsl.envar
    names = ("lineinfo", "_arch", "compiler_opt", "keep_cubin", "keep_ptx", "dump_dir")
    saved = {n: getattr(envar, n, None) for n in names}
    state = TraceState(stage=stage)
    envar.lineinfo = True
    if arch:
        envar._arch = arch
    if ptxas_report and "remarks" not in (envar.compiler_opt or ""):
        envar.compiler_opt = ((envar.compiler_opt or "") + " remarks{ptx}").strip()
    if dump_dir:
        envar.keep_cubin = "cubin" in keep or bool(saved["keep_cubin"])
        envar.keep_ptx = "ptx" in keep or bool(saved["keep_ptx"])
        envar.dump_dir = str(dump_dir)
    try:
        with dsl.trace_finalize_hooks(state.hook):
            yield state
    finally:
        for n, v in saved.items():
            if n == "_arch" and not arch:
                continue
            setattr(envar, n, v)
