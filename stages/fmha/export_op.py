"""Stage D as a torch op: `wb export fmha/d` copies this file into the exported package as
``_op.py`` (the contract: workbench.kernels.stage.ExportSpec). It imports nothing but torch:
the package runs with neither wb nor cutlass installed.

    o, lse = torch.ops.wb_fmha.fwd(q, k, v, causal=False)
    o, lse = torch.ops.wb_fmha.fwd(q, k, v, causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)  # varlen
    o, lse = torch.ops.wb_fmha.fwd(q, k_cache, v_cache, block_table=bt, cache_seqlens=lens)  # paged

q (batch, m, heads, d), k (batch, n, kv_heads, d), v (batch, n, kv_heads, dv) (dv = d, or
a narrower V as exported, e.g. 192/128), all one dtype, on one CUDA device, last dim
contiguous, 16-byte aligned; o (batch, m, heads, dv), lse (batch, heads, m) fp32 (natural log
of the softmax denominator of the scaled logits, scale 1/sqrt(d)). A configuration exported
with varlen=true takes packed sequences, flash-attn's varlen layout: q (total_q, heads, d),
k and v (total_k, kv_heads, d / dv), cu_seqlens_q and cu_seqlens_k int32 (batch + 1,) offsets
[0, l0, l0 + l1, ...] (their values are the caller's contract: reading them would wait for
the GPU); o (total_q, heads, dv), lse (heads, total_q). A configuration exported with
page_size > 0 takes a paged KV cache: k and v (num_pages, page_size, kv_heads, d / dv),
block_table int32 (batch, pages per sequence) and cache_seqlens int32 (batch,), sequence b's
KV length (flash-attn's page_table / seqused_k; the values are the caller's contract); q, o
and lse as fixed-length. V's head dim, the mask and
the softcap select one exported configuration (they are compiled in); a configuration that was
not exported is refused before launch, as is any tensor the kernel was not compiled for.
"""

from __future__ import annotations

import weakref

import torch

OP = "fwd"
# the compiled kernels of one configuration: fn, and where geometry.long_kernels builds them (causal
# d = 64 and 96, non-causal d = 64 and 128) fn_long and fn_long2, each launched from its info["min_m"] query rows
# and info["min_n"] keys on, the first that serves a call
LONG_PIECES = ("fn_long", "fn_long2")
PIECES = ("fn",) + LONG_PIECES
SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, bool causal=False, float softcap=0.0, int window_left=-1, "
    'int window_right=-1, str align="top_left", Tensor? cu_seqlens_q=None, Tensor? cu_seqlens_k=None, '
    "Tensor? block_table=None, Tensor? cache_seqlens=None) -> (Tensor, Tensor)"
)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def _truthy(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("1", "true", "yes", "on")
    return bool(x)


#: varlen: the most sequences in one batch (the tile table packs batch << 16 | m_block in int32)
MAX_VARLEN_BATCH = 32767
#: varlen_tile_table's m_block of an entry without work (its rows lie past every sequence)
NO_WORK_BLOCK = 0x7FFF


def varlen_tile_table(cu_q, cu_k, total_q: int, tile_m: int, causal: bool, bottom_right: bool):
    """varlen's work tiles, (total_q // tile_m + batch,) int32 on cu_q's device, each
    batch << 16 | m_block: every (sequence, Q tile) that has rows, the most keys seen first
    (causal: the keys up to the tile's last row), then entries without work (batch 0,
    m_block NO_WORK_BLOCK) filling the size, which bounds sum(ceil(len / tile_m)) and is
    known from the shapes. Torch ops only: no host sync, so a launch with new cu_seqlens
    does not wait for the GPU. (Here, not in the stage module: the exported op builds it too.)"""
    batch = cu_q.numel() - 1
    if batch > MAX_VARLEN_BATCH:
        raise ValueError(f"varlen: {batch} sequences; the kernel takes at most {MAX_VARLEN_BATCH}")
    entries = total_q // tile_m + batch
    cu_q, cu_k = cu_q.long(), cu_k.long()
    len_q, len_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    counts = (len_q + tile_m - 1) // tile_m
    ends = counts.cumsum(0)
    t = torch.arange(entries, device=cu_q.device)
    seq = torch.searchsorted(ends, t, right=True)
    valid = seq < batch
    seq = seq.clamp(max=batch - 1)
    m_block = t - (ends - counts)[seq]
    work = len_k[seq]
    if causal:
        reach = (m_block + 1) * tile_m + ((len_k - len_q)[seq] if bottom_right else 0)
        work = torch.minimum(work, reach.clamp(min=0))
    order = torch.argsort(torch.where(valid, work, -1), descending=True, stable=True)
    packed = torch.where(valid, (seq << 16) | m_block, NO_WORK_BLOCK)
    return packed[order].to(torch.int32)


def tile_table(cu_q, cu_k, total_q: int, tile_m: int, causal: bool, bottom_right: bool, *, keep_in_capture: bool,
               order_of=None):
    """``varlen_tile_table``, kept on cu_seqlens_q for this ``order_of`` (default cu_k; a weak
    reference: no id or address reuse) and rebuilt after an in-place change of either (torch's
    version counters). Which tiles the table holds depends on cu_seqlens_q alone; the key
    lengths only order them (the longest work first), so a stale ``order_of`` costs balance,
    never a row. While a CUDA graph is being captured, ``keep_in_capture`` says whether the
    table kept is used (the stage's launch: wb's timing graphs replay the same offsets, and
    the build stays out of the timed graph) or built by captured ops (the exported op: a
    model's graph is replayed with new offsets)."""
    if not keep_in_capture and cu_q.is_cuda and torch.cuda.is_current_stream_capturing():
        return varlen_tile_table(cu_q, cu_k, total_q, tile_m, causal, bottom_right)
    order_of = cu_k if order_of is None else order_of
    key = (cu_q._version, order_of._version, total_q, tile_m, causal, bottom_right)
    cached = getattr(cu_q, "_wb_tile_table", None)
    if cached is None or cached[0] != key or cached[1]() is not order_of:
        cached = (key, weakref.ref(order_of), varlen_tile_table(cu_q, cu_k, total_q, tile_m, causal, bottom_right))
        cu_q._wb_tile_table = cached
    return cached[2]


def cu_seqlens_of(lengths, *, cached: bool):
    """[0, l0, l0 + l1, ...] int32 on the lengths' device (a cumsum: no host sync), the
    cu_seqlens_k a varlen launch over a paged cache reads. ``cached``: kept on ``lengths``
    until it changes in place (wb's own launches; under capture too, so the build stays out of
    a timed graph); else made on every call (the exported op: a serving engine's own kernel
    that advances the lengths in place bumps no version counter, and the kernel must read
    those lengths, not the ones of the call before)."""
    def offsets():
        return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))

    if not cached:
        return offsets()
    kept = getattr(lengths, "_wb_cu_seqlens", None)
    if kept is None or kept[0] != lengths._version:
        kept = lengths._wb_cu_seqlens = (lengths._version, offsets())
    return kept[1]


def _acting_align(causal: bool, window_left: int, window_right: int, align) -> str:
    """The alignment as it acts: without a causal mask or a window it moves no edge (the same
    kernel), so either value keys as top_left; anything else is kept (and refused unexported)."""
    masked = causal or window_left >= 0 or window_right >= 0
    return str(align) if masked or align not in ("top_left", "bottom_right") else "top_left"


def exported_key(params: dict) -> dict:
    """Stage D's compile-time parameters -> what a call selects the configuration by (varlen
    and page_size only where on, so a fixed-length configuration keeps the key it always had)."""
    varlen = {"varlen": True} if _truthy(params.get("varlen", False)) else {}
    page_size = int(params.get("page_size", 0) or 0)
    if page_size:
        varlen["page_size"] = page_size
    causal = _truthy(params.get("causal", False))
    window_left, window_right = int(params.get("window_left", -1)), int(params.get("window_right", -1))
    return {
        "d": int(params["d"]),
        "dtype": str(params["dtype"]),
        "heads": int(params["heads"]),
        "kv_heads": int(params["kv_heads"]),
        "causal": causal,
        "align": _acting_align(causal, window_left, window_right, str(params.get("align", "top_left"))),
        "window_left": window_left,
        "window_right": window_right,
        "softcap": float(params.get("softcap", 0.0) or 0.0),
        "dv": int(params.get("dv") or params["d"]),  # V's and O's head dim (d unless a narrower V)
        **varlen,
    }


def call_key(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left",
             cu_seqlens_q=None, cu_seqlens_k=None, block_table=None, cache_seqlens=None) -> dict:
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    paged = block_table is not None or cache_seqlens is not None
    rank = 3 if varlen else 4
    kv_rank = 4 if paged else rank
    return {
        "d": int(q.shape[-1]) if q.dim() else 0,
        "dtype": NAMES.get(q.dtype, str(q.dtype).replace("torch.", "")),
        "heads": int(q.shape[-2]) if q.dim() == rank else 0,
        "kv_heads": int(k.shape[-2]) if k.dim() == kv_rank else 0,
        "causal": bool(causal),
        "align": _acting_align(bool(causal), int(window_left), int(window_right), align),
        "window_left": int(window_left),
        "window_right": int(window_right),
        "softcap": float(softcap),
        "dv": int(v.shape[-1]) if v.dim() else 0,
        **({"varlen": True} if varlen else {}),
        **({"page_size": int(k.shape[1]) if k.dim() == 4 else 0} if paged else {}),
    }


def check(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left",
          cu_seqlens_q=None, cu_seqlens_k=None, block_table=None, cache_seqlens=None, *, fake=False) -> list[str]:
    """What the compiled kernel would not refuse itself, each 'what: expected X, got Y'."""
    problems = []
    named = (("q", q), ("k", k), ("v", v))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            return [f"{name}: expected a torch.Tensor, got {type(t).__name__}"]
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    paged = block_table is not None or cache_seqlens is not None
    if paged:
        if block_table is None or cache_seqlens is None:
            return [f"{'block_table' if block_table is None else 'cache_seqlens'}: expected a tensor beside the other (paged KV takes both)"]
        if cu_seqlens_k is not None:
            return ["cu_seqlens_k: a paged cache's key lengths are cache_seqlens (packed queries take cu_seqlens_q alone)"]
        if varlen:
            problems += _varlen_problems(q, cu_seqlens_q, None, fake)
        if not problems:
            problems += _paged_problems(q, block_table, cache_seqlens, fake, cu_seqlens_q.numel() - 1 if varlen else None)
    elif varlen:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            return [f"{'cu_seqlens_q' if cu_seqlens_q is None else 'cu_seqlens_k'}: expected a tensor beside the other (varlen takes both)"]
        problems += _varlen_problems(q, cu_seqlens_q, cu_seqlens_k, fake)
    rank, layout = (3, "(total, heads, d)") if varlen else (4, "(batch, seqlen, heads, d)")
    for name, t in named:
        want, shape = (4, "(num_pages, page_size, kv_heads, d)") if paged and name != "q" else (rank, layout)
        if t.dim() != want:
            problems.append(f"{name}: expected rank {want} {shape}, got rank {t.dim()} {tuple(t.shape)}")
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
    # k and v share every dim but the head dim (V's may be narrower); k's head dim is q's, and a
    # fixed-length k has q's batch
    d = q.shape[-1]
    lead = "num_pages, page_size, kv_heads" if paged else ("total_k, kv_heads" if varlen else f"{q.shape[0]}, n, kv_heads")
    if tuple(k.shape[:-1]) != tuple(v.shape[:-1]):
        k_lead = "batch, n, kv_heads" if not (paged or varlen) else lead
        problems.append(f"v.shape: expected k's ({k_lead}) {tuple(k.shape[:-1])} and a head dim, got {tuple(v.shape)}")
    if k.shape[-1] != d or not (paged or varlen or k.shape[0] == q.shape[0]):
        problems.append(f"k.shape: expected ({lead}, {d}) like q {tuple(q.shape)}, got {tuple(k.shape)}")
    for name, t in named:
        if 0 in t.shape:
            problems.append(f"{name}.shape: expected no empty dim, got {tuple(t.shape)}")
        if t.stride(-1) != 1:
            problems.append(f"{name}.stride(-1): expected 1 (last dim contiguous), got {t.stride(-1)}")
        elif any(s % 8 for s in t.stride()[:-1]):
            problems.append(f"{name}.stride: expected multiples of 8 elements (16 B rows for TMA), got {tuple(t.stride())}")
        elif any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)):
            problems.append(f"{name}.stride: expected no zero stride (an expanded tensor: pass .contiguous()), got {tuple(t.stride())}")
    if not fake:  # every tensor argument was compiled 16-byte aligned, the int32 ones included
        indices = (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k), ("block_table", block_table),
                   ("cache_seqlens", cache_seqlens))
        for name, t in (*named, *indices):
            if isinstance(t, torch.Tensor) and t.data_ptr() % 16:
                problems.append(f"{name}: expected a 16-byte aligned base address, got {hex(t.data_ptr())} "
                                f"(offset {t.data_ptr() % 16} B{'' if name in ('q', 'k', 'v') else '; a slice of a larger tensor: pass a .clone()'})")
    return problems


def check_values(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left",
                 cu_seqlens_q=None, cu_seqlens_k=None, block_table=None, cache_seqlens=None) -> list[str]:
    """The values ``check`` leaves to the caller, read back from the device (a sync: the
    package runs this on every call only with WB_EXPORT_CHECK_VALUES=1, a debugging aid):
    offsets that start at 0, never decrease and end within the packed rows; page ids within
    the cache; each sequence's length within its table row's pages. The first bad entry of
    each, by index."""
    problems = []

    def first(name, bad, value, expected):
        if bool(bad.any()):
            i = tuple(int(x) for x in bad.nonzero()[0])
            where = ", ".join(map(str, i))
            problems.append(f"{name}[{where}] = {int(value[i])}: expected {expected}")

    for name, cu, rows in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]), ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        if cu is None:
            continue
        first(name, cu[:1] != 0, cu, "0 (the first offset)")
        first(name, torch.cat([torch.zeros_like(cu[:1], dtype=torch.bool), cu[1:] < cu[:-1]]), cu, "offsets that never decrease")
        first(name, cu > rows, cu, f"at most the {rows} packed rows")
    if block_table is not None:
        pages, room = k.shape[0], block_table.shape[1] * k.shape[1]
        first("block_table", (block_table < 0) | (block_table >= pages), block_table, f"a page in [0, {pages})")
        first("cache_seqlens", (cache_seqlens < 0) | (cache_seqlens > room), cache_seqlens,
              f"a length in [0, {room}] (the table row's {block_table.shape[1]} pages of {k.shape[1]})")
    return problems


def _varlen_problems(q, cu_q, cu_k, fake: bool) -> list[str]:
    """cu_seqlens_q / _k as the kernel reads them (their shapes and types; not their values,
    which only a sync would show), and a total the tile table can address. cu_k None: a
    paged cache's (cache_seqlens, checked by _paged_problems)."""
    problems = []
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if t is None and name == "cu_seqlens_k":
            continue
        if not isinstance(t, torch.Tensor):
            return [f"{name}: expected a torch.Tensor, got {type(t).__name__}"]
        if t.dtype != torch.int32 or t.dim() != 1 or t.numel() < 2:
            problems.append(f"{name}: expected int32 (batch + 1,) offsets, got {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}")
        elif t.stride(0) != 1:
            problems.append(f"{name}.stride: expected contiguous, got {tuple(t.stride())}")
        if t.device != q.device and not (fake and q.device.type == "meta"):
            problems.append(f"{name}.device: expected q's {q.device}, got {t.device}")
    if problems:
        return problems
    if cu_k is not None and cu_q.numel() != cu_k.numel():
        problems.append(f"cu_seqlens_k: expected cu_seqlens_q's {cu_q.numel()} offsets (one sequence each), got {cu_k.numel()}")
    if cu_q.numel() - 1 > MAX_VARLEN_BATCH:
        problems.append(f"cu_seqlens_q: expected at most {MAX_VARLEN_BATCH} sequences, got {cu_q.numel() - 1}")
    if q.dim() == 3 and q.shape[0] >= NO_WORK_BLOCK * 64:
        problems.append(f"q.shape[0]: expected fewer than {NO_WORK_BLOCK * 64} packed queries (the tile table's m_block), got {q.shape[0]}")
    return problems


def _paged_problems(q, block_table, cache_seqlens, fake: bool, batch: int | None = None) -> list[str]:
    """block_table / cache_seqlens as the kernel reads them: int32, (batch, >= 1 pages) and
    (batch,), on q's device (their values, the page indices and lengths, are the caller's).
    ``batch``: packed queries' sequence count (cu_seqlens_q's); else q's first dim."""
    problems = []
    if batch is None:
        batch = q.shape[0] if q.dim() == 4 else None
    for name, t, rank in (("block_table", block_table, 2), ("cache_seqlens", cache_seqlens, 1)):
        if not isinstance(t, torch.Tensor):
            return [f"{name}: expected a torch.Tensor, got {type(t).__name__}"]
        want = "(batch, pages per sequence)" if rank == 2 else "(batch,)"
        if t.dtype != torch.int32 or t.dim() != rank or (batch is not None and t.shape[0] != batch) or (rank == 2 and t.shape[1] < 1):
            problems.append(f"{name}: expected int32 {want} with batch {batch}, got {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}")
        elif t.stride(-1) != 1:
            problems.append(f"{name}.stride: expected the last dim contiguous, got {tuple(t.stride())}")
        if t.device != q.device and not (fake and q.device.type == "meta"):
            problems.append(f"{name}.device: expected q's {q.device}, got {t.device}")
    return problems


def piece_info(name: str, piece, compiled) -> dict:
    """At export: the query rows and keys from which a piece runs (the stage's Compiled.longs),
    and where the kernel cuts its last wave along the keys, the words its workspace takes
    (split_kv.room; stages.fmha is importable at export, not in the package)."""
    long = compiled.longs[LONG_PIECES.index(name)] if name in LONG_PIECES else None
    info = {} if long is None else {"min_m": int(long.min_m), "min_n": int(long.min_n)}
    if getattr(compiled, "varlen", False):  # the tile table's rows per work tile and causal alignment
        info.update({"tile_m": int(compiled.tile_m), "bottom_right": bool(compiled.bottom_right)})
    if getattr(compiled, "split_tail", False):
        from stages.fmha import geometry, split_kv

        wgs = compiled.tile_m // geometry.WG_ROWS if long is None else long.consumers
        info.update(split_kv.room(wgs, compiled.split_slot))
    return info


def fake(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left",
         cu_seqlens_q=None, cu_seqlens_k=None, block_table=None, cache_seqlens=None):
    if cu_seqlens_q is not None:
        total, h, d = q.shape
        return q.new_empty((total, h, v.shape[-1])), q.new_empty((h, total), dtype=torch.float32)
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


def launch(fns, q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left",
           cu_seqlens_q=None, cu_seqlens_k=None, block_table=None, cache_seqlens=None):
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
    if cu_seqlens_q is not None:
        return _launch_varlen(fns, q, k, v, causal, cu_seqlens_q, cu_seqlens_k, block_table, cache_seqlens)
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
    if block_table is not None:  # paged: one kernel (no long pieces), the lengths read on the device
        fns["fn"][0](q, k, v, o, lse, state[0], state[1], None, None, None, block_table, cache_seqlens)
        return o, lse
    n, fn = k.shape[1], fns["fn"][0]
    for name in LONG_PIECES:  # the first long kernel that serves m and n
        piece = fns.get(name)
        if piece is not None and m >= piece[1]["min_m"] and n >= piece[1]["min_n"]:
            fn = piece[0]
            break
    fn(q, k, v, o, lse, state[0], state[1], None, None, None, None, None)  # not varlen, not paged
    return o, lse


def _launch_varlen(fns, q, k, v, causal, cu_q, cu_k, block_table=None, cache_seqlens=None):
    """varlen: the work-tile table from ``tile_table``, rebuilt under CUDA graph capture so
    that the graph holds the ops that build it and a replay reads the cu_seqlens it is given
    then. Over a paged cache: cu_k from cache_seqlens (``cu_seqlens_of``, the same way)."""
    fn, info = fns["fn"]
    order_of = None
    if block_table is not None:  # fresh offsets on every call; the table's order keyed on the lengths
        cu_k, order_of = cu_seqlens_of(cache_seqlens, cached=False), cache_seqlens
    total, h, _ = q.shape
    counters, sms, _ = _counters(q.device, _stream_of(q.device), fns)
    table = tile_table(cu_q, cu_k, total, info["tile_m"], bool(causal), info["bottom_right"], keep_in_capture=False,
                       order_of=order_of)
    o = q.new_empty((total, h, v.shape[-1]))
    lse = q.new_empty((h, total), dtype=torch.float32)
    fn(q, k, v, o, lse, counters, sms, cu_q, cu_k, table, block_table, None)
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
        cu_seqlens_q=inputs.get("cu_seqlens_q"),
        cu_seqlens_k=inputs.get("cu_seqlens_k"),
        block_table=inputs.get("block_table"),
        cache_seqlens=inputs.get("cache_seqlens"),
    )
    return {"o": o, "lse": lse}
