"""python -m pytest -q tests/data/test_data_errors.py

Bad data gets one clear error naming the source, the problem and what is valid."""

import os
import shutil

import pytest

from megamid.config import ConfigError
from megamid.config.data import DataConfig
from megamid.data import DataError
from megamid.data.mixture_dataset import MixtureDataset

# megatron's IndexedDataset.__del__ complains when its constructor failed: it must never be reached
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def build(prefixes, vocab_size=258, weights=None, **kw):
    weights = weights or [1.0] * len(prefixes)
    cfg = DataConfig.from_dict({"sources": [{"name": n, "prefix": p, "weight": w}
                                            for (n, p), w in zip(prefixes.items(), weights)]})
    return MixtureDataset(cfg, 16, 10, eod=min(257, vocab_size - 1), pad=0, vocab_size=vocab_size, **kw)


def copy_source(corpus, tmp_path, name="code"):
    prefix = str(tmp_path / "copy")
    for ext in (".bin", ".idx"):
        shutil.copy(corpus[name] + ext, prefix + ext)
    return prefix


def test_missing_file(corpus, tmp_path):
    with pytest.raises(DataError, match=r"source 'gone': .*gone\.idx not found; a source prefix needs PREFIX\.bin"):
        build({"code": corpus["code"], "gone": str(tmp_path / "gone")})


def test_truncated_idx(corpus, tmp_path):
    prefix = copy_source(corpus, tmp_path)
    with open(prefix + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(prefix + ".idx") // 2)
    with pytest.raises(DataError, match=r"source 'broken': .*copy\.idx is not a valid index for .*copy\.bin: \d+ bytes, "
                       r"but its header's 40 sequences and 41 document indices need \d+ \(truncated.*rebuild"):
        build({"broken": prefix})


def test_truncated_bin(corpus, tmp_path):
    prefix = copy_source(corpus, tmp_path)
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"source 'broken': .*copy\.bin \(100 bytes\) and .*copy\.idx do not belong together: "
                       r"the index's 40 sequences \(40 documents\) of uint16 tokens end at byte \d+; the \.bin is truncated"):
        build({"broken": prefix})


def test_token_ids_beyond_vocab(corpus, tmp_path):
    with pytest.raises(DataError, match=r"source 'code': token id 257 .* beyond the model's vocab \(valid ids: 0\.\.199\)"):
        build({"code": corpus["code"]}, vocab_size=200)
    prefix = copy_source(corpus, tmp_path)  # no stats file: the check scans the .bin
    with pytest.raises(DataError, match=r"source 'scan': token id 257"):
        build({"scan": prefix}, vocab_size=200)


def test_empty_source(tmp_path, source_writer):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    import numpy as np

    prefix = str(tmp_path / "empty")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    builder.finalize(prefix + ".idx")
    with pytest.raises(DataError, match=r"source 'empty': .*empty\.bin holds no tokens"):
        build({"empty": prefix})
    with pytest.raises(DataError, match=r"no documents left"):
        source_writer(tmp_path, "blank", ["   ", "\n"])


def test_zero_weight_source_is_not_opened(corpus, tmp_path):
    ds = build({"code": corpus["code"], "gone": str(tmp_path / "gone")}, weights=[1.0, 0.0])
    assert ds.consumed_samples_per_source(10) == {"code": 10, "gone": 0}


@pytest.mark.parametrize("weights, match", [([-1.0, 1.0], r"data\.sources\[0\]\.weight=-1\.0 is invalid: weights must be >= 0"),
                                            ([0.0, 0.0], r"data\.sources\[\*\]\.weight=\[0\.0, 0\.0\] is invalid: all zero")])
def test_bad_weights(corpus, weights, match):
    with pytest.raises(ConfigError, match=match):
        build({"code": corpus["code"], "prose": corpus["prose"]}, weights=weights)


def test_bad_dataset_arguments(corpus):
    with pytest.raises(ConfigError, match=r"seq_len=0 is invalid"):
        cfg = DataConfig.from_dict({"sources": [{"name": "code", "prefix": corpus["code"]}]})
        MixtureDataset(cfg, 0, 10, eod=257, pad=256, vocab_size=258)
    with pytest.raises(ConfigError, match=r"start_tokens\['code'\]=-4 is invalid"):
        build({"code": corpus["code"]}, start_tokens={"code": -4})


def test_bin_paired_with_another_sources_idx(corpus, tmp_path):
    prefix = copy_source(corpus, tmp_path)
    shutil.copy(corpus["web"] + ".idx", prefix + ".idx")
    with pytest.raises(DataError, match=r"source 'broken': .*copy\.bin \(\d+ bytes\) and .*copy\.idx do not belong "
                                        r"together: the index's 50 sequences .* comes from another source"):
        build({"broken": prefix})


@pytest.mark.parametrize("damage, match", [
    (lambda b: b"garbage!" * 8, r"expected a Megatron indexed-dataset header"),
    (lambda b: b[:9] + (2).to_bytes(8, "little") + b[17:], r"version 2, expected 1"),
    (lambda b: b[:17] + bytes([42]) + b[18:], r"dtype code 42"),
    (lambda b: b[:-8] + (7).to_bytes(8, "little"), r"its 41 document indices do not run from 0 to its 40 sequences"),
    (lambda b: b[:34 + 4] + (5).to_bytes(4, "little") + b[34 + 8:], r"its sequence pointers are not the running sum"),
])
def test_corrupt_idx_is_named_and_megatron_never_sees_it(corpus, tmp_path, damage, match):
    prefix = copy_source(corpus, tmp_path)
    with open(prefix + ".idx", "rb") as f:
        raw = f.read()
    with open(prefix + ".idx", "wb") as f:
        f.write(damage(raw))
    with pytest.raises(DataError, match=r"source 'broken': .*copy\.idx is not a valid index for .*copy\.bin: " + match):
        build({"broken": prefix})


def test_an_index_larger_than_host_memory_is_refused_before_allocating(corpus):
    from megamid.platform.host import host_memory_bytes

    too_many = host_memory_bytes() // 10 + 1
    cfg = DataConfig.from_dict({"sources": [{"name": "code", "prefix": corpus["code"]}]})
    with pytest.raises(DataError, match=r"num_samples=[\d,]+ \(the phase's steps x global_batch_size\) is too many: "
                                        r"its blended sample index needs ~[\d.]+ GiB \(10 bytes per sample\) in host memory"):
        MixtureDataset(cfg, 16, too_many, eod=257, pad=0, vocab_size=258)
