"""python tests/e2e/logits_driver.py OUT.pt TOKENS.pt NAME=CKPT [NAME=CKPT ...]

Test driver for tests/e2e/test_user_path.py: loads each checkpoint with the public `megamid.load` (one
process, TP=PP=1, whatever layout it was written in) and saves {NAME: fp32 logits of TOKENS} to OUT.pt,
with {NAME: model.record} next to it as OUT.json.
"""

import json
import sys

import torch


def main(out: str, tokens_path: str, *named: str) -> None:
    import megamid
    from megamid.platform import shutdown

    tokens = torch.load(tokens_path, weights_only=True)
    logits, records = {}, {}
    for item in named:
        name, path = item.split("=", 1)
        model, tokenizer = megamid.load(path)
        logits[name] = model.logits(tokens).float()
        records[name] = {**model.record, "tokenizer_special_ids": tokenizer.special_ids}
    torch.save(logits, out)
    with open(out[:-3] + ".json", "w") as f:
        json.dump(records, f)
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
