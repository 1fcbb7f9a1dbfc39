"""GRPO against Dr. GRPO on the same task, the same beta and the same seeds: accuracy, the length of right
and of wrong completions, and the weight each prompt gets from its success rate.

    python benchmarks/grpo_vs_dr_grpo.py --seeds 1 2 3 4 5 --out results/grpo_vs_dr_grpo

Every run is the real command line, `python grpo.py --seed S --run-dir ... <setting>` and the same for
dr_grpo.py, with one setting for both (SETTING below, or what follows `--`). Runs go --jobs at a time,
seed by seed, the two algorithms side by side, so that machine load affects both alike. From each run's
metrics.csv (one row per update) and groups.csv (one row per sampled group) it writes into --out:

  grpo_vs_dr_grpo.png   against updates, for both algorithms, the median over seeds and the band from the
                        worst to the best seed: greedy accuracy on the held-out prompts; the mean length of
                        the right and of the wrong completions sampled for training (a rolling mean over
                        --smooth updates); the share of groups that carry a gradient (neither all right nor
                        all wrong); and the weight w(p) each prompt gets, by its success rate p
  grpo_vs_dr_grpo.md    the same as tables, with the command and the machine

The weight w(p): at theta = theta_old and beta = 0, a prompt of success rate p contributes w(p) grad p
to the expected update, w(p) = E[A_i | r_i = 1] - E[A_i | r_i = 0] (tests/test_grpo.py, tests/test_dr_grpo.py).
"Measured" pools the training groups whose p = pi_old(answer | prompt) (groups.csv's p_right) falls in a bin
and takes the mean advantage of their right completions minus that of their wrong ones; "exact" is the mean
of w(p) over the same groups, with w computed from each script's own group_advantages(): GRPO's is U-shaped
(prompts solved almost never or almost always weigh most), Dr. GRPO's is (G - 1)/G for every p.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from common import ROOT, fmt, load_average, machine_lines, read_rows, run_command, spread, write_report

sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from exact import conditional_advantages  # noqa: E402  (the tests' closed form of E[A_i | r_i])

ALGOS = ("grpo", "dr_grpo")
# The default experiment, for both scripts: completions of up to 16 tokens (twice the scripts' default, so length
# has room to move both ways), 16 prompts per update (a slower climb: groups stay mixed, and only mixed groups carry
# a gradient, so the length mechanism acts for the whole run), and grpo.py's beta. At beta = 0 both scripts' entropy
# collapses within 50 to 100 updates (one seed each, measured), every completion runs to the cap, and length has no
# variance left for either loss to act on.
SETTING = ["--total-updates", "120", "--prompts-per-update", "16", "--max-completion-len", "16", "--beta", "0.04"]
BINS = [0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0]  # of p = pi_old(answer | prompt)
MARKS = (25, 50, 100, 150, 200, 300, 400, 600, 800, 1000)  # updates shown in the tables


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------
def run(algo: str, seed: int, setting: list[str], run_dir: str) -> float:
    """Train one seed of one algorithm through its command line, its output in run_dir/log.txt; return the
    seconds from launch to exit."""
    cmd = [sys.executable, os.path.join(ROOT, f"{algo}.py"), "--seed", str(seed), "--run-dir", run_dir, "--overwrite",
           *setting]  # fmt: skip
    os.makedirs(run_dir, exist_ok=True)
    launch = run_command(cmd, os.path.join(run_dir, "log.txt"), timeout=3600)
    if launch.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit status {launch.returncode}: see {run_dir}/log.txt")
    print(f"{algo} seed {seed}: {launch.seconds:.0f} s", file=sys.stderr)
    return launch.seconds


def run_dir(out: str, algo: str, seed: int) -> str:
    return os.path.join(out, "runs", f"{algo}__{seed}")


def read(path: str) -> dict[str, np.ndarray]:
    """A csv file as columns of floats."""
    rows = read_rows(path)
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------
def rolling(x: np.ndarray, n: int) -> np.ndarray:
    """Mean of the last n values at each index, ignoring NaN (a window with no value gives NaN)."""
    out = np.full(len(x), np.nan)
    for i in range(len(x)):
        window = x[max(0, i - n + 1) : i + 1]
        window = window[~np.isnan(window)]
        if len(window):
            out[i] = window.mean()
    return out


def exact_weight(algo: str, group_size: int) -> callable:
    """w(p) = E[A | r = 1] - E[A | r = 0] for binary rewards, from the script's own group_advantages()."""
    module = importlib.import_module(algo)

    def advantage(r: float, m: int, G: int) -> float:  # a completion with reward r in a group with m right
        rewards = torch.tensor([[1.0] * m + [0.0] * (G - m)], dtype=torch.float64)
        return float(module.group_advantages(rewards)[0, 0 if r else G - 1])

    table = {(r, m): advantage(r, m, group_size) for r in (0.0, 1.0) for m in range(group_size + 1)}

    def w(p: float) -> float:
        right, wrong = conditional_advantages(p, group_size, lambda r, m, G: table[(r, m)])
        return right - wrong

    return w


def weight_by_bin(groups: dict[str, np.ndarray], group_size: int, w) -> list[tuple[int, float, float]]:
    """For each bin of p: (number of groups, measured w, exact w averaged over the same groups)."""
    p, n = groups["p_right"], groups["n_right"]
    out = []
    for lo, hi in zip(BINS[:-1], BINS[1:], strict=True):
        inside = (p >= lo) & ((p < hi) | (hi == 1.0))
        right, wrong = n[inside], group_size - n[inside]
        if right.sum() == 0 or wrong.sum() == 0:
            out.append((int(inside.sum()), math.nan, math.nan))
            continue
        a_right = np.nansum(groups["advantage_right"][inside] * right) / right.sum()
        a_wrong = np.nansum(groups["advantage_wrong"][inside] * wrong) / wrong.sum()
        out.append((int(inside.sum()), a_right - a_wrong, float(np.mean([w(x) for x in p[inside]]))))
    return out


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def plot(curves: dict, weights: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("accuracy", "greedy accuracy (held-out prompts)"),
        ("length_correct", "length of right completions"),
        ("length_incorrect", "length of wrong completions"),
        ("mixed", "share of groups with a gradient"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    axes = axes.flatten()
    axes[5].axis("off")
    colors = {"grpo": "tab:red", "dr_grpo": "tab:blue"}
    for ax, (key, label) in zip(axes, panels, strict=False):
        for algo in ALGOS:
            median, low, high = spread(curves[algo][key])
            x = np.arange(1, len(median) + 1)
            ax.plot(x, median, color=colors[algo], label=f"{algo}.py (median)")
            ax.fill_between(x, low, high, color=colors[algo], alpha=0.2, linewidth=0)
        ax.set(xlabel="update", title=label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    ax = axes[4]
    centres = [(lo + hi) / 2 for lo, hi in zip(BINS[:-1], BINS[1:], strict=True)]
    for algo in ALGOS:
        measured = [m for _, m, _ in weights[algo]]
        exact = [e for _, _, e in weights[algo]]
        ax.plot(centres, exact, color=colors[algo], label=f"{algo}.py exact w(p)")
        ax.plot(centres, measured, "o", color=colors[algo], label=f"{algo}.py measured")
    ax.set(xlabel="p = pi_old(answer | prompt), binned", title="weight of a prompt by its success rate, w(p)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    argv = sys.argv[1:]
    setting = argv[argv.index("--") + 1 :] if "--" in argv else SETTING
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", required=True, help="folder for the figure, the table and the runs")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--smooth", type=int, default=20, help="updates in the rolling mean of the length curves")
    parser.add_argument("--plot-only", action="store_true", help="train nothing: plot the runs already in --out")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    os.makedirs(args.out, exist_ok=True)

    started, load_before = time.time(), load_average()
    jobs = [(algo, seed) for seed in args.seeds for algo in ALGOS]  # interleaved: both algorithms of a seed together
    seconds = dict.fromkeys(jobs, math.nan)
    if not args.plot_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            times = pool.map(lambda job: run(*job, setting, run_dir(args.out, *job)), jobs)
            seconds = dict(zip(jobs, times, strict=True))
    elapsed = time.time() - started

    group_size = int(next((setting[i + 1] for i, a in enumerate(setting) if a == "--group-size"), 8))
    curves, weights, table = {}, {}, {}
    for algo in ALGOS:
        runs = [run_dir(args.out, algo, s) for s in args.seeds]
        metrics = [read(os.path.join(r, "metrics.csv")) for r in runs]
        groups = [read(os.path.join(r, "groups.csv")) for r in runs]
        mixed = []
        for g in groups:
            carries = ((g["n_right"] > 0) & (g["n_right"] < group_size)).astype(float)
            steps = g["global_step"].astype(int)
            mixed.append(np.bincount(steps, carries)[1:] / np.bincount(steps)[1:])
        curves[algo] = {
            "accuracy": [m["eval_accuracy"] for m in metrics],
            "length_correct": [rolling(m["length_correct"], args.smooth) for m in metrics],
            "length_incorrect": [rolling(m["length_incorrect"], args.smooth) for m in metrics],
            "mixed": [rolling(x, args.smooth) for x in mixed],
        }
        pooled = {k: np.concatenate([g[k] for g in groups]) for k in groups[0]}
        weights[algo] = weight_by_bin(pooled, group_size, exact_weight(algo, group_size))
        table[algo] = {
            "to95": [next((i + 1 for i, a in enumerate(m["eval_accuracy"]) if a >= 0.95), None) for m in metrics],
            "seconds": [seconds[(algo, s)] for s in args.seeds],
        }

    command = " ".join(["python", "benchmarks/grpo_vs_dr_grpo.py", *sys.argv[1:]])
    title = f"grpo.py vs dr_grpo.py, {len(args.seeds)} seeds each, setting: {' '.join(setting)}"
    plot(curves, weights, os.path.join(args.out, "grpo_vs_dr_grpo.png"), title)

    made = "Drawn (--plot-only) from runs trained earlier with the same setting" if args.plot_only else "Produced"
    lines = [f"## {title}", "", f"{made} by `{command}`.", ""]
    lines += ["Median over seeds [worst seed, best seed]; lengths are rolling means over "
              f"{args.smooth} updates of the completions sampled for training (tokens, EOS included).", ""]  # fmt: skip
    lines += [
        "| update | algorithm | greedy accuracy | length right | length wrong | wrong - right | groups with gradient |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    n = min(len(c) for algo in ALGOS for c in curves[algo]["accuracy"])
    for mark in [m for m in MARKS if m <= n] + ([n] if n not in MARKS else []):
        for algo in ALGOS:
            c = curves[algo]
            cells = []
            for key in ("accuracy", "length_correct", "length_incorrect"):
                median, low, high = (v[mark - 1] for v in spread(c[key]))
                cells.append(f"{fmt(median, 2)} [{fmt(low, 2)}, {fmt(high, 2)}]")
            gap = spread([w - r for w, r in zip(c["length_incorrect"], c["length_correct"], strict=True)])[0][mark - 1]
            cells += [fmt(gap, 2), fmt(spread(c["mixed"])[0][mark - 1], 2)]
            lines.append(f"| {mark} | {algo}.py | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| algorithm | updates to 95% accuracy, median [worst] | seeds that reach it | seconds a run, median |",
        "| --- | ---: | ---: | ---: |",
    ]
    for algo in ALGOS:
        reached = [u for u in table[algo]["to95"] if u is not None]
        worst = "not reached" if len(reached) < len(args.seeds) else str(max(reached))
        median = fmt(statistics.median(reached), 0) if reached else "-"
        lines.append(f"| {algo}.py | {median} [{worst}] | {len(reached)}/{len(args.seeds)} | "
                     f"{fmt(statistics.median(table[algo]['seconds']), 0)} |")  # fmt: skip
    lines += [
        "",
        "The weight w(p) of a prompt by its success rate p (all training groups of all seeds pooled):",
        "",
        "| p | groups (grpo) | grpo measured | grpo exact | groups (dr_grpo) | dr_grpo measured | dr_grpo exact |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, (lo, hi) in enumerate(zip(BINS[:-1], BINS[1:], strict=True)):
        g, d = weights["grpo"][i], weights["dr_grpo"][i]
        lines.append(f"| {lo:.2f}-{hi:.2f} | {g[0]} | {fmt(g[1], 3)} | {fmt(g[2], 3)} | {d[0]} | {fmt(d[1], 3)} | "
                     f"{fmt(d[2], 3)} |")  # fmt: skip
    when = time.strftime("%Y-%m-%d %H:%M")
    lines += ["", f"{len(jobs)} runs, {args.jobs} at a time, {elapsed:.0f} s in all, {when}; load average "
              f"(1, 5, 15 min) before {load_before}, after {load_average()}. Machine:", ""]  # fmt: skip
    lines += machine_lines()
    print(write_report(os.path.join(args.out, "grpo_vs_dr_grpo.md"), lines))


if __name__ == "__main__":
    main()
