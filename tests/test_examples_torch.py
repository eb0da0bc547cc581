"""The PyTorch example of docs/own_network.md runs (skipped where PyTorch is not installed)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "torch_own_network.py"


def _load():
    spec = importlib.util.spec_from_file_location("torch_own_network", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_example_records_the_pair_observables():
    # In-process and without the fit (its compile dominates); the full run is a slow test.
    ex = _load()
    traj, _ = ex.main(["--epochs", "30", "--seeds", "2", "--width", "16", "--no-fit"])
    assert traj.hyw.shape == (2, 30, 3) and float(traj.dx2) == 1.0
    assert float(traj.dy2) == pytest.approx(0.5, rel=1e-6)
    # Epoch 0 is the initialization: recompute seed 1's h and y with PyTorch itself.
    torch.manual_seed(1)
    net = ex.make_net(16, 4, 0.5)
    x = torch.tensor([[-1.0], [0.0]])
    h = net[:6](x).detach().numpy()  # through the Tanh of hidden layer 2
    out = net(x).detach().numpy()
    np.testing.assert_allclose(traj.h[1, 0], ((h[1] - h[0]) ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(traj.y[1, 0], ((out[1] - out[0]) ** 2).sum(), rtol=1e-5)


@pytest.mark.slow
def test_torch_example_fits(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "600", "--seeds", "2", "--width", "32",
         "--lr", "0.05", "--plot", str(tmp_path / "fit.png")],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RateFit: 2/2 converged" in proc.stdout and (tmp_path / "fit.png").exists()
