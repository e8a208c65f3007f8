"""RULER-style synthetic tasks (Hsieh et al., 2024), written from the paper's task descriptions.

niah_single      one "special magic number" for a key; distractors: random 7-digit numbers
niah_multikey    num_candidates keys with one number each, one asked; distractors: the other keys'
                 numbers, which are all in the context (retrieving *a* number is not enough)
niah_multivalue  one key with 4 numbers at random depths, all asked (in order of appearance);
                 distractors: the same list with one number replaced by a random one
variable_track   num_candidates chains "VAR A = 12345", "VAR B = VAR A", ... interleaved in filler;
                 asked for every name bound to one value; distractors: the other chains' names
common_words     a list of pseudo-words in which 5 occur far more often than the rest; asked for those
                 5 (in order of first appearance); distractors: 1-2 of them swapped for rare ones
All are scored by log-likelihood ranking (chance = 1 / num_candidates) of the candidates tokenized
together with the question they continue, and optionally by greedy decoding; the needle depths are drawn at random per sample, and results are reported by length.
"""

import random
from typing import Callable, Dict, List, Sequence

from megamid.eval.haystack import (Sample, TokenCache, assemble, iter_pseudo_words, pseudo_words, random_number, random_sentences,
                                   sample_rng, shuffled_candidates)
from megamid.eval.protocol import Tokenizer

PREFIX = "Some special magic numbers are hidden within the following text. Make sure to memorize them.\n"
NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}."
NIAH_QUESTION = ("\nWhat is the special magic number for {key} mentioned in the provided text? "
                 "The special magic number for {key} mentioned in the provided text is")
MULTIVALUE_QUESTION = ("\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
                       "The special magic numbers for {key} mentioned in the provided text are")
VT_PREFIX = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
VT_QUESTION = ("\nQuestion: Find all variables that are assigned the value {value} in the text above. "
               "Answer: According to the chain(s) of variable assignment in the text above, {n} variables "
               "are assigned the value {value}, they are:")
CWE_PREFIX = "Below is a list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n"
CWE_QUESTION = "\nQuestion: What are the {n} most common words in the above list? Answer: The top {n} words that appear most often in the list are:"
RESERVE_TOKENS = 64
MULTIVALUE_VALUES = 4
VT_HOPS = 4
CWE_COMMON, CWE_RARE_FREQ = 5, 2


def niah_single(encode: TokenCache, rng: random.Random, length: int, k: int):
    key, value = pseudo_words(rng, 1)[0], random_number(rng, 7)
    prompt, _ = assemble(encode, length, PREFIX, random_sentences(rng), [(rng.random(), NIAH_NEEDLE.format(key=key, value=value))],
                         NIAH_QUESTION.format(key=key), RESERVE_TOKENS)
    distractors: List[str] = []
    for _ in range(k - 1):
        distractors.append(random_number(rng, 7, exclude=[value, *distractors]))
    return prompt, " " + value, [" " + d for d in distractors], NIAH_QUESTION.format(key=key)


def niah_multikey(encode: TokenCache, rng: random.Random, length: int, k: int):
    keys, values = pseudo_words(rng, k), []
    for _ in keys:
        values.append(random_number(rng, 7, exclude=values))
    needles = [(rng.random(), NIAH_NEEDLE.format(key=a, value=v)) for a, v in zip(keys, values)]
    prompt, _ = assemble(encode, length, PREFIX, random_sentences(rng), needles, NIAH_QUESTION.format(key=keys[0]), RESERVE_TOKENS)
    return prompt, " " + values[0], [" " + v for v in values[1:]], NIAH_QUESTION.format(key=keys[0])


def niah_multivalue(encode: TokenCache, rng: random.Random, length: int, k: int):
    key, values = pseudo_words(rng, 1)[0], []
    for _ in range(MULTIVALUE_VALUES):
        values.append(random_number(rng, 7, exclude=values))
    depths = sorted(rng.random() for _ in values)  # so the order of appearance is the order of `values`
    needles = [(d, NIAH_NEEDLE.format(key=key, value=v)) for d, v in zip(depths, values)]
    prompt, _ = assemble(encode, length, PREFIX, random_sentences(rng), needles, MULTIVALUE_QUESTION.format(key=key), RESERVE_TOKENS)
    answer, distractors = " " + ", ".join(values), []
    while len(distractors) < k - 1:
        wrong = list(values)
        wrong[rng.randrange(len(wrong))] = random_number(rng, 7, exclude=values)
        text = " " + ", ".join(wrong)
        if text not in distractors:
            distractors.append(text)
    return prompt, answer, distractors, MULTIVALUE_QUESTION.format(key=key)


def variable_track(encode: TokenCache, rng: random.Random, length: int, k: int):
    names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(k * (VT_HOPS + 1) * 2)]
    names = list(dict.fromkeys(names))[: k * (VT_HOPS + 1)]  # distinct
    values: List[str] = []
    for _ in range(k):
        values.append(random_number(rng, 5, exclude=values))
    chains = [names[c * (VT_HOPS + 1) : (c + 1) * (VT_HOPS + 1)] for c in range(k)]
    needles = []
    for chain, value in zip(chains, values):
        depths = sorted(rng.random() for _ in chain)  # a chain's statements appear in assignment order
        statements = [f"VAR {chain[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:])]
        needles += list(zip(depths, statements))
    question = VT_QUESTION.format(value=values[0], n=VT_HOPS + 1)
    prompt, _ = assemble(encode, length, VT_PREFIX, random_sentences(rng), needles, question, RESERVE_TOKENS)
    return prompt, " " + " ".join(chains[0]), [" " + " ".join(c) for c in chains[1:]], question


def common_words(encode: TokenCache, rng: random.Random, length: int, k: int):
    common = pseudo_words(rng, CWE_COMMON)
    question = CWE_QUESTION.format(n=CWE_COMMON)
    budget = length - RESERVE_TOKENS - len(encode(CWE_PREFIX)) - len(encode(question))
    cost = lambda w: len(encode(" " + w))  # noqa: E731
    # about a third of the list is the common words, each at least twice as frequent as any rare one
    freq = max(2 * CWE_RARE_FREQ, budget // (3 * CWE_COMMON * max(1, sum(map(cost, common)) // CWE_COMMON)))
    words, used, rare = common * freq, freq * sum(map(cost, common)), []
    for w in iter_pseudo_words(rng, exclude=common):  # 14**3 * 5**3 words: never exhausted here
        if used + CWE_RARE_FREQ * cost(w) > budget:
            break
        rare.append(w)
        used += CWE_RARE_FREQ * cost(w)
    if used > budget or len(rare) < 2:
        raise ValueError(f"length={length} is too short for common_words")
    words += rare * CWE_RARE_FREQ
    rng.shuffle(words)
    prompt = encode(CWE_PREFIX) + [t for w in words for t in encode(" " + w)] + encode(question)
    first = {w: i for i, w in reversed(list(enumerate(words)))}
    ordered = lambda ws: " " + " ".join(sorted(ws, key=first.__getitem__))  # noqa: E731
    distractors: List[str] = []
    while len(distractors) < k - 1:
        swapped = list(common)
        for i in rng.sample(range(CWE_COMMON), rng.choice((1, 2))):
            swapped[i] = rng.choice(rare)
        if len(set(swapped)) == CWE_COMMON and ordered(swapped) not in distractors:
            distractors.append(ordered(swapped))
    return prompt, ordered(common), distractors, question


TASKS: Dict[str, Callable] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "variable_track": variable_track,
    "common_words": common_words,
}


def ruler_samples(tokenizer: Tokenizer, tasks: Sequence[str], lengths: Sequence[int], per_length: int,
                  num_candidates: int, seed: int = 0) -> List[Sample]:
    """per_length samples of each task at each length."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown RULER task(s) {unknown}; valid: {', '.join(TASKS)}")
    encode, out = TokenCache(tokenizer), []
    for task in tasks:
        for length in lengths:
            for i in range(per_length):
                rng = sample_rng(seed, task, length, i)
                prompt, answer, distractors, question = TASKS[task](encode, rng, length, num_candidates)
                cands, idx = shuffled_candidates(rng, answer, distractors)
                # scored as continuations of the question, tokenized together with it (megamid.eval.scoring)
                out.append(Sample(task, length, None, prompt, cands, idx, suffix=question))
    return out
