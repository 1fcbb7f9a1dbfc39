"""GRPO against Dr. GRPO, each at its own best learning rate: a sweep of five rates per script, five seeds each.

    python benchmarks/grpo_lr_sweep.py                      # 50 runs of 200 updates, 2 at a time: about 40 minutes
    python benchmarks/grpo_lr_sweep.py --report-only        # the tables and the figure again from the kept CSVs

Both scripts train on grpo_vs_dr_grpo.py's task and setting (SETTING there: the `max` task, 16 prompts per update,
completions of up to 16 tokens, beta 0.04 for both; --beta changes beta for both), for 200 updates, at 0.25x, 0.5x,
1x, 2x and 4x that script's default --learning-rate, seeds 1 to 5. Every run is the real command line; runs go two
at a time, seed by seed, both scripts and every rate of a seed together, so that the machine's load falls on all
alike. A rate is "best" by the median over seeds of the greedy held-out accuracy at update 100; if a script's best
rate is at an end of the grid, the grid grows by a factor 2 at that end (its 5 seeds run too), until it is not.
Each run's metrics.csv is kept in --out (OUT/<script>/x<factor>/seed<S>/metrics.csv) with the commit and machine,
and a rerun skips the runs whose metrics.csv has all its rows.

Per script and rate: the median (worst) over seeds of the accuracy at updates 50, 100 and 200; the updates to 95%
accuracy (median over the seeds that reach it) and how many seeds reach it; the mean length in tokens (EOS included)
of the right and of the wrong completions sampled at update 100 (metrics.csv's length_correct and length_incorrect in
that row; a seed whose row has no wrong completion is left out of that mean).
"""

import argparse
import math
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import ROOT, load_average, machine_lines, plot_curves, read_rows, run_command, spread, write_report
from grpo_vs_dr_grpo import SETTING

ALGOS = ("grpo", "dr_grpo")
DEFAULT_LR = 3e-3  # both scripts' --learning-rate
FACTORS = [0.25, 0.5, 1.0, 2.0, 4.0]
SEEDS = [1, 2, 3, 4, 5]
UPDATES = 200
MARKS = (50, 100, 200)
THRESHOLD = 0.95


def setting(beta: float) -> list[str]:
    """grpo_vs_dr_grpo.py's setting, for UPDATES updates and the given beta."""
    s = list(SETTING)
    s[s.index("--total-updates") + 1], s[s.index("--beta") + 1] = str(UPDATES), str(beta)
    return s


def run_dir(out: str, algo: str, factor: float, seed: int) -> str:
    return os.path.join(out, algo, f"x{factor:g}", f"seed{seed}")  # x0.25: 0.25 times the default rate


def rows(out: str, algo: str, factor: float, seed: int) -> list[dict[str, str]]:
    return read_rows(os.path.join(run_dir(out, algo, factor, seed), "metrics.csv"))


def run(out: str, algo: str, factor: float, seed: int, beta: float) -> None:
    """One run through its command line, unless its metrics.csv already has every row."""
    if len(rows(out, algo, factor, seed)) == UPDATES:
        return
    where = run_dir(out, algo, factor, seed)
    cmd = [sys.executable, os.path.join(ROOT, f"{algo}.py"), "--seed", str(seed), "--learning-rate",
           str(DEFAULT_LR * factor), "--run-dir", where, "--overwrite", "--log-interval", str(UPDATES),
           *setting(beta)]  # fmt: skip
    os.makedirs(where, exist_ok=True)
    launch = run_command(cmd, os.path.join(where, "log.txt"), timeout=3600)
    for name in ("groups.csv", "model.pt"):  # metrics.csv is what the report reads; the rest stays out of the repo
        if os.path.exists(os.path.join(where, name)):
            os.remove(os.path.join(where, name))
    print(f"{algo} lr {DEFAULT_LR * factor:g} seed {seed}: exit {launch.returncode}, {launch.seconds:.0f} s",
          file=sys.stderr, flush=True)  # fmt: skip


def run_grid(out: str, grid: dict[str, list[float]], beta: float, jobs: int) -> None:
    todo = [(algo, f, seed) for seed in SEEDS for algo in ALGOS for f in grid[algo]]  # a seed's runs together
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda job: run(out, *job, beta), todo))


def column(rs: list[dict[str, str]], name: str, update: int) -> float:
    return float(rs[update - 1][name]) if len(rs) >= update else math.nan


def summary(out: str, algo: str, factor: float) -> dict:
    """The numbers of one (script, rate) over its seeds."""
    runs = [rows(out, algo, factor, seed) for seed in SEEDS]
    accuracy = {m: [column(r, "eval_accuracy", m) for r in runs] for m in MARKS}
    reach = [next((i + 1 for i, r in enumerate(rs) if float(r["eval_accuracy"]) >= THRESHOLD), None) for rs in runs]
    lengths = {k: [column(r, k, 100) for r in runs] for k in ("length_correct", "length_incorrect")}
    reached = [u for u in reach if u is not None]
    return {
        "accuracy": {m: (statistics.median(v), min(v)) for m, v in accuracy.items()},
        "reach": (statistics.median(reached) if reached else None, max(reached) if reached else None, len(reached)),
        "lengths": {k: statistics.fmean([x for x in v if not math.isnan(x)] or [math.nan]) for k, v in lengths.items()},
        "curves": np.array([[float(r["eval_accuracy"]) for r in rs] for rs in runs]),
    }


def best(out: str, algo: str, grid: list[float]) -> float:
    """The rate with the highest median accuracy at update 100 (the lower rate on a tie)."""
    return max(sorted(grid), key=lambda f: summary(out, algo, f)["accuracy"][100][0])


def extend(out: str, grid: dict[str, list[float]]) -> bool:
    """Grow a script's grid by a factor 2 at the end where its best rate lies; whether any grew."""
    grew = False
    for algo in ALGOS:
        f = best(out, algo, grid[algo])
        if f in (min(grid[algo]), max(grid[algo])):
            grid[algo].append(f / 2 if f == min(grid[algo]) else f * 2)
            grew = True
    return grew


def report(out: str, grid: dict[str, list[float]], command: str, beta: float, redrawn: bool = False) -> str:
    """OUT/grpo_lr_sweep.md and OUT/grpo_lr_sweep.png; returns the markdown."""
    lines = ["## GRPO and Dr. GRPO, each at its best learning rate", "",
             f"Produced by `{command.replace(' --report-only', '')}`{' (redrawn with --report-only)' * redrawn}; the "
             "machine and the commit: [machine.md](machine.md). Setting: "
             f"`{' '.join(setting(beta))}` for both scripts, seeds {SEEDS[0]} to {SEEDS[-1]}. Accuracy: greedy, on "
             "the 200 held-out prompts, median (worst) over the seeds. To 95%: the first update at or above it, "
             "median (slowest) over the seeds that reach it, and how many do. Lengths: tokens, EOS included, of the "
             "completions sampled at update 100, mean over the seeds.", "",
             "| script | learning rate | acc. @50 | acc. @100 | acc. @200 | to 95% | seeds | length right @100 "
             "| length wrong @100 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    bests, cells = {}, lambda x: "-" if x is None else f"{x:g}"  # noqa: E731
    for algo in ALGOS:
        bests[algo] = best(out, algo, grid[algo])
        for f in sorted(grid[algo]):
            s = summary(out, algo, f)
            acc = [f"{s['accuracy'][m][0]:.3f} ({s['accuracy'][m][1]:.3f})" for m in MARKS]
            med, slowest, n = s["reach"]
            mark = " **best**" if f == bests[algo] else ""
            lines.append(f"| {algo}.py | {DEFAULT_LR * f:g} ({f:g}x){mark} | {' | '.join(acc)} | {cells(med)} "
                         f"({cells(slowest)}) | {n}/{len(SEEDS)} | {s['lengths']['length_correct']:.2f} | "
                         f"{s['lengths']['length_incorrect']:.2f} |")  # fmt: skip
    lines += ["", "Each at its best rate:", "", "| | grpo.py | dr_grpo.py |", "| --- | ---: | ---: |"]
    at_best = {algo: summary(out, algo, bests[algo]) for algo in ALGOS}
    lines.append(f"| learning rate | {' | '.join(f'{DEFAULT_LR * bests[a]:g}' for a in ALGOS)} |")
    for m in MARKS:
        lines.append(f"| accuracy @{m}, median (worst) | "
                     + " | ".join(f"{at_best[a]['accuracy'][m][0]:.3f} ({at_best[a]['accuracy'][m][1]:.3f})"
                                  for a in ALGOS) + " |")  # fmt: skip
    lines.append("| updates to 95%, median (slowest); seeds | " + " | ".join(
        f"{cells(at_best[a]['reach'][0])} ({cells(at_best[a]['reach'][1])}); {at_best[a]['reach'][2]}/{len(SEEDS)}"
        for a in ALGOS) + " |")  # fmt: skip
    for k, name in (("length_correct", "right"), ("length_incorrect", "wrong")):
        lines.append(f"| length of {name} completions @100 | "
                     + " | ".join(f"{at_best[a]['lengths'][k]:.2f}" for a in ALGOS) + " |")  # fmt: skip
    lines += ["", "![accuracy at each script's best rate](grpo_lr_sweep.png)", ""]
    grid_x = np.arange(1, UPDATES + 1)
    series = {}
    for a in ALGOS:
        median, worst, best_seed = spread(list(at_best[a]["curves"]))
        series[f"{a}.py, lr {DEFAULT_LR * bests[a]:g}"] = (grid_x, worst, median, best_seed)
    plot_curves(os.path.join(out, "grpo_lr_sweep.png"), f"accuracy at the best rates, beta {beta:g}: median, "
                f"worst to best of {len(SEEDS)} seeds",
                [("updates", series)], "accuracy", hline=THRESHOLD)  # fmt: skip
    return write_report(os.path.join(out, "grpo_lr_sweep.md"), lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "grpo_lr_sweep"), help="results folder")
    p.add_argument("--beta", type=float, default=0.04, help="beta for both scripts (the setting's: 0.04)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--report-only", action="store_true", help="no training: the report from the kept CSVs")
    args = p.parse_args(argv)
    out = os.path.join(ROOT, args.out)
    command = " ".join(["python benchmarks/grpo_lr_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    grid = {algo: list(FACTORS) for algo in ALGOS}
    os.makedirs(out, exist_ok=True)
    if not args.report_only:
        started, load, machine = time.strftime("%Y-%m-%d %H:%M %Z"), load_average(), machine_lines()  # the commit run
        run_grid(out, grid, args.beta, args.jobs)
        while extend(out, grid):
            run_grid(out, grid, args.beta, args.jobs)
        with open(os.path.join(out, "machine.md"), "a") as f:  # one entry per session that ran some of the sweep
            f.write("\n".join(["", f"### {started} to {time.strftime('%Y-%m-%d %H:%M %Z')}", "", *machine,
                               f"- load average before: {load}", f"- `{command}`"]) + "\n")  # fmt: skip
    else:  # the grid as the sweep left it: every rate in --out
        grid = {algo: [float(d[1:]) for d in os.listdir(os.path.join(out, algo))] for algo in ALGOS}
    print(report(out, grid, command, args.beta, args.report_only))


if __name__ == "__main__":
    main()
