"""The ``unijax`` command: run the paper's experiments, resumably, and write a report.

Usage::

    unijax list
    unijax run E3 [--preset quick|paper] [--seeds N] [--set key=value ...] [--out DIR]
    unijax run all                   # every experiment, quick preset, ./unijax_out
    unijax report DIR                # rebuild DIR/report.md from the stored results
    unijax run all --coordinator HOST:PORT --num-processes N --process-id I   # on N hosts

Multi-host (one process per host, all with the same arguments but ``--process-id``): every
process runs every experiment, and each network grid and rate fit is laid over the devices of
all processes (``jax.distributed``); process 0 alone reads and writes ``--out``, which must be
a directory all processes see (NFS, Lustre, ...), and decides for all which stored pieces of
work are reused. A failure in one process ends the run on all; finished work is kept.

Your files are safe: unijax writes only into directories it created (each carries a
``.unijax.json`` marker) and there overwrites or deletes only its own files; ``--fresh``
discards only those. A directory it did not write is refused (exit 2), naming the path. A
damaged stored file is reported on stderr and its piece of work recomputed (see
:mod:`unijax._store`).

``python -m unijax ...`` is the same. Exit status: 0 success; 1 an experiment or the report
failed (the others still ran and were stored); 2 bad input or a refusal to touch a file unijax
did not write (nothing of it written); 130 interrupted (finished work is kept: run the same
command again to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unijax import experiments
from unijax._store import (
    ConfigMismatchError,
    ForeignDataError,
    ResultStore,
    claim_dir,
    config_to_dict,
)
from unijax.experiments._common import (
    BadInput,
    apply_overrides,
    field_types,
    parse_overrides,
    result_to_arrays,
)

__all__ = ["main", "build_parser"]

DEFAULT_OUT = "unijax_out"
#: Experiments that use the default architecture's fitted rates of an earlier experiment.
_RATE_SOURCES = ("E1", "E3")


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
                   help="sizes: quick (2-core CPU, ~15 min for all), paper (Tables 1-2, GPU), "
                   "tiny (smoke test, seconds)")
    r.add_argument("--seeds", type=str, default=None, metavar="N",
                   help="number of random seeds (trials) per setting")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable); `unijax list --keys` shows them")
    r.add_argument("--mnist", default=None, metavar="PATH",
                   help="MNIST directory of IDX files or .npz for E6/E8 (default: the bundled "
                   "8x8 digits)")
    r.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output directory (default ./{DEFAULT_OUT}); re-use it to resume")
    r.add_argument("--fresh", action="store_true",
                   help="discard unijax's stored results of the selected experiments in DIR first "
                   "(files unijax did not write stay)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    from unijax import sweep as sweep_lib  # the multi-host grid sweep (Scaling out)

    sweep_lib.add_distributed_args(r)

    rep = sub.add_parser("report", help="rebuild DIR/report.md from stored results")
    rep.add_argument("dir", metavar="DIR")

    sweep_lib.add_cli(sub)

    # `unijax list --keys` shows every config key per experiment.
    sub.choices["list"].add_argument("--keys", action="store_true",
                                     help="also show every --set key with its quick value")
    return p


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _fail(msg: str) -> int:
    msg = " ".join(str(msg).split())  # one line
    print(f"unijax: error: {msg}", file=sys.stderr)
    return 2


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


def _configs(args) -> dict[str, Any]:
    """Validated config of every selected experiment; raises BadInput."""
    selected = experiments.resolve(args.experiments)
    if args.seeds is not None:
        try:
            seeds = int(args.seeds)
        except ValueError:
            raise BadInput(f"--seeds {args.seeds!r} is not an integer; give N >= 1") from None
        if seeds < 1:
            raise BadInput(f"--seeds {seeds} is out of range; give N >= 1")
    if args.mnist is not None and not Path(args.mnist).expanduser().exists():
        raise BadInput(
            f"MNIST path {args.mnist!r} does not exist; give a directory of IDX files or an "
            ".npz, or leave --mnist out to use the bundled 8x8 digits"
        )
    mods = {name: experiments.get(name) for name in selected}
    # A --set key must exist in at least one selected experiment; it applies to all that have it.
    pairs = list(args.sets)
    keys_by_exp = {name: set(field_types(m.Config)) for name, m in mods.items()}
    for pair in pairs:
        key = pair.split("=", 1)[0].strip()
        if "=" not in pair:
            raise BadInput(f"--set {pair!r} is malformed: expected key=value")
        if not any(key in ks for ks in keys_by_exp.values()):
            valid = sorted(set().union(*keys_by_exp.values()))
            raise BadInput(
                f"unknown --set key {key!r} for {', '.join(selected)}; valid keys: "
                f"{', '.join(valid)}"
            )
    out = {}
    for name, mod in mods.items():
        where = f" (experiment {name})"
        mine = [p for p in pairs if p.split("=", 1)[0].strip() in keys_by_exp[name]]
        overrides = parse_overrides(mod.Config, mine, where=where)
        if args.seeds is not None:
            overrides["seeds"] = int(args.seeds)
        if args.mnist is not None and "mnist" in keys_by_exp[name]:
            overrides["mnist"] = str(Path(args.mnist).expanduser().resolve())
        cfg = apply_overrides(mod.presets[args.preset], overrides, where=where)
        mnist = getattr(cfg, "mnist", None)
        if mnist and not Path(mnist).expanduser().exists():
            raise BadInput(
                f"MNIST path {mnist!r}{where} does not exist; give a directory of IDX files or "
                "an .npz, or leave it empty to use the bundled 8x8 digits"
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
        # Stored before the quality accounting (no n_excluded): its mean may include flagged
        # fits, so it is not used.
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
    from tqdm.auto import tqdm

    def progress(iterable, **kw):
        kw.setdefault("leave", False)
        kw.setdefault("dynamic_ncols", True)
        return tqdm(iterable, disable=None if enabled else True, file=sys.stderr, **kw)

    return progress


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
    if getattr(mod, "USES_RATES", False) and getattr(cfg, "rates_from", "auto") == "auto":
        rates = sync.agree(f"{name}/upstream", lambda: _upstream_rates(store))
        if rates is not None:
            upstream["rates"] = rates
    h = sync.agree(f"{name}/begin",
                   lambda: store.begin(name, cfg, fresh=fresh, upstream=rates))
    if sync.agree(f"{name}/finished", lambda: store.finished_result(name, h) is not None):
        summary = (store.load_summary(name) or {}) if writer else {}
        return {"name": name, "status": "done earlier (skipped)", "summary": summary,
                "wall_s": summary.get("wall_s")}
    t0 = time.perf_counter()
    damaged: set[str] = set()
    cache = store.chunk_cache(name, h, agree=sync.agree, writer=writer)
    while True:
        try:
            result = mod.run(cfg, key=jax.random.key(cfg.seed),
                             progress=progress if writer else no_progress, cache=cache,
                             upstream=upstream)
            break
        except KeyError as e:
            # A chunk an older unijax stored (without the list of its arrays) lacks one: delete
            # and recompute the chunks that may be at fault; the others are read again. Each
            # is stored anew with its list, so this ends.
            suspects = [c for c in cache.suspects(e) if c not in damaged]
            if sync.n > 1 or not suspects:
                raise
            damaged.update(suspects)
            key = getattr(e, "key", e.args[0] if e.args else "?")
            store.log(f"{name}: stored chunk(s) {', '.join(suspects)} (written by an older "
                      f"unijax) lack array {key!r}: recomputing them")
            for c in suspects:
                store.discard_chunk(name, c)
    if not writer:
        return {"name": name, "status": "ran", "summary": {}, "wall_s": None}
    figures = store.save_figures(name, lambda folder: mod.plot(result, folder))
    agreement = mod.agreement(result)
    wall = time.perf_counter() - t0
    summary = {
        "experiment": name,
        "title": mod.TITLE,
        "claim": mod.CLAIM,
        "preset": preset,
        "agreement": agreement,
        "figures": sorted({Path(p).name for p in figures}),
        "wall_s": round(wall, 1),
        "chunks_reused": len(cache.reused - cache.computed),
        "chunks_computed": len(cache.computed),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": _environment(),
        "config": config_to_dict(cfg),
    }
    to_arrays = getattr(mod, "result_arrays", result_to_arrays)
    store.save_result(name, to_arrays(result), summary, config_hash=h)
    return {"name": name, "status": "ran", "summary": summary, "wall_s": wall}


def _print_summary(rows: list[dict], out: Path, total: float, report_path: Path | None) -> None:
    print("", file=sys.stderr)
    print(f"unijax: summary ({total / 60:.1f} min, results in {out})")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        s = r.get("summary") or {}
        agr = s.get("agreement", {})
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}.get(agr.get("passed"), "n/a")
        if r["status"] == "failed":
            verdict = "ERROR"
        wall = r.get("wall_s")
        wall_s = f"{wall:7.1f}s" if isinstance(wall, (int, float)) else "       -"
        head = agr.get("headline", r.get("error", ""))
        print(f"  {r['name']:<{width}}  {verdict:<5} {wall_s}  {r['status']:<22} {head}")
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
            quick = mod.presets["quick"]
            for f in dataclasses.fields(quick):
                print(f"      {f.name} = {getattr(quick, f.name)!r}")
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
    except Exception as e:  # a bug or a stored value the report cannot show
        removed = report.discard_report(out)
        _fail(f"the report could not be built ({type(e).__name__}: {e})"
              + (f"; the stale {out / 'report.md'} was removed" if removed else ""))
        return None, 1


def _warn(msg: str) -> None:
    print(f"unijax: {msg}", file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    from unijax import distributed
    from unijax.sweep import init_from_args

    out = Path(args.out).expanduser()
    try:
        distributed.check_process_args(args.coordinator, args.num_processes, args.process_id)
        cfgs = _configs(args)
        _check_writable(out)
    except ValueError as e:  # BadInput included
        return _fail(str(e))
    store = ResultStore(out, log=_warn)
    if args.num_processes == 1 and (msg := _refusal(out, cfgs)):
        return _fail(msg)  # before JAX starts: nothing of a foreign directory is touched
    if args.num_processes == 1 and not args.fresh and (msg := _mismatch(store, cfgs)):
        return _fail(msg)  # before JAX starts: a refused resume costs nothing
    try:
        init_from_args(args)  # no-op for one process
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
    if writer:
        try:
            claim_dir(out, "run", log=_warn, clean=True)
        except ForeignDataError as e:
            return _fail(str(e))
        except OSError as e:
            return _fail(f"output directory {str(out)!r} cannot be created ({e.strerror})")

    progress = _progress_factory(not args.no_progress)
    rows: list[dict] = []
    t0 = time.perf_counter()
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
            except ForeignDataError as e:  # one line, no traceback: a refusal, not a bug
                if sync.n > 1:
                    raise
                _fail(str(e))
                refused = True
                rows.append({"name": name, "status": "failed",
                             "error": f"refused to overwrite {e.path}"})
            except Exception as e:
                if sync.n > 1:
                    # The processes compute together: one that went on alone would wait for
                    # the others forever. End the run everywhere; finished work is kept.
                    raise
                traceback.print_exc(file=sys.stderr)  # one process: the others still run
                rows.append({"name": name, "status": "failed",
                             "error": f"{type(e).__name__}: {e}".splitlines()[0][:160]})
    except KeyboardInterrupt:
        interrupted = True
    if not writer:
        return 130 if interrupted else 0
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

    d = Path(args.dir).expanduser()
    if not d.is_dir():
        return _fail(f"report directory {args.dir!r} does not exist or is not a directory")
    try:
        _check_writable(d)
    except BadInput as e:
        return _fail(str(e))
    path, status = _write_report(d)
    if path is None:
        return status
    n = len(report.finished(d)[0])
    print(f"report: {path} ({n} experiment(s) with results)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unijax`` console script; returns the exit status."""
    # The command only writes figures to files: the Agg backend never opens a window and works
    # on headless machines. Chosen here, not on import, so library users keep their backend.
    import matplotlib

    matplotlib.use("Agg")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "sweep":
            return args.func(args)
        return cmd_report(args)
    except BadInput as e:
        return _fail(str(e))
    except BrokenPipeError:  # e.g. `unijax list | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
