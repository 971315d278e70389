"""Automatic capture from the traced IR: every TMA partition, tiled-copy partition, tile,
divide, slice and MMA partition of a kernel, with its source line, without probe calls.

How: `cute.compile` runs trace-finalize hooks on the traced module before lowering it
(`CuTeDSL.trace_finalize_hooks`, a scoped context, so a stage's own `cute.compile` call
picks it up). With the DSL's line info on, every op's location is
`NameLoc("<source line text>", FileLineColLoc(file, line))` for the closest user frame, and
every result type embeds its layout string as the DSL prints it. `tracing()` turns line
info on for the compile (like nvcc -lineinfo it adds line tables, not instructions),
installs the hook and collects:

  * op records (see workbench.compile.probe for the record format), kind="op";
  * per kernel: shared memory the kernel allocates (the smem struct allocas);
  * every TMA atom made on the host: the gmem tensor's type and the TMA box (for the
    16-byte checks in workbench.compile.resources).

A record is kept only when its source line names the operation (`local_tile(` for
cute.local_tile, `[` for a slice, ...): ops that a library call builds internally on the
user's line (the divides inside `cute.autovec_copy`, say) are left out.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from workbench.compile.layouts import describe_layout, describe_type, elem_bytes, split_top
from workbench.compile.probe import active_capture, record_from_type

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
    "cute.tiled.copy.partition_S": ("partition_S",),  # thr_copy.partition_S(...): TMEM->reg, reg->smem, ...
    "cute.tiled.copy.partition_D": ("partition_D",),
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
    files: set[str] = field(default_factory=set)  # every source file a location names

    def hook(self, dsl: Any, module: Any, function_name: str) -> None:
        """trace_finalize hook: never raises (a broken capture must not break a compile)."""
        self.traced += 1
        try:
            _scan_module(self, module)
        except Exception as exc:  # pragma: no cover - defensive
            self.hook_error = f"{type(exc).__name__}: {exc}"


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
    facts = describe_type(type_str)
    if not facts or facts["memspace"] != "smem":
        return None
    layout = facts["layout"]

    size = describe_layout(layout)["size"]
    width = elem_bytes(facts["dtype"]) or 1
    return size * width if size is not None else None


# --------------------------------------------------------------------------------------
# Reading the traced module as text. (Walking it with the MLIR Python bindings leaves
# operation wrappers that the bindings may hand out again for different, later ops once the
# lowering passes free the originals: the process aborts or segfaults at random later.
# One get_asm call creates no wrapper.)
# --------------------------------------------------------------------------------------
_TYPE_ALIAS = re.compile(r"^(![\w.$-]+) = (.+)$")
_LOC_ALIAS = re.compile(r"^(#loc\d*) = loc\((.*)\)$")
_OP_LINE = re.compile(r'^\s*(?:%[\w.#-]+(?::\d+)? = )?"([\w.]+)"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LINE_COL = re.compile(r":\d+:\d+")
_STRUCT_FIELDS = re.compile(r"smem\.struct_fields = \[([^\]]*)\]")
_SYM_NAME = re.compile(r'sym_name = "([^"]+)"')


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _read_string(expr: str, i: int) -> tuple[str, int]:
    """The quoted string starting at expr[i] == '"' and the index after it."""
    j = i + 1
    while j < len(expr) and expr[j] != '"':
        j += 2 if expr[j] == "\\" else 1
    return _unescape(expr[i + 1 : j]), j + 1


class _Locations:
    """MLIR location expressions of the printed module -> (file:line, source text)."""

    def __init__(self, aliases: dict[str, str]):
        self.aliases = aliases
        self.memo: dict[str, tuple[str | None, str]] = {}

    def resolve(self, expr: str, depth: int = 0) -> tuple[str | None, str]:
        expr = expr.strip()
        if depth > 32 or not expr:
            return None, ""
        if expr.startswith("#loc"):
            if expr not in self.memo:
                self.memo[expr] = (None, "")  # cycles
                self.memo[expr] = self.resolve(self.aliases.get(expr, ""), depth + 1)
            return self.memo[expr]
        if expr.startswith('"'):
            text, j = _read_string(expr, 0)
            rest = expr[j:]
            m = re.match(r":(\d+):\d+", rest)
            if m:  # "file":line:col
                return f"{text}:{m.group(1)}", ""
            if rest.startswith("("):  # "name"(child)
                where, source = self.resolve(rest[1:-1] if rest.endswith(")") else rest[1:], depth + 1)
                return where, text if not source else source
            return None, text
        if expr.startswith("callsite("):
            inner = expr[len("callsite(") : -1]
            callee = inner.split(" at ", 1)[0]
            return self.resolve(callee, depth + 1)
        if expr.startswith("fused"):
            body = expr[expr.index("[") + 1 : expr.rindex("]")] if "[" in expr else ""

            for part in split_top(body, ","):
                where, source = self.resolve(part, depth + 1)
                if where:
                    return where, source
        return None, ""


def location_files(lines: list[str]) -> set[str]:
    """The file of every `"file":line:col` location in the printed module."""
    files = set()
    for line in lines:
        if "loc(" not in line:
            continue
        for m in _STRING.finditer(line):  # strings in order: a quote inside one is escaped
            if _LINE_COL.match(line, m.end()):
                files.add(_unescape(m.group(0)[1:-1]))
    return files


def _split_types(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        return [t.strip() for t in split_top(text[1:-1], ",") if t.strip()]
    return [text] if text else []


def _scan_module(state: TraceState, module: Any) -> None:
    text = module.operation.get_asm(enable_debug_info=True, print_generic_op_form=True)
    scan_text(state, text)


_ACTIVE = object()


def scan_text(state: TraceState, text: str, capture: Any = _ACTIVE) -> None:
    """Collect op records, kernel shared memory, TMA atoms and source files from a printed
    module. Op records go to `capture` (the active probe capture unless given; None: to
    state.ops)."""
    if capture is _ACTIVE:
        capture = active_capture()
    lines = text.splitlines()
    state.files |= location_files(lines)
    types: dict[str, str] = {}
    loc_aliases: dict[str, str] = {}
    for line in lines:
        if line.startswith("!"):
            m = _TYPE_ALIAS.match(line)
            if m:
                types[m.group(1)] = m.group(2)
        elif line.startswith("#loc"):
            m = _LOC_ALIAS.match(line)
            if m:
                loc_aliases[m.group(1)] = m.group(2)
    locations = _Locations(loc_aliases)

    def resolve_type(t: str) -> str:
        t = t.strip()
        return types.get(t, t)

    seen_at: dict[tuple[str | None, str], int] = {}
    kernel: KernelFacts | None = None
    kernel_indent = -1
    for line in lines:
        m = _OP_LINE.match(line)
        if not m:
            if kernel is not None and line.startswith(" " * kernel_indent + "})") and len(line) - len(line.lstrip()) == kernel_indent:
                kernel = None
            continue
        name = m.group(1)
        indent = len(line) - len(line.lstrip())
        if kernel is not None and indent <= kernel_indent:
            kernel = None
        if name in ("cuda.kernel", "gpu.func"):
            sym = _SYM_NAME.search(line)
            kernel = KernelFacts(sym.group(1) if sym else name, None)
            kernel_indent = indent
            state.kernels.append(kernel)
            continue
        wanted = name in CAPTURED_OPS or name in _TMA_ATOM_OPS or (name == "cute.memref.alloca" and kernel is not None)
        if not wanted:
            continue
        cut = line.rfind(" loc(")
        loc_expr = line[cut + 5 : -1] if cut >= 0 and line.endswith(")") else ""
        head = line[:cut] if cut >= 0 else line
        arrow = head.rfind(" -> ")
        results = _split_types(head[arrow + 4 :]) if arrow >= 0 else []
        results = [resolve_type(t) for t in results]
        if name == "cute.memref.alloca":
            fields = _STRUCT_FIELDS.search(line)
            field_list = [f.strip().strip('"') for f in fields.group(1).split(",")] if fields else []
            for t in results:
                size = _smem_bytes(t)
                if size:
                    kernel.smem_bytes += size
                    kernel.smem_fields += field_list
            continue
        where, source = locations.resolve(loc_expr)
        if name in _TMA_ATOM_OPS:
            colon = head.rfind(" : (", 0, arrow if arrow >= 0 else None)
            operands = [resolve_type(t) for t in _split_types(head[colon + 3 : arrow])] if colon >= 0 else []
            state.tma_atoms.append(
                TmaAtom(
                    name, where, source.splitlines()[0].strip() if source else "",
                    operands[0] if operands else "", results[0] if results else "",
                    operands[1] if len(operands) > 1 else None,
                )
            )
        if name not in CAPTURED_OPS or where is None or not _direct(name, source):
            continue
        key = (where, name)
        occurrence = seen_at.get(key, 0)
        seen_at[key] = occurrence + 1
        names = _names_for(name, source, len(results), occurrence)
        first = source.splitlines()[0].strip() if source else ""
        for result_type, var in zip(results, names):
            record = record_from_type(var, where, first, result_type, name)
            if record is None:
                continue
            record["stage"] = state.stage
            if capture is not None:
                capture.add(record)
            else:
                state.ops.append(record)


# --------------------------------------------------------------------------------------
# A failed trace: the trace-finalize hook never runs, but the module the DSL was building
# is still referenced from the frames the exception passed through.
# --------------------------------------------------------------------------------------
_FUNCTIONS = ("func.func", "cuda.kernel", "gpu.func")
_RETURNS = ("func.return", "cuda.return", "gpu.return")


def ops_before_failure(exc: BaseException) -> list[dict]:
    """Op records of the module a failed trace was building, in the order they were traced
    (finished functions first, then the unfinished ones from the outermost in: the host
    up to the launch, the kernel up to the failure). [] when there is no such module."""
    try:
        text = _unfinished_module_text(exc)
        if not text:
            return []
        state = TraceState()
        scan_text(state, "\n".join(_in_trace_order(text.splitlines())), capture=None)
        return state.ops
    except Exception:  # the error message matters more than this extra
        return []


def _unfinished_module_text(exc: BaseException) -> str | None:
    """The innermost MLIR module held by a frame of `exc` (or its causes), printed."""
    seen: set[int] = set()
    module = None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if type(value).__name__ == "Module" and hasattr(value, "operation") and "mlir" in type(value).__module__:
                    module = value
            tb = tb.tb_next
        if module is not None:
            break
        exc = exc.__cause__ or exc.__context__
    if module is None:
        return None
    return module.operation.get_asm(enable_debug_info=True, print_generic_op_form=True, assume_verified=True)


def _in_trace_order(lines: list[str]) -> list[str]:
    """The module's alias lines, then its functions' lines in trace order."""
    aliases = [line for line in lines if line.startswith(("#loc", "!"))]
    spans = _function_spans(lines)
    finished = [s for s in spans if s[2]]
    unfinished = [s for s in spans if not s[2]][::-1]  # the host is printed after its kernels
    return aliases + [line for start, end, _ in finished + unfinished for line in lines[start : end + 1]]


def _function_spans(lines: list[str]) -> list[tuple[int, int, bool]]:
    """(first line, last line, finished: has its return op) of every function, in text order."""
    spans: list[tuple[int, int, bool]] = []
    open_functions: list[list] = []  # [first line, indent, finished]
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        m = _OP_LINE.match(line)
        if m and m.group(1) in _FUNCTIONS:
            open_functions.append([i, indent, False])
        elif not open_functions:
            continue
        elif m and m.group(1) in _RETURNS and indent == open_functions[-1][1] + 2:
            open_functions[-1][2] = True
        elif indent == open_functions[-1][1] and line.lstrip().startswith("})"):
            start, _, finished = open_functions.pop()
            spans.append((start, i, finished))
    return sorted(spans)


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
