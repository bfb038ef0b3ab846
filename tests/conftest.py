import pytest
import torch

# Tiny CPU tensors are far slower with several threads on a shared 2-core machine (seen: 16 s vs 1 s for
# three small CycleGAN steps); one thread keeps the suite's time predictable.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
