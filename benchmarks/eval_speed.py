"""python benchmarks/eval_speed.py [--lengths 1024,4096] [--samples 1] [--candidates 4] [--max-batch 4]

Seconds per passkey sample of candidate ranking on a ~135M Llama-shaped model (SmolLM-135M's shapes:
30 layers, hidden 576, 9 query / 3 key-value heads, SwiGLU 1536, vocab 49152, tied; random weights) on
this machine (CPU or one GPU), at each context length, two ways measured in the same run:

  before  one row [prompt, candidate] per candidate, max_batch rows per forward (candidate_logprobs_rows)
  after   the prompt once per group of max_batch candidates, shared through an attention mask
          (candidate_logprobs with MegatronLM.masked_logits)

and their ratio, with the largest |score difference| and whether every ranking agreed.
"""

import argparse
import time


def parse_ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def build_model(max_batch: int):
    from megamid.config import ModelConfig, ParallelConfig
    from megamid.model import build_gpt_chunks
    from megamid.model.inference import MegatronLM
    from megamid.platform import Layout, init_model_parallel, init_process_group, set_seed

    cfg = ModelConfig(num_layers=30, hidden_size=576, num_attention_heads=9, num_query_groups=3, vocab_size=49152,
                      ffn_hidden_size=1536, max_position_embeddings=8192, tie_embeddings=True,
                      rope={"type": "default", "theta": 100000.0})
    init_process_group()
    init_model_parallel(Layout())
    set_seed(0)
    return MegatronLM(build_gpt_chunks(cfg, ParallelConfig()), max_batch=max_batch), cfg


def timed(fn, samples, tokenizer):
    scores, start = [], time.perf_counter()
    for s in samples:
        scores.append(fn(s.prompt, [tokenizer.encode(c) for c in s.candidates]))
    return (time.perf_counter() - start) / len(samples), scores


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    parser.add_argument("--lengths", type=parse_ints, default=[1024, 4096])
    parser.add_argument("--samples", type=int, default=1, help="passkey samples per length (default 1)")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=4)
    args = parser.parse_args(argv)

    from megamid.data.tokenizer import ByteTokenizer
    from megamid.eval.retrieval import passkey_samples
    from megamid.eval.scoring import candidate_logprobs, candidate_logprobs_rows
    from megamid.platform import shutdown

    model, cfg = build_model(args.max_batch)
    tokenizer = ByteTokenizer()
    print(f"model: {cfg.num_parameters() / 1e6:.0f}M parameters, {cfg.num_layers} layers, hidden {cfg.hidden_size}; "
          f"device {model.device}; {args.candidates} candidates, max_batch {args.max_batch}")
    warm = passkey_samples(tokenizer, [320], [0.5], 1, args.candidates, seed=99)
    timed(lambda p, c: candidate_logprobs(model, p, c), warm, tokenizer)
    timed(lambda p, c: candidate_logprobs_rows(model, p, c), warm, tokenizer)
    rows = []
    for length in args.lengths:
        samples = passkey_samples(tokenizer, [length], [0.5], args.samples, args.candidates, seed=0)
        before, old = timed(lambda p, c: candidate_logprobs_rows(model, p, c), samples, tokenizer)
        after, new = timed(lambda p, c: candidate_logprobs(model, p, c), samples, tokenizer)
        diff = max(abs(a - b) for o, n in zip(old, new) for a, b in zip(o, n))
        agree = all(o.index(max(o)) == n.index(max(n)) for o, n in zip(old, new))
        rows.append((length, before, after, before / after, diff, agree))
    print("| tokens | before s/sample | after s/sample | speed-up | max abs score diff | rankings agree |")
    print("| ---: | ---: | ---: | ---: | ---: | :---: |")
    for length, before, after, ratio, diff, agree in rows:
        print(f"| {length} | {before:.2f} | {after:.2f} | {ratio:.2f}x | {diff:.1e} | {'yes' if agree else 'NO'} |")
    shutdown()


if __name__ == "__main__":
    main()
