"""Stage D, the wb stage: the full FMHA forward (``fmha_forward.FmhaForward``) compiled for a
configuration, launched on (batch, seqlen, heads, d) tensors (fixed-length, varlen with
cu_seqlens, paged), traced, exported, and checked against torch SDPA in fp32.

Besides ``StageD`` (the ``Stage`` hooks: inputs, compile, launch, trace, reference, export),
the launch plumbing the kernel needs from the host: the persistent scheduler's tile counters
and the split-KV tail's workspace behind them (``tile_counter``, ``split_words``), varlen's
work-tile table built on the device (``varlen_tile_table``), the variants as kernel
arguments (``kernel_options``) and the kernel a trace follows (``traced_variants``).
"""

from typing import Mapping

from cutlass import Float32, Int32

from stages.fmha import common, geometry, host, reference
from stages.fmha import split_kv
from stages.fmha import tile_scheduler as ts
from stages.fmha import trace as fmha_trace
from stages.fmha.fmha_forward import FmhaForward
from stages.fmha.trace import TRACE_TILES, trace_clock_word
from workbench.compile.probe import paused
from workbench.errors import UserError
from workbench.kernels.stage import ExportSpec, Params, Stage, TensorSpec, param_value


def sm_count(device) -> int:
    """Streaming multiprocessors of ``device`` (a persistent launch starts one CTA on each)."""
    import torch

    return torch.cuda.get_device_properties(device).multi_processor_count


_tile_counters: dict = {}
#: buffers a larger one replaced: kept, since a CUDA graph captured with one still names it
_retired_counters: list = []


def _stream_handle(device) -> int:
    """The caller's current CUDA stream on ``device`` (0 off CUDA: the CPU tests' stand-in launches)."""
    import torch

    device = torch.device(device)
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def tile_counter(device, words: int = split_kv.COUNTERS):
    """The int32 counters of ``persistent=dynamic`` on ``device`` for the current stream, at
    least ``words`` long (the split-KV tail's workspace follows them,
    ``split_kv.workspace_words``): zeros, and zero again after every launch (the kernel's
    last CTA resets the counters, the last piece of a split tile its arrival count), so one
    buffer serves every launch on a stream; two streams share none (launches at once would
    take each other's tiles). It only grows, at least twofold, and a replaced buffer stays
    allocated: all of a stream's come to under twice the largest."""
    import torch

    key = (str(device), _stream_handle(device))
    old = _tile_counters.get(key)
    if old is None or old.numel() < words:
        if old is not None:
            _retired_counters.append(old)
            words = max(words, 2 * old.numel())
        _tile_counters[key] = torch.zeros(words, dtype=torch.int32, device=device)
    return _tile_counters[key]


def split_words(compiled, q, n: int, n_sms: int) -> int:
    """The words ``tile_counter`` must hold for a fixed-length launch of ``compiled`` on ``q``
    with ``n`` keys (the split-KV tail's workspace, where it cuts the last wave)."""
    if not compiled.split_tail:
        return split_kv.COUNTERS
    b, m, h = q.shape[0], q.shape[1], q.shape[2]
    long = compiled.long_for(m, n)
    tile_m = compiled.tile_m if long is None else long.tile_m
    tile_n = long.kv_tile if long is not None and long.kv_tile else compiled.tile_n
    tiles = -(-m // tile_m) * h * b
    return split_kv.workspace_words(tiles, min(tiles, n_sms), -(-n // tile_n), tile_m // geometry.WG_ROWS, compiled.split_slot,
                                    compiled.split_max_waves)


def launch_fixed(fn, inputs, outputs, counters, ctas: int) -> None:
    """One fixed-length launch of a compiled stage-D function on ``inputs`` (q, k, v) into
    ``outputs`` (o, lse): ``counters`` the tile counters (or a trace buffer, which begins with
    them), ``ctas`` the persistent grid's size, on the current stream."""
    fn(
        host.to_cute(inputs["q"]), host.to_cute(inputs["k"]), host.to_cute(inputs["v"]), host.to_cute(outputs["o"]),
        host.to_cute(outputs["lse"]), host.to_cute(counters), Int32(ctas), host.current_stream(),
    )


def kernel_options(variants: Mapping[str, str]) -> dict:
    """Stage D's own variants (kernel.yaml's, defaults filled in) as FmhaForward keyword
    arguments; ``auto`` passes on as None or "auto" for the kernel to resolve."""
    v = host.variants_of("d", variants)

    def number(key):
        return None if v[key] == "auto" else int(v[key])

    return {
        "kv_stages": number("kv_stages"),
        "kv_tile": number("kv_tile"),
        "p_operand": v["p_operand"],
        "p_sync": v["p_sync"],
        "lazy_rescale": v["lazy_rescale"],
        "row_sum": v["row_sum"],
        "sum_init": v["sum_init"],
        "o_staging": v["o_staging"],
        "schedule": v["schedule"],
        "consumers": number("consumers"),
        "tile_order": v["tile_order"],
        "o_rescale": v["o_rescale"],
        "kv_load": v["kv_load"],
        "k_release": v["k_release"],
        "persistent": None if v["persistent"] == "auto" else v["persistent"],
        "q_buffers": int(v["q_buffers"]),
        "softcap_bug": v["softcap_bug"],
        "mask_bug": v["mask_bug"],
        "varlen_bug": v["varlen_bug"],
        "paged_bug": v["paged_bug"],
        "split_tail": v["split_tail"],
        "short_tile": v["short_tile"],
        "cluster": int(v["cluster"]),
    }


def traced_variants(d: int, causal: bool, windowed: bool, variants: Mapping[str, str], m: int, n: int,
                    dv: int | None = None, softcap: bool = False) -> tuple[dict, str]:
    """The variants of the kernel a fixed-length launch of ``m`` query rows and ``n`` keys
    runs (the long kernel where it serves them), made persistent where that kernel's
    default is not: the trace is laid out per persistent CTA (a grid of one CTA per tile
    would write past its buffer). Returns them and a note when the persistence changed;
    an explicit ``persistent=off`` is a UserError. ``dv``: V's head dim (None: d)."""
    chosen = dict(variants)
    long = geometry.serving(
        geometry.long_kernels(d, causal, windowed, False, False, host.variants_of("d", chosen), softcap), m, n
    )
    if long is not None:
        chosen.update(long.variants())
    asked = host.variants_of("d", chosen)["persistent"]
    if asked == "off":
        raise UserError("--trace: the trace is laid out per persistent CTA; persistent=off is not traced")
    if asked == "auto" and ts.persistence(d, causal, False, windowed=windowed, dv=dv) == "off":  # traces are unpaged
        chosen["persistent"] = "on"
        return chosen, "persistent=on: the default, off, has no per-CTA timeline"
    return chosen, ""


def mask_params(p) -> dict:
    """align, window_left, window_right of parameters ``p`` (defaults where p lacks them:
    top_left, -1, -1), as FmhaForward and reference.attention_bshd take them."""
    return {
        "align": str(param_value(p, "align", "top_left")),
        "window_left": int(param_value(p, "window_left", -1)),
        "window_right": int(param_value(p, "window_right", -1)),
    }


def mask_window(p) -> dict:
    """reference.visible_pairs's keywords for parameters ``p`` (causal is window_right 0)."""
    mask = mask_params(p)
    causal = host.truthy(param_value(p, "causal", False))
    return {"align": mask["align"], "window_left": mask["window_left"], "window_right": 0 if causal else mask["window_right"]}


def page_size_of(p: Params) -> int:
    """The ``page_size`` parameter (0 = not paged, also when the parameters lack it)."""
    return int(param_value(p, "page_size", 0) or 0)


def paged_lengths(p: Params) -> list[int] | None:
    """paged: each sequence's KV length (the run's ``cache_seqlens``): ``seqlens_k``
    (':' or ','-separated, one per batch, each 0 ... n: n is each sequence's room in the
    cache), else n for every sequence; None when not paged. A user's mistake is a UserError."""
    from workbench.errors import UserError

    if not page_size_of(p) or host.truthy(p.get("varlen", False)):  # (varlen: seqlens_of's k lengths)
        return None
    given = str(p.get("seqlens_k", "") or "").strip()
    if not given:
        return [p.n] * p.batch
    lens = reference.parse_seqlens(given, "seqlens_k")
    if len(lens) != p.batch:
        raise UserError(f"fmha/stage-d: seqlens_k has {len(lens)} lengths for batch={p.batch}: one per sequence")
    if max(lens) > p.n:
        raise UserError(f"fmha/stage-d: seqlens_k: a length of {max(lens)} is past n={p.n}, each sequence's room in the paged cache")
    return lens


def paged_geometry(batch: int, n: int, page_size: int) -> tuple:
    """(num_pages, max_pages_per_seq) of the paged cache a run builds: each sequence's
    ceil(n / page_size) pages plus one spare poison page per sequence (a wrong page read
    lands on poison or on another sequence's keys)."""
    per_seq = -(-n // page_size)
    return batch * (per_seq + 1), per_seq


def dv_of(p: Params) -> int:
    """V's and O's head dim: the ``dv`` parameter, d when the parameters lack it."""
    return int(param_value(p, "dv", None) or p.d)


def softcap_of(p: Params) -> float:
    """The ``softcap`` parameter (0.0 when the parameters lack it)."""
    return float(param_value(p, "softcap", 0.0) or 0.0)

def seqlens_of(p: Params) -> tuple[list[int], list[int]] | None:
    """varlen: (q lengths, k lengths) from ``seqlens`` / ``seqlens_k`` (':' or ','-separated
    ints >= 0; empty: ``batch`` sequences of m queries and n keys); None when not varlen.
    A user's mistake is a UserError (one line, exit 2)."""
    from workbench.errors import UserError

    given = str(p.get("seqlens", "") or "").strip(), str(p.get("seqlens_k", "") or "").strip()
    if not host.truthy(p.get("varlen", False)):
        if given[0] or (given[1] and not page_size_of(p)):
            raise UserError("fmha/stage-d: seqlens and seqlens_k need varlen=true (seqlens_k also takes page_size > 0)")
        return None
    q = reference.parse_seqlens(given[0], "seqlens") if given[0] else [p.m] * p.batch
    k = reference.parse_seqlens(given[1], "seqlens_k") if given[1] else (q if given[0] else [p.n] * p.batch)
    if len(k) != len(q):
        raise UserError(f"fmha/stage-d: seqlens_k has {len(k)} lengths, seqlens {len(q)}: one per sequence")
    if max(q) > MAX_VARLEN_SEQ or max(k) > MAX_VARLEN_SEQ:
        raise UserError(f"fmha/stage-d: a sequence is longer than {MAX_VARLEN_SEQ}")
    from stages.fmha.export_op import MAX_VARLEN_BATCH  # (imports torch: only where varlen is on)

    if len(q) > MAX_VARLEN_BATCH:
        raise UserError(f"fmha/stage-d: {len(q)} sequences; varlen takes at most {MAX_VARLEN_BATCH}")
    if sum(q) < 1 or sum(k) < 1:
        raise UserError("fmha/stage-d: varlen needs at least one query and one key in all (total_q, total_k >= 1)")
    return q, k


#: varlen: the longest sequence a run may ask for (m_block < 2^16 in the tile table)
MAX_VARLEN_SEQ = 65536
# varlen's work-tile table (varlen_tile_table, MAX_VARLEN_BATCH) is export_op.py's: the exported
# package carries that file alone, and its op builds the table as the stage's launch does
def cu_seqlens(lengths) -> "list[int]":
    """[0, l0, l0 + l1, ...] (the int32 offsets flash-attn's varlen API takes)."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + int(n))
    return out


class StageD(Stage):
    """wb stage D: full FMHA forward (batch, seqlen, heads, d), causal, GQA, tails."""
    proves = (
        "The full forward pass matches torch SDPA in fp32 for every Q tile of every head and "
        "batch: causal (top-left, like SDPA is_causal, or bottom-right, flash-attn's) and not, "
        "sliding windows (window_left, window_right; KV tiles outside the window are not loaded), "
        "rows that see no key (O = 0, LSE = -inf), GQA head mapping, sequence lengths "
        "that are not multiples of the tiles (masked KV tails, unstored Q tail rows), head dims "
        "64 to 256 (KV tiles of 128, 112 or 80 keys), with the "
        "warp-specialized producer/consumer pipeline; with softcap c > 0, the logits capped as "
        "c tanh(s / c) before mask and softmax."
    )
    cannot_see = (
        "Speed (wb bench measures it; a window's skipped tiles show only there). varlen=true "
        "packs sequences of the given lengths (seqlens): every sequence is checked, a zero-length k "
        "sequence gives O = 0 and LSE = -inf rows."
    )
    # batch, m, n, seqlens: runtime; the mask (align, window), the softcap and varlen are compiled in
    compile_params = ("d", "dv", "dtype", "heads", "kv_heads", "causal", "align", "window_left", "window_right", "softcap", "varlen", "page_size")
    # `wb export fmha/d`: the op wb_fmha::fwd(q, k, v, causal, ...) -> (o, lse) (export_op.py:
    # its argument checks, fake implementation and launch; docs/export.md)
    export = ExportSpec(namespace="wb_fmha", op_module="export_op.py")

    def inputs(self, p: Params) -> dict:
        ps = page_size_of(p)
        lens = seqlens_of(p)
        if ps and lens is not None:  # packed queries over a paged cache: each sequence's room its own length's pages
            q, k = lens
            pages = paged_geometry(len(q), max(k), ps)
            return {
                "q": TensorSpec((sum(q), p.heads, p.d), p.dtype),
                "k": TensorSpec((pages[0], ps, p.kv_heads, p.d), p.dtype),
                "v": TensorSpec((pages[0], ps, p.kv_heads, dv_of(p)), p.dtype),
                "cu_seqlens_q": TensorSpec((len(q) + 1,), "int32"),
                "block_table": TensorSpec((len(q), pages[1]), "int32"),
                "cache_seqlens": TensorSpec((len(q),), "int32"),
            }
        if ps:
            pages = paged_geometry(p.batch, p.n, ps)
            return {
                "q": TensorSpec((p.batch, p.m, p.heads, p.d), p.dtype),
                # k, v: the paged caches (num_pages, page_size, kv_heads, d) (the fixtures' names)
                "k": TensorSpec((pages[0], ps, p.kv_heads, p.d), p.dtype),
                "v": TensorSpec((pages[0], ps, p.kv_heads, dv_of(p)), p.dtype),
                "block_table": TensorSpec((p.batch, pages[1]), "int32"),
                "cache_seqlens": TensorSpec((p.batch,), "int32"),  # each sequence's KV length (flash-attn's name)
            }
        if lens is not None:
            q, k = lens
            return {
                "q": TensorSpec((sum(q), p.heads, p.d), p.dtype),
                "k": TensorSpec((sum(k), p.kv_heads, p.d), p.dtype),
                "v": TensorSpec((sum(k), p.kv_heads, dv_of(p)), p.dtype),
                "cu_seqlens_q": TensorSpec((len(q) + 1,), "int32"),
                "cu_seqlens_k": TensorSpec((len(k) + 1,), "int32"),
            }
        return {
            "q": TensorSpec((p.batch, p.m, p.heads, p.d), p.dtype),
            "k": TensorSpec((p.batch, p.n, p.kv_heads, p.d), p.dtype),
            "v": TensorSpec((p.batch, p.n, p.kv_heads, dv_of(p)), p.dtype),
        }

    def flops(self, p: Params) -> float:
        """The standard count, as FlashAttention reports it: 4·b·h·m·n·d, halved for causal
        (top-left, no window); with a window or bottom-right alignment 4·b·h·d times the
        number of (query, key) pairs the mask lets through (varlen: summed over the sequences).
        With dv != d, 2·(d + dv) in place of 4·d (QK^T and PV)."""
        per_pair = 2.0 * (p.d + dv_of(p))  # QK^T and PV: 4·d when dv = d
        mask = mask_params(p)
        lens = seqlens_of(p)
        if lens is None and paged_lengths(p) is not None and len(set(paged_lengths(p))) > 1:
            lens = ([p.m] * p.batch, paged_lengths(p))
        if lens is not None:
            return per_pair * p.heads * sum(reference.visible_pairs(m, n, **mask_window(p)) for m, n in zip(*lens))
        if mask["align"] == "top_left" and mask["window_left"] < 0 and mask["window_right"] < 0:
            total = per_pair * p.batch * p.heads * p.m * p.n
            return total / 2 if p.causal else total
        return per_pair * p.batch * p.heads * reference.visible_pairs(p.m, p.n, **mask_window(p))

    def outputs(self, p: Params) -> dict:
        lens = seqlens_of(p)
        if lens is not None:
            total_q = sum(lens[0])
            return {
                "o": TensorSpec((total_q, p.heads, dv_of(p)), p.dtype),
                "lse": TensorSpec((p.heads, total_q), "fp32"),
            }
        return {
            "o": TensorSpec((p.batch, p.m, p.heads, dv_of(p)), p.dtype),
            "lse": TensorSpec((p.batch, p.heads, p.m), "fp32"),
        }

    def make_kernel(self, p: Params, variants: Mapping[str, str], trace: bool = False) -> FmhaForward:
        """The kernel object of parameters ``p`` and ``variants`` (``trace``: with wb run
        --trace's clock stamps); a combination it cannot build is a one-line UserError."""
        if kernel_options(variants)["softcap_bug"] != "none" and not softcap_of(p):
            raise UserError(f"softcap_bug={kernel_options(variants)['softcap_bug']} needs softcap > 0 (-p softcap=30)")
        try:
            return FmhaForward(
                common.cute_dtype(p.dtype), p.d, p.heads, p.kv_heads,
                causal=host.truthy(p.causal), **mask_params(p), softmax=host.variants_of("d", variants)["softmax"],
                softcap=softcap_of(p), varlen=host.truthy(p.get("varlen", False)), page_size=page_size_of(p),
                dv=dv_of(p), trace=trace, **kernel_options(variants),
            )
        except ValueError as exc:  # a variant combination the geometry or the mask cannot serve: one line
            raise UserError(f"{self.kernel or 'fmha'}/stage-d: {exc}") from None

    def compile(self, p: Params, variants: Mapping[str, str], arch: str) -> host.Compiled:
        """One compile per (d, dtype, heads, kv_heads, causal, softmax, schedule): batch, m
        and n are runtime values."""
        import time

        dtype = common.cute_dtype(p.dtype)
        seqlens_of(p)  # a varlen (or paged lengths) parameter mistake is the user's, before any trace
        paged_lengths(p)
        varlen_bug = host.variants_of("d", variants)["varlen_bug"]
        if varlen_bug != "none" and not host.truthy(p.get("varlen", False)):
            from workbench.errors import UserError

            raise UserError("fmha/stage-d: varlen_bug needs varlen=true")
        if varlen_bug != "none" and page_size_of(p):  # its mutant reads packed keys, not a paged cache's
            from workbench.errors import UserError

            raise UserError(f"fmha/stage-d: varlen_bug={varlen_bug} models packed keys (cu_seqlens_k); over a paged "
                            "cache the keys come through the block table: inject paged_bug instead")
        kernel = self.make_kernel(p, variants)
        args = self._fake_args(kernel, dtype)
        t0 = time.perf_counter()
        fn = host.compile_for(arch, kernel, *args)
        longs = self.long_kernels(p, variants)
        with paused():  # the same code again: `wb shapes` lists the first build's probes only
            fns_long = tuple(host.compile_for(arch, self.make_kernel(p, {**variants, **long.variants()}), *args) for long in longs)
        return host.Compiled(
            fn=fn, d=p.d, heads=p.heads, kv_heads=p.kv_heads, causal=kernel.causal, p_check=kernel.p_check,
            compile_s=time.perf_counter() - t0, varlen=kernel.varlen, page_size=kernel.page_size,
            fns_long=fns_long, longs=longs, tile_m=kernel.tile_m, bottom_right=mask_params(p)["align"] == "bottom_right",
            split_tail=kernel.split_tail, split_slot=kernel.split_slot_words(), split_max_waves=kernel.split_max_waves,
            tile_n=kernel.tile_n,
        )

    @staticmethod
    def long_kernels(p: Params, variants: Mapping[str, str]) -> tuple[geometry.LongKernel, ...]:
        """The kernels compiled beside the default one, each launched where it serves the
        shape (geometry.long_kernels; empty: one kernel)."""
        mask = mask_params(p)
        return geometry.long_kernels(
            int(p.d), host.truthy(p.causal), mask["window_left"] >= 0 or mask["window_right"] >= 0,
            host.truthy(p.get("varlen", False)), bool(page_size_of(p)), host.variants_of("d", variants),
            softcap_of(p) > 0,
        )

    @staticmethod
    def _fake_args(kernel: FmhaForward, dtype) -> list:
        """What ``compile_for`` traces the kernel with: fake tensors of the launch's types."""
        rank = 3 if kernel.varlen else 4  # q, k, v, o packed (total, heads, d) or (batch, seq, heads, d)
        kv_rank = 4 if kernel.page_size else rank  # paged: the caches (num_pages, page_size, kv_heads, d)
        args = [host.fake_tensor(dtype, r) for r in (rank, kv_rank, kv_rank, rank)]
        args += [host.fake_tensor(Float32, rank - 1), host.fake_tensor(Int32, 1), Int32(1), host.fake_stream()]
        if kernel.varlen:
            args += [host.fake_tensor(Int32, 1) for _ in range(3)]  # cu_seqlens_q, cu_seqlens_k, the tile table
            if kernel.page_size:
                args += [host.fake_tensor(Int32, 2)]  # the block table (the lengths: cu_seqlens_k, from cache_seqlens)
        elif kernel.page_size:
            args += [None, None, None, host.fake_tensor(Int32, 2), host.fake_tensor(Int32, 1)]  # block_table, cache_seqlens
        return args

    def launch(self, compiled: host.Compiled, inputs, outputs) -> None:
        q = inputs["q"]
        if compiled.varlen:
            self._launch_varlen(compiled, inputs, outputs)
            return
        if getattr(compiled, "page_size", 0):
            kc, bt = inputs["k"], inputs["block_table"]
            assert q.shape[-1] == compiled.d and q.shape[2] == compiled.heads and kc.shape[2] == compiled.kv_heads, (
                "the tensors do not match the compiled (d, heads, kv_heads)"
            )
            lens = inputs["cache_seqlens"]
            assert lens.shape == (q.shape[0],) and str(lens.dtype) == "torch.int32" and bt.shape[1] >= 1, (
                "paged: cache_seqlens must be int32 (batch,) and the block table hold a page per sequence"
            )
            compiled.fn(
                host.to_cute(q), host.to_cute(kc), host.to_cute(inputs["v"]),
                host.to_cute(outputs["o"]), host.to_cute(outputs["lse"]), host.to_cute(tile_counter(q.device)),
                Int32(sm_count(q.device)), host.current_stream(), None, None, None,
                host.to_cute(bt), host.to_cute(inputs["cache_seqlens"]),
            )
            return
        k = inputs["k"]
        assert q.shape[-1] == compiled.d and q.shape[2] == compiled.heads and k.shape[2] == compiled.kv_heads, (
            "the tensors do not match the compiled (d, heads, kv_heads)"
        )
        n_sms = sm_count(q.device)
        counters = tile_counter(q.device, split_words(compiled, q, k.shape[1], n_sms))
        launch_fixed(compiled.for_shape(q.shape[1], k.shape[1]), inputs, outputs, counters, n_sms)

    @staticmethod
    def _launch_varlen(compiled: host.Compiled, inputs, outputs) -> None:
        """varlen: packed q with cu_seqlens_q; k, v packed with cu_seqlens_k, or (page_size > 0)
        the paged caches with block_table, each sequence's length from cache_seqlens (made
        into the cu_seqlens_k the kernel reads: a cumsum on the device, kept on the tensor)."""
        from stages.fmha import export_op

        q, k = inputs["q"], inputs["k"]
        assert q.dim() == 3 and q.shape[-1] == compiled.d and q.shape[1] == compiled.heads and k.shape[-2] == compiled.kv_heads, (
            "the tensors do not match the compiled varlen (d, heads, kv_heads)"
        )
        paged = getattr(compiled, "page_size", 0)
        cu_q = inputs["cu_seqlens_q"]
        cu_k = export_op.cu_seqlens_of(inputs["cache_seqlens"], cached=True) if paged else inputs["cu_seqlens_k"]
        # the work-tile table (torch ops on the device, no sync), kept on cu_seqlens_q
        table = export_op.tile_table(cu_q, cu_k, q.shape[0], compiled.tile_m, compiled.causal, compiled.bottom_right, keep_in_capture=True)
        compiled.fn(
            host.to_cute(q), host.to_cute(k), host.to_cute(inputs["v"]),
            host.to_cute(outputs["o"]), host.to_cute(outputs["lse"]), host.to_cute(tile_counter(q.device)),
            Int32(sm_count(q.device)), host.current_stream(),
            host.to_cute(cu_q), host.to_cute(cu_k), host.to_cute(table), *([host.to_cute(inputs["block_table"])] if paged else []),
        )

    def trace(self, p: Params, variants: Mapping[str, str], arch: str, inputs, outputs):
        """wb run --trace: this configuration built with ``trace=True`` (clock stamps per CTA,
        warpgroup and work tile, as benchmarks/trace_tiles.py builds it), launched once on
        ``inputs``; its buffer decoded by stages/fmha/trace.py. Fixed-length, persistent only."""
        import math

        import torch

        from workbench.errors import UserError
        from workbench.run.timeline import Timeline

        if host.truthy(p.get("varlen", False)) or page_size_of(p):
            raise UserError("--trace: stage D's trace is laid out for fixed-length batches (not varlen, not paged)")
        mask = mask_params(p)
        variants, traced_as = traced_variants(
            int(p.d), host.truthy(p.causal), mask["window_left"] >= 0 or mask["window_right"] >= 0, variants,
            inputs["q"].shape[1], inputs["k"].shape[1], dv=dv_of(p), softcap=softcap_of(p) > 0,
        )
        variants, turned_off = self.without_untraceable(p, variants)
        dtype = common.cute_dtype(p.dtype)
        kernel = self.make_kernel(p, variants, trace=True)
        traced_as = "; ".join(filter(None, [traced_as, turned_off]))
        traced_as = f" ({traced_as})" if traced_as else ""
        fn = host.compile_for(arch, kernel, *self._fake_args(kernel, dtype))
        q = inputs["q"]
        ctas = sm_count(q.device)
        buf = torch.zeros(trace_clock_word(ctas, ctas), dtype=torch.int32, device=q.device)  # words 0, 1: the scheduler's
        launch_fixed(fn, inputs, outputs, buf, ctas)
        torch.cuda.synchronize()
        grid = min(ctas, math.ceil(q.shape[1] / kernel.tile_m) * p.heads * q.shape[0])
        slices, clocks = fmha_trace.decode(buf.cpu().tolist(), grid, kernel.num_consumer_wg)
        title = (f"fmha stage D d={p.d} m={q.shape[1]} n={inputs['k'].shape[1]} batch={q.shape[0]} heads={p.heads}/{p.kv_heads} "
                 f"causal={p.causal} {p.dtype} · {kernel.tile_m}x{kernel.tile_n} tiles, {kernel.num_consumer_wg} consumer WGs "
                 f"on {torch.cuda.get_device_name(q.device)}{traced_as}")
        return Timeline(slices, clocks, fmha_trace.lanes(kernel.num_consumer_wg), title, tiles_stamped=TRACE_TILES,
                        untraced=self.untraced_launch(p, variants, arch) if turned_off else None)

    def without_untraceable(self, p: Params, variants: Mapping[str, str]) -> tuple[dict, str]:
        """What the traced build never does, made explicit: the split-KV tail (the trace buffer
        takes the place of the tile counters, which the split's workspace follows) and the
        short tile shared by the WGs (its visits are not stamped per tile). Where the untraced
        build of ``variants`` would use either, the trace's bits are another build's: returns
        the variants with them off and a note saying so; else them unchanged and ""."""
        off = {}
        if self.make_kernel(p, variants).short_split:
            off["short_tile"] = "whole"
        if self.make_kernel(p, {**variants, "short_tile": "whole"}).split_tail:  # whole, the tail may split
            off["split_tail"] = "off"
        if not off:
            return dict(variants), ""
        return {**variants, **off}, " ".join(f"{k}={v}" for k, v in sorted(off.items())) + ": not traced"

    def untraced_launch(self, p: Params, variants: Mapping[str, str], arch: str):
        """(inputs, outputs) -> None: a fixed-length launch of the untraced build of ``variants``
        (the one kernel they name), for the trace's bit check where it is not the run's build."""
        kernel = self.make_kernel(p, variants)
        fn = host.compile_for(arch, kernel, *self._fake_args(kernel, common.cute_dtype(p.dtype)))

        def launch(inputs, outputs):
            device = inputs["q"].device
            launch_fixed(fn, inputs, outputs, tile_counter(device), sm_count(device))

        return launch

    def reference(self, inputs, p: Params, variants, compute_dtype):
        import torch

        softmax = host.variants_of("d", variants)["softmax"]
        if "block_table" in inputs and "cu_seqlens_q" in inputs:
            o, lse = reference.attention_paged_varlen(
                inputs["q"], inputs["k"], inputs["v"], inputs["block_table"], inputs["cache_seqlens"], inputs["cu_seqlens_q"],
                compute_dtype, causal=host.truthy(p.causal), softmax=softmax, softcap=softcap_of(p), **mask_params(p),
            )
            return {"o": o.to(compute_dtype), "lse": lse.to(torch.float32)}
        if "block_table" in inputs:
            o, lse = reference.attention_paged(
                inputs["q"], inputs["k"], inputs["v"], inputs["block_table"], inputs["cache_seqlens"], compute_dtype,
                causal=host.truthy(p.causal), softmax=softmax, softcap=softcap_of(p), **mask_params(p),
            )
            return {"o": o.to(compute_dtype), "lse": lse.to(torch.float32)}
        if "cu_seqlens_q" in inputs:
            o, lse = reference.attention_varlen(
                inputs["q"], inputs["k"], inputs["v"], inputs["cu_seqlens_q"], inputs["cu_seqlens_k"], compute_dtype,
                causal=host.truthy(p.causal), softmax=softmax, softcap=softcap_of(p), **mask_params(p),
            )
            return {"o": o.to(compute_dtype), "lse": lse.to(torch.float32)}
        o, lse = reference.attention_bshd(
            inputs["q"], inputs["k"], inputs["v"], compute_dtype, causal=host.truthy(p.causal), softmax=softmax,
            softcap=softcap_of(p), **mask_params(p),
        )
        return {"o": o.to(compute_dtype), "lse": lse.to(torch.float32)}

