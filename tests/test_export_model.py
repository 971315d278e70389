"""benchmarks/export_model.py's transformers adapter (wb_attention), on the CPU with a stand-in
op registered as wb_fmha_standin::fwd (SDPA inside, same schema and layout contract: (b, s, h, d) in,
o (b, s, h, d) contiguous out): a tiny Llama-architecture model gives SDPA's logits through it,
eagerly and under torch.compile(fullgraph=True), and a padded batch is refused rather than
silently unmasked. The real op inside the real model is measured on a GPU (docs/export.md).
Skips where transformers (the `model` extra) is not installed."""

import sys

import pytest

from conftest import REPO

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(REPO / "benchmarks"))
import export_model  # noqa: E402

_lib = None


def _stand_in_op():
    global _lib
    export_model.OP = ("wb_fmha_standin", "fwd")  # not wb_fmha: a real package may load in this process
    if _lib is not None:
        return
    import torch.nn.functional as F

    _lib = torch.library.Library("wb_fmha_standin", "DEF")
    _lib.define('fwd(Tensor q, Tensor k, Tensor v, bool causal=False, float softcap=0.0, int window_left=-1, int window_right=-1, str align="top_left") -> (Tensor, Tensor)')

    def fwd(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left"):
        assert q.stride(-1) == 1 and q.dim() == 4  # the real op's layout contract
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=True)
        return o.transpose(1, 2).contiguous(), q.new_zeros(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)

    _lib.impl("fwd", fwd, "CompositeExplicitAutograd")

    @torch.library.register_fake("wb_fmha_standin::fwd", lib=_lib)
    def _(q, k, v, causal=False, softcap=0.0, window_left=-1, window_right=-1, align="top_left"):
        return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_llama():
    _stand_in_op()
    names = export_model.register(None)
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
        num_hidden_layers=2, vocab_size=1000,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval(), names


def test_the_adapter_gives_sdpas_logits_in_a_llama_model_eager_and_compiled(tiny_llama):
    model, names = tiny_llama
    assert set(names) == {"sdpa", "fp32_ref", "wb_fmha"}
    ids = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(1))
    logits = {}
    with torch.inference_mode():
        for label in ("sdpa", "wb_fmha"):
            export_model.use(model, names[label])
            logits[label] = model(input_ids=ids).logits
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        logits["compiled"] = compiled(input_ids=ids).logits
    assert logits["sdpa"].abs().max() > 0
    torch.testing.assert_close(logits["wb_fmha"], logits["sdpa"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits["compiled"], logits["sdpa"], rtol=1e-5, atol=1e-5)


def test_a_padded_batch_is_refused_not_silently_unmasked(tiny_llama):
    model, names = tiny_llama
    export_model.use(model, names["wb_fmha"])
    ids = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    with torch.inference_mode(), pytest.raises(ValueError, match="padding / custom attention masks are not supported"):
        model(input_ids=ids, attention_mask=mask)


_moe_lib = None


def _stand_in_moe():
    """wb_moe_standin::ffn: the op's contract in plain torch (w1 (E, H, 2I) with gate/up
    interleaved, w2 (E, I, H), int32 ids, fp32 weights)."""
    global _moe_lib
    export_model.MOE_OP = ("wb_moe_standin", "ffn")
    if _moe_lib is not None:
        return
    import torch.nn.functional as F

    _moe_lib = torch.library.Library("wb_moe_standin", "DEF")
    _moe_lib.define('ffn(Tensor x, Tensor w1, Tensor w2, Tensor topk_ids, Tensor topk_weights, str activation="swiglu") -> Tensor')

    def ffn(x, w1, w2, topk_ids, topk_weights, activation="swiglu"):
        assert topk_ids.dtype == torch.int32 and topk_weights.dtype == torch.float32 and x.is_contiguous()
        y = torch.zeros_like(x, dtype=torch.float32)
        for t in range(x.shape[0]):
            for j in range(topk_ids.shape[1]):
                e = int(topk_ids[t, j])
                d = x[t].float() @ w1[e].float()
                h = F.silu(d[0::2]) * d[1::2]
                y[t] += topk_weights[t, j] * (h @ w2[e].float())
        return y.to(x.dtype)

    _moe_lib.impl("ffn", ffn, "CompositeExplicitAutograd")


def test_the_experts_adapter_converts_transformers_weights_and_gives_eager_logits():
    _stand_in_moe()
    names = export_model.register_experts()
    config = transformers.Qwen3MoeConfig(
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
        vocab_size=500, decoder_sparse_step=1, mlp_only_layers=[],
    )
    torch.manual_seed(0)
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.5)
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(2))
    logits = {}
    with torch.inference_mode():
        for label in ("eager", "wb_moe", "fp32_ref"):
            export_model.use_experts(model, names.get(label, label))
            logits[label] = model(input_ids=ids).logits
    assert logits["eager"].abs().max() > 0
    torch.testing.assert_close(logits["wb_moe"], logits["eager"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits["fp32_ref"], logits["eager"], rtol=1e-4, atol=1e-4)
