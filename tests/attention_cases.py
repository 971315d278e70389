"""Test helpers for the diagnostics: attention problems shaped like stages A-D, an
independent torch reference, and a "kernel-like" noise model.

Run `python tests/attention_cases.py` to print the distinguishability table that
docs/diagnostics.md quotes (which mutants each fixture cannot see, which look alike).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Problem shapes like the stages', small enough for the CPU. n = 640 gives 5 KV tiles
# (so kv-stall-4 / kv-skip-4 apply); stage D has a partial tail tile, GQA and causal.
CONFIGS = {
    "a": dict(kind="a", m=256, n=640, d=64),
    "b": dict(kind="b", m=256, n=640, d=64),
    "c": dict(kind="c", m=256, n=640, d=64),
    "d": dict(kind="d", batch=2, m=200, n=333, heads=4, kv_heads=2, d=64, causal=True),
    "d-plain": dict(kind="d", batch=2, m=256, n=300, heads=2, kv_heads=2, d=128, causal=False),
    # softcap (Gemma 2's attention cap 50; d=64, causal, a tail)
    "d-softcap": dict(kind="d", batch=1, m=200, n=333, heads=2, kv_heads=1, d=64, causal=True, softcap=50.0),
    "d-softcap5": dict(kind="d", batch=1, m=130, n=300, heads=2, kv_heads=2, d=128, causal=False, softcap=5.0),
    # head dims above 128 (tests/test_fmha_headdims.py; not in STAGE_FIXTURES' sweep): KV tiles
    # of 112 (n = 300: 3 tiles, a 76-key tail) and 80 keys (n = 250: 4 tiles, a 10-key tail)
    "d-192": dict(kind="d", batch=1, m=130, n=300, heads=2, kv_heads=1, d=192, causal=False),
    "d-256": dict(kind="d", batch=1, m=150, n=250, heads=2, kv_heads=1, d=256, causal=True),
    "d-192-dv128": dict(kind="d", batch=1, m=130, n=300, heads=2, kv_heads=1, d=192, dv=128, causal=True),
}

STAGE_FIXTURES = {  # as in kernel.yaml, plus the fixtures this issue adds where they apply
    "a": ["random", "single", "iota", "uniform-logits", "onehot-logits", "large-logits"],
    "b": ["random", "single", "iota", "identity-softmax", "uniform-logits", "onehot-logits", "large-logits"],
    "c": ["random", "identity-softmax", "ones-v", "single", "onehot-p", "iota", "uniform-logits", "onehot-logits", "large-logits"],
    "d": ["random", "identity-softmax", "ones-v", "single", "onehot-p", "iota", "large-logits"],
    "d-plain": ["random", "ones-v", "single", "onehot-p", "iota"],
    "d-softcap": ["softcap-logits", "random"],
    "d-softcap5": ["softcap-logits"],
}


def specs_for(cfg):
    from workbench.kernels.stage import Params, TensorSpec

    kind, m, n, d = cfg["kind"], cfg["m"], cfg["n"], cfg["d"]
    if kind == "d":
        b, h, hk, dv = cfg["batch"], cfg["heads"], cfg["kv_heads"], cfg.get("dv", d)
        ins = {"q": TensorSpec((b, m, h, d), "bf16"), "k": TensorSpec((b, n, hk, d), "bf16"), "v": TensorSpec((b, n, hk, dv), "bf16")}
        outs = {"o": TensorSpec((b, m, h, dv), "bf16"), "lse": TensorSpec((b, h, m), "fp32")}
        params = {"m": m, "n": n, "d": d, "dv": dv, "dtype": "bf16", "batch": b, "heads": h, "kv_heads": hk, "causal": cfg["causal"]}
        if "softcap" in cfg:
            params["softcap"] = cfg["softcap"]
        return ins, outs, Params(params)
    ins = {"q": TensorSpec((m, d), "bf16"), "k": TensorSpec((n, d), "bf16")}
    if kind == "c":
        ins["v"] = TensorSpec((n, d), "bf16")
        outs = {"o": TensorSpec((m, d), "bf16"), "lse": TensorSpec((m,), "fp32")}
    elif kind == "b":
        outs = {"p": TensorSpec((m, n), "bf16")}
    else:
        outs = {"s": TensorSpec((m, n), "fp32")}
    return ins, outs, Params({"m": m, "n": n, "d": d, "dtype": "bf16"})


def reference(cfg, inputs, variants, compute_dtype=None):
    """Independent torch reference: S = QKᵀ/sqrt(d); P = softmax(S) (identity: P = S);
    O = P V, LSE = logsumexp(S) natural log (identity: O = S V, LSE = 0); causal is
    bottom-right (key j <= i + n - m); GQA: head h reads KV head h // (heads / kv_heads);
    4-D LSE is (batch, heads, m); softcap c (cfg): S -> c tanh(S / c) before the mask.
    compute_dtype (default float32) is used throughout."""
    import torch

    dt = compute_dtype or torch.float32
    kind = cfg["kind"]
    softmax = variants.get("softmax", "exp")
    q, k = inputs["q"].to(dt), inputs["k"].to(dt)
    v = inputs["v"].to(dt) if "v" in inputs else None
    if kind == "d":
        b, m, h, d = q.shape
        hk = k.shape[2]
        idx = torch.arange(h) // (h // hk)
        q4 = q.permute(0, 2, 1, 3)
        k4 = k.permute(0, 2, 1, 3)[:, idx]
        v4 = v.permute(0, 2, 1, 3)[:, idx]
    else:
        q4, k4 = q[None, None], k[None, None]
        v4 = v[None, None] if v is not None else None
    d = q4.shape[-1]
    s = (q4 @ k4.transpose(-1, -2)) * (1.0 / math.sqrt(d))
    if cfg.get("softcap"):
        s = cfg["softcap"] * torch.tanh(s / cfg["softcap"])
    M, N = s.shape[-2:]
    if cfg.get("causal"):
        i = torch.arange(M).view(M, 1)
        j = torch.arange(N).view(1, N)
        s = s.masked_fill(j > i + (N - M), float("-inf"))
    if kind == "a":
        return {"s": s[0, 0]}
    if softmax == "identity":
        p = torch.where(torch.isinf(s), torch.zeros_like(s), s)
        lse = torch.zeros(s.shape[:-1], dtype=dt)
    else:
        mx = s.amax(-1, keepdim=True)
        e = (s - mx).exp()
        p = e / e.sum(-1, keepdim=True)
        lse = torch.logsumexp(s, -1)
    if kind == "b":
        return {"p": p[0, 0]}
    o = p @ v4
    if kind == "d":
        return {"o": o.permute(0, 2, 1, 3), "lse": lse}
    return {"o": o[0, 0], "lse": lse[0, 0]}


def kernel_like(values: dict, out_specs, seed: int = 0):
    """What a kernel with these (fp32) results would store: each element perturbed by up to
    one bf16 ulp (2^-8 relative; 2^-20 for fp32 outputs, whose kernels accumulate in fp32),
    then rounded to the output dtype; unwritten elements (Pred.unwritten) hold the poison
    pattern of workbench.compare."""
    import torch

    from workbench import compare
    from workbench.diagnose import Pred

    g = torch.Generator().manual_seed(10_000 + seed)
    out = {}
    for name, spec in out_specs.items():
        x = values[name]
        unw = None
        if isinstance(x, Pred):
            unw, x = x.unwritten, x.values
        dtype = spec.torch_dtype()
        rel = 2.0**-20 if dtype == torch.float32 else 2.0**-8
        x = x.float()
        noise = (torch.rand(x.shape, generator=g) * 2 - 1) * rel
        y = (x * (1 + noise)).to(dtype)
        if unw is not None:
            poison = torch.empty_like(y)
            compare.poison(poison)
            y = torch.where(unw.expand_as(y), poison, y)
        out[name] = y
    return out


def lowp_kernel(cfg, inputs, variants, out_specs):
    """A correct kernel's outputs with realistic bf16 arithmetic: P rounded to bf16 before
    the PV product (as the kernel feeds its MMA), fp32 accumulation, outputs stored in their
    dtype."""
    import torch

    ref = reference(cfg, inputs, variants)
    if cfg["kind"] in ("c", "d") and variants.get("softmax", "exp") == "exp":
        # recompute O with bf16 P (unnormalised, as a kernel does), then divide by l
        q, k, v = (inputs[n].float() for n in ("q", "k", "v"))
        if cfg["kind"] == "d":
            b, m, h, d = q.shape
            idx = torch.arange(h) // (h // k.shape[2])
            q4, k4, v4 = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3)[:, idx], v.permute(0, 2, 1, 3)[:, idx]
        else:
            q4, k4, v4 = q[None, None], k[None, None], v[None, None]
        s = (q4 @ k4.transpose(-1, -2)) / math.sqrt(q4.shape[-1])
        if cfg.get("softcap"):
            s = cfg["softcap"] * torch.tanh(s / cfg["softcap"])
        M, N = s.shape[-2:]
        if cfg.get("causal"):
            i = torch.arange(M).view(M, 1)
            j = torch.arange(N).view(1, N)
            s = s.masked_fill(j > i + (N - M), float("-inf"))
        mx = s.amax(-1, keepdim=True)
        p = (s - mx).exp()
        l = p.sum(-1, keepdim=True)
        o = (p.to(torch.bfloat16).float() @ v4) / l
        ref["o"] = o.permute(0, 2, 1, 3) if cfg["kind"] == "d" else o[0, 0]
    return {n: ref[n].to(spec.torch_dtype()) for n, spec in out_specs.items()}


def load():
    """(fixture registry, mutant registry) of this repository."""
    from workbench.diagnose import mutants_for
    from workbench.kernels.fixtures import load_fixtures

    return load_fixtures(ROOT / "fixtures"), mutants_for(ROOT / "stages" / "fmha")


def case(cfg_name: str, fixture: str, seed: int = 0):
    """(cfg, inputs, expected, out_specs, params, variants) of one fixture on one config."""
    from workbench.kernels.fixtures import get_fixture

    fixtures, _ = load()
    cfg = CONFIGS[cfg_name]
    ins, outs, params = specs_for(cfg)
    fx = get_fixture(fixtures, fixture, ins)
    variants = dict(fx.variants)
    inputs = fx.make(ins, params, seed, "cpu")
    return cfg, inputs, reference(cfg, inputs, variants), outs, params, variants


def predictions(cfg_name: str, fixture: str, seed: int = 0):
    """{mutant: prediction dict} of every mutant that applies (NotApplicable ones left out)."""
    from workbench.diagnose import MutantContext, NotApplicable, views_for

    _, mutants = load()
    cfg, inputs, expected, outs, params, variants = case(cfg_name, fixture, seed)
    cx = MutantContext(inputs=inputs, expected={k: v.float() for k, v in expected.items()}, params=params, variants=variants, fixture=fixture,
                       views=views_for(ROOT / "stages" / "fmha"))  # the fmha's matrices, as diagnose() sees them
    rank = inputs["q"].dim()
    out = {}
    for name, m in sorted(mutants.items()):
        if rank not in m.dims:
            continue
        try:
            res = m.fn(cx)
        except NotApplicable:
            continue
        if res:
            out[name] = res
    return out, cx


def distance_table(cfg_name: str, fixture: str, seed: int = 0):
    """(distance of each mutant's prediction to the reference, twin pairs closer than
    DISTINCT), over the outputs of the stage (unpredicted outputs = the reference)."""
    from workbench.diagnose.core import DISTINCT, _as_pred, _pred_classes, _pred_distance, classify

    preds, cx = predictions(cfg_name, fixture, seed)
    _, _, expected, outs, _, _ = case(cfg_name, fixture, seed)
    names = list(outs)
    refc = {n: classify(expected[n].float()) for n in names}
    classified = {}
    for m, res in preds.items():
        classified[m] = {n: _pred_classes(_as_pred(res[n]), expected[n].shape, expected[n].device) for n in names if n in res}
    dist = {m: _pred_distance(c, {}, refc, names) for m, c in classified.items()}
    seen = [m for m in classified if dist[m] >= DISTINCT]
    twins = []
    for i, a in enumerate(seen):
        for b in seen[i + 1:]:
            if _pred_distance(classified[a], classified[b], refc, names) < DISTINCT:
                twins.append((a, b))
    return dist, twins


def main():
    from workbench.diagnose.core import DISTINCT

    print("| stage | fixture | cannot see (prediction within %.2g of the reference) | look alike (within %.2g of each other) |" % (DISTINCT, DISTINCT))
    print("|---|---|---|---|")
    for cfg_name, fixtures in STAGE_FIXTURES.items():
        for fx in fixtures:
            dist, twins = distance_table(cfg_name, fx)
            unseen = sorted(m for m, d in dist.items() if d < DISTINCT)
            groups = _groups(twins)
            print(f"| {cfg_name} | {fx} | {', '.join(unseen) or '-'} | {'; '.join(' = '.join(g) for g in groups) or '-'} |")


def _groups(pairs):
    """Connected groups of look-alike mutants, each sorted, from twin pairs."""
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    out = {}
    for x in list(parent):
        out.setdefault(find(x), []).append(x)
    return sorted(sorted(g) for g in out.values())


if __name__ == "__main__":
    main()


def diagnose_mutant(cfg_name: str, fixture: str, mutant: str, picture_dir=None, seed: int = 0):
    """The diagnosis of a kernel whose output is ``mutant``'s prediction at CONFIGS[cfg_name]
    on ``fixture`` (plus bf16-like noise)."""
    from workbench.diagnose import diagnose

    _, mutants = load()
    _, inputs, expected, outs, params, variants = case(cfg_name, fixture, seed)
    preds, _ = predictions(cfg_name, fixture, seed)
    out = kernel_like({**expected, **preds[mutant]}, outs, seed)
    return diagnose(out, expected, inputs, params, variants, fixture, mutants, picture_dir=picture_dir)


def assert_no_false_alarm(cfg_name: str, fixture_names, seeds=(0, 1)) -> None:
    """A correct kernel's outputs at CONFIGS[cfg_name] (seed 0: the reference itself; later
    seeds: bf16 P before P·V, fp32 accumulation, one-ulp noise) are 'ok' with no explanation
    for every named fixture."""
    from workbench.diagnose import diagnose
    from workbench.kernels.fixtures import get_fixture

    fixtures, mutants = load()
    cfg = CONFIGS[cfg_name]
    ins, outs, params = specs_for(cfg)
    for name in fixture_names:
        fx = get_fixture(fixtures, name, ins)
        variants = dict(fx.variants)
        for seed in seeds:
            inputs = fx.make(ins, params, seed, "cpu")
            expected = reference(cfg, inputs, variants)
            values = expected if seed == seeds[0] else lowp_kernel(cfg, inputs, variants, outs)
            d = diagnose(kernel_like(values, outs, seed), expected, inputs, params, variants, name, mutants)
            assert d.status == "ok" and not d.explanations, f"{name} seed {seed}: {d.headline}"
