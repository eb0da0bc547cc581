"""One training program serves every grid size of a bucket (issue 13, section 1).

The trial batch ``n_gains * n_seeds`` is padded to a multiple of 8, then of the device count
(``unijax._batch.trial_bucket``); the padding repeats the last trial and is dropped. These
tests check the two promises: the program is compiled once per bucket, and padding never
changes a real trial's numbers (bitwise, whatever else is in the batch).
"""

import jax
import numpy as np
import pytest
from _compiles import count_traces

from unijax import configs, train

# A network no other test trains, so that the trace counts below start from zero.
CFG = configs.get("default", width=12, depth=2, epochs=12, lr=0.05)
FIELDS = ("loss", "h", "y", "w", "final_loss", "final_h", "final_y", "final_w", "diverged",
          "diverged_epoch", "reps", "initial_reps", "final_reps", "initial_outputs",
          "final_outputs", "initial_params", "final_params")


def run(seeds, **kw):
    return train.train(CFG, seeds=seeds, record_points=[0, 1], record_every=4, chunk_epochs=5,
                       return_params=True, **kw)


def assert_trials_equal(a, b, gains, seeds):
    """Every field of ``a`` equals ``b[gains][:, seeds]``, bit for bit."""
    for field in FIELDS:
        jax.tree.map(
            lambda x, y, field=field: np.testing.assert_array_equal(
                np.asarray(x), np.asarray(y)[gains][:, seeds], err_msg=field),
            getattr(a, field), getattr(b, field))


def test_three_five_and_seven_seeds_compile_the_training_program_once():
    with count_traces() as traces:
        results = [run(n) for n in (3, 5, 7)]
    assert traces["v_start"] == 1 and traces["v_chunk"] == 1, traces
    assert [r.n_padded for r in results] == [5, 3, 1]
    assert [r.loss.shape for r in results] == [(1, n, CFG.epochs) for n in (3, 5, 7)]
    # The next bucket (9-16 trials) is a new program, compiled once for all its sizes.
    with count_traces() as traces:
        run(9), run(12, gains=[1.0])
    assert traces["v_chunk"] == 1, traces


@pytest.mark.parametrize("vmap_size", ["auto", "all", 3])
def test_padding_trials_do_not_change_the_real_ones(vmap_size):
    # 8 seeds fill the bucket (no padding); 5 seeds are padded with 3 copies of seed 4; two
    # with 6 copies of the second; one seed alone is a bucket of its own (its own program, the
    # same numbers). On CPU "auto" skips padding trials in its loop, "all" computes them in
    # one vmap, 3 runs blocks of 2 (the largest divisor of 8 <= 3).
    full = run(8, vmap_size=vmap_size)
    assert full.n_padded == 0
    five = run(5, vmap_size=vmap_size)
    assert five.n_padded == 3
    assert_trials_equal(five, full, [0], list(range(5)))
    two = run([6, 2], vmap_size=vmap_size)
    assert two.n_padded == 6
    assert_trials_equal(two, full, [0], [6, 2])
    alone = run([6], vmap_size=vmap_size)
    assert alone.n_padded == 0
    assert_trials_equal(alone, full, [0], [6])


def test_a_padded_grid_of_gains_equals_the_full_grid():
    # 2 gains x 3 seeds = 6 trials, padded to 8 with copies of (gain 1.5, seed 2).
    full = run(4, gains=[0.5, 1.5])
    part = run(3, gains=[0.5, 1.5])
    assert (full.n_padded, part.n_padded) == (0, 2)
    assert_trials_equal(part, full, [0, 1], [0, 1, 2])
    np.testing.assert_array_equal(part.seeds, [0, 1, 2])


@pytest.mark.parametrize("vmap_size", ["auto", 3])
def test_padding_trials_are_not_initialized_on_cpu(monkeypatch, vmap_size):
    # Two seeds run in the bucket of 8: only the real trials' networks are drawn (with
    # vmap_size=3, blocks of 2: the first block, the two real trials); the padding trials'
    # parameters stay zero, never drawn, never trained. Seen in the whole (padded) initial
    # parameters, before the padding is cut off.
    from unijax import _batch
    from unijax.train import _program

    seen, real_gather = [], _batch.gather

    def gather(tree, n_valid):
        seen.append(jax.tree.map(np.asarray, tree))
        return real_gather(tree, n_valid)

    monkeypatch.setattr(_program._batch, "gather", gather)
    res = run([6, 2], vmap_size=vmap_size)
    assert res.n_padded == 6
    initial = seen[0]  # execute gathers the initial parameters first (return_params=True)
    kernels = np.stack([np.abs(a).reshape(8, -1).max(axis=1)
                        for a in jax.tree.leaves(initial) if a.ndim == 3], axis=1)
    drawn = 2
    assert (kernels[:drawn] > 0).all()
    assert (kernels[drawn:] == 0).all(), kernels
