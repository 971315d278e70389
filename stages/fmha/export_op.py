"""Stage D as a torch op: `wb export fmha/d` copies this file into the exported package as
``_op.py`` (the contract: workbench.kernels.stage.ExportSpec). It imports nothing but torch:
the package runs with neither wb nor cutlass installed.

    o, lse = torch.ops.wb_fmha.fwd(q, k, v, causal=False)

q (batch, m, heads, d), k (batch, n, kv_heads, d), v (batch, n, kv_heads, dv) (dv = d, or
a narrower V as exported, e.g. 192/128), all one dtype, on one CUDA device, last dim
contiguous, 16-byte aligned; o (batch, m, heads, dv), lse (batch, heads, m) fp32 (natural log
of the softmax denominator of the scaled logits, scale 1/sqrt(d)). V's head dim, the mask and
the softcap select one exported configuration (they are compiled in); a configuration that was
not exported is refused before launch, as is any tensor the kernel was not compiled for.
"""

from __future__ import annotations

import torch

OP = "fwd"
# the compiled kernels of one configuration: fn, and where geometry.long_kernels builds them (causal
# d = 64 and 96, non-causal d = 64 and 128) fn_long and fn_long2, each launched from its info["min_m"] query rows
# and info["min_n"] keys on, the first that serves a call
LONG_PIECES = ("fn_long", "fn_long2")
PIECES = ("fn",) + LONG_PIECES
SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, bool causal=False, float softcap=0.0, int window_left=-1, "
    'int window_right=-1, str align="top_left") -> (Tensor, Tensor)'
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def _truthy(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("1", "true", "yes", "on")
    return bool(x)


def exported_key(params: dict) -> dict:
    """Stage D's compile-time parameters -> what a call selects the configuration by."""
    if _truthy(params.get("varlen", False)):
        raise ValueError("varlen=true is not exportable yet (the op takes (batch, seqlen, heads, d) tensors)")
    if int(params.get("page_size", 0) or 0):
        raise ValueError("page_size > 0 (paged KV) is not exportable yet (the op takes (batch, seqlen, heads, d) tensors)")
    return {
        "d": int(params["d"]),
        "dtype": str(params["dtype"]),
        "heads": int(params["heads"]),
        "kv_heads": int(params["kv_heads"]),
        "causal": _truthy(params.get("causal", False)),
        "align": str(params.get("align", "top_left")),
        "window_left": int(params.get("window_left", -1)),
        "window_right": int(params.get("window_right", -1)),
        "softcap": float(params.get("softcap", 0.0) or 0.0),
        "dv": int(params.get("dv") or params["d"]),  # V's and O's head dim (d unless a narrower V)
    }


def call_key(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left") -> dict:
    return {
        "d": int(q.shape[-1]) if q.dim() else 0,
        "dtype": NAMES.get(q.dtype, str(q.dtype).replace("torch.", "")),
        "heads": int(q.shape[2]) if q.dim() == 4 else 0,
        "kv_heads": int(k.shape[2]) if k.dim() == 4 else 0,
        "causal": bool(causal),
        "align": str(align),
        "window_left": int(window_left),
        "window_right": int(window_right),
        "softcap": float(softcap),
        "dv": int(v.shape[-1]) if v.dim() else 0,
    }


def check(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left", *, fake=False) -> list[str]:
    """What the compiled kernel would not refuse itself, each 'what: expected X, got Y'."""
    problems = []
    named = (("q", q), ("k", k), ("v", v))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            return [f"{name}: expected a torch.Tensor, got {type(t).__name__}"]
    for name, t in named:
        if t.dim() != 4:
            problems.append(f"{name}: expected rank 4 (batch, seqlen, heads, d), got rank {t.dim()} {tuple(t.shape)}")
    if problems:
        return problems
    for name, t in named:
        if t.dtype not in NAMES:
            problems.append(f"{name}.dtype: expected bf16 or fp16, got {str(t.dtype).replace('torch.', '')}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        problems.append(f"dtypes: expected q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not fake or q.device.type != "meta":
        for name, t in named:
            if t.device.type != "cuda":
                problems.append(f"{name}.device: expected cuda, got {t.device}")
    if len({str(t.device) for _, t in named}) > 1:
        problems.append(f"devices: expected one device, got {q.device}, {k.device}, {v.device}")
    b, m, h, d = q.shape
    if tuple(k.shape[:3]) != tuple(v.shape[:3]):
        problems.append(f"v.shape: expected k's (batch, n, kv_heads) {tuple(k.shape[:3])} and a head dim, got {tuple(v.shape)}")
    if k.shape[0] != b or k.shape[3] != d:
        problems.append(f"k.shape: expected ({b}, n, kv_heads, {d}) like q {tuple(q.shape)}, got {tuple(k.shape)}")
    for name, t in named:
        if t.stride(-1) != 1:
            problems.append(f"{name}.stride(-1): expected 1 (last dim contiguous), got {t.stride(-1)}")
        elif any(s % 8 for s in t.stride()[:-1]):
            problems.append(f"{name}.stride: expected multiples of 8 elements (16 B rows for TMA), got {tuple(t.stride())}")
        if not fake and t.data_ptr() % 16:
            problems.append(f"{name}: expected a 16-byte aligned base address, got {hex(t.data_ptr())} (offset {t.data_ptr() % 16} B)")
    return problems


def piece_info(name: str, piece, compiled) -> dict:
    """At export: the query rows and keys from which a piece runs (the stage's Compiled.longs),
    and where the kernel cuts its last wave along the keys, the words its workspace takes
    (split_kv.room; stages.fmha is importable at export, not in the package)."""
    long = compiled.longs[LONG_PIECES.index(name)] if name in LONG_PIECES else None
    info = {} if long is None else {"min_m": int(long.min_m), "min_n": int(long.min_n)}
    if getattr(compiled, "split_tail", False):
        from stages.fmha import geometry, split_kv

        wgs = compiled.tile_m // geometry.WG_ROWS if long is None else long.consumers
        info.update(split_kv.room(wgs, compiled.split_slot))
    return info


def fake(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left"):
    b, m, h, d = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format) if v.shape[-1] == d else q.new_empty((b, m, h, v.shape[-1]))
    return o, q.new_empty((b, h, m), dtype=torch.float32)


_per_stream: dict = {}  # (torch.device, stream) -> (the tile scheduler's counters, the SM count, a 1-element fp32 tensor)
_lse_like: dict = {}  # (stream, device, b, h, m, id(fns)) -> (counters, SM count, that tensor expanded to (b, h, m): no memory, a shape to allocate like)
_retired: list = []  # counters a larger buffer replaced: kept, since a CUDA graph may have captured them


def workspace_words(fns, sms: int) -> int:
    """int32 words of a stream's buffer for ``fns``' launches on ``sms`` SMs: the scheduler's
    two counters, and where a piece cuts its last wave along the keys, room for any launch's
    arrival counts and partials (its info's split_base + (sms - 1) split_per_sm)."""
    return max([2] + [info["split_base"] + (sms - 1) * info["split_per_sm"] for _, info in fns.values() if "split_per_sm" in info])


def _counters(dev, stream: int, fns):
    """The stream's (counters, SM count, 1-element tensor), the counters long enough for ``fns``."""
    entry = _per_stream.get((dev, stream))
    if entry is None:
        entry = _per_stream[(dev, stream)] = (
            torch.zeros(2, dtype=torch.int32, device=dev),
            torch.cuda.get_device_properties(dev).multi_processor_count,
            torch.empty(1, dtype=torch.float32, device=dev),
        )
    words = workspace_words(fns, entry[1])
    if entry[0].numel() < words:
        _retired.append(entry[0])
        entry = _per_stream[(dev, stream)] = (torch.zeros(words, dtype=torch.int32, device=dev), *entry[1:])
    return entry


def _stream_of(dev) -> int:
    """The caller's current CUDA stream on ``dev`` as a raw handle (0 off CUDA)."""
    return torch._C._cuda_getCurrentRawStream(dev.index) if dev.type == "cuda" else 0


def launch(fns, q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left"):
    """Allocate o and lse, launch the configuration's kernel for m (``fns``: piece -> (function,
    info)) on the current stream. The dynamic tile scheduler's two int32 counters go back to
    zero after every launch (the kernel's last CTA resets them, the last piece of a tile cut
    along the keys its arrival count), so one buffer per stream serves every call on it, CUDA
    graphs included; two streams share none (launches on two streams at once, as two
    micro-batches overlapped, would take each other's tiles). Where the configuration cuts its
    last wave (split_room), the buffer holds any launch's partials (``workspace_words``, tens
    of MB), allocated once per stream. Every Python step here
    is a measurable part of the launch (H200 host: torch.empty(shape, dtype=, device=) 6.5 µs,
    torch.empty_like 3.8 µs, tensor.new_empty 4.7 µs; docs/export.md): lse is allocated like
    a zero-stride (b, h, m) view (empty_like of a non-dense tensor is contiguous)."""
    dev = q.device
    b, m, h, _ = q.shape
    stream = _stream_of(dev)
    state = _lse_like.get((stream, dev, b, h, m, id(fns)))  # one lookup per call: (counters, SM count, lse's shape)
    if state is None:
        counters, sms, one = _counters(dev, stream, fns)
        if len(_lse_like) > 256:
            _lse_like.clear()
        state = _lse_like[(stream, dev, b, h, m, id(fns))] = (counters, sms, one.expand(b, h, m))
    dv = v.shape[3]
    o = torch.empty_like(q, memory_format=torch.contiguous_format) if dv == q.shape[3] else q.new_empty((b, m, h, dv))
    lse = torch.empty_like(state[2])
    n, fn = k.shape[1], fns["fn"][0]
    for name in LONG_PIECES:  # the first long kernel that serves m and n
        piece = fns.get(name)
        if piece is not None and m >= piece[1]["min_m"] and n >= piece[1]["min_n"]:
            fn = piece[0]
            break
    fn(q, k, v, o, lse, state[0], state[1], None, None, None, None, None)  # not varlen, not paged
    return o, lse


def stage_call(op, inputs: dict, params: dict) -> dict:
    """`wb run fmha/d --exported DIR`: the stage's fixture inputs through the installed op ->
    the stage's outputs by name."""
    o, lse = op(
        inputs["q"], inputs["k"], inputs["v"],
        causal=_truthy(params.get("causal", False)),
        softcap=float(params.get("softcap", 0.0) or 0.0),
        window_left=int(params.get("window_left", -1)),
        window_right=int(params.get("window_right", -1)),
        align=str(params.get("align", "top_left")),
    )
    return {"o": o, "lse": lse}
