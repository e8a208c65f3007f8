"""Passkey retrieval and needle in a haystack: one planted fact, over a grid of (length x depth).

passkey  Mohtashami & Jaggi's format: a 5-digit pass key inside repeated filler ("The grass is
         green. ..."); the distractor candidates are other 5-digit numbers.
needle   A Kamradt-style needle ("The secret word for kodamu is lantern.") inside varied generated
         sentences that use the same nouns, so the distractor candidates (other nouns) all appear in
         the haystack and are not ruled out by rarity.
Both are scored by log-likelihood ranking of the candidates (chance = 1 / num_candidates) and,
optionally, by greedy decoding (exact match).
"""

from typing import List, Sequence

from megamid.eval.haystack import (NOUNS, Sample, TokenCache, assemble, pseudo_words, random_number,
                                   random_sentences, repeated_sentences, sample_rng, shuffled_candidates)
from megamid.eval.protocol import Tokenizer

PASSKEY_PREFIX = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                  "I will quiz you about the important information there.\n")
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
# The short form for small windows (a byte tokenizer spends ~260 tokens on the full one): used at a length
# where the full prompt would take more than half of it (per length, so a sample never depends on the grid).
PASSKEY_SHORT = ("Remember the pass key.\n", "The pass key is {key}. Remember it.", "\nThe pass key is")
NEEDLE_PREFIX = "Read the text below and answer the question at the end.\n"
NEEDLE_TEXT = "The secret word for {key} is {word}."
NEEDLE_QUESTION = "\nQuestion: What is the secret word for {key}?\nAnswer: The secret word for {key} is"
RESERVE_TOKENS = 16  # room for the answer and greedy decoding's stop token


def passkey_template(encode: TokenCache, length: int):
    """(prefix, needle, question): the full prompt where it takes at most half of `length`, else PASSKEY_SHORT."""
    fixed = (len(encode(PASSKEY_PREFIX)) + len(encode(" " + PASSKEY_NEEDLE.format(key="12345")))
             + len(encode(PASSKEY_QUESTION)) + RESERVE_TOKENS)
    if fixed <= length // 2:
        return PASSKEY_PREFIX, PASSKEY_NEEDLE, PASSKEY_QUESTION
    return PASSKEY_SHORT


def passkey_samples(tokenizer: Tokenizer, lengths: Sequence[int], depths: Sequence[float], per_cell: int,
                    num_candidates: int, seed: int = 0) -> List[Sample]:
    """per_cell samples for every (length, depth). Candidates are " KEY." as the needle writes the key,
    scored jointly with the question (Sample.suffix)."""
    encode, out = TokenCache(tokenizer), []
    for length in lengths:
        prefix, needle, question = passkey_template(encode, length)
        for depth in depths:
            for i in range(per_cell):
                rng = sample_rng(seed, "passkey", length, i, depth)
                key = random_number(rng, 5)
                distractors = []
                for _ in range(num_candidates - 1):
                    distractors.append(random_number(rng, 5, exclude=[key, *distractors]))
                prompt, _ = assemble(encode, length, prefix, repeated_sentences(),
                                     [(depth, needle.format(key=key))], question, RESERVE_TOKENS)
                cands, idx = shuffled_candidates(rng, f" {key}.", [f" {d}." for d in distractors])
                out.append(Sample("passkey", length, depth, prompt, cands, idx, suffix=question))
    return out


def needle_samples(tokenizer: Tokenizer, lengths: Sequence[int], depths: Sequence[float], per_cell: int,
                   num_candidates: int, seed: int = 0) -> List[Sample]:
    """per_cell samples for every (length, depth)."""
    if num_candidates > len(NOUNS):
        raise ValueError(f"num_candidates={num_candidates} is too large for needle: at most {len(NOUNS)}")
    encode, out = TokenCache(tokenizer), []
    for length in lengths:
        for depth in depths:
            for i in range(per_cell):
                rng = sample_rng(seed, "needle", length, i, depth)
                key = pseudo_words(rng, 1)[0]
                words = rng.sample(NOUNS, num_candidates)
                question = NEEDLE_QUESTION.format(key=key)
                prompt, _ = assemble(encode, length, NEEDLE_PREFIX, random_sentences(rng),
                                     [(depth, NEEDLE_TEXT.format(key=key, word=words[0]))], question, RESERVE_TOKENS)
                cands, idx = shuffled_candidates(rng, f" {words[0]}.", [f" {w}." for w in words[1:]])
                out.append(Sample("needle", length, depth, prompt, cands, idx, suffix=question))
    return out
