"""FMHA mutant references: torch models of classic bugs of the attention kernels.

Loaded by `workbench.diagnose.mutants_for(stages/fmha)`. Each mutant predicts the outputs
the stage has, by role: S (stage A), P (stage B), O and LSE (stages C, D), from the same
inputs as the kernel, simulating the kernel tile by tile where it matters (the online
softmax loop runs exactly like a kernel: per KV tile, running max m, sum l, O
accumulator, rescale by exp(m_old - m_new)).

Conventions are not assumed but CALIBRATED against the stage's reference: whether S
includes the softmax scale, which identity-softmax definition the stage uses, the causal
alignment (bottom-right or top-left), LSE base and layout. A role whose reference this
module cannot reproduce (score > 2e-3) is not predicted, and a note says so.

Geometry: q, k, v are (seq, d) or (batch, seq, heads, d) (GQA: query head h reads KV head
h // (heads // kv_heads)); 4-D LSE is (batch, heads, m) or (batch, m, heads). KV tiles are the
kernel's for the head dim, ``geometry.kv_tile(d)`` keys (128; 112 for d = 192, 80 for d = 256);
the last one may be partial (keys past n are masked, as TMA zero-fills them).

The P-layout model ("p-layout"): on Hopper the QKᵀ accumulator of a 64xN WGMMA holds, per
thread, 8-column chunks c = 0..N/8-1 (registers 4c..4c+3: rows g, g+8, columns 8c + 2t,
8c + 2t + 1), and the A operand of the PV WGMMA (k16 per instruction) takes, per k-block
j, the registers of two chunks: columns 16j..16j+7 then 16j+8..16j+15. Converting in
place is correct when k-block j takes chunks (2j, 2j+1). The modelled bug divides the
chunk mode the other way round, (N/16, 2) instead of (2, N/16): k-block j takes chunks
(j, j + N/16). So the PV MMA sees, at P column 16j + 8h + e, the value of column
8(j + 8h) + e (N = 128): a fixed permutation of P's columns within each N-wide tile. For
S/P stages the same permutation is applied to the stored tile (epilogue with the other
register order). Rows are not mixed (both layouts agree on rows g and g + 8).
"""

from __future__ import annotations

import math

from workbench.diagnose import NotApplicable, Pred, mutant
from workbench.kernels.stage import param_value

KV_TILE = 128  # stages A-C; stage D's per head dim: ``Problem.kv_tile``
LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
CALIBRATION_MAX = 2e-3


def p_layout_perm(n: int = KV_TILE):
    """perm[pos] = accumulator column read at A-operand column pos (see module docstring)."""
    import torch

    half = n // 16  # k-blocks of 16 columns
    perm = torch.empty(n, dtype=torch.long)
    for j in range(half):
        for h in range(2):
            for e in range(8):
                perm[16 * j + 8 * h + e] = 8 * (j + half * h) + e
    return perm


def _truthy(x) -> bool:
    if isinstance(x, str):
        return x.strip().lower() in ("1", "true", "yes", "on")
    return bool(x)


class Problem:
    """Canonical (G = batch·heads, seq, d) float32 tensors and calibrated conventions."""

    def __init__(self, cx):

        from workbench.diagnose.registry import role_of

        self.cx = cx
        q = cx.inputs["q"]
        if "block_table" in cx.inputs:  # paged KV: the logical K/V through the block table
            from stages.fmha import reference

            lens = cx.inputs["cache_seqlens"].tolist()
            # this model has one n for every (batch, head): sequences of unequal KV lengths are
            # the paged mutants' alone (_paged_attend), packed queries over pages no model's
            _need(len(set(lens)) == 1, "paged sequences of unequal KV lengths (the model has one n)")
            _need(q.dim() == 4, "packed queries over a paged cache (not modelled)")
            k, v = reference.gather_pages(cx.inputs["k"], cx.inputs["v"], cx.inputs["block_table"], lens[0])
        else:
            k = cx.inputs["k"]
            v = cx.inputs.get("v")
        self.four_d = q.dim() == 4
        if self.four_d:
            self.B, self.M, self.H, self.D = q.shape
            self.N, self.Hk = k.shape[1], k.shape[2]
        else:
            self.B = self.H = self.Hk = 1
            self.M, self.D = q.shape
            self.N = k.shape[0]
        self.group = max(1, self.H // max(1, self.Hk))
        from stages.fmha.geometry import HEAD_DIMS, kv_tile, launched

        scale = param_value(cx.params, "scale", param_value(cx.params, "softmax_scale"))
        self.scale = float(scale) if scale is not None else 1.0 / math.sqrt(self.D)
        self.causal = _truthy(param_value(cx.params, "causal", False))
        self.softcap = float(param_value(cx.params, "softcap", 0.0) or 0.0)
        # stage D's mask (stages/fmha/mask.py): the window edges (None: unbounded; causal's
        # right edge is the causal mode's, not the window's) and the alignment asked for
        wl, wr = int(param_value(cx.params, "window_left", -1)), int(param_value(cx.params, "window_right", -1))
        self.window_left = wl if wl >= 0 else None
        self.window_right = wr if (wr >= 0 and not self.causal) else None
        self.windowed = self.window_left is not None or self.window_right is not None
        self.align_param = param_value(cx.params, "align")
        paged = bool(int(param_value(cx.params, "page_size", 0) or 0))
        # the kernel's KV tile width and Q tile rows (64 per consumer WG), as stage D's default
        # kernel has them for m rows (stages/fmha/geometry.py; d = 96 non-causal: 192 x 144;
        # where long_kernel serves m and n, that kernel's tile); a d outside its table:
        # 128-key tiles, 2 WGs
        variants = cx.variants or {}
        geom = None
        if self.D in HEAD_DIMS:
            geom = launched(
                self.D, self.M, n=self.N, causal=self.causal, windowed=self.windowed or (wr >= 0 and self.causal),
                capped_window=self.softcap > 0 and self.windowed, varlen=_truthy(param_value(cx.params, "varlen", False)),
                dv=v.shape[-1] if v is not None else None, paged=paged, variants=variants, softcap=self.softcap > 0,
            )
        self.kv_tile = geom.tile_n if geom else kv_tile(self.D)
        self.T = max(1, -(-self.N // self.kv_tile))
        consumers = variants.get("consumers", "auto")
        auto = geom.consumers if geom else 2
        self.tile_m = 64 * (int(consumers) if consumers in ("2", "3") else auto)
        self.softmax = (cx.variants or {}).get("softmax", "exp")
        self.rescale_variant = (cx.variants or {}).get("rescale", "on")
        self.device = q.device
        self.q = q.float()
        self.k = k.float()
        self.v = v.float() if v is not None else None
        self.roles = {}
        for name in cx.expected:
            r = role_of(name)
            if r and r not in self.roles:
                self.roles[r] = name
        self.conv = {"s_scaled": True, "identity": "scaled", "align": "br", "lse_base": "e", "rescale": self.rescale_variant != "off"}
        self.calibrated: set[str] = set()
        self._calibrate()

    # ---- canonical views -----------------------------------------------------------
    def qg(self, q=None, head_map=None, batch_map=None):
        q = self.q if q is None else q
        if not self.four_d:
            return q.unsqueeze(0)
        x = q.permute(0, 2, 1, 3)  # (B, H, M, D)
        if batch_map is not None:
            x = x[batch_map]
        if head_map is not None:
            x = x[:, head_map]
        return x.reshape(self.B * self.H, self.M, x.shape[-1])

    def kvg(self, t, kv_map=None, batch_map=None):
        if t is None:
            return None
        if not self.four_d:
            return t.unsqueeze(0)
        x = t.permute(0, 2, 1, 3)  # (B, Hk, N, D)
        if batch_map is not None:
            x = x[batch_map]
        kv_map = self.default_kv_map() if kv_map is None else kv_map
        x = x[:, kv_map]  # (B, H, N, D)
        return x.reshape(self.B * self.H, self.N, x.shape[-1])

    def default_kv_map(self):
        import torch

        return (torch.arange(self.H) // self.group).clamp(max=self.Hk - 1)

    def o_back(self, o):
        if not self.four_d:
            return o[0]
        return o.reshape(self.B, self.H, self.M, o.shape[-1]).permute(0, 2, 1, 3).contiguous()

    def lse_back(self, lse):
        if not self.four_d:
            return lse[0]
        x = lse.reshape(self.B, self.H, self.M)
        name = self.roles.get("lse")
        shape = tuple(self.cx.expected[name].shape) if name else (self.B, self.H, self.M)
        if shape == (self.B, self.M, self.H) and shape != (self.B, self.H, self.M):
            return x.permute(0, 2, 1).contiguous()
        return x

    def mat_back(self, s):  # S/P exist only for 2-D stages
        return s[0] if not self.four_d else s

    # ---- calibration ---------------------------------------------------------------
    def _score(self, role, pred):
        from workbench.diagnose.core import classify, fit

        name = self.roles[role]
        ref = self.cx.expected[name]
        if isinstance(pred, Pred):
            pred = pred.values
        if tuple(pred.shape) != tuple(ref.shape):
            return float("inf")
        return fit(*classify(ref), *classify(pred)).score

    def _calibrate(self):
        tries = {}
        if "s" in self.roles:
            for s_scaled in (True, False):
                self.conv["s_scaled"] = s_scaled
                sc = self._score("s", self.scores_out())
                tries.setdefault("s", []).append(sc)
                if sc <= CALIBRATION_MAX:
                    self.calibrated.add("s")
                    break
        if "p" in self.roles:
            modes = ("scaled", "raw") if self.softmax == "identity" else ("scaled",)
            for mode in modes:
                self.conv["identity"] = mode
                sc = self._score("p", self.probs_out())
                tries.setdefault("p", []).append(sc)
                if sc <= CALIBRATION_MAX:
                    self.calibrated.add("p")
                    break
        if "o" in self.roles and self.v is not None:
            aligns = ("br", "tl") if ((self.causal or self.windowed) and self.M != self.N) else ("br",)
            if self.align_param == "top_left":
                aligns = aligns[::-1]  # the alignment asked for first
            modes = ("scaled", "raw", "norm") if self.softmax == "identity" else ("scaled",)
            rescales = (self.conv["rescale"], not self.conv["rescale"])
            done = False
            for rescale in rescales:
                for align in aligns:
                    for mode in modes:
                        self.conv.update(align=align, identity=mode, rescale=rescale)
                        o, lse = self.attend()
                        sc = self._score("o", self.o_back(o))
                        tries.setdefault("o", []).append(sc)
                        if sc <= CALIBRATION_MAX:
                            self.calibrated.add("o")
                            done = True
                            break
                    if done:
                        break
                if done:
                    break
            if done and "lse" in self.roles and self.softmax != "identity":
                for base in ("e", "2"):
                    self.conv["lse_base"] = base
                    sc = self._score("lse", self.lse_back(self._lse_base(lse)))
                    tries.setdefault("lse", []).append(sc)
                    if sc <= CALIBRATION_MAX:
                        self.calibrated.add("lse")
                        break
        for role, name in self.roles.items():
            if role not in self.calibrated and not (role == "lse" and self.softmax == "identity"):
                best = min(tries.get(role, [float("inf")]))
                self.cx.note(
                    f"stages/fmha/mutants.py cannot reproduce the reference of {name!r} (best score {best:.3g}): "
                    f"FMHA mutants do not predict it"
                )

    def _lse_base(self, lse):
        return lse * LOG2E if self.conv["lse_base"] == "2" else lse

    # ---- S and P (direct, per output column) ------------------------------------------
    def _virtual_columns(self, kv_src):
        """Per output column: source key row (or -1 unwritten) of the tile-mapped K."""
        import torch

        tn = self.kv_tile
        pos = torch.arange(self.N)
        t, c = pos // tn, pos % tn
        src_t = torch.tensor([(-1 if s is None else s) for s in kv_src])[t]
        src = torch.where(src_t >= 0, src_t * tn + c, torch.full_like(pos, -1))
        return src

    def _logits(self, qg, kg, kv_src, rows=None):
        """S = Q·K_virtualᵀ (no scale) for all N output columns; unwritten columns 0."""
        import torch

        src = self._virtual_columns(kv_src).to(self.device)
        kpad = torch.cat([kg, torch.zeros_like(kg[:, :1])], dim=1)  # index N = a zero row
        idx = torch.where((src >= 0) & (src < self.N), src, torch.full_like(src, self.N))
        kv = kpad[:, idx]
        q = qg if rows is None else qg[:, rows]
        return q @ kv.transpose(1, 2), (src < 0)

    def _perm_cols(self, x, perm):
        import torch

        if perm is None:
            return x
        n = x.shape[-1]
        tn = self.kv_tile
        pos = torch.arange(n)
        t, c = pos // tn, pos % tn
        src = t * tn + perm[c]
        ok = src < n
        src = torch.where(ok, src, pos)
        return x[..., src.to(x.device)]

    def scores_out(self, *, kv_src=None, s_mult=1.0, perm=None, qg=None, kg=None):
        import torch

        kv_src = list(range(self.T)) if kv_src is None else kv_src
        qg = self.qg() if qg is None else qg
        kg = self.kvg(self.k) if kg is None else kg
        s, unw = self._logits(qg, kg, kv_src)
        factor = (self.scale if self.conv["s_scaled"] else 1.0) * s_mult
        s = self._perm_cols(s * factor, perm)
        s = self.mat_back(s)
        if bool(unw.any()):
            mask = unw.to(self.device).expand_as(s)
            return Pred(torch.where(mask, torch.full_like(s, float("nan")), s), unwritten=mask)
        return s

    def probs_out(self, *, kv_src=None, mult=1.0, subtract_max=True, normalize=True, perm=None, qg=None, kg=None):
        import torch

        kv_src = list(range(self.T)) if kv_src is None else kv_src
        qg = self.qg() if qg is None else qg
        kg = self.kvg(self.k) if kg is None else kg
        s, unw = self._logits(qg, kg, kv_src)
        unw = unw.to(self.device)
        if self.softmax == "identity":
            p = s * (self.scale if self.conv["identity"] == "scaled" else 1.0)
        else:
            z = (s * (self.scale * mult)).masked_fill(unw, float("-inf"))
            if subtract_max:
                mx = z.amax(-1, keepdim=True)
                mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
                e = torch.exp(z - mx)
            else:
                e = torch.exp(z)
            p = e / e.sum(-1, keepdim=True) if normalize else e
        p = self.mat_back(self._perm_cols(p, perm))
        if bool(unw.any()):
            mask = unw.expand_as(p)
            return Pred(torch.where(mask, torch.full_like(p, float("nan")), p), unwritten=mask)
        return p

    # ---- O and LSE: the online-softmax loop, tile by tile -------------------------------
    def attend(self, *, kv_src=None, v_src="same", mult=1.0, subtract_max=True, rescale_o=None, rescale_l=None,
               normalize=True, perm=None, p_read=None, mask_tail=True, causal_mode=None, qg=None, kg=None, vg=None,
               cap="tanh", window="same", window_align=None, key_floor=None):
        """(O (G, M, Dv), LSE (G, M), natural log) of the simulated kernel loop.

        cap (softcap c > 0 only; the logits z = S·scale): "tanh" = c·tanh(z / c) (right),
        "none", "before-scale" = c·tanh(S / c)·scale, "clamp" = clamp(z, -c, c), "after-max"
        = the max taken of the raw z, then P = exp(c·tanh((z - m) / c)).

        window: (left, right) key offsets of the sliding window (None: that side unbounded;
        "same": the problem's own); row i sees keys i + off - left .. i + off + right, off
        from ``window_align`` ("br" / "tl", default the calibrated alignment). key_floor:
        (M,) first key each row may see at all (a tile-rounding model). A row that sees no key
        gets O = 0 (LSE = -inf).

        perm: P columns the PV MMA reads within each tile (P_read[:, c] = P[:, perm[c]]);
        p_read: any function (G, M, tile) -> (G, M, tile) of the tile's P (a register hand-over
        model that may mix rows)."""
        import torch

        T, N, M = self.T, self.N, self.M
        kv_src = list(range(T)) if kv_src is None else kv_src
        v_src = kv_src if v_src == "same" else v_src
        rescale = self.conv["rescale"]
        rescale_o = rescale if rescale_o is None else rescale_o
        rescale_l = rescale if rescale_l is None else rescale_l
        qg = self.qg() if qg is None else qg
        kg = self.kvg(self.k) if kg is None else kg
        vg = self.kvg(self.v) if vg is None else vg
        G = qg.shape[0]
        tn = self.kv_tile
        pad = T * tn - N
        kp = torch.cat([kg, kg.new_zeros(G, pad, kg.shape[-1])], 1) if pad else kg
        vp = torch.cat([vg, vg.new_zeros(G, pad, vg.shape[-1])], 1) if pad else vg
        if causal_mode is None:
            causal_mode = ("br" if self.conv["align"] == "br" else "tl") if self.causal else "off"
        off = {"br": N - M, "tl": 0, "br-strict": N - M, "tl-strict": 0}.get(causal_mode, 0)
        strict = causal_mode.endswith("strict")
        rows = torch.arange(M, device=self.device).view(M, 1)
        wl, wr = (self.window_left, self.window_right) if window == "same" else window
        woff = N - M if (window_align or self.conv["align"]) == "br" else 0
        identity = self.softmax == "identity"
        m = torch.full((G, M), float("-inf"), device=self.device)
        l = torch.zeros((G, M), device=self.device)
        acc = torch.zeros((G, M, vg.shape[-1]), device=self.device)
        c = self.scale * mult
        if perm is not None:
            permd = perm.to(self.device)
            p_read = lambda p: p[..., permd]  # noqa: E731
        ident = p_read is None
        for t in range(T):
            s = kv_src[t]
            if s is None:
                continue
            kt = kp[:, s * tn:(s + 1) * tn]
            sv = v_src[t]
            vt = vp[:, sv * tn:(sv + 1) * tn] if sv is not None else vp.new_zeros(G, tn, vp.shape[-1])
            pos = t * tn + torch.arange(tn, device=self.device).view(1, tn)
            valid = None  # None: every key of this tile is visible to every row
            if mask_tail and (t + 1) * tn > N:
                valid = (pos < N).expand(M, tn)
            if causal_mode != "off":
                cm = (pos < rows + off) if strict else (pos <= rows + off)
                valid = cm if valid is None else valid & cm
            for edge in ((pos >= rows + woff - wl) if wl is not None else None,
                         (pos <= rows + woff + wr) if wr is not None else None,
                         (pos >= key_floor.view(M, 1)) if key_floor is not None else None):
                if edge is not None:
                    valid = edge if valid is None else valid & edge
            sraw = qg @ kt.transpose(1, 2)
            if identity:
                p = sraw * (1.0 if self.conv["identity"] == "raw" else self.scale)
                if self.softcap and cap == "tanh":
                    p = self.softcap * torch.tanh(p / self.softcap)
                if valid is not None:
                    p = p.masked_fill(~valid, 0.0)
                l = l + p.sum(-1)
                acc = acc + (p if ident else p_read(p)) @ vt
                continue
            z = sraw * c
            cap_c = self.softcap
            if cap_c and cap == "tanh":
                z = cap_c * torch.tanh(z / cap_c)
            elif cap_c and cap == "before-scale":
                z = cap_c * torch.tanh(sraw / cap_c) * c
            elif cap_c and cap == "clamp":
                z = z.clamp(-cap_c, cap_c)
            if valid is not None:
                z = z.masked_fill(~valid, float("-inf"))
            if subtract_max:
                m_new = torch.maximum(m, z.amax(-1))
                m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
                if cap_c and cap == "after-max":
                    p = torch.exp(cap_c * torch.tanh((z - m_safe.unsqueeze(-1)) / cap_c))
                else:
                    p = torch.exp(z - m_safe.unsqueeze(-1))
                alpha = torch.exp(m - m_safe)
                m = m_new
            else:
                p = torch.exp(z)
                alpha = torch.ones_like(l)
            l = (l * alpha if rescale_l else l) + p.sum(-1)
            pv = (p if ident else p_read(p)) @ vt
            acc = (acc * alpha.unsqueeze(-1) if rescale_o else acc) + pv
        if identity:
            o = acc / l.unsqueeze(-1) if self.conv["identity"] == "norm" else acc
            return o, torch.zeros_like(l)
        o = acc / torch.where(l == 0, torch.ones_like(l), l).unsqueeze(-1) if normalize else acc
        lse = (m + torch.log(l)) if subtract_max else torch.log(l)
        return o, lse

    # ---- the prediction of one mutant ---------------------------------------------------
    def predict(self, *, s_opts=None, p_opts=None, o_opts=None, lse=True):
        """{output name: prediction} for the calibrated roles; an opts of None means the
        mutant does not touch that role (it is left to the reference)."""
        out = {}
        if "s" in self.calibrated and s_opts is not None:
            out[self.roles["s"]] = self.scores_out(**s_opts)
        if "p" in self.calibrated and p_opts is not None:
            out[self.roles["p"]] = self.probs_out(**p_opts)
        if "o" in self.calibrated and o_opts is not None:
            o, l = self.attend(**o_opts)
            out[self.roles["o"]] = self.o_back(o)
            if lse and "lse" in self.calibrated:
                out[self.roles["lse"]] = self.lse_back(self._lse_base(l))
        if not out:
            raise NotApplicable("no calibrated output this bug affects")
        return out


def problem(cx) -> Problem:
    if "fmha" not in cx.cache:
        cx.cache["fmha"] = Problem(cx)
    return cx.cache["fmha"]


def _need(cond: bool, why: str):
    if not cond:
        raise NotApplicable(why)


def _exp_only(P):
    _need(P.softmax != "identity", "softmax=identity has no softmax arithmetic")


def _all(opts_sp=None, o=None, s=True, p=True, lse=True):
    """Helper: the same tile options for S, P and O."""
    return {"s_opts": opts_sp if s else None, "p_opts": opts_sp if p else None, "o_opts": o, "lse": lse}


# --------------------------------------------------------------------------------------
# KV tile addressing and the load pipeline
# --------------------------------------------------------------------------------------
@mutant("kv-tile0", "every KV tile reads K/V tile 0: the KV tile coordinate of the TMA load is stuck at 0",
        outputs=("s", "p", "o", "lse"), family="pipeline")
def kv_tile0(cx):
    P = problem(cx)
    _need(P.T >= 2, "one KV tile")
    src = [0] * P.T
    return P.predict(**_all({"kv_src": src}, {"kv_src": src}))


def _stall(k):
    def fn(cx):
        P = problem(cx)
        _need(P.T > k, f"only {P.T} KV tile(s)")
        src = [min(t, k - 1) for t in range(P.T)]
        return P.predict(**_all({"kv_src": src}, {"kv_src": src}))

    return fn


def _skip(k):
    def fn(cx):
        P = problem(cx)
        _need(P.T > k, f"only {P.T} KV tile(s)")
        src = [t if t < k else None for t in range(P.T)]
        return P.predict(**_all({"kv_src": src}, {"kv_src": src}))

    return fn


for _k in (2, 3, 4):
    mutant(f"kv-stall-{_k}", f"pipeline stalls after {_k} KV tiles: tiles >= {_k} reread tile {_k - 1} "
           f"(the stage index / mbarrier phase stops advancing, the consumer reuses the last buffer)",
           outputs=("s", "p", "o", "lse"), family="pipeline")(_stall(_k))
for _k in (1, 2, 3, 4):
    mutant(f"kv-skip-{_k}", f"only the first {_k} KV tile(s) processed, later tiles skipped (KV loop bound or "
           f"tile count wrong; S/P columns of skipped tiles never stored)",
           outputs=("s", "p", "o", "lse"), family="pipeline")(_skip(_k))


@mutant("v-tile0", "V tile coordinate stuck at 0 while K advances: P·V uses V tile 0 for every KV tile",
        outputs=("o",), family="pipeline")
def v_tile0(cx):
    P = problem(cx)
    _need(P.T >= 2, "one KV tile")
    return P.predict(o_opts={"v_src": [0] * P.T}, lse=False)


@mutant("v-tile-lag", "V one tile behind K: P_t·V_(t-1) (V stage index off by one; tile 0 meets an "
        "empty (zero) buffer)", outputs=("o",), family="pipeline")
def v_tile_lag(cx):
    P = problem(cx)
    _need(P.T >= 2, "one KV tile")
    return P.predict(o_opts={"v_src": [None] + list(range(P.T - 1))}, lse=False)


@mutant("kv-tail-unmasked", "keys past n in the last, partial KV tile not masked: TMA zero-fills them, so "
        "logit 0 enters the softmax (with V = 0)", outputs=("o", "lse"), family="masking")
def kv_tail_unmasked(cx):
    P = problem(cx)
    _need(P.N % P.kv_tile != 0, f"n is a multiple of the KV tile ({P.kv_tile})")
    return P.predict(o_opts={"mask_tail": False})


# --------------------------------------------------------------------------------------
# softmax arithmetic
# --------------------------------------------------------------------------------------
@mutant("no-log2e", "exp2 applied to S·scale without the log2(e) factor: softmax temperature off by ln 2",
        outputs=("p", "o", "lse"), family="softmax")
def no_log2e(cx):
    P = problem(cx)
    _exp_only(P)
    return P.predict(p_opts={"mult": LN2}, o_opts={"mult": LN2})


@mutant("exp-not-exp2", "log2(e) folded into the scale but exp (not exp2) applied: exponent too large by "
        "log2(e); for S: S stored in the exp2 domain (S·scale·log2 e)", outputs=("s", "p", "o", "lse"), family="softmax")
def exp_not_exp2(cx):
    P = problem(cx)
    s = {"s_mult": LOG2E}
    if P.softmax == "identity":
        return P.predict(s_opts=s)
    return P.predict(s_opts=s, p_opts={"mult": LOG2E}, o_opts={"mult": LOG2E})


@mutant("scale-twice", "softmax scale applied twice (S·scale² in the exponent, or stored in S)",
        outputs=("s", "p", "o", "lse"), family="softmax")
def scale_twice(cx):
    P = problem(cx)
    s = {"s_mult": P.scale}
    if P.softmax == "identity":
        return P.predict(s_opts=s)
    return P.predict(s_opts=s, p_opts={"mult": P.scale}, o_opts={"mult": P.scale})


@mutant("no-scale", "softmax scale missing: exp of the raw S = Q·Kᵀ (or S stored without the scale)",
        outputs=("s", "p", "o", "lse"), family="softmax")
def no_scale(cx):
    P = problem(cx)
    s = {"s_mult": 1.0 / P.scale}
    if P.softmax == "identity":
        return P.predict(s_opts=s)
    return P.predict(s_opts=s, p_opts={"mult": 1.0 / P.scale}, o_opts={"mult": 1.0 / P.scale})


@mutant("scale-of-dv", "softmax scale 1/sqrt(dv) instead of 1/sqrt(d): the scale taken from V's head dim, "
        "not Q's and K's (dv != d)", outputs=("s", "p", "o", "lse"), family="softmax")
def scale_of_dv(cx):
    P = problem(cx)
    dv = P.v.shape[-1] if P.v is not None else P.D
    _need(dv != P.D, "dv = d")
    ratio = math.sqrt(P.D / dv)  # 1/sqrt(dv) = ratio / sqrt(d)
    s = {"s_mult": ratio}
    if P.softmax == "identity":
        return P.predict(s_opts=s)
    return P.predict(s_opts=s, p_opts={"mult": ratio}, o_opts={"mult": ratio})


@mutant("no-max", "row max not subtracted before exp: exp overflows to inf (rows with logits above ~88: "
        "inf/inf = NaN) or underflows to 0 (0/0 = NaN); exact elsewhere", outputs=("p", "o", "lse"), family="softmax")
def no_max(cx):
    P = problem(cx)
    _exp_only(P)
    return P.predict(p_opts={"subtract_max": False}, o_opts={"subtract_max": False})


@mutant("no-final-div", "final 1/l missing: O (or P) not divided by the row sum l", outputs=("p", "o"), family="softmax")
def no_final_div(cx):
    P = problem(cx)
    _exp_only(P)
    return P.predict(p_opts={"normalize": False}, o_opts={"normalize": False}, lse=False)


@mutant("no-rescale", "online softmax never rescales O and l when the row max grows (exp(m_old - m_new) "
        "factor missing)", outputs=("o", "lse"), family="softmax")
def no_rescale(cx):
    P = problem(cx)
    _exp_only(P)
    _need(P.T >= 2, "one KV tile: nothing to rescale")
    return P.predict(o_opts={"rescale_o": False, "rescale_l": False})


@mutant("no-o-rescale", "O accumulator not rescaled when the row max grows, while l is", outputs=("o",),
        family="softmax")
def no_o_rescale(cx):
    P = problem(cx)
    _exp_only(P)
    _need(P.T >= 2, "one KV tile: nothing to rescale")
    return P.predict(o_opts={"rescale_o": False, "rescale_l": True}, lse=False)


# --------------------------------------------------------------------------------------
# softcap (stage D's ``softcap`` c > 0: logits z = S·scale become c·tanh(z / c))
# --------------------------------------------------------------------------------------
def _softcap_mutant(cap: str):
    def fn(cx):
        P = problem(cx)
        _exp_only(P)
        _need(P.softcap > 0, "softcap = 0")
        return P.predict(o_opts={"cap": cap})

    return fn


for _cap, _why in (
    ("none", "softcap not applied although softcap > 0: the softmax of the raw logits S·scale"),
    ("before-scale", "softcap applied to the raw Q·Kᵀ before the scale: c·tanh(S / c)·scale instead of "
     "c·tanh(S·scale / c)"),
    ("after-max", "softcap applied after the row max was subtracted (to the exponent): exp(c·tanh((z - m) / c)) "
     "with m the max of the uncapped logits z"),
    ("clamp", "tanh of the softcap replaced by a clamp: clamp(z, -c, c) instead of c·tanh(z / c)"),
):
    mutant("softcap-missing" if _cap == "none" else f"softcap-{_cap}", _why, outputs=("o", "lse"),
           family="softmax")(_softcap_mutant(_cap))


# --------------------------------------------------------------------------------------
# register layouts
# --------------------------------------------------------------------------------------
@mutant("p-layout", "P converted from the QK accumulator layout but read by the PV MMA (or stored) in "
        "another: 8-column accumulator chunks paired (j, j+8) instead of (2j, 2j+1) per 16-wide k-block",
        outputs=("s", "p", "o"), family="layout")
def p_layout(cx):
    P = problem(cx)
    perm = p_layout_perm(P.kv_tile)
    return P.predict(s_opts={"perm": perm}, p_opts={"perm": perm}, o_opts={"perm": perm}, lse=False)


def pv_rowmajor_read(p):
    """What the PV MMA reads when P is handed over in the softmax's (row, col) register
    order (operand register i <- element i of the accumulator's row view): inside each
    16 x 16 block, row bit 3 and column bit 0 trade places:
    P_read[r, c] = P[(r & ~8) | ((c & 1) << 3), (c & ~1) | ((r >> 3) & 1)].
    Rows past the end (m not a multiple of 16) read zeros."""
    import torch

    G, M, C = p.shape
    Mp = -(-M // 16) * 16
    if Mp != M:
        p = torch.cat([p, p.new_zeros(G, Mp - M, C)], 1)
    r = torch.arange(M, device=p.device).view(M, 1)
    c = torch.arange(C, device=p.device).view(1, C)
    return p[:, (r & ~8) | ((c & 1) << 3), (c & ~1) | ((r >> 3) & 1)]


@mutant("pv-rowmajor", "P handed to the PV MMA in the softmax's (row, col) register order instead of the "
        "A-operand order: inside each 16x16 block row bit 3 and column bit 0 trade places (rows mix)",
        outputs=("o",), family="layout")
def pv_rowmajor(cx):
    P = problem(cx)
    return P.predict(o_opts={"p_read": pv_rowmajor_read}, lse=False)


# --------------------------------------------------------------------------------------
# causal masking
# --------------------------------------------------------------------------------------
@mutant("causal-missing", "causal mask not applied although causal=true", outputs=("o", "lse"), family="masking")
def causal_missing(cx):
    P = problem(cx)
    _need(P.causal, "not causal")
    return P.predict(o_opts={"causal_mode": "off"})


@mutant("causal-misaligned", "causal mask aligned top-left (key j <= query i) instead of bottom-right "
        "(j <= i + n - m), or the other way round, when m != n", outputs=("o", "lse"), family="masking")
def causal_misaligned(cx):
    P = problem(cx)
    _need(P.causal and P.M != P.N, "needs causal and m != n")
    return P.predict(o_opts={"causal_mode": "tl" if P.conv["align"] == "br" else "br"})


@mutant("causal-diag-excluded", "causal mask excludes the diagonal (key j < i instead of j <= i)",
        outputs=("o", "lse"), family="masking")
def causal_diag_excluded(cx):
    P = problem(cx)
    _need(P.causal, "not causal")
    return P.predict(o_opts={"causal_mode": P.conv["align"] + "-strict"})


@mutant("causal-spurious", "causal mask applied although causal=false", outputs=("o", "lse"), family="masking")
def causal_spurious(cx):
    P = problem(cx)
    _need(not P.causal, "causal")
    _need(P.window_right is None, "a right window: see the window mutants")
    return P.predict(o_opts={"causal_mode": "br"})


# --------------------------------------------------------------------------------------
# sliding window (stage D's window_left / window_right, stages/fmha/mask.py)
# --------------------------------------------------------------------------------------
def _window_shift(left: int, right: int):
    def fn(cx):
        P = problem(cx)
        _need(P.window_left is not None or not left, "no left window")
        _need(P.window_right is not None or not right, "no right window (or causal: see causal-diag-excluded)")
        wl = None if P.window_left is None else P.window_left + left
        wr = None if P.window_right is None else P.window_right + right
        return P.predict(o_opts={"window": (wl, wr)})

    return fn


for _side, _l, _r in (("left", 1, 0), ("right", 0, 1)):
    mutant(f"window-{_side}-plus-one", f"{_side} window edge off by one, one key too many: key "
           f"{'i + offset - window_left - 1' if _side == 'left' else 'i + offset + window_right + 1'} visible "
           "(a < / <= mix-up in the mask, or the window size plus one)",
           outputs=("o", "lse"), family="masking")(_window_shift(_l, _r))
    mutant(f"window-{_side}-minus-one", f"{_side} window edge off by one, one key too few: key "
           f"{'i + offset - window_left' if _side == 'left' else 'i + offset + window_right'} masked",
           outputs=("o", "lse"), family="masking")(_window_shift(-_l, -_r))


@mutant("window-misaligned", "sliding window (and causal diagonal) aligned top-left (offset 0) instead of "
        "bottom-right (offset n - m), or the other way round, when m != n", outputs=("o", "lse"), family="masking")
def window_misaligned(cx):
    P = problem(cx)
    _need(P.windowed and P.M != P.N, "needs a window and m != n")
    other = "tl" if P.conv["align"] == "br" else "br"
    return P.predict(o_opts={"window_align": other, "causal_mode": other if P.causal else "off"})


@mutant("window-ignored", "sliding window not applied (window_left / window_right ignored; causal and the KV "
        "tail still masked)", outputs=("o", "lse"), family="masking")
def window_ignored(cx):
    P = problem(cx)
    _need(P.windowed, "no window")
    return P.predict(o_opts={"window": (None, None)})


@mutant("window-left-tile-skipped", "the KV tile the left window edge crosses is skipped wholesale: the first "
        "visited tile rounded up (n_min = ceil instead of floor of (first row + offset - window_left) / tile_n), so "
        "each Q tile's rows lose the keys of that partial tile", outputs=("o", "lse"), family="masking")
def window_left_tile_skipped(cx):
    import torch

    P = problem(cx)
    _need(P.window_left is not None, "no left window")
    off = P.N - P.M if P.conv["align"] == "br" else 0
    i = torch.arange(P.M, device=P.device)
    r_first = (i // P.tile_m) * P.tile_m
    first = r_first + off - P.window_left  # first key of the Q tile's first row
    # the kernel's last visited tile (mask.kv_tile_range), which the rounded-up n_min never passes
    n_max = torch.full_like(i, P.T)
    right = 0 if P.causal else P.window_right
    if right is not None:
        hi = r_first + P.tile_m + off + right
        n_max = torch.minimum(n_max, (hi.clamp(min=1) + P.kv_tile - 1) // P.kv_tile)
    n_min = torch.minimum((first.clamp(min=0) + P.kv_tile - 1) // P.kv_tile, n_max - 1)
    return P.predict(o_opts={"key_floor": n_min * P.kv_tile})


# --------------------------------------------------------------------------------------
# heads, batches and GQA (4-D stages)
# --------------------------------------------------------------------------------------
@mutant("heads-head0", "every head reads Q/K/V of head 0 (head index missing from the TMA coordinates)",
        outputs=("o", "lse"), dims=(4,), family="heads")
def heads_head0(cx):
    import torch

    P = problem(cx)
    _need(P.H >= 2, "one head")
    hm = torch.zeros(P.H, dtype=torch.long)
    return P.predict(o_opts={"qg": P.qg(head_map=hm), "kg": P.kvg(P.k, kv_map=hm), "vg": P.kvg(P.v, kv_map=hm)})


@mutant("gqa-mod", "GQA maps query head h to KV head h % kv_heads instead of h // (heads / kv_heads)",
        outputs=("o", "lse"), dims=(4,), family="heads")
def gqa_mod(cx):
    import torch

    P = problem(cx)
    _need(1 < P.Hk < P.H, "needs 1 < kv_heads < heads")
    km = torch.arange(P.H) % P.Hk
    return P.predict(o_opts={"kg": P.kvg(P.k, kv_map=km), "vg": P.kvg(P.v, kv_map=km)})


@mutant("batch0", "every batch reads batch 0 (batch index missing from the TMA coordinates)",
        outputs=("o", "lse"), dims=(4,), family="heads")
def batch0(cx):
    import torch

    P = problem(cx)
    _need(P.B >= 2, "one batch")
    bm = torch.zeros(P.B, dtype=torch.long)
    return P.predict(o_opts={"qg": P.qg(batch_map=bm), "kg": P.kvg(P.k, batch_map=bm), "vg": P.kvg(P.v, batch_map=bm)})


@mutant("bhsd-input", "Q, K, V read as (batch, heads, seq, d) although they are (batch, seq, heads, d) "
        "(seq and head strides swapped in the TMA descriptors)", outputs=("o", "lse"), dims=(4,), family="heads")
def bhsd_input(cx):
    P = problem(cx)
    _need(P.H >= 2 or P.Hk >= 2, "one head")

    def as_bhsd(t, heads, seq):
        b, _, _, d = t.shape
        return t.contiguous().view(b, heads, seq, d).permute(0, 2, 1, 3)  # what the kernel thinks is bshd

    q = as_bhsd(P.q, P.H, P.M)
    k = as_bhsd(P.k, P.Hk, P.N)
    v = as_bhsd(P.v, P.Hk, P.N)
    return P.predict(o_opts={"qg": P.qg(q=q), "kg": P.kvg(k), "vg": P.kvg(v)})


# --------------------------------------------------------------------------------------
# hypotheses carried over from the retired benchmarks/gpu_check_ab.py (stages A and B)
# --------------------------------------------------------------------------------------
def _d_half(last: bool):
    def fn(cx):
        import torch

        P = problem(cx)
        _need(P.D > 64, "d <= 64: Q and K are one 64-element TMA box wide")
        keep = torch.zeros(P.D, dtype=torch.bool, device=P.device)
        h = P.D // 2
        keep[h:] = last
        keep[:h] = not last
        qg = P.qg() * keep
        kg = P.kvg(P.k) * keep
        opts = {"qg": qg, "kg": kg}
        return P.predict(s_opts=opts, p_opts=opts, o_opts=opts)

    return fn


for _last, _which in ((False, "first"), (True, "last")):
    mutant(f"qk-d-{_which}-half", f"QKᵀ sums over the {_which} half of d only: the other 64-element TMA box of "
           f"Q/K is never loaded or never fed to the MMA (the K-block loop over d is cut short)",
           outputs=("s", "p", "o", "lse"), family="layout")(_d_half(_last))


# --------------------------------------------------------------------------------------
# head dims above 128 (stage D, d = 192 and 256): code that still assumes d <= 128
# --------------------------------------------------------------------------------------
D_CAP = 128


def _first_cols(P, n: int, size: int):
    """A mask over the last dim (``size`` columns) keeping the first ``n``."""
    import torch

    keep = torch.zeros(size, dtype=torch.bool, device=P.device)
    keep[:n] = True
    return keep


@mutant("qk-d-first-128", "QKᵀ sums over the first 128 columns of d only (d > 128): the K-block loop of the "
        "QK MMA or the Q/K TMA boxes stop at 128", outputs=("s", "p", "o", "lse"), family="layout")
def qk_d_first_128(cx):
    P = problem(cx)
    _need(P.D > D_CAP, "d <= 128")
    _need(P.D != 2 * D_CAP, "d = 256: that is qk-d-first-half")
    keep = _first_cols(P, D_CAP, P.D)
    opts = {"qg": P.qg() * keep, "kg": P.kvg(P.k) * keep}
    return P.predict(s_opts=opts, p_opts=opts, o_opts=opts)


@mutant("o-d-first-128", "O's columns past 128 are 0 (d > 128): the PV MMA or the O store covers 128 "
        "columns of d", outputs=("o",), family="layout")
def o_d_first_128(cx):
    P = problem(cx)
    _need(P.D > D_CAP and P.v is not None and P.v.shape[-1] > D_CAP, "d <= 128")
    keep = _first_cols(P, D_CAP, P.v.shape[-1])
    return P.predict(o_opts={"vg": P.kvg(P.v) * keep}, lse=False)


def _p_only(P, p):
    _need("p" in P.calibrated, "no calibrated P output")
    return {P.roles["p"]: P.mat_back(p)}


def _scaled_logits(P):
    s, _ = P._logits(P.qg(), P.kvg(P.k), list(range(P.T)))
    return s * P.scale


@mutant("softmax-per-tile", "softmax normalised per KV tile: the row max and row sum are reduced "
        "within each tile and never combined across tiles (every tile of a P row sums to 1)",
        outputs=("p",), family="softmax")
def softmax_per_tile(cx):
    import torch

    P = problem(cx)
    _exp_only(P)
    _need(P.T >= 2, "one KV tile")
    z = _scaled_logits(P)
    G, M, N = z.shape
    tn = P.kv_tile
    pad = P.T * tn - N
    if pad:
        z = torch.cat([z, z.new_full((G, M, pad), float("-inf"))], -1)
    p = torch.softmax(z.view(G, M, P.T, tn), -1).view(G, M, P.T * tn)[..., :N]
    return _p_only(P, p)


@mutant("p-first-tile-only", "softmax of the first KV tile only, every later column of P stored as 0 (the KV "
        "loop ran once; the rest of the output tile kept its cleared registers)", outputs=("p",), family="pipeline")
def p_first_tile_only(cx):
    import torch

    P = problem(cx)
    _exp_only(P)
    _need(P.T >= 2, "one KV tile")
    z = _scaled_logits(P)
    p = torch.zeros_like(z)
    p[..., :P.kv_tile] = torch.softmax(z[..., :P.kv_tile], -1)
    return _p_only(P, p)


@mutant("quad-sum-missing", "row sum of exp not reduced across the 4 threads of a quad: each thread divides "
        "its columns (8c + 2t, 8c + 2t + 1) by its own partial sum (P about 4x too large)",
        outputs=("p",), family="softmax")
def quad_sum_missing(cx):
    import torch

    P = problem(cx)
    _exp_only(P)
    z = _scaled_logits(P)
    e = torch.exp(z - z.amax(-1, keepdim=True))
    lane = (torch.arange(z.shape[-1], device=z.device) % 8) // 2
    sums = torch.stack([(e * (lane == t)).sum(-1) for t in range(4)], -1)  # (G, M, 4)
    return _p_only(P, e / sums[..., lane])


@mutant("softmax-missing", "softmax not applied although softmax=exp: P = S·scale is stored (the identity "
        "path taken)", outputs=("p",), family="softmax")
def softmax_missing(cx):
    P = problem(cx)
    _exp_only(P)
    return _p_only(P, _scaled_logits(P))


@mutant("bhsd-store", "4-D output written as (batch, heads, seq, d) into the (batch, seq, heads, d) "
        "buffer (head and seq strides swapped in the store)", outputs=("*",), dims=(4,), family="layout")
def bhsd_store(cx):
    out = {}
    for name, ref in cx.expected.items():
        if ref.dim() != 4 or ref.shape[2] < 2:
            continue
        b, s, h, d = ref.shape
        out[name] = ref.float().permute(0, 2, 1, 3).contiguous().reshape(b, s, h, d)
    if not out:
        raise NotApplicable("needs a 4-D output with more than one head")
    return out


# --------------------------------------------------------------------------------------
# varlen (stage D, varlen=true): packed (total, heads, d) q/k/v/o, lse (heads, total_q),
# cu_seqlens_q/k. Each mutant models the kernel per sequence (the reference's own
# attention per sequence, float32) with one bug in how the sequences are delimited.
# --------------------------------------------------------------------------------------
class Packed:
    """A varlen problem: the packed tensors (float32), the sequences' spans, the output names."""

    def __init__(self, cx):
        import torch

        from workbench.diagnose.registry import role_of

        inputs = cx.inputs
        _need("cu_seqlens_q" in inputs and "cu_seqlens_k" in inputs and inputs["q"].dim() == 3, "not a varlen stage")
        self.cx = cx
        self.q, self.k, self.v = (inputs[n].float() for n in ("q", "k", "v"))
        self.cq = [int(x) for x in inputs["cu_seqlens_q"].cpu()]
        self.ck = [int(x) for x in inputs["cu_seqlens_k"].cpu()]
        self.B = len(self.cq) - 1
        self.causal = _truthy(param_value(cx.params, "causal", False))
        self.softmax = (cx.variants or {}).get("softmax", "exp")
        self.roles = {role_of(n): n for n in cx.expected}
        _need("o" in self.roles, "no O output")
        self.device = self.q.device
        self.torch = torch

    def lq(self, b):
        return self.cq[b + 1] - self.cq[b]

    def lk(self, b):
        return self.ck[b + 1] - self.ck[b]

    @staticmethod
    def rows(x, start, count):
        """``count`` rows of packed ``x`` from ``start``, zero past its end (TMA zero-fill)."""
        import torch

        part = x[max(0, start):max(0, min(x.shape[0], start + count))]
        if part.shape[0] < count:
            part = torch.cat([part, x.new_zeros(count - part.shape[0], *x.shape[1:])])
        return part

    def attend(self, q, k, v, valid_k=None):
        """(O (m, H, D), LSE (H, m)) of one sequence; ``valid_k``: keys past it are masked
        (default all); no key at all: O = 0, LSE = -inf."""
        from stages.fmha import reference

        torch = self.torch
        m, n = q.shape[0], k.shape[0]
        lse_empty = 0.0 if self.softmax == "identity" else float("-inf")
        if m == 0 or n == 0:
            return q.new_zeros(m, q.shape[1], v.shape[-1]), q.new_full((q.shape[1], m), lse_empty)
        o, lse = reference.attention_bshd(q[None], k[None], v[None], torch.float32, softmax=self.softmax, causal=self.causal)
        return o[0], lse[0]

    def outputs(self, o, lse, unwritten=None):
        out = {}
        if unwritten is not None and bool(unwritten.any()):
            uo = unwritten.view(-1, 1, 1).expand_as(o)
            out[self.roles["o"]] = Pred(self.torch.where(uo, self.torch.full_like(o, float("nan")), o), unwritten=uo)
        else:
            out[self.roles["o"]] = o
        if "lse" in self.roles:
            if unwritten is not None and bool(unwritten.any()):
                ul = unwritten.view(1, -1).expand_as(lse)
                out[self.roles["lse"]] = Pred(self.torch.where(ul, self.torch.full_like(lse, float("nan")), lse), unwritten=ul)
            else:
                out[self.roles["lse"]] = lse
        return out

    def empty(self):
        torch = self.torch
        H = self.q.shape[1]
        lse_fill = 0.0 if self.softmax == "identity" else float("-inf")
        o = torch.zeros(self.q.shape[0], H, self.v.shape[-1], device=self.device)
        lse = torch.full((H, self.q.shape[0]), lse_fill, device=self.device)
        return o, lse


def packed(cx) -> Packed:
    if "fmha-packed" not in cx.cache:
        cx.cache["fmha-packed"] = Packed(cx)
    return cx.cache["fmha-packed"]


@mutant("varlen-next-offset", "cu_seqlens read one entry late: sequence b loads its Q, K and V rows from "
        "sequence b + 1's start (cu_seqlens[b + 1]; the last one reads past the end: zeros) with its own lengths",
        outputs=("o", "lse"), dims=(3,), family="varlen")
def varlen_next_offset(cx):
    P = packed(cx)
    _need(P.B >= 2 or P.lq(0) > 0, "one empty sequence")
    o, lse = P.empty()
    for b in range(P.B):
        m, n = P.lq(b), P.lk(b)
        if m == 0:
            continue
        ob, lb = P.attend(P.rows(P.q, P.cq[b + 1], m), P.rows(P.k, P.ck[b + 1], n), P.rows(P.v, P.ck[b + 1], n))
        o[P.cq[b]:P.cq[b + 1]], lse[:, P.cq[b]:P.cq[b + 1]] = ob, lb
    return P.outputs(o, lse)


@mutant("varlen-tail-unmasked", "keys past a sequence's end not masked: its last 128-key tile attends the next "
        "sequence's first keys (the KV tail masked at the tile end instead of the sequence's length)",
        outputs=("o", "lse"), dims=(3,), family="varlen")
def varlen_tail_unmasked(cx):
    P = packed(cx)
    o, lse = P.empty()
    any_tail = False
    for b in range(P.B):
        m, n = P.lq(b), P.lk(b)
        if m == 0 or n == 0:
            continue
        n_pad = -(-n // KV_TILE) * KV_TILE
        any_tail |= n_pad > n and (not P.causal or m > n)  # causal: only rows i >= n see keys past n
        ob, lb = P.attend(P.q[P.cq[b]:P.cq[b + 1]], P.rows(P.k, P.ck[b], n_pad), P.rows(P.v, P.ck[b], n_pad))
        o[P.cq[b]:P.cq[b + 1]], lse[:, P.cq[b]:P.cq[b + 1]] = ob, lb
    _need(any_tail, "no row sees a key past its sequence's end (k lengths multiples of 128, or causal with m <= n)")
    return P.outputs(o, lse)


#: rows of one O store box (a consumer warpgroup's rows)
O_BOX_ROWS = 64


@mutant("varlen-q-tail-stored", "O stored in whole 64-row boxes (a TMA store): a sequence's rows past its end "
        "(its next query rows' garbage) overwrite the first rows of the next sequence's O",
        outputs=("o",), dims=(3,), family="varlen")
def varlen_q_tail_stored(cx):
    P = packed(cx)
    o, lse = P.empty()
    tails = []
    for b in range(P.B):
        m, n = P.lq(b), P.lk(b)
        if m == 0:
            continue
        m_pad = -(-m // O_BOX_ROWS) * O_BOX_ROWS
        ob, lb = P.attend(P.rows(P.q, P.cq[b], m_pad), P.k[P.ck[b]:P.ck[b + 1]], P.v[P.ck[b]:P.ck[b + 1]])
        o[P.cq[b]:P.cq[b + 1]], lse[:, P.cq[b]:P.cq[b + 1]] = ob[:m], lb[:, :m]
        if n > 0 and m_pad > m:
            tails.append((P.cq[b + 1], ob[m:]))
    end = P.q.shape[0]
    for start, rows in tails:  # modelled as landing after the next sequence's own store
        rows = rows[:max(0, end - start)]
        o[start:start + rows.shape[0]] = rows
    _need(any(r.shape[0] for _, r in tails), "every q length is a multiple of 64 (or the tails hit no row)")
    return {P.roles["o"]: o}


@mutant("varlen-first-length", "every sequence given the first sequence's lengths (seqlen from cu_seqlens[1] - "
        "cu_seqlens[0] for all b): longer sequences are cut short (rows never written, keys dropped), shorter "
        "ones run into the next", outputs=("o", "lse"), dims=(3,), family="varlen")
def varlen_first_length(cx):
    torch_ = __import__("torch")
    P = packed(cx)
    _need(P.B >= 2 and any((P.lq(b), P.lk(b)) != (P.lq(0), P.lk(0)) for b in range(P.B)), "all lengths equal")
    m0, n0 = P.lq(0), P.lk(0)
    total = P.q.shape[0]
    H = P.q.shape[1]
    o = torch_.zeros(total, H, P.v.shape[-1], device=P.device)
    lse = torch_.zeros(H, total, device=P.device)
    written = torch_.zeros(total, dtype=torch_.bool, device=P.device)
    for b in range(P.B):  # in sequence order, a later store over an earlier one
        if m0 == 0 or P.lq(b) == 0:
            continue
        start = P.cq[b]
        rows = max(0, min(m0, total - start))
        ob, lb = P.attend(P.rows(P.q, start, m0), P.rows(P.k, P.ck[b], n0), P.rows(P.v, P.ck[b], n0))
        o[start:start + rows], lse[:, start:start + rows] = ob[:rows], lb[:, :rows]
        written[start:start + rows] = True
    return P.outputs(o, lse, unwritten=~written)


# --------------------------------------------------------------------------------------
# paged KV (stage D, page_size > 0): k, v are caches (num_pages, page_size, kv_heads, d)
# read through block_table (batch, pages per sequence). Each mutant gathers the logical K/V
# with one addressing bug, then attends like the reference (float32).
# --------------------------------------------------------------------------------------
def _paged_attend(cx, pages_of, lens=None):
    """{o, lse} of attention over K/V gathered by ``pages_of(block_table, r)`` -> (page
    (batch, n), row in page (batch, n)) for logical key rows r (n,), sequence b seeing its
    first ``lens[b]`` keys (default: cache_seqlens); packed queries (varlen) each sequence's
    own rows of Q."""
    import torch

    from stages.fmha import reference
    from workbench.diagnose.registry import role_of

    inputs = cx.inputs
    _need("block_table" in inputs, "not a paged stage")
    kc, vc, bt = inputs["k"].float(), inputs["v"].float(), inputs["block_table"].long()
    lens = inputs["cache_seqlens"].tolist() if lens is None else lens
    n = max(lens, default=0)
    r = torch.arange(n, device=bt.device)
    page, row = pages_of(bt, r, kc.shape[1])
    page = page.clamp(0, kc.shape[0] - 1)
    k, v = kc[page, row], vc[page, row]
    p = cx.params
    kw = dict(
        causal=_truthy(param_value(p, "causal", False)), softmax=(cx.variants or {}).get("softmax", "exp"),
        softcap=float(param_value(p, "softcap", 0.0) or 0.0), align=str(param_value(p, "align", "top_left")),
        window_left=int(param_value(p, "window_left", -1)), window_right=int(param_value(p, "window_right", -1)),
    )
    q = inputs["q"].float()
    if q.dim() == 3:  # packed queries over the pages: each sequence's keys packed after the last's
        _need("cu_seqlens_q" in inputs, "packed queries without cu_seqlens_q")
        kp, vp, cu_k = reference.packed_keys(k, v, lens)
        o, lse = reference.attention_varlen(q, kp, vp, inputs["cu_seqlens_q"].cpu(), cu_k, torch.float32, **kw)
    else:
        o, lse = reference.attention_lengths(q, k, v, lens, torch.float32, **kw)
    roles = {role_of(name): name for name in cx.expected}
    out = {roles["o"]: o}
    if "lse" in roles:
        out[roles["lse"]] = lse
    return out


@mutant("paged-page-off-by-one", "block table read one entry late: key r of sequence b comes from page "
        "block_table[b, r // page_size + 1] (the row's last entry reads the next row's first)",
        outputs=("o", "lse"), dims=(3, 4), family="paged")
def paged_page_off_by_one(cx):
    def pages_of(bt, r, ps):
        flat = bt.reshape(-1)
        idx = (torch_mod().arange(bt.shape[0], device=bt.device)[:, None] * bt.shape[1] + (r // ps)[None, :] + 1)
        return flat[idx.clamp(max=flat.numel() - 1)], (r % ps).expand(bt.shape[0], -1)

    return _paged_attend(cx, pages_of)


@mutant("paged-offset-ignored", "the row offset within a page ignored: every KV tile reads the start of its page "
        "(key r from row r % tile_n of page block_table[b, r // page_size]; shows when a page holds several tiles)",
        outputs=("o", "lse"), dims=(3, 4), family="paged")
def paged_offset_ignored(cx):
    from stages.fmha.geometry import kv_tile

    _need("block_table" in cx.inputs, "not a paged stage")
    tile_n = kv_tile(cx.inputs["q"].shape[-1], cx.inputs["v"].shape[-1], paged=True)  # (a paged tile depends on d, dv only)
    _need(cx.inputs["k"].shape[1] > tile_n, "a page holds one KV tile (page_size <= tile_n)")

    def pages_of(bt, r, ps):
        return bt[:, r // ps], (r % tile_n).expand(bt.shape[0], -1)

    return _paged_attend(cx, pages_of)


@mutant("paged-batch0-table", "every sequence reads batch 0's block table row (block_table[0, p]): all batches "
        "attend sequence 0's keys", outputs=("o", "lse"), dims=(3, 4), family="paged")
def paged_batch0_table(cx):
    _need("block_table" in cx.inputs, "not a paged stage")
    _need(cx.inputs["block_table"].shape[0] >= 2, "batch 1")

    def pages_of(bt, r, ps):
        return bt[:1, r // ps].expand(bt.shape[0], -1), (r % ps).expand(bt.shape[0], -1)

    return _paged_attend(cx, pages_of)


@mutant("paged-first-length", "every sequence takes sequence 0's KV length (cache_seqlens[0]): a longer one "
        "loses its last keys, a shorter one attends the cache rows past its end", outputs=("o", "lse"), dims=(3, 4),
        family="paged")
def paged_first_length(cx):
    lens = cx.inputs["cache_seqlens"].tolist() if "cache_seqlens" in cx.inputs else []
    _need(len(set(lens)) > 1, "every sequence has the same KV length")
    return _paged_attend(cx, lambda bt, r, ps: (bt[:, r // ps], (r % ps).expand(bt.shape[0], -1)), [lens[0]] * len(lens))


def torch_mod():
    import torch

    return torch
