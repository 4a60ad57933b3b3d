"""The micro benchmark harness (benchmarks/micro, pytest-benchmark) keeps running: its tiny-shape cases, each
once (--benchmark-disable), in a child pytest."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_micro_benchmarks_run_at_the_tiny_shape():
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/micro", "-q", "-k", "tiny and not host",
                           "--benchmark-disable", "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "10 passed" in done.stdout
