"""The exported stage D op inside a real model: a randomly initialized Llama-architecture model
(Llama-3-8B shapes: hidden 4096, 32 heads, 8 KV heads, head dim 128, MLP 14336; 2-4 layers;
no weights downloaded) in bf16, prefill, with attention through HF `transformers`'
AttentionInterface. Issue 17; docs/export.md shows the numbers.

On the GPU machine, with the package on the path (an export of d=128 heads=32 kv_heads=8
causal=true, bf16) and transformers installed (the `model` extra):

    python benchmarks/export_model.py [--layers 4] [--seqlens 1024,2048,4096,8192]
                                      [--batches 1,4,8] [--compile] [--json FILE]
                                      [--moe | --moe-only] [--moe-seqlens 1024,4096] [--moe-batches 1,4]

--moe / --moe-only: a Qwen3-MoE-shaped model (Qwen3-30B-A3B: hidden 2048, 128 experts of 768,
top-8) whose experts run through wb_moe::ffn (an export of moe stage D with h=2048 i=768
topk=8), registered with transformers' ExpertsInterface (`set_experts_implementation`),
against transformers' grouped_mm experts, logits vs fp32 experts, the same tolerance rule.

Backends, each a name for `model.set_attn_implementation`:
  sdpa       transformers' own (torch SDPA: flash / cuDNN / efficient as torch picks)
  wb_fmha    torch.ops.wb_fmha.fwd through `wb_attention` below (registered here)
  fa4        transformers' "flash_attention_4" when flash-attn-4 is installed, else a
             wrapper of flash_attn.cute.flash_attn_func registered the same way as wb_fmha
  fp32_ref   the reference: the same model, attention computed in fp32 (torch SDPA on fp32
             q, k, v) and rounded to bf16 once

Correctness, the tolerance rule of `wb run` applied to the model: the logits of a backend are
compared with fp32_ref's over every position (relative L2 over all logits, in chunks), and a
backend passes when its error is at most 2 x the error of sdpa (the low-precision
reference) + 1e-3 x ||ref|| absolute slack; the row shows both errors.

Timing: end-to-end prefill (model forward, logits of the last position only, as generation
does), median of --reps CUDA-event timings after 2 warm-ups, all backends in this one
process on the same inputs, in turn per case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def wb_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers attention function -> torch.ops.wb_fmha.fwd. query (b, heads, s, d), key and
    value (b, kv_heads, s, d) in transformers' layout; returns (b, s, heads, d) and no weights.
    Refuses (ValueError, one line) what the exported kernel does not do: padding masks,
    dropout, a softmax scale other than 1/sqrt(d)."""
    import torch

    if attention_mask is not None:
        raise ValueError("wb_fmha: padding / custom attention masks are not supported (causal prefill of unpadded batches only)")
    if dropout:
        raise ValueError(f"wb_fmha: dropout is not supported (got {dropout})")
    d = query.shape[-1]
    if scaling is not None and abs(scaling * d**0.5 - 1.0) > 1e-6:
        raise ValueError(f"wb_fmha: the softmax scale is 1/sqrt(d) = {d ** -0.5:.6g}, got {scaling}")
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    causal = causal and query.shape[2] > 1
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, s, h, d) views, last dim contiguous
    if CONTIGUOUS:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o, _ = getattr(getattr(torch.ops, OP[0]), OP[1])(q, k, v, causal=causal)
    return o, None


OP = ("wb_fmha", "fwd")  # the op wb_attention calls (tests point it at a CPU stand-in)
CONTIGUOUS = False  # set by the layout check: strided (b, s, h, d) views unless they fail


def fa4_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from flash_attn.cute import flash_attn_func

    if attention_mask is not None:
        raise ValueError("fa4 wrapper: padding masks are not supported")
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    out = flash_attn_func(q, k, v, softmax_scale=scaling, causal=causal and query.shape[2] > 1)
    return (out[0] if isinstance(out, tuple) else out), None


def fp32_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    import torch
    import torch.nn.functional as F

    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    groups = query.shape[1] // key.shape[1]  # GQA by repeating k, v: the memory-efficient fp32 path takes no enable_gqa
    q, k, v = query.float(), key.float().repeat_interleave(groups, 1), value.float().repeat_interleave(groups, 1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal and query.shape[2] > 1, scale=scaling)
    return o.to(query.dtype).transpose(1, 2).contiguous(), None


MOE_OP = ("wb_moe", "ffn")  # the op wb_experts calls (tests point it at a CPU stand-in)


def moe_weights(module):
    """transformers' expert weights in the layout of wb_moe::ffn, converted once per weight
    version: gate_up_proj (E, 2I, H), [gate; up] along dim 1 -> w1 (E, H, 2I) with gate and up
    interleaved (column 2c gate, 2c + 1 up); down_proj (E, H, I) -> w2 (E, I, H)."""
    import torch

    gu, down = module.gate_up_proj, module.down_proj
    stamp = (gu.data_ptr(), gu._version, down.data_ptr(), down._version)
    cached = getattr(module, "_wb_moe_weights", None)
    if cached is None or cached[0] != stamp:
        with torch.no_grad():
            E, two_i, H = gu.shape
            gate, up = gu[:, : two_i // 2].transpose(1, 2), gu[:, two_i // 2 :].transpose(1, 2)
            w1 = torch.stack((gate, up), dim=-1).reshape(E, H, two_i).contiguous()
            w2 = down.transpose(1, 2).contiguous()
        cached = module._wb_moe_weights = (stamp, w1, w2)
    return cached[1], cached[2]


def wb_experts(module, hidden_states, top_k_index, top_k_weights):
    """transformers experts function -> torch.ops.wb_moe.ffn: hidden_states (T, H), the
    router's top_k_index (T, k) and top_k_weights (T, k); returns (T, H)."""
    import torch

    if getattr(module, "has_bias", False) or not getattr(module, "has_gate", True) or getattr(module, "is_transposed", False):
        raise ValueError("wb_moe: only gated experts without biases in transformers' default layout are supported")
    w1, w2 = moe_weights(module)
    op = getattr(getattr(torch.ops, MOE_OP[0]), MOE_OP[1])
    return op(hidden_states.contiguous(), w1, w2, top_k_index.to(torch.int32).contiguous(), top_k_weights.float().contiguous())


def fp32_experts(module, hidden_states, top_k_index, top_k_weights):
    """The reference experts: every expert's FFN in fp32, weights as the router gave them."""
    import torch
    import torch.nn.functional as F

    x = hidden_states.float()
    out = torch.zeros_like(x)
    I = module.down_proj.shape[-1]
    for e in torch.unique(top_k_index).tolist():
        tok, j = torch.where(top_k_index == e)
        gu = x[tok] @ module.gate_up_proj[e].float().t()
        h = F.silu(gu[:, :I]) * gu[:, I:]
        out.index_add_(0, tok, (h @ module.down_proj[e].float().t()) * top_k_weights[tok, j, None].float())
    return out.to(hidden_states.dtype)


def register_experts() -> dict[str, str]:
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register("wb_moe", wb_experts)
    ALL_EXPERTS_FUNCTIONS.register("fp32_ref", fp32_experts)
    return {"grouped_mm": "grouped_mm", "fp32_ref": "fp32_ref", "wb_moe": "wb_moe"}


def use_experts(model, name: str) -> None:
    model.set_experts_implementation(name)


def register(fa4_name: str | None) -> dict[str, str]:
    """Register the attention functions; -> backend label: attn_implementation name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    flash_mask = ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"]  # None unless there is padding
    names = {"sdpa": "sdpa", "fp32_ref": "fp32_ref"}
    AttentionInterface.register("fp32_ref", fp32_attention)
    AttentionMaskInterface.register("fp32_ref", flash_mask)
    AttentionInterface.register("wb_fmha", wb_attention)
    AttentionMaskInterface.register("wb_fmha", flash_mask)
    names["wb_fmha"] = "wb_fmha"
    if fa4_name:
        names["fa4"] = fa4_name
        if fa4_name == "fa4_wrapper":
            AttentionInterface.register("fa4_wrapper", fa4_attention)
            AttentionMaskInterface.register("fa4_wrapper", flash_mask)
    return names


def layout_check() -> dict:
    """The op on transformers' (b, h, s, d) tensors seen as (b, s, h, d) strided views against
    SDPA, before any model runs: if the views fail, the model uses contiguous copies."""
    import torch
    import torch.nn.functional as F

    global CONTIGUOUS
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(2, 32, 1000, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True).transpose(1, 2)
    out = {}
    for name, contiguous in (("strided", False), ("contiguous", True)):
        qq, kk, vv = (t.transpose(1, 2) for t in (q, k, v))
        if contiguous:
            qq, kk, vv = qq.contiguous(), kk.contiguous(), vv.contiguous()
        try:
            o, _ = torch.ops.wb_fmha.fwd(qq, kk, vv, causal=True)
            out[name] = float((o.float() - ref).norm() / ref.norm())
        except Exception as exc:  # noqa: BLE001 - reported, the other layout is tried
            out[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    CONTIGUOUS = not (isinstance(out["strided"], float) and out["strided"] < 2e-2)
    out["model_uses"] = "contiguous" if CONTIGUOUS else "strided"
    return out


def build_model(layers: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        num_hidden_layers=layers, vocab_size=128256, max_position_embeddings=16384, rope_theta=500000.0,
        rms_norm_eps=1e-5, torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    # random init at 8B scale makes near-uniform logits; a larger embedding and head spread
    # makes the comparison see attention errors rather than rounding noise
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1.0)
    return model


def build_moe_model(layers: int):
    """Qwen3-30B-A3B's shapes (hidden 2048, 32 heads, 4 KV heads, head dim 128, 128 experts of
    768, top-8 with renormalised weights), random init, bf16; attention through SDPA."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
        norm_topk_prob=True, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_hidden_layers=layers,
        vocab_size=151936, max_position_embeddings=16384, decoder_sparse_step=1, mlp_only_layers=[],
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3MoeForCausalLM(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1.0)
        for layer in model.model.layers:  # a router that spreads tokens, as a trained one does
            layer.mlp.gate.weight.normal_(0, 0.05)
    return model


def compare_case(model, ids, names: dict, select, baseline: str, candidate: str, reps: int) -> dict:
    """One case, every backend in turn (``select(model, name)`` switches): logits rel L2 of each
    against fp32_ref's (a backend that raised: its one-line error instead), the budget (2 x the
    baseline's error + 1e-3), the candidate's verdict, and prefill ms of each backend that ran."""
    hidden = {}
    for label, name in names.items():
        select(model, name)
        try:
            hidden[label] = model.model(input_ids=ids).last_hidden_state
        except Exception as exc:  # noqa: BLE001 - one backend's failure is a row, not the end
            hidden[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    ref = hidden.pop("fp32_ref")
    errors = {k: (logits_error(model, ids, ref, h) if not isinstance(h, str) else h) for k, h in hidden.items()}
    del hidden, ref
    ms = {}
    for label, name in names.items():
        if label == "fp32_ref" or isinstance(errors.get(label), str):
            continue
        select(model, name)
        ms[label] = time_prefill(lambda: model(input_ids=ids, logits_to_keep=1), reps)
    base = errors.get(baseline)
    budget = 2 * base + 1e-3 if isinstance(base, float) else None
    verdict = "PASS" if isinstance(errors.get(candidate), float) and budget is not None and errors[candidate] <= budget else "FAIL"
    return {"errors": errors, "budget": budget, "verdict": verdict, "ms": ms}


def run_moe(args, g) -> list[dict]:
    """The experts of a Qwen3-MoE-shaped model through wb_moe::ffn vs transformers' grouped_mm,
    logits against fp32 experts (the same tolerance rule), prefill time."""
    import torch

    names = register_experts()
    model = build_moe_model(args.layers)
    print(f"moe model: Qwen3-30B-A3B shapes, {args.layers} layers, bf16, random init; experts {names}", flush=True)
    rows = []
    with torch.inference_mode():
        for s in [int(x) for x in args.moe_seqlens.split(",")]:
            for b in [int(x) for x in args.moe_batches.split(",")]:
                ids = torch.randint(0, model.config.vocab_size, (b, s), device="cuda", generator=g)
                case = compare_case(model, ids, names, use_experts, "grouped_mm", "wb_moe", args.reps)
                errors, budget, verdict, ms = case["errors"], case["budget"], case["verdict"], case["ms"]
                row = {"seqlen": s, "batch": b, "errors": errors, "budget": budget, "verdict": verdict, "ms": ms,
                       "grouped_mm_vs_wb": ms["grouped_mm"] / ms["wb_moe"] if len(ms) == 2 else None}
                rows.append(row)
                err_text = " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in errors.items())
                print(f"moe s={s:5d} b={b}: {verdict} logits rel L2 vs fp32-experts ref: {err_text} (budget {budget}) | prefill ms: "
                      + " ".join(f"{k}={v:.2f}" for k, v in ms.items())
                      + (f" | grouped_mm/wb x{row['grouped_mm_vs_wb']:.3f}" if row["grouped_mm_vs_wb"] else ""), flush=True)
    del model
    torch.cuda.empty_cache()
    return rows


def use(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def logits_error(model, ids, ref_hidden, hidden) -> float:
    """Relative L2 of all logits (b, s, vocab) of ``hidden`` against ``ref_hidden``, chunked."""
    import torch

    num = den = 0.0
    head = model.lm_head
    flat, flat_ref = hidden.reshape(-1, hidden.shape[-1]), ref_hidden.reshape(-1, hidden.shape[-1])
    for i in range(0, flat.shape[0], 2048):
        a = head(flat[i : i + 2048]).float()
        r = head(flat_ref[i : i + 2048]).float()
        num += float((a - r).square().sum())
        den += float(r.square().sum())
    return (num / max(den, 1e-30)) ** 0.5


def time_prefill(fn, reps: int) -> float:
    import torch

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fa4_backend() -> str | None:
    try:
        import flash_attn.cute  # noqa: F401
    except Exception:  # noqa: BLE001
        return None
    try:
        from transformers.utils import is_flash_attn_4_available

        if is_flash_attn_4_available():
            return "flash_attention_4"
    except Exception:  # noqa: BLE001
        pass
    return "fa4_wrapper"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seqlens", default="1024,2048,4096,8192")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also torch.compile(model) for sdpa and wb_fmha at the largest and smallest case")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--moe", action="store_true", help="also a Qwen3-MoE-shaped model with its experts through wb_moe::ffn (import wb_moe)")
    ap.add_argument("--moe-only", action="store_true", help="only the MoE model (no wb_fmha needed)")
    ap.add_argument("--moe-seqlens", default="1024,4096")
    ap.add_argument("--moe-batches", default="1,4")
    args = ap.parse_args()

    import torch
    import transformers

    if args.moe_only:
        import wb_moe

        print(f"card: {torch.cuda.get_device_name()}; torch {torch.__version__}; transformers {transformers.__version__}; op {wb_moe.QUALNAME} "
              f"(commit {str(wb_moe.MANIFEST.get('commit'))[:10]})", flush=True)
        moe_rows = run_moe(args, torch.Generator(device="cuda").manual_seed(0))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"card": torch.cuda.get_device_name(), "transformers": transformers.__version__, "moe": moe_rows}, f, indent=2)
        return 0 if moe_rows and all(r["verdict"] == "PASS" for r in moe_rows) else 1

    import wb_fmha

    card = torch.cuda.get_device_name()
    print(f"card: {card}; torch {torch.__version__}; transformers {transformers.__version__}; op {wb_fmha.QUALNAME} "
          f"(commit {str(wb_fmha.MANIFEST.get('commit'))[:10]}, configs {[c['id'] for c in wb_fmha.CONFIGS]})", flush=True)
    check = layout_check()
    print(f"layout check (rel L2 vs fp32 SDPA): {check}", flush=True)
    fa4 = fa4_backend()
    names = register(fa4)
    print(f"backends: {names}", flush=True)
    t0 = time.perf_counter()
    model = build_model(args.layers)
    print(f"model: Llama-architecture, {args.layers} layers, 8B shapes, bf16, random init ({time.perf_counter() - t0:.1f} s)", flush=True)

    rows = []
    seqlens = [int(x) for x in args.seqlens.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        for s in seqlens:
            for b in batches:
                ids = torch.randint(0, model.config.vocab_size, (b, s), device="cuda", generator=g)
                case = compare_case(model, ids, names, use, "sdpa", "wb_fmha", args.reps)
                errors, budget, verdict, ms = case["errors"], case["budget"], case["verdict"], case["ms"]
                row = {"seqlen": s, "batch": b, "errors": errors, "budget": budget, "verdict": verdict, "ms": ms,
                       "wb_vs_sdpa": ms["sdpa"] / ms["wb_fmha"] if "wb_fmha" in ms else None,
                       "wb_vs_fa4": ms["fa4"] / ms["wb_fmha"] if "wb_fmha" in ms and "fa4" in ms else None}
                rows.append(row)
                err_text = " ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in errors.items())
                ms_text = " ".join(f"{k}={v:.2f}" for k, v in ms.items())
                print(f"s={s:5d} b={b}: {verdict} logits rel L2 vs fp32-attention ref: {err_text} (budget {budget:.2e}) | prefill ms: {ms_text}"
                      + (f" | sdpa/wb x{row['wb_vs_sdpa']:.3f}" if row["wb_vs_sdpa"] else "")
                      + (f" fa4/wb x{row['wb_vs_fa4']:.3f}" if row["wb_vs_fa4"] else ""), flush=True)
                del ids
                torch.cuda.empty_cache()

        compiled_rows = []
        if args.compile:
            for s, b in ((seqlens[0], batches[0]), (seqlens[-1], batches[0])):
                ids = torch.randint(0, model.config.vocab_size, (b, s), device="cuda", generator=g)
                out = {"seqlen": s, "batch": b}
                for label in ("sdpa", "wb_fmha"):
                    use(model, names[label])
                    torch._dynamo.reset()
                    try:
                        cmodel = torch.compile(model, fullgraph=True)
                        t0 = time.perf_counter()
                        eager_logits = model(input_ids=ids, logits_to_keep=1).logits.float()
                        logits = cmodel(input_ids=ids, logits_to_keep=1).logits.float()
                        out[f"{label}_compile_s"] = round(time.perf_counter() - t0, 1)
                        out[f"{label}_vs_eager_rel_l2"] = float((logits - eager_logits).norm() / eager_logits.norm())
                        out[f"{label}_ms"] = time_prefill(lambda: cmodel(input_ids=ids, logits_to_keep=1), args.reps)
                    except Exception as exc:  # noqa: BLE001
                        out[f"{label}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                compiled_rows.append(out)
                print(f"torch.compile(model, fullgraph=True) s={s} b={b}: {out}", flush=True)

    moe_rows = []
    if args.moe:
        del model
        torch.cuda.empty_cache()
        import wb_moe  # noqa: F401 - registers wb_moe::ffn

        moe_rows = run_moe(args, g)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "torch": torch.__version__, "transformers": transformers.__version__, "layout_check": check,
                       "backends": names, "layers": args.layers, "rows": rows, "compiled": compiled_rows, "moe": moe_rows}, f, indent=2)
    return 0 if rows and all(r["verdict"] == "PASS" for r in rows + moe_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
