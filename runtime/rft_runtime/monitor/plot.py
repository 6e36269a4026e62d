"""`rft plot JOB_DIR`: reward and loss curves of a job as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rft_runtime.monitor.records import as_float, finite, metrics_path, read_metrics

PLOT_FILE = "curves.png"


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, rec in enumerate(records):
        y = as_float(rec.get(key))
        if not finite(y):
            continue
        x = as_float(rec.get("step"))
        xs.append(x if x is not None else float(i + 1))
        ys.append(y)
    return xs, ys


def _last_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # a file appended to by a run started over can repeat a step; the later line is the one that counts
    by_step: dict[Any, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        by_step[rec.get("step", f"#{i}")] = rec
    return sorted(by_step.values(), key=lambda r: as_float(r.get("step")) or 0.0)


def write_plot(records: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """Draw reward (mean with min..max band, accuracy when present) and loss (policy loss, KL) per step."""
    import matplotlib

    matplotlib.use("Agg")  # no display in pods or CI
    from matplotlib.figure import Figure

    records = _last_per_step(records)
    fig = Figure(figsize=(10, 4), dpi=100)
    ax_r, ax_l = fig.subplots(1, 2)

    xs, mean = _series(records, "critic/rewards/mean")
    if xs:
        ax_r.plot(xs, mean, label="reward mean", color="tab:blue")
        lo = [as_float(r.get("critic/rewards/min")) for r in records if finite(as_float(r.get("critic/rewards/mean")))]
        hi = [as_float(r.get("critic/rewards/max")) for r in records if finite(as_float(r.get("critic/rewards/mean")))]
        if all(finite(v) for v in lo + hi):
            ax_r.fill_between(xs, lo, hi, alpha=0.2, color="tab:blue", label="min..max")
    xa, acc = _series(records, "rollout/accuracy/mean")
    if xa:
        ax_r.plot(xa, acc, label="accuracy", color="tab:green")
    ax_r.set_title("reward")
    ax_r.set_xlabel("train step")
    if not xs and not xa:
        ax_r.text(0.5, 0.5, "no reward logged (sft)", ha="center", va="center", transform=ax_r.transAxes)

    xl, loss = _series(records, "actor/pg_loss")
    if not xl:
        xl, loss = _series(records, "actor/sft_loss")
    if xl:
        ax_l.plot(xl, loss, label="policy loss", color="tab:red")
    xk, kl = _series(records, "actor/kl_loss")
    if xk:
        ax_l.plot(xk, kl, label="kl", color="tab:purple")
    ax_l.set_title("loss")
    ax_l.set_xlabel("train step")
    if not xl and not xk:
        ax_l.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax_l.transAxes)

    for ax in (ax_r, ax_l):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(out)  # a reader (or a second run) never sees half a PNG
    return out


def plot_main(args: Any) -> int:
    """`rft plot JOB_DIR [--out PNG]`: exit 1 when the job has no metrics yet."""
    job_dir = Path(args.job_dir)
    records = read_metrics(job_dir)
    if not records:
        print(f"rft plot: no step records in {metrics_path(job_dir)}", file=sys.stderr)
        return 1
    base = job_dir if job_dir.suffix != ".jsonl" else job_dir.parent
    out = Path(args.out) if getattr(args, "out", None) else base / PLOT_FILE
    title = base.name
    write_plot(records, out, title=title)
    print(f"wrote {out} ({len(records)} steps)")
    return 0
