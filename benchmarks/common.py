"""What the benchmarks share: reading a run's CSV files, launching a run and timing it from process launch,
the arithmetic of the tables (solve step, rolling mean, median and worst, ratio), learning curves over seeds,
and a description of the machine.

Plain Python and numpy; matplotlib is imported only inside `plot_curves`, so the arithmetic is testable with
the project's requirements.txt alone (tests/test_benchmarks.py).
"""

import csv
import math
import os
import platform
import statistics
import subprocess
import time
import warnings
from dataclasses import dataclass
from importlib import metadata

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = 20  # "solved" and "final mean return" use the mean of the last 20 training episodes (CONVENTIONS.md)


# ----------------------------------------------------------------------------------------------
# Reading a run's files
# ----------------------------------------------------------------------------------------------
def read_rows(path: str) -> list[dict[str, str]]:
    """The complete rows of a CSV file as dicts keyed by its header; [] if the file does not exist yet.
    A row still being written (its last column empty) is left out."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        last = reader.fieldnames[-1] if reader.fieldnames else None
        return [r for r in reader if last is not None and r.get(last) not in (None, "")]


@dataclass
class Episodes:
    """A run's episodes.csv as arrays, one entry per finished training episode."""

    steps: np.ndarray  # global_step at the episode's end
    seconds: np.ndarray  # seconds from process launch to the episode's end (wall_time + launch offset)
    returns: np.ndarray


def read_episodes(path: str, offset: float = 0.0) -> Episodes:
    """episodes.csv; `offset` (seconds from process launch to the script's wall_time zero) is added to wall_time."""
    rows = read_rows(path)
    return Episodes(
        steps=np.array([int(r["global_step"]) for r in rows], dtype=np.int64),
        seconds=np.array([float(r["wall_time"]) + offset for r in rows], dtype=np.float64),
        returns=np.array([float(r["return"]) for r in rows], dtype=np.float64),
    )


# ----------------------------------------------------------------------------------------------
# Launching a run, and its clock from process launch
# ----------------------------------------------------------------------------------------------
def launch_offset(metrics_path: str, launch_time: float) -> float:
    """Seconds from process launch to the moment the script's wall_time counts from.

    Our scripts (and sb3_runner.py) stamp each metrics.csv row with wall_time = time.time() - start and
    flush it at once, and write nothing to metrics.csv after their last row. So the file's modification
    time is the moment the last row was written, start = mtime - wall_time(last row), and the offset is
    start - launch_time. Nothing polls the run while it trains; the error is the file system's timestamp
    granularity (a few milliseconds at most) plus wall_time's rounding to 1 ms."""
    rows = read_rows(metrics_path)
    if not rows:
        raise ValueError(f"{metrics_path} has no rows: cannot time the run")
    written = os.stat(metrics_path).st_mtime_ns / 1e9
    return written - float(rows[-1]["wall_time"]) - launch_time


@dataclass
class Launch:
    returncode: int | None  # None: killed at the timeout
    launch_time: float  # time.time() just before the process was started
    seconds: float  # launch to exit, as the runner saw it


def run_command(cmd: list[str], log_path: str, timeout: float, cwd: str = ROOT) -> Launch:
    """Run cmd to its end (killed after `timeout` seconds), its stdout and stderr to log_path."""
    with open(log_path, "w") as log:
        launch_time = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            returncode = None
    return Launch(returncode, launch_time, time.time() - launch_time)


# ----------------------------------------------------------------------------------------------
# The arithmetic of the tables
# ----------------------------------------------------------------------------------------------
def rolling_mean(returns, window: int = WINDOW) -> np.ndarray:
    """out[i] = mean of returns[max(0, i - window + 1) : i + 1], the mean of the last `window` episodes
    (of all of them while fewer have finished)."""
    r = np.asarray(returns, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], r]))
    i = np.arange(1, len(r) + 1)
    lo = np.maximum(i - window, 0)
    return (sums[i] - sums[lo]) / (i - lo)


def solve_index(returns, threshold: float, window: int = WINDOW) -> int | None:
    """Index of the first episode at which the mean of the last `window` returns reaches threshold (at least
    `window` episodes finished), or None."""
    means = rolling_mean(returns, window)
    hits = np.flatnonzero(means[window - 1 :] >= threshold)
    return int(hits[0]) + window - 1 if len(hits) else None


def mean_at_step(ep: Episodes, step: float, window: int = WINDOW) -> float:
    """Mean return of the last `window` episodes that ended at or before `step`; NaN if none did."""
    n = int(np.searchsorted(ep.steps, step, side="right"))
    return float(np.mean(ep.returns[max(0, n - window) : n])) if n else math.nan


def median_and_worst(values, higher_is_better: bool = False) -> tuple[float, float]:
    """(median, worst) over seeds. None (or NaN) stands for a seed that did not get there within its budget
    (not solved), and counts as worse than any number: the median is then None when half or more of the seeds
    did not get there (the median of an even count is the mean of the two middle values, None if either is
    None), and the worst is None as soon as one did not."""
    if not values:
        return None, None
    sign = -1.0 if higher_is_better else 1.0
    keyed = sorted(math.inf if v is None or math.isnan(v) else sign * v for v in values)  # best first
    n = len(keyed)
    middle = keyed[(n - 1) // 2 : n // 2 + 1]
    median = None if math.inf in middle else sign * statistics.fmean(middle)
    worst = None if keyed[-1] == math.inf else sign * keyed[-1]
    return median, worst


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, None if either is missing (not solved) or theirs is not positive."""
    if ours is None or theirs is None or theirs <= 0:
        return None
    return ours / theirs


# ----------------------------------------------------------------------------------------------
# Learning curves over seeds
# ----------------------------------------------------------------------------------------------
def curve_on_grid(x, y, grid, hold_last: bool = True) -> np.ndarray:
    """The step function y(x) (the value of the last point at or before each grid point) on `grid`: NaN
    before the first point, and after the last point its value (hold_last) or NaN."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    idx = np.searchsorted(x, grid, side="right") - 1
    out = np.where(idx >= 0, y[np.clip(idx, 0, None)] if len(y) else math.nan, math.nan)
    if not hold_last and len(x):
        out[np.asarray(grid) > x[-1]] = math.nan
    return out


def quartiles(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(25th percentile, median, 75th percentile) over seeds (axis 0) at each grid point, ignoring NaN
    (a grid point no seed has reached yet stays NaN)."""
    curves = np.asarray(curves, dtype=np.float64)
    out = np.full((3, curves.shape[1]), math.nan)
    seen = ~np.all(np.isnan(curves), axis=0)
    if seen.any():
        out[:, seen] = np.nanpercentile(curves[:, seen], [25, 50, 75], axis=0)
    return out[0], out[1], out[2]


def spread(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, minimum and maximum over seeds (axis 0) at each point, ignoring NaN (curves cut to the shortest)."""
    n = min(len(c) for c in curves)
    stack = np.stack([c[:n] for c in curves])
    with warnings.catch_warnings():  # a point where every seed is NaN gives NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)


def plot_curves(path: str, title: str, panels: list[tuple[str, dict[str, tuple]]], ylabel: str, hline=None,
                colours: dict[str, str] | None = None):  # fmt: skip
    """One PNG with a panel per (x label, {label: (grid, q25, median, q75)}): the median as a line, the
    inter-quartile range as a band; an optional dotted horizontal line (the threshold). Labels starting
    with "sb3" are dashed; `colours` maps labels to matplotlib colours (default: one each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.2), squeeze=False)
    for ax, (xlabel, series) in zip(axes[0], panels, strict=True):
        for i, (label, (grid, q25, med, q75)) in enumerate(series.items()):
            color, style = (colours or {}).get(label, f"C{i % 10}"), "--" if label.startswith("sb3") else "-"
            ax.plot(grid, med, style, color=color, label=label, linewidth=1.6)
            ax.fill_between(grid, q25, q75, color=color, alpha=0.18, linewidth=0)
        if hline is not None:
            ax.axhline(hline, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Formatting and the machine
# ----------------------------------------------------------------------------------------------
def fmt(x, digits: int = 1, missing: str = "-") -> str:
    """A number for a markdown table: None or NaN as `missing`, large integers with thousands separators."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def write_report(path: str, lines: list[str]) -> str:
    """The report's lines written to path as one markdown file; returns its text."""
    text = "\n".join(lines)
    with open(path, "w") as f:
        f.write(text + "\n")
    return text


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        return sha.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def machine_lines() -> list[str]:
    """Markdown bullet lines: CPU, cores, Python and package versions, the commit."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    packages = ["torch", "gymnasium", "numpy", "stable-baselines3", "sb3-contrib", "matplotlib"]
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores ({usable} usable by this process)",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
        "- " + ", ".join(f"{p} {version(p)}" for p in packages),
        f"- commit {git_commit()}",
    ]
