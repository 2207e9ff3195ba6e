"""The benchmark scripts run and print the JSON they document (tiny configs; the figures themselves are
measured by hand, see README "Performance")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "experiments" / "benchmarks"

# Stands in for a checkout of the public port: the same constructor and methods the benchmark uses, and the
# two things it needs switched to run on CPU (it fails unless the benchmark switched them).
FAKE_PORT = '''
import platform
import torch
from torch import nn

if platform.system() != "Windows":
    raise ImportError("InPlaceABN needs its compiled CUDA extension")


class AutoDeeplab(nn.Module):
    def __init__(self, num_classes, num_layers, criterion, filter_multiplier, block_multiplier, step):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 1000, 1), nn.Conv2d(1000, num_classes, 1))
        self.betas = nn.Parameter(torch.zeros(num_layers, 4, 3))

    def weight_parameters(self):
        return list(self.conv.parameters())

    def forward(self, x):
        return self.conv(x) + torch.zeros(1).cuda()
'''


def _bench(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_supernet.py"), "--smoke-test",
                           "--no-flops", "--threads", "1", "--json", *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_bench_supernet_times_the_port_in_the_same_rounds(tmp_path: Path):
    (tmp_path / "auto_deeplab.py").write_text(FAKE_PORT)
    out = _bench("--ops", "darts", "--port", str(tmp_path))
    base, port = out["results"]
    assert port["variant"] == "port" and port["config"]["impl"] == "public port"
    assert port["weight_params_m"] == round((3 * 1000 + 1000 + 1000 * 5 + 5) / 1e6, 3)  # no arch parameters
    assert port["arch_step_s"]["median"] is None
    for key in ("weight_step_s", "arch_step_s", "peak_rss_gb", "weight_params_m"):
        assert key in base
    assert base["vs_port"]["source"].startswith("measured in this run")
    assert base["vs_port"]["step_ratio"] == pytest.approx(
        base["weight_step_s"]["median"] / port["weight_step_s"]["median"], abs=1e-3)
    assert base["vs_port"]["search_step_ratio"] == pytest.approx(  # weight + arch against two port steps
        base["search_step_s"]["median"] / (2 * port["weight_step_s"]["median"]), abs=1e-3)


def test_bench_data_measures_the_pipeline_against_decoding():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_data.py"), "--images", "2", "--rounds",
                           "1", "--size", "320x160", "--json"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("pipeline_images_per_s", "reference_images_per_s", "decode_images_per_s"):
        assert out[key] > 0
    assert out["pipeline_over_decode"] == pytest.approx(
        out["pipeline_images_per_s"] / out["decode_images_per_s"], abs=2e-3)
    assert out["loader_workers_per_gpu"] >= 1 and out["config"]["crop_size"] == 321
