"""The GPU script's benchmarks run end to end with --tiny on CPU, so a lent GPU's few minutes are not lost to a
script error (benchmarks/gpu/run.sh runs them on the real shapes)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,extra,written", [
    ("bench_e2e_gpu.py", [], "bench_e2e_gpu_1B_two-trunks_dynamic.json"),
    ("bench_e2e_gpu.py", ["--shared-trunk"], "bench_e2e_gpu_1B_shared-trunk_dynamic.json"),
    ("bench_bridge_gpu.py", [], "bench_bridge_gpu.json"),
])
def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path, script, extra, written):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / script), "--tiny", "--out",
                           str(tmp_path), *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / written).read_text())
    assert result["runs"]
    if script == "bench_bridge_gpu.py":
        assert result["runs"]["bridge_eager"][0]["tokenize_ms_per_step"] > 0
        assert len(result["bridge_over_same_vocabulary_eager"]) == 2
