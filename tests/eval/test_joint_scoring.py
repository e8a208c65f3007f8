"""pytest tests/eval/test_joint_scoring.py   (candidates are scored as continuations tokenized with their context)

A sentencepiece BPE model trained here on passkey-like text merges a number's last digit with the
following full stop ('0.'), as the needle "The pass key is 68220. Remember it." is tokenized in the
prompt. Encoding a candidate alone gives different tokens from that; joint_continuations tokenizes
" 68220." together with the question, so the scored tokens are the ones the model saw (and would write).
"""

import random

import pytest

from megamid.data.tokenizer_files import load_tokenizer, train_tokenizer
from megamid.eval.haystack import TokenCache
from megamid.eval.retrieval import passkey_samples
from megamid.eval.scoring import joint_continuations, rank_candidates


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp")
    rng = random.Random(0)
    lines = [f"The pass key is {rng.randrange(10000, 99999)}. Remember it. The grass is green. The sky is blue."
             for _ in range(3000)]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    return load_tokenizer(train_tokenizer([str(root / "text.txt")], str(root / "sp"), vocab_size=400))


def _contains(seq, sub):
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_sentencepiece_merges_the_last_digit_with_the_period(sp):
    in_context = sp.encode(" 68220.")
    alone = sp.encode(" 68220")
    assert in_context[-1] not in alone and in_context[:-1] != alone  # '0.' is one token; '0' alone is another
    assert sp.decode([in_context[-1]]).endswith("0.")


def test_joint_scoring_uses_the_tokens_of_the_context(sp):
    sample = next(s for s in passkey_samples(sp, [256], [0.5], 4, 4, seed=1))
    key = sample.answer.strip().rstrip(".")
    needle = TokenCache(sp)(" The pass key is " + key + ". Remember it.")
    assert _contains(sample.prompt, needle)
    shared, conts = joint_continuations(sp, sample.prompt, sample.candidates, sample.suffix)
    assert shared == sample.prompt[: len(shared)]
    # the new way: the answer's tokens are the needle's tokens for " KEY." (the digit merged with '.')
    key_in_needle = sp.encode(" " + key + ".")
    assert conts[sample.answer_index][-len(key_in_needle):] == key_in_needle and _contains(sample.prompt, key_in_needle)
    # the old way: the candidate encoded alone scores tokens that never follow the key's start in the prompt
    alone = sp.encode(" " + key)
    assert not _contains(sample.prompt, alone)
    # every candidate: shared prompt + continuation is the prompt's text followed by the candidate
    for cand, cont in zip(sample.candidates, conts):
        assert sp.decode(shared + cont) == sp.decode(sample.prompt) + cand


def test_joint_scoring_cuts_the_prompt_where_the_joint_tokens_differ():
    class Chars:  # a tokenizer that merges "s " + digit: the suffix's last token changes with the candidate
        def encode(self, text):
            out, i = [], 0
            while i < len(text):
                if text[i] == "s" and text[i + 1 : i + 2] == " " and text[i + 2 : i + 3].isdigit():
                    out.append(1000)
                    i += 2
                else:
                    out.append(ord(text[i]))
                    i += 1
            return out

    tok = Chars()
    prompt = tok.encode("ctx ") + tok.encode("Q: it is")
    shared, conts = joint_continuations(tok, prompt, [" 1.", " 2."], suffix="Q: it is")
    assert shared == prompt[:-1]  # the 's' merges with the space before a digit
    assert conts == [[1000, ord("1"), ord(".")], [1000, ord("2"), ord(".")]]
    shared, conts = joint_continuations(tok, prompt, [" a", " 2"], suffix="Q: it is")
    assert shared == prompt[:-1] and conts == [[ord("s"), ord(" "), ord("a")], [1000, ord("2")]]
    with pytest.raises(ValueError, match="does not end with the tokens of its suffix"):
        joint_continuations(tok, prompt, [" 1"], suffix="other")


def test_rank_candidates_prefers_the_context_tokens(sp):
    """A model that copies the key as the needle tokenized it ranks the answer first (the plumbing)."""
    import torch

    sample = next(s for s in passkey_samples(sp, [256], [0.5], 4, 4, seed=2))
    key_ids = sp.encode(" " + sample.answer.strip())

    class Copier:  # log-prob 0 for the next token of the key as the needle tokenized it, -20 otherwise
        max_batch, device, vocab_size = 8, "cpu", sp.vocab_size

        def logits(self, tokens, last_n=None):
            b, s = tokens.shape
            out = torch.full((b, s, self.vocab_size), -20.0)
            for row in range(b):
                seq = tokens[row].tolist()
                for i in range(s):
                    # after a prefix of the key's tokens (in the question's tail), predict the next one
                    for k in range(len(key_ids)):
                        if seq[i - k + 1 : i + 1] == key_ids[:k] and i - k + 1 >= len(sample.prompt) - 8:
                            out[row, i, key_ids[k]] = 0.0
            return out if last_n is None else out[:, -last_n:]

    assert rank_candidates(Copier(), sp, sample.prompt, sample.candidates, sample.suffix) == sample.answer_index


def test_ruler_candidates_are_scored_with_their_question(sp):
    """Every RULER task hands its question to the scorer: each candidate is tokenized together with it, and
    shared prompt + continuation is exactly the prompt's text followed by the candidate."""
    from megamid.eval.ruler import TASKS, ruler_samples

    samples = ruler_samples(sp, list(TASKS), [1024], per_length=1, num_candidates=3, seed=4)
    assert sorted({s.task for s in samples}) == sorted(TASKS)
    for sample in samples:
        assert sample.suffix and sample.prompt[-len(sp.encode(sample.suffix)):] == sp.encode(sample.suffix)
        shared, conts = joint_continuations(sp, sample.prompt, sample.candidates, sample.suffix)
        for cand, cont in zip(sample.candidates, conts):
            assert sp.decode(shared + cont) == sp.decode(sample.prompt) + cand, sample.task
