"""python tests/model/rope_switch_driver.py OUT.json   (run by test_rope_switch.py in a fresh process)

Builds a tiny GPTModel with default RoPE, runs it (filling every cos/sin cache), switches the rope as a
phase change does (megamid.model.builder.set_rope), and compares its logits with a freshly built model
given the same weights and the new rope. Also runs one bf16 training step through Float16Module.
"""

import json
import sys

import torch

from megamid.config import ModelConfig, ParallelConfig
from megamid.model import build_gpt_chunks, unwrap
from megamid.model.builder import set_rope
from megamid.platform import Layout, init_model_parallel, set_seed

ROPES = {
    "yarn": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 16, "theta": 10000},
    "dynamic": {"type": "dynamic", "factor": 2, "original_max_position_embeddings": 16, "theta": 10000},
    "llama3": {"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
               "original_max_position_embeddings": 16, "theta": 500000},
    "longrope": {"type": "longrope", "original_max_position_embeddings": 16, "factor": 4, "theta": 10000,
                 "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [1.5 + 0.2 * i for i in range(8)]},
}


def model_config(rope, dtype="fp32"):
    return ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, vocab_size=96,
                       ffn_hidden_size=128, max_position_embeddings=16, rope=rope, dtype=dtype,
                       init_method_std=0.2)


def logits(gpt, tokens):
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        return gpt(tokens, positions, None).float()


def main():
    init_model_parallel(Layout())
    set_seed(3)
    tokens = torch.randint(0, 96, (2, 40))
    default = {"type": "default", "theta": 10000}
    results = {}
    for name, rope in ROPES.items():
        set_seed(3)
        gpt = unwrap(build_gpt_chunks(model_config(default), ParallelConfig())[0]).eval()
        before = logits(gpt, tokens)
        logits(gpt, tokens[:, :24])                   # a second cached length
        set_rope(gpt, rope)
        switched = logits(gpt, tokens)
        fresh = unwrap(build_gpt_chunks(model_config(rope), ParallelConfig())[0]).eval()
        fresh.load_state_dict(gpt.state_dict())
        expected = logits(fresh, tokens)
        results[name] = {"switched_vs_fresh": (switched - expected).abs().max().item(),
                         "switched_vs_before": (switched - before).abs().max().item()}
    # bf16 through Float16Module: one forward/backward with finite loss
    set_seed(3)
    chunk = build_gpt_chunks(model_config(default, "bf16"), ParallelConfig())[0]
    positions = torch.arange(40).expand_as(tokens)
    loss = chunk(tokens, positions, None, labels=tokens).float().mean()
    loss.backward()
    results["bf16"] = {"loss": loss.item(), "dtype": str(next(unwrap(chunk).parameters()).dtype),
                       "grad_finite": all(torch.isfinite(p.grad).all().item() for p in chunk.parameters()
                                          if p.grad is not None)}
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
