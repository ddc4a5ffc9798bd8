import os

import pytest
import torch

# Tiny models on 2 shared cores: one intra-op thread per pytest-xdist worker avoids oversubscription
# (two threads per worker ran small models many times slower on the CI machine).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
