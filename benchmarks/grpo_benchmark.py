"""grpo.py's benchmark: greedy accuracy on the held-out prompts against updates and wall-clock seconds,
for several seeds, and the mean completion length of correct and incorrect completions over training.

    python benchmarks/grpo_benchmark.py --seeds 1 2 3 4 5 6 7 8 9 10 --total-updates 300 --out benchmarks/results/grpo

Each seed runs `python grpo.py --seed S --total-updates N --run-dir <tmp>` to its end, one after another.
Seconds are measured from launching the process (Python start-up and imports included) to the moment a
row of metrics.csv is written (common.py's launch_offset finds when grpo.py's wall_time started). "To 95%"
is the first update whose greedy accuracy on the 200 held-out prompts reaches the threshold. Lengths count
tokens up to and including EOS (at most --max-completion-len, 8 by default), averaged over the sampled
completions of each window of updates.
Extra arguments after `--` go to grpo.py unchanged. Prints markdown tables, the machine's load average
before and after (other jobs make wall-clock times noisy), the machine and the command line that produced them,
and with --out writes them to OUT/grpo.md.
"""

import argparse
import math
import os
import statistics
import sys
import tempfile

from common import ROOT, fmt, launch_offset, load_average, machine_lines, median_and_worst, read_rows, run_command


def run_seed(seed: int, updates: int, extra: list[str], run_dir: str) -> tuple[list[dict[str, str]], list[float]]:
    """Run one seed to its end; return its metrics rows and, for each row, seconds from launch to its writing."""
    cmd = [sys.executable, os.path.join(ROOT, "grpo.py"), "--seed", str(seed), "--total-updates", str(updates),
           "--run-dir", run_dir, *extra]  # fmt: skip
    os.makedirs(run_dir, exist_ok=True)
    launch = run_command(cmd, os.path.join(run_dir, "log.txt"), timeout=3600)
    if launch.returncode != 0:
        with open(os.path.join(run_dir, "log.txt")) as f:
            sys.exit(f"{' '.join(cmd)} failed with exit status {launch.returncode}: {f.read().strip()[-2000:]}")
    path = os.path.join(run_dir, "metrics.csv")
    rows, offset = read_rows(path), launch_offset(path, launch.launch_time)
    return rows, [offset + float(r["wall_time"]) for r in rows]


def nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.mean(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--total-updates", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--window", type=int, default=25, help="updates per row of the length table")
    parser.add_argument("--out", help="also write the tables to OUT/grpo.md")
    parser.add_argument("extra", nargs="*", help="arguments for grpo.py, after --")
    args = parser.parse_args()

    load_before = load_average()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            runs[seed] = run_seed(seed, args.total_updates, args.extra, os.path.join(tmp, str(seed)))
            print(f"seed {seed}: {len(runs[seed][0])} updates in {runs[seed][1][-1]:.1f} s", file=sys.stderr)
    load_after = load_average()

    lines = []
    out = lines.append  # every line of the report, printed and written at the end
    out(f"### Time to {args.threshold:.0%} greedy accuracy on the held-out prompts\n")
    out("| seed | updates to reach | seconds to reach | final accuracy | updates | total seconds |")
    out("| ---: | ---: | ---: | ---: | ---: | ---: |")
    reached_u, reached_s = [], []  # per seed; None: not reached
    for seed, (rows, seen) in runs.items():
        hit = next((i for i, r in enumerate(rows) if float(r["eval_accuracy"]) >= args.threshold), None)
        u = int(rows[hit]["global_step"]) if hit is not None else None
        s = seen[hit] if hit is not None else None
        reached_u.append(u)
        reached_s.append(s)
        final = float(rows[-1]["eval_accuracy"])
        out(f"| {seed} | {u if u is not None else 'not reached'} | {fmt(s, 1)} | {final:.3f} | {len(rows)} "
              f"| {seen[-1]:.1f} |")  # fmt: skip
    (median_u, worst_u), (median_s, worst_s) = median_and_worst(reached_u), median_and_worst(reached_s)
    cell = lambda x, digits: "not reached" if x is None else f"{x:.{digits}f}"  # noqa: E731
    out(f"| median (worst) of {len(runs)} seeds | {cell(median_u, 1)} ({cell(worst_u, 0)}) | {cell(median_s, 1)} "
        f"({cell(worst_s, 1)}) | | | |")  # fmt: skip

    out("\n### Greedy accuracy against updates and seconds (mean over the seeds, then each seed)\n")
    out("| update | seconds (mean) | accuracy (mean) | per seed |")
    out("| ---: | ---: | ---: | --- |")
    n = min(len(rows) for rows, _ in runs.values())
    marks = sorted({m for m in (1, 10, 25, 50, 75, 100, 150, 200, 300, 400, 600, 800, n) if m <= n})
    for m in marks:
        accs = [float(rows[m - 1]["eval_accuracy"]) for rows, _ in runs.values()]
        secs = [seen[m - 1] for _, seen in runs.values()]
        per_seed = ", ".join(f"{a:.3f}" for a in accs)
        out(f"| {m} | {statistics.mean(secs):.1f} | {statistics.mean(accs):.3f} | {per_seed} |")

    out(f"\n### Mean completion length (tokens, EOS included), correct and incorrect, per {args.window} updates\n")
    out("| updates | mean reward | length correct | length incorrect |")
    out("| --- | ---: | ---: | ---: |")
    for lo in range(0, n, args.window):
        window = [r for rows, _ in runs.values() for r in rows[lo : lo + args.window]]
        reward = nanmean(float(r["mean_reward"]) for r in window)
        right = nanmean(float(r["length_correct"]) for r in window)
        wrong = nanmean(float(r["length_incorrect"]) for r in window)
        out(f"| {lo + 1}-{min(lo + args.window, n)} | {reward:.3f} | {fmt(right, 2)} | {fmt(wrong, 2)} |")

    command = " ".join(["python", "benchmarks/grpo_benchmark.py", *sys.argv[1:]])
    out(f"\nProduced by `{command}`; load average (1, 5, 15 min) before {load_before}, after {load_after}.\n")
    out("\n".join(machine_lines()))
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "grpo.md"), "w") as f:
            f.write("## grpo.py on the `max` digit task\n\n" + report)


if __name__ == "__main__":
    main()
