"""Fixtures of the micro benchmarks (helpers in micro_models.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from micro_models import DEVICES  # noqa: E402


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
