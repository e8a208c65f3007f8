"""python tests/eval/scoring_driver.py CKPT OUT.json

Test driver for tests/eval/test_inference.py: loads CKPT with megamid.load (one process) and scores
passkey, needle and RULER samples, and candidates of several token lengths, both ways: shared-prefix
(candidate_logprobs through MegatronLM.masked_logits) and one row per candidate (candidate_logprobs_rows).
Writes the largest |difference|, whether the rankings agree, and how many masked forwards ran.
"""

import json
import sys


def main(ckpt: str, out: str) -> None:
    import megamid
    from megamid.eval.haystack import Sample
    from megamid.eval.retrieval import needle_samples, passkey_samples
    from megamid.eval.ruler import ruler_samples
    from megamid.eval.scoring import candidate_logprobs, candidate_logprobs_rows
    from megamid.platform import shutdown

    model, tokenizer = megamid.load(ckpt, max_batch=3)
    calls = {"masked": 0}
    masked = model.masked_logits

    def counted(*args):
        calls["masked"] += 1
        return masked(*args)

    model.masked_logits = counted
    samples = (passkey_samples(tokenizer, [320], [0.0, 1.0], 1, 4, 0) + needle_samples(tokenizer, [320], [0.5], 1, 4, 1)
               + ruler_samples(tokenizer, ["niah_single"], [512], 1, 4, 2))
    # and candidates of several token lengths after one prompt
    first = samples[0]
    samples.append(Sample("mixed", first.length, 0.0, first.prompt, [" 7", " 42", " answer", " a longer one"], 0))
    diff, agree, lengths = 0.0, True, set()
    for s in samples:
        cands = [tokenizer.encode(c) for c in s.candidates]
        lengths.update(len(c) for c in cands)
        shared, rows = candidate_logprobs(model, s.prompt, cands), candidate_logprobs_rows(model, s.prompt, cands)
        diff = max(diff, max(abs(a - b) for a, b in zip(shared, rows)))
        agree &= shared.index(max(shared)) == rows.index(max(rows))
    with open(out, "w") as f:
        json.dump({"max_diff": diff, "rankings_agree": agree, "masked_calls": calls["masked"],
                   "samples": len(samples), "candidate_lengths": sorted(lengths),
                   "takes_masks": model.takes_attention_masks}, f)
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
