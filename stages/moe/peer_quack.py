"""quack (Dao-AILab/quack, pip `quack-kernels`) as a `wb bench` peer of the MoE family.

The quack-based MoE pipeline: route (when given logits) and plan in torch, quack's grouped
(varlen-M) GEMM + SwiGLU up-projection gathering x's rows by token index (`gemm_act`,
cu_seqlens_m + A_idx), quack's grouped down-projection (`gemm`, cu_seqlens_m), and a torch
weighted combine. Everything after the weights are given runs inside the timed callable,
the plan included, as it does in our stage D.

Layouts. quack's gated activations pair accumulator columns 2i (gate) and 2i + 1 (up), the
same interleaved W1 every MoE stage uses, so W1 (E, H, 2I) goes in as it is (quack's
`concat_layout` option is for [gate | up] checkpoints, not needed here). B operands
(E, K, N) row-major are N-major, which quack's SM90 GEMM takes (its "B_major n").

Versions. quack-kernels 0.6.5 is the only release whose declared need (nvidia-cutlass-dsl
>= 4.7) admits the DSL 4.8.1 we use, and the one FlashAttention-4 4.0.0b36 pins (one quack per
site): 0.5.1 - 0.6.4 pin 4.6.x; 0.2.x - 0.5.0 ask for >= 4.4 but do not import beside 4.8.1
(0.4.1: cutlass.cute.core has no ThrMma). Its `gemm_act(..., activation="swiglu")` fingerprints the epilogue
function to key its compile cache: functions of *installed* packages are keyed by name, and
quack decides "installed" by "/site-packages/" or "/dist-packages/" in the file's path.
Installed with `pip install --target /tmp/site` (our GPU machine), cutlass's functions fail
that test, the fingerprint walks into their globals and stops at a ContextVar
(cutlass._mlir_helpers.op._LOC_TRANSFORMS): "TypeError: epilogue fn depends on <ContextVar
...> which has no fail-closed semantic key". `_key_cutlass_by_name` makes quack treat the
cutlass package as installed in this process (the digest is then the one a site-packages
install gives); benchmarks/gpu_quack_env.sh also reaches the DSL through a path holding
"site-packages", which fixes quack's compile workers (other processes) too.

The gpt-oss variant has no quack peer: quack's `swiglu_oai` does not clamp g and u.
torch and quack are imported inside the functions.
"""

from __future__ import annotations

from stages.moe.plan import make_plan

_missing: str | None = None

QUACK_ACTIVATION = {"swiglu": "swiglu"}


def missing_note() -> str | None:
    """Why the last make_* call returned None."""
    return _missing


def _gone(why: str):
    global _missing
    _missing = why
    return None


def _key_cutlass_by_name() -> None:
    """Key functions of the cutlass package by qualified name in quack's epilogue fingerprint,
    as quack already does for any package found under site-packages (see the docstring)."""
    from quack.gemm_runtime import identity

    is_extern = identity._is_extern_function
    if getattr(is_extern, "wb_cutlass_by_name", False):
        return

    def cutlass_or_extern(fn):
        top = (getattr(fn, "__module__", None) or "").split(".")[0]
        return top == "cutlass" or is_extern(fn)

    cutlass_or_extern.wb_cutlass_by_name = True
    identity._is_extern_function = cutlass_or_extern


def _quack():
    """(gemm, gemm_act) from quack, or None with the reason recorded."""
    try:
        from quack.gemm_interface import gemm, gemm_act
    except Exception as e:  # ImportError, or a quack built against another DSL
        return _gone(f"quack-kernels is not importable here ({type(e).__name__}: {e})")
    try:
        _key_cutlass_by_name()
    except Exception:  # a later quack without this function: nothing to patch
        pass
    return gemm, gemm_act


def _routing(inputs, params):
    """(topk_ids (T, k) int, topk_weights (T, k) fp32) as a function of nothing: the given
    top-k, or top-k + softmax over the selected logits (stages/moe/reference.route)."""
    from stages.moe.reference import route

    if "topk_ids" in inputs:
        ids, weights = inputs["topk_ids"], inputs["topk_weights"]
        return lambda: (ids, weights)
    logits, k = inputs["logits"], int(params["topk"])
    return lambda: route(logits, k)


def combine(out, inverse, topk_weights):
    """y[t] = Σ_j w[t, j] · out[inverse[t, j]] as one batched (1 × k)·(k × H) product in the
    output dtype (fp32 accumulate; the weights rounded to that dtype): deterministic."""
    import torch

    T, k = inverse.shape
    rows = out.index_select(0, inverse.reshape(-1)).view(T, k, -1)
    return torch.bmm(topk_weights.to(out.dtype).view(T, 1, k), rows).view(T, -1)


def _flag(params, name, default: bool) -> bool:
    """A yes/no parameter, given as a bool or as a string (from the command line)."""
    value = params.get(name, default)
    return value if isinstance(value, bool) else str(value).lower() not in ("0", "false", "no", "off")


def _check_inputs(inputs, params):
    act = str(params.get("activation", "swiglu"))
    if act not in QUACK_ACTIVATION:
        return _gone(f"quack has no {act} activation matching ours (its swiglu_oai does not clamp)")
    x, w1 = inputs["x"], inputs["w1"]
    if not x.is_cuda:
        return _gone("quack runs on CUDA tensors only")
    if w1.shape[-1] % 2:
        return _gone(f"W1's last dim {w1.shape[-1]} is odd: not interleaved gate/up")
    return QUACK_ACTIVATION[act]


def make_quack_peer(inputs, params):
    """The quack-based MoE FFN (see the module docstring) as a zero-argument callable
    returning y (T, H), or None (missing_note says why). inputs: x (T, H), w1 (E, H, 2I)
    interleaved, w2 (E, I, H), and topk_ids (T, k) + topk_weights (T, k), or logits (T, E)
    with params["topk"]. params: activation (swiglu), quack_tuned (default true: quack's
    autotuner picks each GEMM's tiles, once, here, outside the timing),
    quack_dynamic_scheduler (default false: quack's SM90 default, static persistent tiles)."""
    global _missing
    _missing = None
    fns = _quack()
    if fns is None:
        return None
    gemm, gemm_act = fns
    act = _check_inputs(inputs, params)
    if act is None:
        return None
    x, w1, w2 = inputs["x"], inputs["w1"], inputs["w2"]
    E = w1.shape[0]
    tuned, dynamic = _flag(params, "quack_tuned", True), _flag(params, "quack_dynamic_scheduler", False)
    routing = _routing(inputs, params)

    def run():
        ids, weights = routing()
        p = make_plan(ids, E)
        rows, cu, inverse = p.rows, p.cu_seqlens, p.inverse
        _, h = gemm_act(
            x, w1, activation=act, cu_seqlens_m=cu, A_idx=rows, store_preact=False,
            tuned=tuned, dynamic_scheduler=dynamic,
        )
        out = gemm(h, w2, cu_seqlens_m=cu, tuned=tuned, dynamic_scheduler=dynamic)
        return combine(out, inverse, weights)

    run()  # compiles (and autotunes) here, not inside the timing
    return run


def make_quack_up_peer(inputs, params):
    """Stage C alone: quack's grouped up-projection + SwiGLU, h (R, I) = act(x[rows[p]] ·
    W1[e]) for the sorted routed rows, as a zero-argument callable, or None. inputs: x, w1
    and either the plan (rows (R,), cu_seqlens (E + 1,)) or topk_ids (T, k), planned here
    once, outside the timing (stage C is given its plan)."""
    global _missing
    _missing = None
    fns = _quack()
    if fns is None:
        return None
    _, gemm_act = fns
    act = _check_inputs(inputs, params)
    if act is None:
        return None
    import torch

    x, w1 = inputs["x"], inputs["w1"]
    if "cu_seqlens" in inputs:
        rows, cu = inputs.get("rows"), inputs["cu_seqlens"].to(torch.int32)
        rows = None if rows is None else rows.to(torch.int32)
    else:
        p = make_plan(inputs["topk_ids"], w1.shape[0])
        rows, cu = p.rows, p.cu_seqlens
    tuned, dynamic = _flag(params, "quack_tuned", True), _flag(params, "quack_dynamic_scheduler", False)

    def run():
        return gemm_act(
            x, w1, activation=act, cu_seqlens_m=cu, A_idx=rows, store_preact=False,
            tuned=tuned, dynamic_scheduler=dynamic,
        )[1]

    run()
    return run
