"""The GPU script's benchmarks run end to end with --tiny on CPU, so a lent GPU's few minutes are not lost to a
script error (benchmarks/gpu/run.sh runs them on the real shapes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,extra,written", [  # the plain runs are run.sh's, below
    ("bench_e2e_gpu.py", ["--shared-trunk"], "bench_e2e_gpu_1B_shared-trunk_dynamic.json"),
    ("bench_e2e_gpu.py", ["--controls"], "bench_e2e_gpu_1B_two-trunks_dynamic_controls.json"),
])
def test_gpu_benchmark_runs_tiny_on_cpu(tmp_path, script, extra, written):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / script), "--tiny", "--out",
                           str(tmp_path), *extra], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / written).read_text())
    assert result["runs"]


def test_run_sh_dry_run_on_cpu(tmp_path):
    # run.sh --tiny: every stage runs under its timeout, logs land in $OUT as each goes, few files in all (a
    # device returns at most 8), and the benchmarks' JSON is folded into results.jsonl
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh"), "--tiny"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OUT": str(out)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["bench.log", "build.log", "e2e.log", "results.jsonl", "summary.log", "tests.log"], files
    summary = (out / "summary.log").read_text()
    assert summary.count("   exit 0 after") == 5 and "timed out" not in summary and "skipped" not in summary, summary
    assert "passed" in (out / "tests.log").read_text()
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_file = {r["file"]: r["result"] for r in results}
    assert set(by_file) == {"bench_e2e_gpu_1B_two-trunks_dynamic.json", "bench_bridge_gpu.json"}
    assert by_file["bench_e2e_gpu_1B_two-trunks_dynamic.json"]["runs"]
    bridge = by_file["bench_bridge_gpu.json"]
    assert bridge["runs"]["bridge_eager"][0]["tokenize_ms_per_step"] > 0
    assert len(bridge["bridge_over_same_vocabulary_eager"]) == 2
