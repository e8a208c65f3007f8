"""python tests/attention/megatron_attention_driver.py

Test driver (megatron's parallel state and megamid's CPU mode are process-global, so it runs in its own
process): megatron-core's DotProductAttention and megamid's core attention built from one
TransformerConfig, causal, GQA 4/2, without and with a sliding window (window_size (W-1, 0)), on the
same random q/k/v; prints `MEGATRON_ATTENTION_RESULT {json}` with the max |difference| of outputs and of
q/k/v gradients per case, and how far the windowed output is from the unwindowed one.
"""

import json

import torch


def main():
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megamid.attention.core_attention import MegamidCoreAttention
    from megamid.platform import Layout, init_model_parallel, init_process_group, set_seed, shutdown

    init_process_group()
    init_model_parallel(Layout())
    set_seed(0)
    s, b, hq, hk, d = 24, 2, 4, 2, 8
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(s, b, h, d, generator=gen, dtype=torch.float64) for h in (hq, hk, hk)]
    grad = torch.randn(s, b, hq * d, generator=gen, dtype=torch.float64)
    result, outs = {}, {}
    for window in (None, 6):
        config = TransformerConfig(num_layers=1, hidden_size=hq * d, num_attention_heads=hq, num_query_groups=hk,
                                   kv_channels=d, attention_dropout=0.0, masked_softmax_fusion=False,
                                   window_size=None if window is None else (window - 1, 0))
        diffs = []
        for cls in (DotProductAttention, MegamidCoreAttention):
            q, k, v = (t.clone().requires_grad_() for t in inputs)
            out = cls(config, 1, AttnMaskType.causal, "self")(q, k, v, None)
            diffs.append([out, *torch.autograd.grad(out, (q, k, v), grad)])
        outs[window] = diffs[1][0].detach()
        result[str(window)] = [float((a - c).abs().max()) for a, c in zip(*diffs)]
    result["window_effect"] = float((outs[None] - outs[6]).abs().max())
    print("MEGATRON_ATTENTION_RESULT " + json.dumps(result), flush=True)
    shutdown()


if __name__ == "__main__":
    main()
