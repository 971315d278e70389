"""MoE mutant references: torch models of classic bugs of the MoE expert FFN kernels.

Loaded by `workbench.diagnose.mutants_for(stages/moe)`. Each mutant predicts, from the same
inputs as the kernel, the output(s) a stage has, recognised by shape (names differ by stage):

  up-projection output   (rows, I) after the activation, or (rows, 2I) raw interleaved
                         (stage A's d, stage B with activation=identity); rows = M for one
                         expert (w1 (H, 2I)), or the R = T·k routed rows sorted by expert
                         (stage C: the plan of stages/moe/plan.py)
  FFN output y           (T, H) when the stage has w2 (stage D)

The model runs the pipeline as the kernels do: plan (sorted rows, cu_seqlens), grouped
up-projection (gather x rows by the plan's token index, W1[e] of the row's expert,
activation on the interleaved gate/up pair), grouped down-projection (same kernel, no
gather), combine y[t] = Σ_j w[t, j] · out[pos(t, j)]. A bug is a change to one step.

Routing: topk_ids / topk_weights inputs when the stage has them, else the router of
stages/moe/reference.route on the logits input (top-k given by the parameter ``topk``),
else a plan given as rows / cu_seqlens inputs. Activation: the ``activation`` parameter or
variant (default swiglu; identity for an output 2I wide).

Unwritten rows: an output the kernel never stores holds the runner's poison (a NaN with a
payload, workbench.compare.poison): a Pred marks them ``unwritten``. In stage D the
up/down intermediates are stage D's own scratch buffers (torch.empty, not poisoned), so
an unwritten intermediate row makes the y rows that read it unknown: they are left out of
the fit (``care`` False).

Calibration (as stages/fmha/mutants.py): the bug-free model must reproduce the stage's
reference (score <= 2e-3) before any mutant predicts; else a note says why.
"""

from __future__ import annotations

from workbench.diagnose import NotApplicable, Pred, mutant
from workbench.kernels.stage import param_value

M_TILE = 128  # rows per m-tile of the GEMM kernels
CALIBRATION_MAX = 2e-3
ALL = ("*",)


class Problem:
    """The inputs of one MoE stage as float32 tensors, the routing plan, the outputs by kind."""

    def __init__(self, cx):
        import torch

        from stages.moe.plan import make_plan
        from stages.moe.reference import route

        self.cx = cx
        ins = cx.inputs
        if "x" not in ins or "w1" not in ins:
            raise NotApplicable("not an MoE stage (no x, w1)")
        self.x = ins["x"].float()
        w1 = ins["w1"]  # weights stay in their dtype (DeepSeek-V3's are 22 GB in bf16): upcast per expert
        self.single = w1.dim() == 2
        self.w1 = w1.unsqueeze(0) if self.single else w1
        self.w2 = ins["w2"] if "w2" in ins else None
        self.T, self.H = self.x.shape
        self.E = self.w1.shape[0]
        self.N = self.w1.shape[-1]  # 2I
        self.device = self.x.device
        act = param_value(cx.params, "activation") or param_value(cx.variants, "activation") or "swiglu"
        self.activation = act
        self.weights = None
        if self.single:
            self.rows = torch.arange(self.T, device=self.device)
            self.cu = [0, self.T]
            self.inverse = None
        else:
            if "topk_ids" in ins:
                ids = ins["topk_ids"].long()
                self.weights = ins["topk_weights"].float() if "topk_weights" in ins else None
            elif "logits" in ins:
                ids, self.weights = route(ins["logits"], int(param_value(cx.params, "topk", 1)))
                ids = ids.long()
            elif "rows" in ins and "cu_seqlens" in ins:
                ids = None
            else:
                raise NotApplicable("no routing input (topk_ids, logits or rows/cu_seqlens)")
            if ids is not None:
                plan = make_plan(ids, self.E)
                self.rows = plan.rows.long()
                self.cu = [int(c) for c in plan.cu_seqlens.tolist()]
                self.inverse = plan.inverse.long()
            else:
                self.rows = ins["rows"].long()
                self.cu = [int(c) for c in ins["cu_seqlens"].tolist()]
                self.inverse = None
        self.R = self.cu[-1]
        self.expert = torch.zeros(self.R, dtype=torch.long, device=self.device)
        for e in range(self.E):
            self.expert[self.cu[e]:self.cu[e + 1]] = e
        self.kinds = {}
        for name, ref in cx.expected.items():
            shape = tuple(ref.shape)
            if self.w2 is not None and shape == (self.T, self.H):
                self.kinds[name] = "y"
            elif len(shape) == 2 and shape[0] == self.R and shape[1] in (self.N, self.N // 2):
                self.kinds[name] = "up"
        if not self.kinds:
            raise NotApplicable("no output of a known MoE shape")
        self._calibrate()

    # ---- the pipeline, step by step, with bug switches ------------------------------------
    def act(self, d, mode="right", width=None):
        """The epilogue on an interleaved (R, 2I) fp32 product; width: the output's columns."""
        from stages.moe import reference

        width = self.N // 2 if width is None else width
        if width == self.N:  # the raw accumulator is stored
            if mode == "swap":
                return d.view(d.shape[0], -1, 2).flip(-1).reshape(d.shape)
            return d
        g, u = d[..., 0::2], d[..., 1::2]
        if mode == "swap":
            g, u = u, g
        if mode == "silu-both":
            u = reference.activate(torch_stack(u, u.new_ones(u.shape)), "swiglu")
        return reference.activate(torch_stack(g, u), self.activation)

    def up(self, *, gather=True, writer=None, act_mode="right", width=None):
        """(h (R, width) fp32, unwritten (R,) bool, unknown (R,) bool): h[p] =
        act(x[rows[p]] · W1[writer[p]]); writer -1: never written, -2: written by two
        experts in a race (unknown)."""
        import torch

        writer = self.expert if writer is None else writer
        src = self.rows if gather else torch.arange(self.R, device=self.device) % max(self.T, 1)
        a = self.x[src]
        width = self.N // 2 if width is None else width
        h = torch.zeros(self.R, width, device=self.device)
        for e in range(self.E):
            sel = writer == e
            if bool(sel.any()):
                h[sel] = self.act(a[sel] @ self.w1[e].float(), act_mode, width)
        return h, writer == -1, writer == -2

    def down(self, h, writer=None):
        import torch

        writer = self.expert if writer is None else writer
        out = torch.zeros(self.R, self.H, device=self.device)
        for e in range(self.E):
            sel = writer == e
            if bool(sel.any()):
                out[sel] = h[sel] @ self.w2[e].float()
        return out, writer < 0

    def combine(self, out, mode="right"):
        import torch

        if self.inverse is None:
            raise NotApplicable("no (token, k) routing to combine")
        T, k = self.inverse.shape
        w = self.weights if self.weights is not None else torch.ones(T, k, device=self.device)
        if mode == "ones":
            w = torch.ones_like(w)
        elif mode == "squared":
            w = w * w
        y = torch.zeros(T, out.shape[-1], device=self.device)
        for j in range(k):
            term = w[:, j:j + 1] * out[self.inverse[:, j]]
            y = term if mode == "last" else y + term
        return y

    def predict(self, *, up=None, down_writer=None, combine="right"):
        """{output name: Pred} of the pipeline with these changes (None: not modelled); fp32
        matmuls with TF32 off, as the reference."""
        from stages.moe.reference import _no_tf32

        with _no_tf32():
            return self._predict(up or {}, down_writer, combine)

    def _predict(self, up, down_writer, combine):
        import torch

        res = {}
        for name, kind in self.kinds.items():
            if name not in self.cx.expected or self.cx.cache.get(("moe-uncalibrated", name)):
                continue
            width = self.cx.expected[name].shape[-1]
            if kind == "up":
                h, unw, unknown = self.up(width=width, **up)
                res[name] = _pred(h, unw, unknown)
            else:
                h, unw, unknown = self.up(**up)
                out, unw2 = self.down(h, down_writer)
                bad = unw | unknown | unw2
                y = self.combine(out, combine)
                if self.inverse is not None and bool(bad.any()):
                    bad_t = bad[self.inverse].any(-1)  # (T,): tokens that read an unknown row
                    res[name] = Pred(torch.where(bad_t.view(-1, 1), torch.zeros_like(y), y),
                                     care=(~bad_t).view(-1, 1).expand_as(y))
                else:
                    res[name] = y
        return res

    def _calibrate(self):
        from workbench.diagnose.core import classify, fit

        key = ("moe-calibrated", id(self.cx.inputs.get("x")))
        if self.cx.cache.get(key):
            return
        for name, pred in self.predict().items():
            ref = self.cx.expected[name]
            values = pred.values if isinstance(pred, Pred) else pred
            score = fit(*classify(ref), *classify(values.to(ref.device))).score
            if score > CALIBRATION_MAX:
                self.cx.cache[("moe-uncalibrated", name)] = True
                self.cx.note(f"stages/moe/mutants.py cannot reproduce the reference of {name!r} (score {score:.3g}): "
                             f"MoE mutants do not predict it")
        self.cx.cache[key] = True


def torch_stack(g, u):
    """Interleave (.., I) gate and up back into (.., 2I) columns."""
    import torch

    return torch.stack((g, u), -1).reshape(*g.shape[:-1], 2 * g.shape[-1])


def _pred(h, unwritten, unknown):
    import torch

    if not bool(unwritten.any()) and not bool(unknown.any()):
        return h
    rows_nan = unwritten.view(-1, 1).expand_as(h)
    values = torch.where(rows_nan, torch.full_like(h, float("nan")), torch.where(unknown.view(-1, 1), 0.0, h))
    return Pred(values, unwritten=rows_nan, care=(~unknown).view(-1, 1).expand_as(h))


def problem(cx) -> Problem:
    key = "moe-problem"
    if key not in cx.cache:
        try:
            cx.cache[key] = Problem(cx)
        except NotApplicable as exc:
            cx.cache[key] = exc
    p = cx.cache[key]
    if isinstance(p, NotApplicable):
        raise p
    return p


def _need(ok: bool, why: str):
    if not ok:
        raise NotApplicable(why)


def _kinds(P: Problem, *kinds):
    _need(any(k in kinds for k in P.kinds.values()), f"the stage has no {' or '.join(kinds)} output")


# --------------------------------------------------------------------------------------
# writers: which expert's tile stores each sorted row
# --------------------------------------------------------------------------------------
def _writer_from_ranges(P: Problem, ranges):
    """ranges: [(expert, first row, end row)] each expert's tile stores; overlaps -> -2."""
    import torch

    writer = torch.full((P.R,), -1, dtype=torch.long, device=P.device)
    for e, lo, hi in ranges:
        lo, hi = max(0, lo), min(P.R, hi)
        if hi <= lo:
            continue
        seg = writer[lo:hi]
        writer[lo:hi] = torch.where(seg == -1, torch.full_like(seg, e), torch.full_like(seg, -2))
    return writer


def offset_writer(P: Problem):
    """Each expert's rows start at cu[e + 1] instead of cu[e] (its count unchanged, clipped
    at R): it computes and stores the next rows with its own weights."""
    return _writer_from_ranges(P, [(e, P.cu[e + 1], P.cu[e + 1] + P.cu[e + 1] - P.cu[e]) for e in range(P.E)])


def tail_unwritten_writer(P: Problem):
    """The last, partial m-tile of each expert is never stored."""
    ranges = []
    for e in range(P.E):
        lo, hi = P.cu[e], P.cu[e + 1]
        full = (hi - lo) // M_TILE * M_TILE
        ranges.append((e, lo, lo + full))
    return _writer_from_ranges(P, ranges)


def tail_spill(P: Problem):
    """Row tiles cut every 128 sorted rows over all experts instead of per expert: global
    tile j runs with the weights of the expert e with ceil(cu[e]/128) <= j < ceil(cu[e+1]/128)
    (stage C's tail_from_next, tile_scheduler.walk_model): an expert's last tile takes in the
    next expert's first rows; every row is written once."""
    import torch

    writer = torch.full((P.R,), -1, dtype=torch.long, device=P.device)
    for e in range(P.E):
        lo = -(-P.cu[e] // M_TILE) * M_TILE
        hi = min(P.R, -(-P.cu[e + 1] // M_TILE) * M_TILE)
        if hi > lo:
            writer[lo:hi] = e
    return writer


# --------------------------------------------------------------------------------------
# mutants
# --------------------------------------------------------------------------------------
@mutant("gate-up-swapped", "gate and up taken from each other's column of the interleaved pair: "
        "act(u, g) instead of act(g, u) (raw outputs: columns 2i and 2i+1 stored swapped)",
        outputs=ALL, dims=(2,), family="activation")
def gate_up_swapped(cx):
    return problem(cx).predict(up={"act_mode": "swap"})


@mutant("silu-on-up", "silu applied to every accumulator column, the up column too: silu(g)·silu(u) "
        "instead of silu(g)·u", outputs=ALL, dims=(2,), family="activation")
def silu_on_up(cx):
    P = problem(cx)
    _need(P.activation == "swiglu", f"activation {P.activation}")
    _need(any(cx.expected[n].shape[-1] == P.N // 2 for n, k in P.kinds.items() if k == "up") or "y" in P.kinds.values(),
          "raw (identity) output")
    return P.predict(up={"act_mode": "silu-both"})


@mutant("expert-offset-off-by-one", "each expert's first row taken from cu_seqlens[e + 1] instead of "
        "cu_seqlens[e]: an expert computes (and stores) the next rows with its weights; the first "
        "expert's rows are never stored", outputs=ALL, dims=(2,), family="grouping")
def expert_offset_off_by_one(cx):
    P = problem(cx)
    _need(not P.single, "one expert")
    w = offset_writer(P)
    return P.predict(up={"writer": w}, down_writer=w)


@mutant("tail-rows-unwritten", "the last, partial m-tile (128 rows) of each expert is never stored: "
        "its rows keep the poison", outputs=ALL, dims=(2,), family="tails")
def tail_rows_unwritten(cx):
    P = problem(cx)
    w = tail_unwritten_writer(P)
    _need(bool((w == -1).any()), "no partial m-tile")
    return P.predict(up={"writer": w}, down_writer=w)


@mutant("tail-rows-from-next-expert", "row tiles cut every 128 sorted rows across experts, not per expert: "
        "an expert's last tile also computes the next expert's first rows, with its own weights",
        outputs=ALL, dims=(2,), family="tails")
def tail_rows_from_next_expert(cx):
    P = problem(cx)
    _need(not P.single, "one expert")
    w = tail_spill(P)
    _need(bool((w != P.expert).any()), "every expert starts on a 128-row boundary")
    return P.predict(up={"writer": w}, down_writer=w)


@mutant("gather-ignored", "the up-projection reads x row p mod T for sorted routed row p instead of the "
        "plan's token index rows[p]", outputs=ALL, dims=(2,), family="grouping")
def gather_ignored(cx):
    P = problem(cx)
    _need(not P.single, "one expert: no gather")
    return P.predict(up={"gather": False})


@mutant("topk-weights-not-applied", "the combine sums the k expert outputs without their top-k weights",
        outputs=ALL, dims=(2,), family="combine")
def topk_weights_not_applied(cx):
    P = problem(cx)
    _kinds(P, "y")
    return P.predict(combine="ones")


@mutant("topk-weights-applied-twice", "the top-k weights are applied twice (e.g. in the down-projection's "
        "epilogue and again in the combine): y = Σ w²·out", outputs=ALL, dims=(2,), family="combine")
def topk_weights_applied_twice(cx):
    P = problem(cx)
    _kinds(P, "y")
    return P.predict(combine="squared")


@mutant("combine-overwrites", "the combine stores each of the k weighted outputs instead of adding it: "
        "the last choice wins (y = w_k-1 · out_k-1)", outputs=ALL, dims=(2,), family="combine")
def combine_overwrites(cx):
    P = problem(cx)
    _kinds(P, "y")
    _need(P.inverse is not None and P.inverse.shape[1] > 1, "top-1")
    return P.predict(combine="last")
