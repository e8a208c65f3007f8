"""Seeded text material for synthetic tasks, and the assembly of a prompt of an exact token budget.

Everything is generated (no downloads): filler sentences from small word lists, pseudo-words as keys,
numbers as values. Filler has no digits, so a number in the context is always a planted one. Pieces
are tokenized separately and concatenated as token ids, so the length of a prompt is known exactly
for any tokenizer and does not depend on how a BPE merges across piece boundaries.
"""

import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from megamid.eval.protocol import Tokenizer

PASSKEY_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
ADJECTIVES = ("quiet", "bright", "old", "small", "heavy", "distant", "warm", "narrow", "gentle", "tall",
              "pale", "busy", "empty", "rough", "silver", "hidden", "early", "curious", "broad", "steady")
NOUNS = ("river", "window", "garden", "teacher", "market", "lantern", "forest", "engine", "letter", "harbor",
         "bridge", "kitchen", "mountain", "painter", "library", "village", "station", "violin", "meadow", "tower",
         "candle", "anchor", "basket", "compass", "feather", "glacier", "island", "jacket", "ladder", "mirror")
VERBS = ("follows", "watches", "crosses", "remembers", "passes", "carries", "reaches", "leaves", "finds", "greets")
PREPOSITIONS = ("near", "behind", "beyond", "under", "beside", "above", "around", "toward")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def random_sentences(rng: random.Random) -> Iterator[str]:
    """An endless stream of plain, digit-free sentences ("The old river crosses the tall tower.")."""
    while True:
        yield (f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
               f"{rng.choice(PREPOSITIONS)} the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}.")


def repeated_sentences() -> Iterator[str]:
    """The passkey paper's filler, repeated forever."""
    while True:
        yield from PASSKEY_FILLER


def iter_pseudo_words(rng: random.Random, syllables: int = 3, exclude: Sequence[str] = ()) -> Iterator[str]:
    """Endless distinct pronounceable non-words ("kodamu"): keys that no model has priors about."""
    seen = set(exclude)
    while True:
        w = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if w not in seen:
            seen.add(w)
            yield w


def pseudo_words(rng: random.Random, n: int, syllables: int = 3, exclude: Sequence[str] = ()) -> List[str]:
    """n distinct pseudo-words (see iter_pseudo_words)."""
    words = iter_pseudo_words(rng, syllables, exclude)
    return [next(words) for _ in range(n)]


def random_number(rng: random.Random, digits: int, exclude: Sequence[str] = ()) -> str:
    """A `digits`-digit decimal string with no leading zero, not in `exclude`."""
    while True:
        s = str(rng.randrange(10 ** (digits - 1), 10**digits))
        if s not in exclude:
            return s


class TokenCache:
    """Token ids of each piece of text, encoded once: filler sentences repeat thousands of times."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._ids: Dict[str, List[int]] = {}

    def __call__(self, text: str) -> List[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = list(self.tokenizer.encode(text))
        return ids


def assemble(encode: TokenCache, length: int, prefix: str, filler: Iterator[str], needles: Sequence[Tuple[float, str]],
             suffix: str, reserve: int) -> Tuple[List[int], List[float]]:
    """Token ids of prefix + filler with needles inserted + suffix, at most `length - reserve` long.

    needles: (depth, text) with depth in [0, 1], the fraction of the filler that precedes the needle;
    each is placed at the sentence boundary nearest its depth. reserve: room kept for the answer.
    Returns the ids and the depths actually achieved."""
    head, tail = encode(prefix), encode(suffix)
    needle_ids = [encode(" " + text) for _, text in needles]
    budget = length - reserve - len(head) - len(tail) - sum(map(len, needle_ids))
    if budget < 0:
        raise ValueError(f"length={length} is too short for this task: prompt needs {length - budget} tokens")
    pieces: List[List[int]] = []
    used = 0
    for sentence in filler:
        ids = encode(" " + sentence)
        if used + len(ids) > budget:
            break
        pieces.append(ids)
        used += len(ids)
    starts = [0]
    for ids in pieces:
        starts.append(starts[-1] + len(ids))  # starts[k]: filler tokens before boundary k
    order = sorted(range(len(needles)), key=lambda i: needles[i][0])
    inserts: Dict[int, List[int]] = {}
    achieved = [0.0] * len(needles)
    for i in order:
        target = needles[i][0] * used
        k = min(range(len(starts)), key=lambda b: abs(starts[b] - target))
        inserts.setdefault(k, []).append(i)
        achieved[i] = starts[k] / used if used else 0.0
    out = list(head)
    for k in range(len(pieces) + 1):
        for i in inserts.get(k, ()):
            out += needle_ids[i]
        if k < len(pieces):
            out += pieces[k]
    return out + tail, achieved


class Sample:
    """One prompt with its candidate answers; candidates[answer_index] is right.

    Candidates are continuations that start with a space ("... The pass key is" + " 68220."). `suffix`
    is the text of the prompt's last piece (its ids end the prompt): candidates are tokenized together
    with it (megamid.eval.scoring.joint_continuations), so a tokenizer that merges across the boundary
    is scored on the tokens it would produce; None scores separately encoded candidates."""

    __slots__ = ("task", "length", "depth", "prompt", "candidates", "answer_index", "suffix")

    def __init__(self, task: str, length: int, depth, prompt: List[int], candidates: List[str], answer_index: int,
                 suffix: Optional[str] = None):
        self.task, self.length, self.depth = task, length, depth
        self.prompt, self.candidates, self.answer_index, self.suffix = prompt, candidates, answer_index, suffix

    @property
    def answer(self) -> str:
        return self.candidates[self.answer_index]


def sample_rng(seed: int, task: str, length: int, index, depth=None) -> random.Random:
    """One generator per sample, so a sample does not change when other lengths or depths are added."""
    return random.Random(f"{seed}:{task}:{length}:{depth}:{index}")


def shuffled_candidates(rng: random.Random, answer: str, distractors: Sequence[str]) -> Tuple[List[str], int]:
    """Answer and distractors in a random order (a model biased to a slot must not look good)."""
    cands = [answer, *distractors]
    rng.shuffle(cands)
    return cands, cands.index(answer)
