"""How the defaults were chosen: steps to solve for each script's defaults and the alternatives beside them.

    python benchmarks/ablations.py                      # every row below into benchmarks/results/ablations.md
    python benchmarks/ablations.py --scripts ppo.py     # one script's rows

Each row runs its command line once per seed with solve.py's run_seed (the run stops once it solves; solved is
the README's definition: the mean return of the last 20 training episodes reaches the threshold), one run after
another. Steps to solve are deterministic on a given machine (not across CPUs); seconds depend on the load, and
compare only within a table of one run. A seed that does not solve within the budget counts as slower than every
seed that does.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from common import ROOT, load_average, machine_lines
from solve import run_seed

SEEDS = [1, 2, 3, 4, 5]
ROWS = [
    # script             task           threshold  budget    flags (the defaults' row first)
    ("ppo.py",           "CartPole-v1",  475,      100_000,  []),
    ("ppo.py",           "CartPole-v1",  475,      100_000,  ["--no-anneal-lr"]),
    ("ppo.py",           "CartPole-v1",  475,      100_000,  ["--clip-vloss"]),
    ("ppo.py",           "CartPole-v1",  475,      100_000,  ["--num-minibatches", "2"]),
    ("actor_critic.py",  "CartPole-v1",  475,      300_000,  []),
    ("actor_critic.py",  "CartPole-v1",  475,      300_000,  ["--network", "shared"]),
    ("actor_critic.py",  "Acrobot-v1",   -100,     300_000,  ["--ent-coef", "0.01"]),
    ("actor_critic.py",  "Acrobot-v1",   -100,     300_000,  []),
    ("reinforce.py",     "CartPole-v1",  475,      300_000,  ["--baseline", "value"]),
    ("reinforce.py",     "CartPole-v1",  475,      300_000,  ["--baseline", "mean"]),
    ("reinforce.py",     "CartPole-v1",  475,      300_000,  ["--baseline", "moving"]),
    ("reinforce.py",     "CartPole-v1",  475,      300_000,  ["--baseline", "none"]),
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scripts", nargs="+", help="only these scripts' rows (default: every row)")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "ablations.md"))
    args = p.parse_args()
    rows = [r for r in ROWS if not args.scripts or r[0] in args.scripts]
    started, load = time.strftime("%Y-%m-%d %H:%M %Z"), load_average()
    command = " ".join(["python benchmarks/ablations.py", *sys.argv[1:]])
    lines = ["## How the defaults were chosen", "", f"Produced by `{command}` ({started}).", ""]
    header = "| script | task | flags | " + " | ".join(f"seed {s}" for s in args.seeds) + " | median | solved |"
    lines += [header, "| --- " * (5 + len(args.seeds)) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for script, task, threshold, budget, flags in rows:
            results = []
            for seed in args.seeds:
                run_dir = os.path.join(tmp, f"{script}-{task}-{'_'.join(flags)}-{seed}")
                results.append(run_seed(script, task, seed, threshold, budget, flags, run_dir))
                print(f"{script} {task} {' '.join(flags)} seed {seed}: {results[-1]}", file=sys.stderr, flush=True)
            steps = sorted((s if s is not None else float("inf")) for s, _ in results)  # unsolved: slowest
            median = statistics.median(steps)
            cells = [f"{s:,} ({t:.1f} s)" if s is not None else f"not solved in {budget:,}" for s, t in results]
            shown = f"{median:,.0f}" if median != float("inf") else "not solved"
            solved = sum(s is not None for s, _ in results)
            lines.append(f"| {script} | {task} | `{' '.join(flags) or 'defaults'}` | {' | '.join(cells)} | {shown} | "
                         f"{solved}/{len(results)} |")  # fmt: skip
            write(args.out, lines, load)  # after every row: an interrupted run keeps the rows it finished
    print(open(args.out).read())


def write(path: str, lines: list[str], load: str) -> None:
    tail = ["", f"Budget: 300,000 steps a run (ppo.py: 100,000, the budget its learning rate decays over). Load "
            f"average (1, 5, 15 min) before {load}, after {load_average()}.", "", *machine_lines()]  # fmt: skip
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines + tail) + "\n")


if __name__ == "__main__":
    main()
