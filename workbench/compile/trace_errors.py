"""DSL errors during tracing, made readable: one clear message that points at the user's
source line and prints the shapes involved.

The DSL reports a bad slice as

    MLIRError: Operation creation failed: error: unknown: expects `coord` and shape of view
    are weakly congruent, but got '!cute.layout<"(((64,64),1),?{i64},4):(...)">',
    '!cute.coord<"(_,?)">'

with a traceback that runs through its own frames. `readable()` turns it into

    stages/k/stage_a.py:32: slice with 2 coordinates of a tensor with 3 modes
        tXgX_blk = tXgX[None, bm]
      tensor: (((64,64),1),?{i64},4):(((1@0,1@1),0),64@1,64@0)   3 modes: ((64,64),1) | ?{i64} | 4
      coordinate: (_,?)   2 modes
      give one coordinate per mode (None keeps a mode), e.g. [None, 0, 0]

The shapes involved come from the message's types and from the arguments of the DSL call
the user's line made (the frame right below the user's frame in the traceback).
"""

from __future__ import annotations

import linecache
import os
import re
import sysconfig
from pathlib import Path
from typing import Any

from workbench.compile.layouts import describe_layout, describe_type, parse_tuple, split_top
from workbench.compile.probe import with_keys
from workbench.compile.trace import ops_before_failure
import workbench

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class KernelTraceError(Exception):
    """A stage failed to trace or compile; str() is the readable, multi-line message."""

    def __init__(self, message: str, *, location: str | None, source: str, headline: str, involved: list[dict],
                 shapes: list[dict], dsl_message: str, error_type: str):
        super().__init__(message)
        self.location = location
        self.source = source
        self.headline = headline
        self.involved = involved
        self.shapes = shapes  # probe records captured before the failure
        self.dsl_message = dsl_message
        self.error_type = error_type

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.error_type,
            "headline": self.headline,
            "message": str(self),
            "location": self.location,
            "source": self.source,
            "involved": self.involved,
            "dsl_message": self.dsl_message,
        }


def _library_roots() -> list[str]:
    roots = []
    try:
        import cutlass

        roots += [str(Path(p).resolve()) for p in getattr(cutlass, "__path__", [])]
        roots.append(str(Path(cutlass.__file__).resolve().parents[2]))  # nvidia_cutlass_dsl/
    except Exception:
        pass

    roots.append(str(Path(workbench.__file__).resolve().parent))
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.append(str(Path(sysconfig.get_paths()[key]).resolve()))
        except Exception:
            pass
    return roots


def _is_user_file(filename: str, roots: list[str]) -> bool:
    if not filename or filename.startswith("<"):
        return False
    try:
        path = str(Path(filename).resolve())
    except OSError:
        return False
    return not any(path == r or path.startswith(r + os.sep) for r in roots)


def _frames(exc: BaseException) -> list[Any]:
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return frames


def dsl_core_message(exc: BaseException) -> str:
    """The DSL's own complaint, without colours, banners and its call-stack dump."""
    text = _ANSI.sub("", str(exc)).strip()
    errors = re.findall(r"error:\s*(?:unknown:\s*)?(.+)", text)
    if errors:
        # with line info the location comes first: "<source text>"("file":line:col): ...
        return re.sub(r'^(?:"(?:[^"\\]|\\.)*")?\("[^"]*":\d+:\d+\):\s*', "", errors[0].strip())
    for line in text.splitlines():
        line = line.strip(" =-")
        if line and not line.startswith(("📍", "📋", "-->", "File ")):
            return re.sub(r"^\[Error\]\s*", "", line)
    return type(exc).__name__


def _quoted_types(message: str) -> list[tuple[str, str]]:
    """('layout'|'coord'|'memref'|..., text) for each `!cute.X<"...">` / `#cute.X<"...">` in the message."""
    out = []
    for kind, body in re.findall(r'[!#]cute\.(\w+)<((?:"[^"]*"|[^<>]|<[^<>]*>)*)>', message):
        quoted = re.findall(r'"([^"]*)"', body)
        if quoted:
            out.append((kind, quoted[-1]))
    return out


_LAYOUT_KINDS = ("layout", "memref", "coord_tensor", "composed_layout")  # DSL types that carry a layout
_LAYOUT_TEXT = re.compile(r"[\w\s(),:?{}@<>=.+*-]+")


def _value_shape(value: Any) -> str | None:
    """The layout of a tensor or layout value; None for anything else (a class among a
    DSL frame's locals has `layout` and `iterator` too: properties)."""
    if isinstance(value, type):
        return None
    try:  # the MLIR type: readable after the DSL left its context, unlike value.layout
        facts = describe_type(str(value.type))
        if facts:
            return facts["layout"]
    except Exception:
        pass
    try:
        if hasattr(value, "layout") and hasattr(value, "iterator"):
            text = str(value.layout)
        elif type(value).__name__ in ("_Layout", "_ComposedLayout", "Layout", "ComposedLayout"):
            text = str(value)
        else:
            return None
    except Exception:
        return None
    return text if ":" in text and _LAYOUT_TEXT.fullmatch(text) and " object " not in text else None


def _mode_text(layout: str) -> str:
    d = describe_layout(layout)
    return f"{d['rank']} mode{'s' if d['rank'] != 1 else ''}: " + " | ".join(d["modes"])


_CALL = re.compile(r"^(?:[A-Za-z_][\w.,\s\[\]]*?(?<![=!<>+\-*/])=(?!=))?\s*[A-Za-z_][\w.]*\((?P<args>.*)\)\s*(?:#.*)?$")


def _positional_arguments(source: str) -> list[str]:
    """The positional argument texts of a line that makes one call: `x = f(a, (1, 2), k=b)` -> a, (1, 2)."""
    m = _CALL.match(source)
    if not m:
        return []
    args = [a.strip() for a in split_top(m.group("args"), ",")]
    return [a for a in args if a and not re.match(r"^\w+\s*=(?!=)", a)]


def _involved_from_frame(frames: list[Any], user_index: int | None, source: str = "") -> list[dict]:
    """Tensors and layouts among the arguments of the DSL call made on the user's line,
    named as the user's line names them when it makes one call."""
    if user_index is None:
        return []
    written = _positional_arguments(source)
    for tb in frames[user_index + 1 : user_index + 6]:
        frame = tb.tb_frame
        out, seen = [], set()
        for name, value in list(frame.f_locals.items()):
            items = [(name, value)]
            if isinstance(value, (tuple, list)) and name in ("args",):
                items = [(written[i] if i < len(written) else f"{name}[{i}]", v) for i, v in enumerate(value)]
            elif isinstance(value, dict) and name in ("kwargs",):
                items = list(value.items())
            for label, item in items:
                shape = _value_shape(item)
                if shape and (label, shape) not in seen:
                    seen.add((label, shape))
                    d = describe_layout(shape)
                    out.append({"name": label, "layout": shape, "rank": d["rank"], "modes": d["modes"]})
        if out:
            return out[:4]
    return []


def _headline(core: str, involved: list[dict], quoted: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """A one-line statement of the problem and extra hint lines."""
    if "weakly congruent" in core:
        layout = next((t for k, t in quoted if k in ("layout", "composed_layout")), None)
        coord = next((t for k, t in quoted if k == "coord"), None)
        if layout and coord:
            lr = describe_layout(layout)["rank"]
            c = parse_tuple(coord)
            cr = len(c) if isinstance(c, list) else 1
            example = "[" + ", ".join(["None"] + ["0"] * (lr - 1)) + "]"
            head = f"slice with {cr} coordinate{'s' if cr != 1 else ''} of a tensor with {lr} modes"
            if cr == lr:
                head = f"slice coordinate {coord} does not match the nesting of the tensor's modes"
            return head, [
                f"tensor:     {layout}   {_mode_text(layout)}",
                f"coordinate: {coord}   {cr} mode{'s' if cr != 1 else ''}",
                f"give one coordinate per mode (None keeps a mode), e.g. {example}",
            ]
    m = re.search(r"src\.rank\(\) = (\d+)`? != `?dst\.rank\(\) = (\d+)", core)
    if m or "same rank" in core:
        src, dst = (m.group(1), m.group(2)) if m else ("?", "?")
        lines = [f"{i['name']}: {i['layout']}   {_mode_text(i['layout'])}" for i in involved]
        if not lines:
            lines = [f"{k}: {t}   {_mode_text(t)}" for k, t in quoted if k == "memref"]
        return f"copy between tensors of different rank (source {src} modes, destination {dst})", lines + [
            "partition or slice both sides to the same modes (cute.group_modes / select / slicing)"
        ]
    lines = [f"{i['name']}: {i['layout']}   {_mode_text(i['layout'])}" for i in involved]
    if not lines:
        lines = [f"{k}: {t}   {_mode_text(t)}" for k, t in quoted if k in _LAYOUT_KINDS]
    return core.splitlines()[0][:300], lines


def readable(exc: BaseException, shapes: list[dict] | None = None, root: Path | None = None) -> KernelTraceError:
    """A KernelTraceError describing `exc` (raise it `from exc`): `shapes` (the probes and
    ops captured so far) plus the ops of the module the failed trace was building."""
    return _readable(exc, with_keys(list(shapes or []) + ops_before_failure(exc)), root)


SHOWN_OPS = 6  # the last ops before a failure that the message lists


def _readable(exc: BaseException, shapes: list[dict], root: Path | None) -> KernelTraceError:
    roots = _library_roots()
    frames = _frames(exc)
    user_index = None
    for i, tb in enumerate(frames):
        if _is_user_file(tb.tb_frame.f_code.co_filename, roots):
            user_index = i
    cause = exc.__cause__ or exc.__context__
    if user_index is None and cause is not None and cause is not exc:
        return _readable(cause, shapes, root)
    location, source = None, ""
    if user_index is not None:
        tb = frames[user_index]
        filename = tb.tb_frame.f_code.co_filename
        location = f"{filename}:{tb.tb_lineno}"
        linecache.checkcache(filename)
        source = linecache.getline(filename, tb.tb_lineno).strip()
    core = dsl_core_message(exc)
    quoted = _quoted_types(_ANSI.sub("", str(exc)))
    involved = _involved_from_frame(frames, user_index, source)
    headline, hints = _headline(core, involved, quoted)
    shown = _shown(location, root)
    lines = [f"{shown}: {headline}" if shown else headline]
    if source:
        lines.append(f"    {source}")
    lines += [f"  {h}" for h in hints]
    if core.splitlines()[0][:300] != headline:
        lines.append(f"  (DSL: {core.splitlines()[0][:400]})")
    lines += _op_lines([r for r in shapes if r.get("kind") == "op"], root)
    return KernelTraceError(
        "\n".join(lines),
        location=location,
        source=source,
        headline=headline,
        involved=involved or [{"name": k, "layout": t} for k, t in quoted if k in _LAYOUT_KINDS],
        shapes=shapes,
        dsl_message=core,
        error_type=type(exc).__name__,
    )


def _shown(location: str | None, root: Path | None) -> str | None:
    """file:line relative to the workspace when it lies inside."""
    if not location or root is None:
        return location
    path, line = location.rsplit(":", 1)
    try:
        return f"{Path(path).resolve().relative_to(root.resolve())}:{line}"
    except ValueError:
        return location


def _op_lines(ops: list[dict], root: Path | None) -> list[str]:
    """The last ops traced before the failure: where the cause often is."""
    if not ops:
        return []
    last = ops[-SHOWN_OPS:]
    more = f" (the last {len(last)} of {len(ops)}; wb shapes --all-ops lists them all)" if len(ops) > len(last) else ""
    width = max(len(r["name"]) for r in last)
    return [f"  ops traced before it{more}:"] + [
        f"    {r['name']:<{width}}  {_shown(r.get('location'), root)}  {r.get('layout')}" for r in last
    ]
