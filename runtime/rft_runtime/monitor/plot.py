"""`rft plot DIR`: reward and loss curves of a job as a PNG (matplotlib, no display needed).

The top panel holds the reward of every RL stage (each step faint, a moving average bold) and the held-out
evaluations (eval.jsonl); below it each stage has its own loss panel, because an SFT cross-entropy (around
5 at the start) and a GRPO loss (around 0) on one axis make the second a flat line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rft_runtime.monitor.records import METRICS_FILE, as_float, finite, metrics_path, read_metrics

PLOT_FILE = "curves.png"
EVAL_FILE = "eval.jsonl"
REWARD_COLOR, ACC_COLOR, EVAL_COLOR, LOSS_COLOR, KL_COLOR = (
    "tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple")


@dataclass
class Segment:
    """Consecutive step records of one stage."""

    name: str
    algorithm: str | None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_sft(self) -> bool:
        """SFT stages log a cross-entropy and no reward."""
        if self.algorithm:
            return self.algorithm == "sft"
        return not any(finite(as_float(r.get("critic/rewards/mean"))) for r in self.records)

    @property
    def span(self) -> tuple[float, float]:
        """First and last step of the segment."""
        steps = [as_float(r.get("step")) or 0.0 for r in self.records]
        return min(steps), max(steps)


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


# metrics.jsonl files written before the runtime took Trinity's metric names (docs/metrics.md has the table)
LEGACY_KEYS = {"reward_mean": "critic/rewards/mean", "accuracy": "rollout/accuracy/mean",
               "policy_loss": "actor/pg_loss", "kl": "actor/kl_loss"}


def _last_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # a file appended to by a run started over can repeat a step; the later line is the one that counts
    by_step: dict[Any, dict[str, Any]] = {}
    for i, rec in enumerate(records):
        old = {new: rec[key] for key, new in LEGACY_KEYS.items() if key in rec and new not in rec}
        by_step[rec.get("step", f"#{i}")] = {**rec, **old} if old else rec
    return sorted(by_step.values(), key=lambda r: as_float(r.get("step")) or 0.0)


def segments(records: list[dict[str, Any]]) -> list[Segment]:
    """Split the job's records into stages (the `stage` key; older files: where reward appears or stops)."""
    out: list[Segment] = []
    for rec in records:
        name = rec.get("stage") if isinstance(rec.get("stage"), str) else None
        algo = rec.get("algorithm") if isinstance(rec.get("algorithm"), str) else None
        if name is None:
            has_reward = finite(as_float(rec.get("critic/rewards/mean")))
            name, algo = ("rl", algo) if has_reward else ("sft", algo or "sft")
        if not out or out[-1].name != name:
            out.append(Segment(name, algo))
        out[-1].records.append(rec)
    return out


def smooth(ys: list[float], window: int) -> list[float]:
    """Centred moving average (shorter at the ends), so a trend does not lag behind the steps."""
    half = max(window, 1) // 2
    out = []
    for i in range(len(ys)):
        part = ys[max(0, i - half): i + half + 1]
        out.append(sum(part) / len(part))
    return out


def _window(n: int) -> int:
    return max(1, min(25, n // 5))


def _averaged(what: str, window: int) -> str:
    """A smoothed curve's legend: "reward, mean of 5 steps", or just "reward" when nothing was averaged."""
    return what if window == 1 else f"{what}, mean of {window} steps"


def read_evals(job_dir: str | Path) -> list[dict[str, Any]]:
    """The job's eval.jsonl lines (held-out accuracy at a step); [] when there are none."""
    path = Path(job_dir) / EVAL_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(obj, dict) and finite(as_float(obj.get("step"))) and finite(as_float(obj.get("accuracy"))):
            out.append(obj)
    return out


def _draw_rewards(ax: Any, segs: list[Segment], evals: list[dict[str, Any]]) -> None:
    labelled: set[str] = set()

    def once(label: str) -> str | None:
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for seg in segs:
        xs, ys = _series(seg.records, "critic/rewards/mean")
        if not xs:
            continue
        w = _window(len(ys))
        if w > 1:  # with nothing to average, the faint per-step curve would hide under the bold one
            ax.plot(xs, ys, color=REWARD_COLOR, alpha=0.25, linewidth=0.8, label=once("reward, each step"))
        ax.plot(xs, smooth(ys, w), color=REWARD_COLOR, linewidth=2.0, label=once(_averaged("reward", w)))
        xa, acc = _series(seg.records, "rollout/accuracy/mean")
        # a 0/1 accuracy reward makes the two curves identical: drawing both hides the reward
        if xa and (len(acc) != len(ys) or any(abs(a - r) > 1e-9 for a, r in zip(acc, ys, strict=True))):
            ax.plot(xa, smooth(acc, _window(len(acc))), color=ACC_COLOR, linewidth=1.5, linestyle="--",
                    label=once(_averaged("accuracy", _window(len(acc)))))
    by_set: dict[str, list[tuple[float, float]]] = {}
    for line in evals:
        name = str(line.get("taskset") or "eval")
        by_set.setdefault(name, []).append((as_float(line["step"]) or 0.0, as_float(line["accuracy"]) or 0.0))
    markers = "osD^v"
    for i, (name, points) in enumerate(sorted(by_set.items())):
        last: dict[float, float] = {}
        for x, y in points:
            last[x] = y  # an evaluation repeated at the same step (a resumed run): the later one counts
        xs, ys = zip(*sorted(last.items()), strict=True)
        ax.plot(xs, ys, color=EVAL_COLOR, marker=markers[i % len(markers)], markersize=7, linewidth=1.2,
                label=f"{name} accuracy (eval)")
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{100 * y:.0f}%", (x, y), textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize="small", color=EVAL_COLOR)
    ax.set_ylabel("reward / accuracy")
    ax.set_xlabel("train step (all stages)")
    if not labelled and not by_set:
        ax.text(0.5, 0.5, "no reward logged", ha="center", va="center", transform=ax.transAxes)


def _mark_stages(ax: Any, segs: list[Segment]) -> None:
    """Dashed lines where a stage starts, its name at the top of its span, every other span shaded."""
    if len(segs) < 2 and not (segs and segs[0].name not in ("rl", "sft")):
        return
    for i, seg in enumerate(segs):
        lo, hi = seg.span
        start = lo - 0.5
        if i:
            ax.axvline(start, color="0.4", linestyle="--", linewidth=1)
        if i % 2:
            ax.axvspan(start, hi + 0.5, color="0.5", alpha=0.07, linewidth=0)
        ax.text((start + hi + 0.5) / 2, 1.0, seg.name, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize="small", color="0.25")


def _draw_loss(ax: Any, seg: Segment) -> None:
    xs, ys = _series(seg.records, "actor/pg_loss")
    if not xs:
        xs, ys = _series(seg.records, "actor/sft_loss")  # sft, cpt and raft log a cross-entropy
    algo = seg.algorithm or ("sft" if seg.is_sft else "policy")
    what = "cross-entropy" if seg.is_sft else f"{algo} loss"
    title = seg.name if seg.name in (algo, "rl", "sft") else f"{seg.name} ({algo})"
    ax.set_title(title, fontsize="medium")
    ax.set_ylabel(what)
    ax.set_xlabel("train step")
    if xs:
        w = _window(len(ys))
        if w > 1:
            ax.plot(xs, ys, color=LOSS_COLOR, alpha=0.3, linewidth=0.8)
        ax.plot(xs, smooth(ys, w), color=LOSS_COLOR, linewidth=1.8, label=_averaged(what, w))
    else:
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    xk, kl = _series(seg.records, "actor/kl_loss")
    if xk:
        twin = ax.twinx()
        twin.plot(xk, smooth(kl, _window(len(kl))), color=KL_COLOR, linewidth=1.2, label="kl")
        twin.set_ylabel("kl", color=KL_COLOR)


def write_plot(records: list[dict[str, Any]], out: Path, title: str = "",
               evals: list[dict[str, Any]] | None = None) -> Path:
    """Draw the reward panel (with held-out evaluations and stage markers) over one loss panel per stage."""
    # matplotlib (~0.5 s) only when a plot is written
    import matplotlib

    matplotlib.use("Agg")  # no display in pods or CI
    from matplotlib.figure import Figure

    records = _last_per_step(records)
    segs = segments(records)
    evals = evals or []
    fig = Figure(figsize=(11, 7), dpi=100)
    grid = fig.add_gridspec(2, max(len(segs), 1), height_ratios=[1.25, 1])
    ax_r = fig.add_subplot(grid[0, :])
    _draw_rewards(ax_r, segs, evals)
    _mark_stages(ax_r, segs)
    if records:
        first, last = segs[0].span[0], segs[-1].span[1]
        lo = min([first] + [as_float(e["step"]) or 0.0 for e in evals])
        ax_r.set_xlim(lo - 0.02 * (last - lo + 1), last + 0.02 * (last - lo + 1))
    ax_r.grid(alpha=0.3)
    if ax_r.get_legend_handles_labels()[0]:
        ax_r.legend(loc="best", fontsize="small")
    for i, seg in enumerate(segs):
        ax = fig.add_subplot(grid[1, i])
        _draw_loss(ax, seg)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(out)  # a reader (or a second run) never sees half a PNG
    return out


def find_jobs(path: Path) -> list[Path]:
    """Job directories at or below `path` (those holding a metrics.jsonl), in name order."""
    if path.suffix == ".jsonl":
        return [path.parent] if path.exists() else []
    if (path / METRICS_FILE).exists():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p.parent for p in path.rglob(METRICS_FILE) if p.is_file())


def plot_main(args: Any) -> int:
    """`rft plot DIR [--out PNG]`: DIR is a job directory or any folder above job directories."""
    root = Path(args.job_dir)
    jobs = find_jobs(root)
    if not jobs:
        where = metrics_path(root) if root.suffix == ".jsonl" else f"{root / METRICS_FILE} or below {root}"
        print(f"rft plot: no step records: no {METRICS_FILE} at {where}", file=sys.stderr)
        return 1
    out_arg = getattr(args, "out", None)
    if out_arg and len(jobs) > 1:
        print(f"rft plot: {root} holds {len(jobs)} jobs ({', '.join(str(j) for j in jobs)}); --out names one "
              "file: give one job directory, or leave out --out to write curves.png in each", file=sys.stderr)
        return 2
    rc = 1
    for job in jobs:
        records = read_metrics(job)
        if not records:
            print(f"rft plot: no step records in {metrics_path(job)}", file=sys.stderr)
            continue
        out = Path(out_arg) if out_arg else job / PLOT_FILE
        write_plot(records, out, title=job.name, evals=read_evals(job))
        print(f"wrote {out} ({len(records)} steps)")
        rc = 0
    return rc
