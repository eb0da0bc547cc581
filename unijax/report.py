"""``report.md``: one paragraph per experiment, built only from the stored ``results.json``.

Every number in the report comes from an experiment's ``results.json``, which the run that
computed it wrote (with its config hash) after the figures and arrays; an experiment whose
results are missing, incomplete or of a mismatching hash is listed as "not run", never filled in.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from unijax import experiments
from unijax._store import ResultStore, atomic_write_bytes

__all__ = ["build_report", "write_report"]


def _verdict(passed: Any) -> str:
    return {True: "**PASS**", False: "**FAIL**"}.get(passed, "**undecided**")


def _counts_text(counts: dict) -> str:
    if not counts:
        return ""
    parts = [f"{counts.get('trials', '?')} trials"]
    for key, word in (("diverged", "diverged"), ("not_converged", "did not converge"),
                      ("fit_failed", "fit failed")):
        if counts.get(key):
            parts.append(f"{counts[key]} {word}")
    if "used" in counts:
        parts.append(f"{counts['used']} used")
    text = ", ".join(parts)
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
    lines.append("")
    lines.append(
        f"*Agreement figure:* {agr.get('headline', 'n/a')}. {_verdict(agr.get('passed'))} "
        f"(criterion: {agr.get('criterion', 'n/a')})."
    )
    counts = _counts_text(agr.get("counts", {}))
    if counts:
        lines += ["", f"*Trials:* {counts}."]
    for note in agr.get("notes", []):
        lines += ["", f"*Note:* {note}"]
    cfg_hash = summary.get("config_hash", "")[:12]
    lines += [
        "",
        f"<sub>preset `{summary.get('preset', '?')}`, config `{cfg_hash}`, "
        f"{summary.get('wall_s', '?')} s, finished {summary.get('finished_at', '?')}; raw arrays "
        f"`{name}/result.npz`, numbers `{name}/results.json`.</sub>",
    ]
    pngs = [f for f in summary.get("figures", []) if f.endswith(".png")]
    if pngs:
        lines.append("")
        lines += [f"![{name} {Path(f).stem}]({name}/{f})" for f in pngs]
    return "\n".join(lines)


def build_report(outdir: str | os.PathLike) -> str:
    """The Markdown text of the report for the results stored in ``outdir``."""
    store = ResultStore(outdir)
    done: dict[str, dict] = {}
    missing: list[str] = []
    for name in experiments.names():
        s = store.load_summary(name)
        if s and store.is_finished(name, s.get("config_hash", "")):
            done[name] = s
        else:
            missing.append(name)
    env = next(iter(done.values()), {}).get("environment", {})
    total = sum(float(s.get("wall_s") or 0) for s in done.values())
    presets = sorted({s.get("preset", "?") for s in done.values()})
    head = [
        "# unijax report: the paper's experiments, network vs. theory",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{Path(outdir)}`. "
        f"Preset(s): {', '.join(presets) or 'none'}. "
        f"Compute time of the stored experiments: {total / 60:.1f} min"
        + (f" on {env.get('machine', '?')} ({env.get('device', '?')}, jax {env.get('jax', '?')},"
           f" unijax {env.get('unijax', '?')})." if env else "."),
        "",
        "Each paragraph states what the paper predicts, what this run measured, the agreement "
        "figure with its spread over seeds, and a pass/fail verdict against the paper's "
        "qualitative claim. Every number below was computed by the run that stored it.",
        "",
        "| experiment | agreement figure | verdict |",
        "|---|---|---|",
    ]
    for name in experiments.names():
        if name in done:
            agr = done[name].get("agreement", {})
            head.append(f"| {name} | {agr.get('headline', 'n/a')} | "
                        f"{_verdict(agr.get('passed')).strip('*')} |")
        else:
            head.append(f"| {name} | not run in this directory | - |")
    body = [_paragraph(name, s) for name, s in done.items()]
    if missing:
        body.append(
            "## Not run\n\n" + ", ".join(missing) + ": no finished results in this directory "
            "(run `unijax run " + " ".join(missing) + f" --out {Path(outdir)}`)."
        )
    return "\n".join(head) + "\n\n" + "\n\n".join(body) + "\n"


def write_report(outdir: str | os.PathLike) -> Path:
    """Write ``outdir/report.md`` atomically; returns its path."""
    text = build_report(outdir)
    return atomic_write_bytes(Path(outdir) / "report.md", text.encode())
