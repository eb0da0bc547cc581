"""The traced rate fit kept on disk as ``jax.export`` bytes, so that a later process skips
tracing it (private; used by :mod:`unijax.fit._run` when :func:`unijax._cache.program_dir`
gives a private directory). Each of the fit's two stages (:mod:`unijax.fit._program`:
``optimize``, then ``assess``) is a program of its own, with its own file.

Tracing and lowering the fit costs seconds in every process (about 4 s of a warm first fit on a
loaded 2-core CPU); its compilation is answered by JAX's persistent cache. The first process
that fits a bucket therefore exports the traced program (``jax.export``: StableHLO bytecode in
a flatbuffer, with its input and output types) and writes it to ``fit-<key>.jaxexport``; a later
process deserialises it, checks it, and compiles it, which JAX's cache answers. Every process
compiles the *exported* program, so that its compilation is the one JAX's cache holds.

**Trust.** The file is data: ``jax.export.deserialize`` parses a flatbuffer and the program is
StableHLO that XLA compiles; nothing is unpickled and no Python is run. What the file computes
is trusted as the user's own work, so:

* it is read only from a directory that no one else can write (:func:`unijax._cache.program_dir`);
* its name is a hash of everything that determines the program (:func:`file_key`): the stage,
  the bucket's shapes and dtypes, the fit options, the platform, the x64 flag, the JAX and
  jaxlib versions, unijax's version and a hash of the source of ``unijax.fit`` and
  ``unijax.theory`` (so edited code never finds an old program), and the file starts with that
  key again;
* on load the exported input and output types and tree structures must be the expected ones
  (:func:`out_spec`, :func:`lm_spec`), for one device of this platform;
* any exception while reading, checking, compiling or running a loaded program leads to a
  rebuild by tracing, which replaces the file; the key is then not read again in this process.

Writes are atomic (a temporary file, mode ``0o600``, then ``os.replace``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
import threading
from pathlib import Path

import jax
import numpy as np

from unijax.fit._args import FitOpts, compiler_options

__all__ = ["LM_FIELDS", "OUT_FIELDS", "STAGES", "file_key", "lm_spec", "out_spec", "prepare",
           "stage_shape", "stage_spec"]

#: The fit's stages, in order: the optimizer, then the assessment of its optimum.
STAGES = ("optimize", "assess")

_MAGIC = b"unijax fit export 1\n"
_DISTRUSTED: set[str] = set()  # keys whose file failed in this process: rebuilt, not read again

#: The fit program's outputs, in the order the exported program returns them: name ->
#: (shape after the batch axis, dtype). ``"m"`` is the bucket's epoch count. A program whose
#: outputs differ from this table is never loaded (tests/test_fit_buckets.py checks the
#: table against the traced program).
OUT_FIELDS: dict[str, tuple[tuple, str]] = {
    "converged": ((), "bool"),
    "cov_log_rates": ((2, 2), "float64"),
    "eta_h": ((), "float64"),
    "eta_y": ((), "float64"),
    "good_fit": ((), "bool"),
    "identified": ((), "bool"),
    "init_eta_h": ((), "float64"),
    "init_eta_y": ((), "float64"),
    "max_steps": ((), "int32"),
    "n_iters": ((), "int64"),
    "n_ode_steps": ((), "int64"),
    "ode_ok": ((), "bool"),
    "r2": ((3,), "float64"),
    "sse": ((), "float64"),
    "status": ((), "int32"),
    "stderr_eta_h": ((), "float64"),
    "stderr_eta_y": ((), "float64"),
    "step_budget_hit": ((), "bool"),
    "z0_fit": ((3,), "float64"),
    "z_fit": (("m", 3), "float64"),
}


#: The first stage's outputs (the leaves of the optimizer's final state,
#: ``unijax.fit._lm.LMState``, in the order it flattens): name -> (shape after the batch axis,
#: dtype), ``"k"`` the parameters (2, or 5 with ``fit_initial``), ``"m"`` the bucket's epochs,
#: ``"3m"`` the Jacobian's rows (none with ``fit_initial``, whose second stage needs none).
#: Checked against the traced program by tests/test_fit_buckets.py.
LM_FIELDS: dict[str, tuple[tuple, str]] = {
    "p": (("k",), "float64"),
    "p_start": (("k",), "float64"),
    "sse": ((), "float64"),
    "hess": (("k", "k"), "float64"),
    "grad": (("k",), "float64"),
    "ys": (("m", 3), "float64"),
    "steps": ((), "int64"),
    "jac": (("3m", "k"), "float64"),
    "hit": ((), "bool"),
    "p_eval": (("k",), "float64"),
    "pred": ((), "float64"),
    "lam": ((), "float64"),
    "nu": ((), "float64"),
    "n_iter": ((), "int64"),
    "n_stuck": ((), "int64"),
    "flagged": ((), "bool"),
    "converged": ((), "bool"),
    "done": ((), "bool"),
}


def _expand(table: dict, b: int, sizes: dict, leave_out=()) -> tuple[tuple[str, tuple, str], ...]:
    """``(name, shape, dtype)`` of every field of ``table`` but ``leave_out``, in its order:
    the batch axis ``b``, then the field's shape with each named size looked up in ``sizes``."""
    return tuple((name, (b, *(sizes.get(d, d) for d in shape)), dtype)
                 for name, (shape, dtype) in table.items() if name not in leave_out)


def lm_spec(b: int, m: int, fit_initial: bool) -> tuple[tuple[str, tuple, str], ...]:
    """The first stage's outputs for ``b`` trials on ``m`` epochs: ``(name, shape, dtype)`` in
    :data:`LM_FIELDS` order."""
    sizes = {"m": m, "3m": 0 if fit_initial else 3 * m, "k": 5 if fit_initial else 2}
    return _expand(LM_FIELDS, b, sizes)


def stage_shape(stage: str, args) -> tuple[int, int]:
    """``(trials, padded epochs)`` of the arguments of ``stage``: ``(grid, Z, ...)`` for
    ``"optimize"``, ``(lm, grid, Z, ...)`` for ``"assess"``."""
    z = args[1] if stage == "optimize" else args[2]
    b, m = np.shape(z)[:2]
    return int(b), int(m)


def stage_spec(stage: str, b: int, m: int, opts: FitOpts, return_trajectory: bool):
    """The outputs of ``stage`` (:data:`STAGES`) for ``b`` trials on ``m`` epochs."""
    if stage == "optimize":
        return lm_spec(b, m, opts.fit_initial)
    return out_spec(b, m, return_trajectory)


def out_spec(b: int, m: int, return_trajectory: bool) -> tuple[tuple[str, tuple, str], ...]:
    """The outputs of the fit of ``b`` trials on ``m`` (padded) epochs: ``(name, shape,
    dtype)`` in :data:`OUT_FIELDS` order (``z_fit`` only when ``return_trajectory``)."""
    return _expand(OUT_FIELDS, b, {"m": m}, leave_out=() if return_trajectory else ("z_fit",))


@functools.cache
def _source_hash() -> str:
    """sha256 of the source of the fit package and the theory module (names and bytes)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted([*root.joinpath("fit").glob("*.py"), root / "theory.py"]):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def file_key(stage: str, leaves, opts: FitOpts, return_trajectory: bool, platform: str) -> str:
    """The hex key of the program of ``stage`` for the argument ``leaves`` (their shapes and
    dtypes)."""
    import jaxlib

    from unijax import __version__

    what = (
        stage,
        tuple((tuple(a.shape), str(a.dtype)) for a in leaves),
        repr(opts), bool(return_trajectory), platform, bool(jax.config.jax_enable_x64),
        jax.__version__, jaxlib.__version__, __version__, _source_hash(),
    )
    return hashlib.sha256(repr(what).encode()).hexdigest()[:40]


def _export(stage: str, args, opts: FitOpts, return_trajectory: bool, platform: str):
    """Trace and export ``stage`` on ``args``: ``(grid, Z, dx2, dy2, init)`` for
    ``"optimize"``, ``(lm, grid, Z, dx2, dy2)`` for ``"assess"`` (``lm``: the first stage's
    output tuple). A ``jax.export`` ``Exported`` over the flat argument leaves, returning the
    outputs as :func:`stage_spec`."""
    from jax import export

    from unijax.fit._program import fit_assess, fit_optimize

    leaves, treedef = jax.tree_util.tree_flatten(args)

    # Named as the programs they wrap: the tests' trace counters (tests/_compiles.py) know the
    # stages by these names, whichever path traced them.
    def _fit_optimize(*xs):
        return fit_optimize(*jax.tree_util.tree_unflatten(treedef, xs), opts=opts)

    names = [k for k, _, _ in out_spec(0, 0, return_trajectory)]

    def _fit_assess(*xs):
        out = fit_assess(*jax.tree_util.tree_unflatten(treedef, xs), opts=opts,
                         return_trajectory=return_trajectory)
        return tuple(out[k] for k in names)

    fn = _fit_optimize if stage == "optimize" else _fit_assess
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in leaves]
    return export.export(jax.jit(fn), platforms=[platform])(*specs)


def _check(exp, leaves, spec, platform: str) -> None:
    """Raise ``ValueError`` unless ``exp`` takes ``leaves`` and returns ``spec`` on one device
    of ``platform``."""
    got_in = tuple((tuple(a.shape), str(a.dtype)) for a in exp.in_avals)
    want_in = tuple((tuple(a.shape), str(a.dtype)) for a in leaves)
    got_out = tuple((tuple(a.shape), str(a.dtype)) for a in exp.out_avals)
    want_out = tuple((shape, dtype) for _, shape, dtype in spec)
    want_in_tree = jax.tree_util.tree_structure((tuple(0 for _ in want_in), {}))
    want_out_tree = jax.tree_util.tree_structure(tuple(0 for _ in want_out))
    problems = [
        what for what, ok in (
            (f"inputs {got_in} != {want_in}", got_in == want_in),
            (f"outputs {got_out} != {want_out}", got_out == want_out),
            (f"input tree {exp.in_tree} != {want_in_tree}", exp.in_tree == want_in_tree),
            (f"output tree {exp.out_tree} != {want_out_tree}", exp.out_tree == want_out_tree),
            (f"platforms {exp.platforms}", platform in exp.platforms),
            (f"{exp.nr_devices} devices", exp.nr_devices == 1),
        ) if not ok
    ]
    if problems:
        raise ValueError("not the expected fit program: " + "; ".join(problems))


def _read(path: Path, key: str):
    """The ``Exported`` stored at ``path`` under ``key``, or None when there is no file."""
    from jax import export

    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    head = _MAGIC + key.encode() + b"\n"
    if not blob.startswith(head):
        raise ValueError(f"{path} does not start with the header of key {key}")
    return export.deserialize(bytearray(blob[len(head):]))


def _write(path: Path, key: str, payload: bytes) -> None:
    """Write ``payload`` under ``key`` to ``path`` atomically, mode ``0o600``; a failure to
    write (a full disk, a read-only directory) only costs the next process its tracing."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".jaxexport")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp's file is 0o600 already
            f.write(_MAGIC + key.encode() + b"\n" + bytes(payload))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _lower(exp, leaves, device, batch: int):
    """``exp`` lowered for ``leaves`` on ``device``, and a function that compiles it (XLA's
    compilation releases the GIL: it can run in a thread while the next stage is traced)."""
    options = compiler_options(device.platform, batch)
    with jax.default_device(device):
        lowered = jax.jit(exp.call).lower(*leaves)
    return lambda: lowered.compile(compiler_options=options)


class _Program:
    """A compiled stage on its argument tree, from an exported program: returns the output
    dict (``"assess"``, ``z_fit`` None unless ``return_trajectory``) or tuple (``"optimize"``)
    as the traced stage does; one loaded from disk that raises when called is rebuilt
    (``rebuild(error) -> compiled``) and the call repeated."""

    def __init__(self, compiled, names, return_trajectory: bool, rebuild=None,
                 as_tuple: bool = False):
        self._compiled, self._names, self._rt = compiled, names, return_trajectory
        self._rebuild = rebuild  # None once the program is this process's own trace
        self._as_tuple = as_tuple
        self._lock = threading.Lock()

    def _run(self, compiled, leaves):
        outs = compiled(*leaves)
        if self._as_tuple:
            return tuple(outs)
        out = dict(zip(self._names, outs, strict=True))
        if not self._rt:
            out["z_fit"] = None
        return out

    def __call__(self, *args) -> dict:
        leaves = jax.tree_util.tree_leaves(args)
        compiled, rebuild = self._compiled, self._rebuild
        if rebuild is None:
            return self._run(compiled, leaves)
        try:
            return jax.block_until_ready(self._run(compiled, leaves))
        except Exception as e:  # noqa: BLE001 - whatever a loaded program raises: rebuild it
            with self._lock:
                if self._rebuild is not None:
                    self._compiled, self._rebuild = self._rebuild(e), None
            return self._run(self._compiled, leaves)


def prepare(stage: str, args, *, opts: FitOpts, return_trajectory: bool, device,
            directory: Path):
    """The program of ``stage`` for ``args`` (see :func:`_export`) through the exported program
    in ``directory``, up to its compilation: loaded and checked when there is one to trust,
    else traced, exported and written there; then lowered. Returns ``finish() -> callable``
    (the compiled stage, as :class:`_Program`), which may run in another thread."""
    leaves = jax.tree_util.tree_leaves(args)
    platform = device.platform
    key = file_key(stage, leaves, opts, return_trajectory, platform)
    path = directory / (f"fit-{key}.jaxexport" if stage == "optimize"
                        else f"fit-{stage}-{key}.jaxexport")
    b, m = stage_shape(stage, args)
    spec = stage_spec(stage, b, m, opts, return_trajectory)
    names = [k for k, _, _ in spec]
    as_tuple = stage == "optimize"

    def build(reason=None):
        """Trace and export; returns ``finish``."""
        if reason is not None:
            _DISTRUSTED.add(key)
            print(f"unijax: {path.name}: {type(reason).__name__}: {str(reason)[:300]}; "
                  "tracing the fit again and replacing the file", file=sys.stderr)
        from jax import export

        exp = _export(stage, args, opts, return_trajectory, platform)
        try:
            payload = exp.serialize()
        except ImportError:  # no flatbuffers (a dependency, but): run it, keep nothing
            return _lower(exp, leaves, device, b)
        _write(path, key, payload)
        # Compiled as a later process will compile it, from the deserialised program: the
        # exported object as traced lowers to other text, which JAX's cache would key apart.
        return _lower(export.deserialize(payload), leaves, device, b)

    def rebuild(reason):
        return build(reason)()

    if key not in _DISTRUSTED:
        try:
            exp = _read(path, key)
            if exp is not None:
                _check(exp, leaves, spec, platform)
                finish = _lower(exp, leaves, device, b)

                def loaded():
                    try:
                        compiled = finish()
                    except Exception as e:  # noqa: BLE001 - a loaded file that fails: rebuild
                        return _Program(rebuild(e), names, return_trajectory, as_tuple=as_tuple)
                    return _Program(compiled, names, return_trajectory, rebuild=rebuild,
                                    as_tuple=as_tuple)

                return loaded
        except Exception as e:  # noqa: BLE001 - whatever a loaded file raises: rebuild it
            finish = build(e)
            return lambda: _Program(finish(), names, return_trajectory, as_tuple=as_tuple)
    finish = build()
    return lambda: _Program(finish(), names, return_trajectory, as_tuple=as_tuple)

