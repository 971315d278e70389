"""Small MoE diagnosis cases shared by the MoE tests: stage-like input/output specs, the
fixtures of fixtures/moe.py, the fp32 references of stages/moe/reference.py, and
'kernel-like' outputs (bf16 rounding, one-ulp noise, poison where unwritten, garbage where a
mutant does not know the value)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

T, H, I, E, K = 300, 64, 32, 4, 2  # 300 tokens: routed counts cross the 128-row tile

#: name -> (input specs, output specs, params); shapes as the stages declare them
def configs():
    from workbench.kernels.stage import TensorSpec as S

    routed = {"x": S((T, H), "bf16"), "w1": S((E, H, 2 * I), "bf16")}
    return {
        "a": ({"x": S((T, H), "bf16"), "w1": S((H, 2 * I), "bf16")}, {"d": S((T, 2 * I), "bf16")}, {"activation": "identity"}),
        "b": ({"x": S((T, H), "bf16"), "w1": S((H, 2 * I), "bf16")}, {"out": S((T, I), "bf16")}, {"activation": "swiglu"}),
        "c": ({**routed, "topk_ids": S((T, K), "int32"), "topk_weights": S((T, K), "fp32")},
              {"h": S((T * K, I), "bf16")}, {"activation": "swiglu", "topk": K}),
        "d": ({**routed, "logits": S((T, E), "fp32"), "w2": S((E, I, H), "bf16")},
              {"y": S((T, H), "bf16")}, {"activation": "swiglu", "topk": K, "routing": "logits"}),
        "d-given": ({**routed, "topk_ids": S((T, K), "int32"), "topk_weights": S((T, K), "fp32"), "w2": S((E, I, H), "bf16")},
                    {"y": S((T, H), "bf16")}, {"activation": "swiglu", "topk": K, "routing": "given"}),
    }


def load():
    from workbench.diagnose import mutants_for
    from workbench.kernels.fixtures import load_fixtures

    return load_fixtures(ROOT / "fixtures"), mutants_for(ROOT / "stages" / "moe")


def reference(cfg: str, inputs, params, dtype=None):
    """The stage's outputs, in fp32 (or dtype: rounded where the kernels round)."""
    import torch

    from stages.moe import reference as R
    from stages.moe.plan import make_plan

    dtype = dtype or torch.float32
    act = params["activation"]
    x, w1 = inputs["x"], inputs["w1"]
    if cfg in ("a", "b"):
        cu = torch.tensor([0, x.shape[0]])
        return {("d" if cfg == "a" else "out"): R.grouped_mm(x, w1[None], cu, dtype, activation=act)}
    if cfg == "c":
        plan = make_plan(inputs["topk_ids"], w1.shape[0])
        return {"h": R.grouped_mm(x, w1, plan.cu_seqlens, dtype, rows=plan.rows, activation=act)}
    if "logits" in inputs:
        return {"y": R.moe_ffn_routed(x, inputs["logits"], w1, inputs["w2"], params["topk"], dtype, activation=act)}
    return {"y": R.moe_ffn(x, w1, inputs["w2"], inputs["topk_ids"], inputs["topk_weights"], dtype, activation=act)}


def case(cfg: str, fixture: str, seed: int = 0):
    """(inputs, expected fp32, out specs, params) of one stage config on one fixture."""
    from workbench.kernels.fixtures import get_fixture

    fixtures, _ = load()
    ins, outs, params = configs()[cfg]
    inputs = get_fixture(fixtures, fixture, ins).make(ins, params, seed, "cpu")
    return inputs, reference(cfg, inputs, params), outs, params


def kernel_like(values: dict, out_specs, seed: int = 0):
    """What a kernel with these fp32 results would store: one-ulp noise, rounded to the
    output dtype; Pred.unwritten elements hold the poison; elements a Pred does not care
    about hold garbage (N(0, 100))."""
    import torch

    from workbench import compare
    from workbench.diagnose import Pred

    g = torch.Generator().manual_seed(10_000 + seed)
    out = {}
    for name, spec in out_specs.items():
        x = values[name]
        unw = care = None
        if isinstance(x, Pred):
            unw, care, x = x.unwritten, x.care, x.values
        x = x.float()
        noise = (torch.rand(x.shape, generator=g) * 2 - 1) * 2.0**-8
        y = x * (1 + noise)
        if care is not None:
            y = torch.where(care.expand_as(y), y, torch.randn(y.shape, generator=g) * 100)
        y = y.to(spec.torch_dtype())
        if unw is not None:
            poison = torch.empty_like(y)
            compare.poison(poison)
            y = torch.where(unw.expand_as(y), poison, y)
        out[name] = y
    return out
