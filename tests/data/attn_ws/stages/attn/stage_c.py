"""Online-softmax attention in plain PyTorch, 128-key tiles, with injectable bugs."""

import math

from workbench import Stage, TensorSpec


class Online(Stage):
    needs_gpu = False
    is_cute = False

    def inputs(self, p):
        return {"q": TensorSpec((p.m, p.d), p.dtype), "k": TensorSpec((p.n, p.d), p.dtype), "v": TensorSpec((p.n, p.d), p.dtype)}

    def outputs(self, p):
        return {"o": TensorSpec((p.m, p.d), p.dtype), "lse": TensorSpec((p.m,), "fp32")}

    def compile(self, p, variants, arch):
        return dict(variants)

    def launch(self, compiled, inputs, outputs):
        import torch

        bug = compiled.get("bug", "none")
        q, k, v = (inputs[n].float() for n in ("q", "k", "v"))
        scale = 1 / math.sqrt(q.shape[1])
        m = torch.full((q.shape[0],), float("-inf"))
        l = torch.zeros(q.shape[0])
        acc = torch.zeros(q.shape[0], v.shape[1])
        for t in range(k.shape[0] // 128):
            src = 0 if bug == "kv-tile0" else t
            s = q @ k[src * 128:(src + 1) * 128].T * scale
            m_new = torch.maximum(m, s.amax(1))
            p = torch.exp(s - m_new[:, None])
            alpha = torch.exp(m - m_new)
            if bug == "no-rescale":
                alpha = torch.ones_like(alpha)
            l = l * alpha + p.sum(1)
            acc = acc * alpha[:, None] + p.to(torch.bfloat16).float() @ v[src * 128:(src + 1) * 128]
            m = m_new
        outputs["o"].copy_(acc / l[:, None])
        outputs["lse"].copy_(m + torch.log(l))

    def reference(self, inputs, p, variants, compute_dtype):
        import torch

        q, k, v = (inputs[n].to(compute_dtype) for n in ("q", "k", "v"))
        s = q @ k.T / math.sqrt(q.shape[1])
        return {"o": torch.softmax(s, 1) @ v, "lse": torch.logsumexp(s, 1)}
