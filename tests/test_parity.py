"""unijax trains exactly like PyTorch: golden trajectories from the authors' conventions.

``tests/golden/*.npz`` were written by ``benchmarks/make_golden.py`` (PyTorch, the ``[bench]``
extra; not needed here): networks built as the authors' code builds them, their initial state
dicts, and per epoch (before each update) the loss and ``(h, y, w)`` of the recorded pair under
``torch.optim.SGD`` / ``Adam``. Here unijax starts from the same weights
(``nets.params_from_torch`` + ``train.train(..., params=)``) with every config field pinned from
the file, and must reproduce the trajectories and the final weights to float32 round-off.

Tolerances. Both sides compute in float32 and differ only in summation order (XLA vs PyTorch's
kernels), i.e. by a few ulps (float32 eps = 1.2e-7) per operation, which training then carries
along. Measured maximum deviations over every case and epoch (``make_golden.py`` keeps each
(leaky) ReLU pre-activation at least 1e-6 of its scale away from the kink after the
initialization, where round-off could choose the side): h relative <= 1.0e-6 with SGD and
1.5e-5 with Adam (whose ``m / sqrt(v)`` normalizes away the size of tiny gradients, so their
round-off shows at full size); final weights <= 1.6e-6 (SGD) and 1.5e-5 (Adam) of the layer's
largest weight. The tolerances below are 10x these. Quantities that are differences of O(1)
outputs (``sqrt(loss)``, ``sqrt(y)``, ``w``) are compared with an absolute term of a few
output ulps, not relative to themselves (the loss falls to 1e-14 where its relative rounding
is O(1)). With jax.nn.leaky_relu's derivative at 0 (1 instead of PyTorch's 0.01) the leaky
cases miss by ~1e-2 after one epoch, far outside these tolerances.
"""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from unijax import configs, nets, train

GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.npz"))
FIELDS = [f.name for f in dataclasses.fields(configs.TrainConfig)]
# Every TrainConfig field that shapes the trajectory, pinned from the golden file (not left to
# defaults that could drift).
PINNED = ["arch", "nonlinearity", "gain", "lr", "epochs", "width", "depth", "layer", "optimizer",
          "batch_size", "dataset", "dx2", "dy2", "dtype", "dropout", "precision", "loss",
          "conv_layout"]

# (relative, absolute) tolerances, 10x the measured deviations (module docstring).
TOL = {"sgd": dict(h=1e-5, out=1e-5, out_abs=2e-6, params=2e-5),
       "adam": dict(h=2e-4, out=2e-4, out_abs=1e-4, params=2e-4)}


def load(name):
    z = np.load(GOLDEN / f"{name}.npz")
    meta = json.loads(str(z["config"]))
    cfg = configs.TrainConfig(name=name, **{k: meta[k] for k in PINNED})
    init = {k.removeprefix("init/"): z[k] for k in z.files if k.startswith("init/")}
    final = {k.removeprefix("final/"): z[k] for k in z.files if k.startswith("final/")}
    return z, meta, cfg, init, final


def train_from_golden(name):
    z, meta, cfg, init, final = load(name)
    # unijax's own data set of the config is the one PyTorch trained on.
    ds = train.load_data(cfg)
    np.testing.assert_array_equal(ds.x, z["x"])
    np.testing.assert_array_equal(ds.y, z["y"])
    net = train.make_network(cfg, out_dim=ds.out_dim)
    res = train.train(cfg, seeds=[0], params=nets.params_from_torch(init, net),
                      pair=tuple(meta["pair"]), return_params=True, chunk_epochs=cfg.epochs)
    return z, cfg, res, nets.params_from_torch(final, net)


def test_golden_files_cover_the_brief():
    assert set(CASES) == {
        "twopoint_leaky_relu", "twopoint_relu", "twopoint_tanh", "twopoint_elu",
        "twopoint_swish", "twopoint_linear", "xor_relu_mse", "conv_authors", "skip", "adam"}
    meta = {n: load(n)[1] for n in CASES}
    assert meta["xor_relu_mse"]["loss"] == "mse" and meta["xor_relu_mse"]["dataset"] == "xor"
    assert meta["conv_authors"]["conv_layout"] == "authors"
    assert meta["adam"]["optimizer"] == "adam" and meta["skip"]["arch"] == "skip"
    assert all(m["epochs"] >= 150 for m in meta.values())
    assert sum((GOLDEN / f"{n}.npz").stat().st_size for n in CASES) < 1_000_000


@pytest.mark.parametrize("name", CASES)
def test_trajectory_matches_pytorch(name):
    z, cfg, res, final = train_from_golden(name)
    tol = TOL[cfg.optimizer]
    assert res.loss.shape == (1, 1, cfg.epochs) and not res.n_diverged
    got = {k: np.asarray(getattr(res, k)[0, 0], np.float64) for k in ("loss", "h", "y", "w")}
    # h: a squared distance of hidden activations, O(0.01 - 1) throughout: relative.
    np.testing.assert_allclose(got["h"], z["h"], rtol=tol["h"], err_msg=f"{name}: h")
    # sqrt(loss) (the RMS residual) and sqrt(y) = |f(x2) - f(x1)|: O(1)-output differences.
    for key, ref in (("loss", z["loss"]), ("y", z["y_obs"])):
        np.testing.assert_allclose(np.sqrt(got[key]), np.sqrt(ref), rtol=tol["out"],
                                   atol=tol["out_abs"], err_msg=f"{name}: sqrt({key})")
    np.testing.assert_allclose(got["w"], z["w"], rtol=tol["out"], atol=tol["out_abs"],
                               err_msg=f"{name}: w")
    # The weights after the last update, leaf by leaf, relative to the leaf's largest entry.
    for path, leaf in jax.tree_util.tree_flatten_with_path(final)[0]:
        mine = np.asarray(res.final_params[path[0].key][path[1].key])[0, 0]
        scale = np.max(np.abs(leaf))
        np.testing.assert_allclose(mine, leaf, rtol=tol["params"], atol=tol["params"] * scale,
                                   err_msg=f"{name}: final {jax.tree_util.keystr(path)}")
