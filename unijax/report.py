"""``report.md``: one paragraph per experiment, built only from the stored ``results.json``.

Every number in the report comes from an experiment's ``results.json``, which the run that
computed it wrote (with its config hash) after the figures and arrays; an experiment whose
results are missing or incomplete is listed as "not run", and one whose stored files fail their
checks (unreadable, damaged, inconsistent hashes) is listed, with the file and the problem,
under "Could not read": never filled in.

The report is written only into a directory unijax marked as a run directory, and overwrites
only a ``report.md`` that unijax wrote (it starts with ``# unijax report``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unijax import experiments
from unijax._version import CodeVersion
from unijax.experiments._common import Verdict, verdict_counts
from unijax.results._store import (
    REPORT_HEADING,
    REPORT_NAME,
    DamagedStoreError,
    ForeignDataError,
    ResultStore,
    atomic_write_bytes,
    claim_dir,
    is_own_report,
    read_marker,
)

__all__ = ["build_report", "discard_report", "finished", "markdown_table", "row_counts_text",
           "summary_line", "verdict_of", "write_report"]


def verdict_of(agreement: dict) -> str:
    """The stored verdict of an agreement (``"REPRODUCED"``, ``"AS AUTHORS"``, ...); results
    stored before verdicts existed give theirs from ``passed``."""
    v = agreement.get("verdict")
    if v is None:
        v = Verdict.of(agreement.get("passed"))
    return Verdict(v).value


def row_counts_text(agreement: dict) -> str:
    """``"3 REPRODUCED, 11 AS AUTHORS, 1 NOT TESTED"``: the stored rows per verdict ('-' when
    the agreement has no per-row verdicts)."""
    counts = verdict_counts(agreement.get("rows") or {})
    return ", ".join(f"{n} {v}" for v, n in counts.items()) or "-"


def summary_line(name: str, agreement: dict) -> str:
    """One experiment's line of the report's summary table: verdict, rows per verdict,
    headline."""
    cells = [name, verdict_of(agreement), row_counts_text(agreement),
             agreement.get("headline", "n/a")]
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown_table(table: dict) -> str:
    """A stored ``{"columns", "rows"}`` table as Markdown (``|`` in cells escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    cols = table.get("columns", [])
    return "\n".join([line(cols), "|" + "---|" * len(cols)]
                     + [line(r) for r in table.get("rows", [])])


#: How the report words a stored count: the trials' counts in one group (unit "trials"),
#: every other count under its own name, which carries its unit ("layer fits", "rate fits").
_TRIAL_WORDS = (("trials", "in all"), ("diverged", "diverged"),
                ("not_converged", "did not converge"), ("fit_failed", "without a completed fit"),
                ("used", "used"))


def _counts_text(counts: dict) -> str:
    if not counts:
        return ""
    trial = [f"{counts[k]} {w}" for k, w in _TRIAL_WORDS if k in counts
             and (counts[k] or k in ("trials", "used"))]
    parts = [f"trials: {', '.join(trial)}"] if trial else []
    known = {k for k, _ in _TRIAL_WORDS}
    parts += [f"{k.replace('_', ' ')}: {v}" for k, v in counts.items() if k not in known]
    text = "; ".join(parts)
    excluded = sum(int(counts.get(k) or 0) for k in ("diverged", "not_converged", "fit_failed"))
    if excluded:
        text += " (excluded trials are counted here and never averaged in)"
    return text


def _paragraph(name: str, summary: dict) -> str:
    agr = summary.get("agreement", {})
    lines = [f"## {name}: {summary.get('title', '')}", ""]
    lines.append(f"*Paper's prediction.* {summary.get('claim', '')}")
    lines.append("")
    lines.append(f"*Measured.* {agr.get('measured', '')}")
    if agr.get("table"):
        lines += ["", markdown_table(agr["table"])]
    lines.append("")
    lines.append(f"*Verdict:* **{verdict_of(agr)}**. {agr.get('headline', 'n/a')}.")
    lines.append("")
    lines.append(f"*Criterion:* {agr.get('criterion', 'n/a')}.")
    counts = _counts_text(agr.get("counts", {}))
    if counts:
        lines += ["", f"*Counts:* {counts}."]
    deps = agr.get("departures") or []
    lines += ["", "*Departures (from the paper's text or the authors' code):* "
              + ("; ".join(deps) if deps else "none") + "."]
    for note in agr.get("notes", []):
        lines += ["", f"*Note:* {note}"]
    cfg_hash = summary.get("config_hash", "")[:12]
    code = _code_label(summary.get("code_version"))
    lines += [
        "",
        f"<sub>preset `{summary.get('preset', '?')}`, config `{cfg_hash}`, "
        + (f"code {code}, " if code else "")
        + f"{summary.get('wall_s', '?')} s"
        + (f" ({summary['cpu_s']} s CPU)" if summary.get("cpu_s") is not None else "")
        + f", finished {summary.get('finished_at', '?')}; raw arrays "
        f"`{name}/result.npz`, numbers `{name}/results.json`.</sub>",
    ]
    pngs = [f for f in summary.get("figures", []) if f.endswith(".png")]
    if pngs:
        lines.append("")
        lines += [f"![{name} {Path(f).stem}]({name}/{f})" for f in pngs]
    return "\n".join(lines)


def _code_label(cv: Any) -> str:
    """``CodeVersion.label()`` of a stored ``code_version`` dict ('' if absent or odd)."""
    try:
        return CodeVersion(**cv).label()
    except (TypeError, AttributeError, ValueError):
        return ""


def _devices(env: dict) -> str:
    """``cpu:cpu``, or ``cpu:cpu x 2`` for a run laid over two devices."""
    n = env.get("devices", 1)
    return env.get("device", "?") + (f" x {n}" if isinstance(n, int) and n > 1 else "")


def finished(outdir: str | os.PathLike) -> tuple[dict[str, dict], list[str], dict[str, str]]:
    """``(done, missing, unreadable)`` of ``outdir``: the summaries of the experiments whose
    stored result validates, the names without results, and for each experiment whose stored
    files fail their checks the file and the problem."""
    store = ResultStore(outdir, log=lambda msg: None)
    done: dict[str, dict] = {}
    missing: list[str] = []
    unreadable: dict[str, str] = {}
    for name in experiments.names():
        try:
            done[name] = store.load_result(name)[1]
        except FileNotFoundError:
            missing.append(name)
        except DamagedStoreError as e:
            unreadable[name] = str(e)
    return done, missing, unreadable


def build_report(outdir: str | os.PathLike, *,
                 log: Callable[[str], None] | None = None) -> str:
    """The Markdown text of the report for the results stored in ``outdir``.

    ``log`` is called with one line per experiment whose stored files cannot be read (they are
    skipped, and named under "Could not read").
    """
    done, missing, unreadable = finished(outdir)
    for name, problem in unreadable.items():
        if log is not None:
            log(f"report: skipped {name}: {problem}")
    env = next(iter(done.values()), {}).get("environment", {})
    total = sum(float(s.get("wall_s") or 0) for s in done.values())
    # CPU time, when every stored experiment recorded it (older stores did not; a stored
    # cpu_s is a number or absent, results._store checks it on reading).
    cpu = (sum(s["cpu_s"] for s in done.values())
           if done and all(s.get("cpu_s") is not None for s in done.values()) else None)
    presets = sorted({s.get("preset", "?") for s in done.values()})
    head = [
        "# unijax report: the paper's experiments, network vs. theory",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{Path(outdir)}`. "
        f"Preset(s): {', '.join(presets) or 'none'}. "
        f"Compute time of the stored experiments: {total / 60:.1f} min"
        + (f" wall, {cpu / 60:.1f} min CPU" if cpu is not None else "")
        + (f" on {env.get('machine', '?')} ({_devices(env)}, jax {env.get('jax', '?')},"
           f" unijax {env.get('unijax', '?')})." if env else "."),
        "",
        "Each section states what the paper predicts, what this run measured, and a verdict "
        "against the paper's claim, per row (architecture, gain, claim) and per experiment: "
        "REPRODUCED (the paper's criterion is met), AS AUTHORS (the theory misses here, and "
        "the authors' own fitting pipeline, run on the same trajectories, misses equally), "
        "NOT REPRODUCED, NOT TESTED (not judged; the section says why). An experiment is NOT "
        "REPRODUCED if any row is, else AS AUTHORS if any row is. Every number below was "
        "computed by the run that stored it.",
        "",
        "| experiment | verdict | rows per verdict | agreement figure |",
        "|---|---|---|---|",
    ]
    for name in experiments.names():
        if name in done:
            agr = done[name].get("agreement", {})
            head.append(summary_line(name, agr))
        elif name in unreadable:
            head.append(f"| {name} | - | - | stored results could not be read (see below) |")
        else:
            head.append(f"| {name} | - | - | not run in this directory |")
    body = [_paragraph(name, s) for name, s in done.items()]
    if unreadable:
        body.append(
            "## Could not read\n\n"
            + "\n".join(f"- {name}: {problem}." for name, problem in unreadable.items())
            + "\n\nRun `unijax run " + " ".join(unreadable) + f" --out {Path(outdir)}` to "
            "recompute them (finished chunks are reused)."
        )
    if missing:
        body.append(
            "## Not run\n\n" + ", ".join(missing) + ": no finished results in this directory "
            "(run `unijax run " + " ".join(missing) + f" --out {Path(outdir)}`)."
        )
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n"


def write_report(outdir: str | os.PathLike, *,
                 log: Callable[[str], None] | None = None) -> Path:
    """Write ``outdir/report.md`` atomically; returns its path.

    ``outdir`` is claimed as a run directory first (:func:`unijax.results._store.claim_dir`), and an
    existing ``report.md`` is overwritten only if unijax wrote it. ``log``: see
    :func:`build_report`.

    Raises:
        ForeignDataError: ``outdir`` or its ``report.md`` was not written by unijax.
    """
    d = claim_dir(outdir, "run")
    path = d / REPORT_NAME
    if (path.exists() or path.is_symlink()) and not is_own_report(path):
        raise ForeignDataError(
            f"{path} was not written by unijax (it does not start with {REPORT_HEADING!r}); "
            "unijax does not overwrite it: move it away or use another directory", path)
    text = build_report(d, log=log)
    return atomic_write_bytes(path, text.encode())


def discard_report(outdir: str | os.PathLike) -> bool:
    """Delete ``outdir/report.md`` if unijax wrote it (in a directory it marked); True if it
    did (a report that no longer matches the stored results must not stay)."""
    path = Path(outdir) / REPORT_NAME
    if read_marker(outdir) is None or not path.is_file() or not is_own_report(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True
