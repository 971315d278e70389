"""Reading CuTe layout strings as the DSL prints them, without importing the DSL.

The DSL prints a layout as SHAPE:STRIDE, e.g. `(((64,128),2),?{i64},4):(((1@0,1@1),64@0),..)`;
a dynamic extent prints as `?` or `?{i64 div=128}`; a composed layout as
`S<3,4,3> o 0 o SHAPE:STRIDE`. The MLIR types of traced ops embed the same strings
(`!cute.memref<bf16, smem, align<1024>, S<3,4,3>, "LAYOUT">`), so one parser serves
both probes (Python values) and automatically captured ops (IR result types).

    describe_layout("((64,64),1):((1,64),0)")
    -> {"shape": "((64,64),1)", "rank": 2, "depth": 2, "modes": ["(64,64)", "1"], "dynamic": []}
"""

from __future__ import annotations

import re
from typing import Any

_OPEN = "([{<"
_CLOSE = ")]}>"


def split_top(text: str, sep: str) -> list[str]:
    """Split `text` at `sep` characters that are not nested in brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def shape_of(layout: str) -> str:
    """The shape part of SHAPE:STRIDE (the last ` o ` term of a composed layout)."""
    outer = layout.rsplit(" o ", 1)[-1].strip()
    parts = split_top(outer, ":")
    return parts[0].strip()


def _strip_parens(text: str) -> str | None:
    """The inside of a parenthesised tuple, or None for an atom."""
    text = text.strip()
    if not (text.startswith("(") and text.endswith(")")):
        return None
    depth = 0
    for i, ch in enumerate(text):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0 and i != len(text) - 1:
                return None  # "(a)(b)": not one tuple
    return text[1:-1]


def parse_tuple(text: str) -> Any:
    """'((64,64),?{i64},4)' -> [['64', '64'], '?{i64}', '4'] (atoms stay strings)."""
    inner = _strip_parens(text)
    if inner is None:
        return text.strip()
    if not inner.strip():
        return []
    return [parse_tuple(p) for p in split_top(inner, ",")]


def _depth(node: Any) -> int:
    if isinstance(node, list):
        return 1 + max((_depth(c) for c in node), default=0)
    return 0


def _unparse(node: Any) -> str:
    if isinstance(node, list):
        return "(" + ",".join(_unparse(c) for c in node) + ")"
    return node


def _dynamic_paths(node: Any, path: tuple[int, ...] = ()) -> list[str]:
    if isinstance(node, list):
        out = []
        for i, child in enumerate(node):
            out += _dynamic_paths(child, path + (i,))
        return out
    return [".".join(map(str, path)) or "0"] if node.startswith("?") else []


def _static_size(node: Any) -> int | None:
    if isinstance(node, list):
        size = 1
        for child in node:
            s = _static_size(child)
            if s is None:
                return None
            size *= s
        return size
    try:
        return int(node)
    except ValueError:
        return None


def describe_layout(layout: str) -> dict[str, Any]:
    """Rank (top-level modes), depth, per-mode shape, dynamic extents and size of a layout."""
    shape = shape_of(layout)
    tree = parse_tuple(shape)
    modes = [_unparse(m) for m in tree] if isinstance(tree, list) else [tree]
    dynamic = _dynamic_paths(tree if isinstance(tree, list) else [tree])
    return {
        "shape": shape,
        "rank": len(modes) if isinstance(tree, list) else 1,
        "depth": _depth(tree),
        "modes": modes,
        "dynamic": dynamic,
        "size": _static_size(tree),
    }


def plain_dynamic(text: str) -> str:
    """`?{i64 div=128}` -> `?` (the short form the DSL prints for shapes in Python)."""
    return re.sub(r"\?\{[^}]*\}", "?", text)


# --------------------------------------------------------------------------------------
# MLIR result types of traced ops -> what the DSL would print for the Python value
# --------------------------------------------------------------------------------------
_ELEM = {"f16": "f16", "bf16": "bf16", "f32": "f32", "f64": "f64", "i8": "i8", "i32": "i32", "i64": "i64"}


def _quoted(text: str) -> list[str]:
    return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def describe_type(type_str: str) -> dict[str, Any] | None:
    """What a traced value is, from its MLIR type; None for values without a layout.

    Returns {what, layout, type, dtype, memspace, align, swizzle}; `type` is the string the
    DSL prints for the same Python value (e.g. `tensor<ptr<bf16, smem, align<1024>> o L>`).
    """
    t = type_str.strip()
    if t.startswith("!cute.memref<"):
        body = t[len("!cute.memref<") : -1]
        quoted = _quoted(body)
        if not quoted:
            return None
        layout = quoted[-1]
        head = [p.strip() for p in split_top(body[: body.rfind('"' + layout + '"')].rstrip().rstrip(","), ",")]
        dtype = head[0] if head else None
        memspace = head[1] if len(head) > 1 else None
        align = None
        swizzle = None
        for part in head[2:]:
            m = re.fullmatch(r"align<(\d+)>", part)
            if m:
                align = int(m.group(1))
            elif part.startswith("S<"):
                swizzle = part
        ptr = ", ".join(p for p in head if p)
        return {
            "what": "tensor",
            "layout": layout,
            "type": f"tensor<ptr<{ptr}> o {layout}>",
            "dtype": dtype,
            "memspace": memspace,
            "align": align,
            "swizzle": swizzle,
        }
    if t.startswith("!cute.coord_tensor<"):
        quoted = _quoted(t)
        if len(quoted) < 2:
            return None
        return {
            "what": "coord_tensor",
            "layout": quoted[-1],
            "type": f"tensor<{quoted[0]} o {quoted[-1]}>",
            "dtype": None,
            "memspace": "coord",
            "align": None,
            "swizzle": None,
        }
    if t.startswith("!cute_nvgpu.smem_desc_view<"):
        quoted = _quoted(t)
        if not quoted:
            return None
        return {
            "what": "smem_desc",
            "layout": quoted[-1],
            "type": f"tensor<smem_desc o {quoted[-1]}>",
            "dtype": None,
            "memspace": "smem",
            "align": None,
            "swizzle": None,
        }
    for prefix, what in (("!cute.layout<", "layout"), ("!cute.composed_layout<", "composed_layout")):
        if t.startswith(prefix):
            quoted = _quoted(t)
            if not quoted:
                return None
            return {"what": what, "layout": quoted[0], "type": quoted[0], "dtype": None, "memspace": None, "align": None, "swizzle": None}
    return None


def elem_bytes(dtype: str | None) -> int | None:
    """Bytes of one element of an MLIR element type name (bf16 -> 2); None if unknown."""
    if not dtype:
        return None
    m = re.fullmatch(r"[a-z]*?(\d+)(?:[a-z0-9]*)?", dtype.lower())
    if dtype.lower() in ("bf16", "f16", "i16"):
        return 2
    if not m:
        return None
    bits = int(m.group(1))
    return bits // 8 if bits >= 8 else None
