"""Scripted models for the eval tests (pytest loads this file for tests/eval/).

OracleModel solves every task by reading the prompt text (ByteTokenizer ids are bytes), so it also
checks that each prompt really contains what its question asks for. RandomModel returns seeded
random logits. PositionModel has known per-position log-probs on counting documents.
"""

import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from megamid.data.tokenizer import ByteTokenizer

BIG = 20.0  # logit of the oracle's next byte; every other byte gets 0


def _chain(context: str, value: str) -> str:
    names = [re.search(rf"VAR (\w+) = {value}\.", context)[1]]
    while (m := re.search(rf"VAR (\w+) = VAR {names[-1]}\.", context)) is not None:
        names.append(m[1])
    return " ".join(names)


def _common(context: str, n: int) -> str:
    words = context.split("\n", 1)[1].split()
    top = [w for w, _ in Counter(words).most_common(n)]
    return " ".join(sorted(top, key=words.index))


# question pattern -> the answer (without its leading space), from the context before the question
SOLVERS = [
    (r"\nWhat is the pass key\? The pass key is", lambda c, m: re.search(r"The pass key is (\d+)\. Remember it", c)[1]),
    (r"\nThe pass key is", lambda c, m: re.search(r"The pass key is (\d+)\. Remember it", c)[1]),  # the short form
    (r"\nQuestion: What is the secret word for (\w+)\?\nAnswer: The secret word for \w+ is",
     lambda c, m: re.search(rf"The secret word for {m[1]} is (\w+)\.", c)[1]),
    (r"\nWhat is the special magic number for (\w+) mentioned in the provided text\? The special magic number for \w+ mentioned in the provided text is",
     lambda c, m: re.search(rf"special magic numbers for {m[1]} is: (\d+)\.", c)[1]),
    (r"\nWhat are all the special magic numbers for (\w+) mentioned in the provided text\? The special magic numbers for \w+ mentioned in the provided text are",
     lambda c, m: ", ".join(re.findall(rf"special magic numbers for {m[1]} is: (\d+)\.", c))),
    (r"\nQuestion: Find all variables that are assigned the value (\d+) in the text above\. Answer: .*? they are:",
     lambda c, m: _chain(c, m[1])),
    (r"\nQuestion: What are the (\d+) most common words in the above list\? Answer: .*? are:",
     lambda c, m: _common(c, int(m[1]))),
]


class OracleModel:
    """Puts BIG on the next byte of the right answer after the question, then on a newline."""

    max_batch, device, vocab_size = 4, "cpu", 258

    def __init__(self):
        self.calls = 0

    def _solve(self, text: str):
        for pattern, solver in SOLVERS:
            m = re.search(pattern, text)
            if m:
                return m.end(), " " + solver(text[: m.start()], m)
        raise AssertionError(f"oracle cannot parse prompt ending {text[-200:]!r}")

    def logits(self, tokens, last_n=None):
        self.calls += 1
        b, s = tokens.shape
        n = s if last_n is None else last_n
        out = torch.zeros(b, n, self.vocab_size)
        for row in range(b):
            text = bytes(int(t) for t in tokens[row]).decode("ascii")
            end, answer = self._solve(text)
            for i in range(max(s - n, end - 1), s):  # logits at i predict byte i + 1
                so_far = text[end : i + 1]
                if answer.startswith(so_far):
                    nxt = answer[len(so_far)] if len(so_far) < len(answer) else "\n"
                    out[row, i - (s - n), ord(nxt)] = BIG
        return out


class RandomModel:
    """Seeded random logits, independent of the input: every candidate is equally likely to win."""

    max_batch, device, vocab_size = 8, "cpu", 258

    def __init__(self, seed=0):
        self.gen = torch.Generator().manual_seed(seed)

    def logits(self, tokens, last_n=None):
        b, s = tokens.shape
        return torch.randn(b, s if last_n is None else last_n, self.vocab_size, generator=self.gen)


class PositionModel:
    """On counting documents (x[t+1] = x[t] + 1 mod V) puts logit a(t) = slope * t on the true next token,
    so log p(x[t+1]) = a(t) - log(exp(a(t)) + V - 1) exactly."""

    device, vocab_size = "cpu", 16

    def __init__(self, slope=0.01, max_batch=3):
        self.slope, self.max_batch = slope, max_batch

    def logits(self, tokens, last_n=None):
        b, s = tokens.shape
        out = torch.zeros(b, s, self.vocab_size, dtype=torch.float64)
        a = self.slope * torch.arange(s, dtype=torch.float64)
        out.scatter_(-1, ((tokens + 1) % self.vocab_size).unsqueeze(-1), a.expand(b, s).unsqueeze(-1))
        return out if last_n is None else out[:, -last_n:]

    def expected_nll(self, position: int) -> float:
        """-log p of the token at `position` (predicted from position - 1)."""
        a = self.slope * (position - 1)
        return -(a - math.log(math.exp(a) + self.vocab_size - 1))


def counting_documents(lengths, vocab=16, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.integers(vocab) + np.arange(n)) % vocab for n in lengths]


@pytest.fixture
def tokenizer():
    return ByteTokenizer()


@pytest.fixture
def oracle():
    return OracleModel()


@pytest.fixture
def random_model():
    return RandomModel(seed=1234)


@pytest.fixture
def position_model():
    return PositionModel


@pytest.fixture
def make_documents():
    return counting_documents
