import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # the marker, not item.keywords: those also hold directory names (a checkout in .../gpu/)
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
