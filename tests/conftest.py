import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU the Triton kernels run under the interpreter on CPU tensors. Triton reads this when
# @triton.jit decorates, so it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def hh_data():
    """The real HH-RLHF preference pairs, wherever args_engine finds them (argument, $ARGS_ENGINE_HH_RLHF, beside
    the checkout, the hub cache). Tests that need them skip with the reason when they are nowhere, except under
    CI (CI=true), where the file always lies beside the checkout and its absence is a failure."""
    from args_engine.reward.data import default_data_path
    try:
        return default_data_path()
    except FileNotFoundError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {e}")
        pytest.skip(f"no HH-RLHF data here: {e}")
