"""The soak benchmark's short version: a few loopback clients for a few seconds against tiny models."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tiny_models import char_tokenizer, tiny_lm, tiny_rm


@pytest.fixture(scope="module")
def soak():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_short_soak_passes(soak, tmp_path):
    tiny_lm().save_pretrained(tmp_path / "lm")
    tiny_rm().save_pretrained(tmp_path / "rm")
    for d in ("lm", "rm"):
        char_tokenizer().save_pretrained(tmp_path / d)
    out = tmp_path / "soak.json"
    result = soak.main(["--lm", str(tmp_path / "lm"), "--rm", str(tmp_path / "rm"), "--clients", "4",
                        "--duration", "8", "--max-tokens", "8", "--batch-size", "4", "--out", str(out)])
    assert result["passed"], json.dumps(result, indent=1)[:3000]
    assert result["valid_requests_served"] >= 10 and result["bad_inputs_tried"] >= 5
    assert result["faults_injected"] >= 1
    assert json.loads(out.read_text())["end"]["blocks_in_use"] == 0
