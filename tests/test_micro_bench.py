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


def test_controls_interleaved_runs():
    done = subprocess.run([sys.executable, "benchmarks/micro/controls_interleaved.py", "--rounds", "2", "--steps", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "controls ms/step" in done.stdout and "median" in done.stdout


def test_fused_kernels_cut_the_launches_per_layer():
    """The kernel path's launches per trunk layer (micro_models.launches_per_step, the Triton kernels under the
    interpreter): q/k/v and gate/up one matmul each, RoPE fused with the K/V store, each residual add fused
    with the norm after it: at most 10 (27 before the add/norm and RoPE fusions), against about 35 on torch."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "micro"))
    from micro_models import launch_profile
    triton, torch_ops = launch_profile(use_triton=True), launch_profile(use_triton=False)
    assert triton["per_layer"] <= 10, triton
    assert torch_ops["per_layer"] >= 3 * triton["per_layer"], (torch_ops, triton)


def test_launches_by_controls_runs():
    """The launch counts per set of controls (torch path here, without the interpreter): every setting printed,
    and every control costs launches (a setting that counted none would not be applied)."""
    done = subprocess.run([sys.executable, "benchmarks/micro/launches_by_controls.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = dict(line.split(": ")[0:2] for line in done.stdout.splitlines() if "launches per step" in line)
    n = {name: int(v.split()[0]) for name, v in counts.items()}
    assert list(n) == ["plain", "repetition+presence", "repetition+presence+gate", "all controls", "all controls+gate"]
    assert n["plain"] < n["repetition+presence"] < n["repetition+presence+gate"] and n["all controls"] < n[
        "all controls+gate"] and n["repetition+presence"] < n["all controls"]
