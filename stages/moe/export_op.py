"""Stage D (the whole expert FFN) as a torch op: `wb export moe/d` copies this file into the
exported package as ``_op.py`` (the contract: workbench.kernels.stage.ExportSpec). It imports
nothing but torch: the package runs with neither wb nor cutlass installed.

    y = torch.ops.wb_moe.ffn(x, w1, w2, topk_ids, topk_weights, activation="swiglu")

x (T, H); w1 (E, H, 2I) with gate and up interleaved along the last dim (column 2c is the
gate, 2c + 1 the up projection of output column c); w2 (E, I, H); topk_ids (T, k) int32 in
[0, E) (unchecked: a check needs a device-to-host copy per call; a token routed outside gets
an undefined row); topk_weights (T, k) fp32; one dtype (bf16 or fp16) for x, w1, w2, all on one CUDA
device, contiguous, 16-byte aligned. y (T, H) = sum_j w[t, j] * (act(x[t] W1[e]) W2[e]) with
e = topk_ids[t, j]. Routing is the caller's (stage D's top-k + softmax is ``route`` below).

Three kernels per configuration (PIECES): the up-projection grouped GEMM with the activation
in its epilogue (128-row tiles, and 64-row tiles for few rows per expert), the
down-projection, and the combine. The plan between them (sort by expert, offsets) is plain
torch, as in the stage (stages/moe/plan.py and pipeline.py: the same steps, copied because
the package cannot import the stage).
"""

from __future__ import annotations

import torch

OP = "ffn"
SCHEMA = '(Tensor x, Tensor w1, Tensor w2, Tensor topk_ids, Tensor topk_weights, str activation="swiglu") -> Tensor'
PIECES = ("up", "up_few_rows", "down", "combine")
FEW_ROWS = 256  # rows per expert at or below which the 64-row up tiles run (stages/moe/pipeline.FEW_ROWS)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def exported_key(params: dict) -> dict:
    return {
        "h": int(params["h"]), "i": int(params["i"]), "dtype": str(params["dtype"]),
        "activation": str(params["activation"]), "topk": int(params["topk"]),
    }


def call_key(x, w1, w2, topk_ids, topk_weights, activation="swiglu") -> dict:
    return {
        "h": int(x.shape[-1]) if x.dim() else 0,
        "i": int(w2.shape[1]) if w2.dim() == 3 else 0,
        "dtype": NAMES.get(x.dtype, str(x.dtype).replace("torch.", "")),
        "activation": str(activation),
        "topk": int(topk_ids.shape[1]) if topk_ids.dim() == 2 else 0,
    }


def piece_info(name: str, piece, compiled=None) -> dict:
    """At export: what a piece's launch needs besides its function (the grid of a grouped GEMM)."""
    if name == "combine":
        return {}
    return {"n_tiles": int(piece.n_tiles), "tile_m": int(piece.tile_m), "n_out": int(piece.n_out)}


def check(x, w1, w2, topk_ids, topk_weights, activation="swiglu", *, fake=False) -> list[str]:
    named = (("x", x), ("w1", w1), ("w2", w2), ("topk_ids", topk_ids), ("topk_weights", topk_weights))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            return [f"{name}: expected a torch.Tensor, got {type(t).__name__}"]
    problems = []
    for name, t, rank in (("x", x, 2), ("w1", w1, 3), ("w2", w2, 3), ("topk_ids", topk_ids, 2), ("topk_weights", topk_weights, 2)):
        if t.dim() != rank:
            problems.append(f"{name}: expected rank {rank}, got rank {t.dim()} {tuple(t.shape)}")
    if problems:
        return problems
    if x.dtype not in NAMES:
        problems.append(f"x.dtype: expected bf16 or fp16, got {str(x.dtype).replace('torch.', '')}")
    if w1.dtype != x.dtype or w2.dtype != x.dtype:
        problems.append(f"dtypes: expected x, w1, w2 of one dtype, got {x.dtype}, {w1.dtype}, {w2.dtype}")
    if topk_ids.dtype != torch.int32:
        problems.append(f"topk_ids.dtype: expected int32, got {str(topk_ids.dtype).replace('torch.', '')}")
    if topk_weights.dtype != torch.float32:
        problems.append(f"topk_weights.dtype: expected float32, got {str(topk_weights.dtype).replace('torch.', '')}")
    T, H = x.shape
    E = w1.shape[0]
    if w1.shape[1] != H or w1.shape[2] % 2:
        problems.append(f"w1.shape: expected (E, {H}, 2I), got {tuple(w1.shape)}")
    if tuple(w2.shape) != (E, w1.shape[2] // 2, H):
        problems.append(f"w2.shape: expected ({E}, {w1.shape[2] // 2}, {H}) for w1 {tuple(w1.shape)}, got {tuple(w2.shape)}")
    if topk_ids.shape[0] != T or tuple(topk_weights.shape) != tuple(topk_ids.shape):
        problems.append(f"topk_ids / topk_weights: expected ({T}, k) each, got {tuple(topk_ids.shape)} / {tuple(topk_weights.shape)}")
    if not fake or x.device.type != "meta":
        for name, t in named:
            if t.device.type != "cuda":
                problems.append(f"{name}.device: expected cuda, got {t.device}")
    if len({str(t.device) for _, t in named}) > 1:
        problems.append("devices: expected one device, got " + ", ".join(str(t.device) for _, t in named))
    for name, t in named:
        if not t.is_contiguous():
            problems.append(f"{name}: expected contiguous, got strides {tuple(t.stride())}")
        if not fake and t.data_ptr() % 16:
            problems.append(f"{name}: expected a 16-byte aligned base address, got {hex(t.data_ptr())}")
    for name, t in (("x", x),):
        if t.numel() >= 2**31:
            problems.append(f"{name}: expected fewer than 2^31 elements (32-bit offsets), got {t.numel()}")
    return problems


def fake(x, w1, w2, topk_ids, topk_weights, activation="swiglu"):
    return torch.empty_like(x)


def route(logits, topk: int):
    """Stage D's router (stages/moe/reference.route): top-k of the logits, softmax over those k
    in fp32 -> (topk_ids int32, topk_weights fp32)."""
    vals, ids = torch.topk(logits.float(), topk, dim=-1)
    return ids.to(torch.int32), torch.softmax(vals, dim=-1)


def _plan(topk_ids, num_experts: int):
    """stages/moe/plan.make_plan: rows (R,), cu_seqlens (E + 1,), inverse (T, k), int32.
    An id outside [0, E) would leave routed rows that no GEMM writes (y silently garbage): a
    device-side assert refuses it, as torch's own indexing does, without a host sync."""
    T, k = topk_ids.shape
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64)
    torch._assert_async(((flat >= 0) & (flat < num_experts)).all(),
                        f"wb_moe.ffn: topk_ids: expected expert ids in [0, {num_experts})")
    order = torch.argsort(flat, stable=True)
    cu = torch.searchsorted(flat[order], torch.arange(num_experts + 1, device=dev, dtype=torch.int64))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=dev, dtype=torch.int64)
    return (order // max(k, 1)).to(torch.int32), cu.to(torch.int32), inverse.view(T, k).to(torch.int32)


_sm_counts: dict = {}


def _grouped(piece, a, w, out, rows, cu, num_sms: int) -> None:
    """stages/moe/stage_c_grouped.run_grouped's launch: one CTA per SM, fewer when there
    cannot be that many tiles (tile_scheduler.grid_size)."""
    fn, info = piece
    R, E = int(rows.shape[0]), int(w.shape[0])
    if R == 0:
        return
    tiles = (-(-R // info["tile_m"]) + E - 1) * info["n_tiles"]
    fn(a, w, out, rows, cu, max(1, min(num_sms, tiles)))


def launch(fns, x, w1, w2, topk_ids, topk_weights, activation="swiglu"):
    dev = x.device
    num_sms = _sm_counts.get(dev)
    if num_sms is None:
        num_sms = _sm_counts[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    T, H = x.shape
    E, I = w1.shape[0], w2.shape[1]
    rows, cu, inverse = _plan(topk_ids, E)
    R = rows.shape[0]
    h = torch.empty((R, I), dtype=x.dtype, device=dev)
    out = torch.empty((R, H), dtype=x.dtype, device=dev)
    up = fns["up_few_rows"] if "up_few_rows" in fns and R <= FEW_ROWS * E else fns["up"]
    _grouped(up, x, w1, h, rows, cu, num_sms)
    _grouped(fns["down"], h, w2, out, rows, cu, num_sms)
    y = torch.empty_like(x)
    if "combine" in fns:
        fns["combine"][0](out, inverse, topk_weights, y)
    else:  # stages/moe/pipeline.combine: fp32, j in order
        acc = torch.zeros((T, H), dtype=torch.float32, device=dev)
        for j in range(inverse.shape[1]):
            acc.add_(torch.index_select(out, 0, inverse[:, j]).float().mul_(topk_weights[:, j:j + 1]))
        y.copy_(acc)
    return y


def stage_call(op, inputs: dict, params: dict) -> dict:
    """`wb run moe/d --exported DIR`: the stage's fixture inputs through the installed op."""
    if "logits" in inputs:
        ids, weights = route(inputs["logits"], int(params["topk"]))
    else:
        ids, weights = inputs["topk_ids"], inputs["topk_weights"]
    return {"y": op(inputs["x"], inputs["w1"], inputs["w2"], ids.to(torch.int32).contiguous(),
                    weights.float().contiguous(), activation=str(params["activation"]))}
