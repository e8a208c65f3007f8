"""Fixtures for every test folder; shared helper functions live in tests/helpers (`from helpers.training import run`)."""

import pytest
import torch
import yaml

from helpers.training import recipe_dict, write_corpus


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # the marker, not item.keywords: those also hold directory names (a checkout in .../gpu/)
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A synthetic indexed corpus (byte tokens), written once per session (tests/data has its own)."""
    return write_corpus(str(tmp_path_factory.mktemp("corpus") / "syn"))


@pytest.fixture
def recipe_file(tmp_path, corpus):
    """make(**sections) -> path of the tiny recipe with `sections` merged in, training on `corpus`."""
    def make(**sections):
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe_dict(corpus, str(tmp_path / "ckpt"), **sections)))
        return str(path)

    return make
