"""Speed of 1 process against 2 under torchrun, the same total batch, on this machine.

    python benchmarks/scaling.py                         # ppo, ppo-large and grpo, 3 repeats each: 6 min here
    python benchmarks/scaling.py --scripts ppo ppo-large grpo --repeats 3 --out benchmarks/results/scaling.md

Each run is the real command line, `python <script>.py ...` or `torchrun --standalone --nproc-per-node 2 <script>.py
...`, with the same flags (the same total --num-envs or --prompts-per-update), one thread a process. Speed: steps
per second after the first update (the global step of the last metrics.csv row minus the first, over the wall_time
between them), or for GRPO the mean of its tokens_per_second column after the first row. One and two processes
alternate, so whatever else the machine does falls on both; the table gives the median over the repeats.
"""

import argparse
import os
import statistics
import sys
import tempfile

from common import ROOT, machine_lines, read_rows, run_command

SETTINGS = {  # name: (script, its flags: the same total batch for 1 and 2 processes, the speed's unit)
    "ppo": ("ppo", ["--total-timesteps", "40960", "--num-envs", "8", "--num-steps", "128"], "global_step"),
    "ppo-large": ("ppo", ["--env-id", "Acrobot-v1", "--total-timesteps", "65536", "--num-envs", "32", "--num-steps",
                          "256", "--num-minibatches", "2", "--hidden-size", "256", "--update-epochs", "4"],
                  "global_step"),  # work that grows with the batch: costlier env steps, 256-wide nets, 4096 a step
    "actor_critic": ("actor_critic", ["--total-timesteps", "40960", "--num-envs", "8", "--num-steps", "16"],
                     "global_step"),
    "trpo": ("trpo", ["--total-timesteps", "40960", "--num-envs", "8", "--num-steps", "128"], "global_step"),
    "grpo": ("grpo", ["--total-updates", "30", "--prompts-per-update", "16"], "tokens"),
}  # fmt: skip


def speed(metrics_path: str, unit: str) -> float:
    """Steps (or tokens) per second between the first and the last row of metrics.csv."""
    rows = read_rows(metrics_path)
    seconds = float(rows[-1]["wall_time"]) - float(rows[0]["wall_time"])
    if unit == "global_step":
        return (int(rows[-1]["global_step"]) - int(rows[0]["global_step"])) / seconds
    return statistics.mean(float(r["tokens_per_second"]) for r in rows[1:])  # every process's tokens


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scripts", nargs="+", default=["ppo", "ppo-large", "grpo"], choices=list(SETTINGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args(argv)
    torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc-per-node", "2"]
    lines = ["| setting | 1 process | 2 processes | 2 / 1 |", "| --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scripts:
            script, flags, unit = SETTINGS[name]
            speeds = {1: [], 2: []}
            for k in range(args.repeats):
                for n in (1, 2) if k % 2 == 0 else (2, 1):
                    run_dir = os.path.join(tmp, f"{name}-{n}-{k}")
                    launcher = [sys.executable] if n == 1 else torchrun
                    cmd = [*launcher, os.path.join(ROOT, f"{script}.py"), *flags, "--run-dir", run_dir]
                    os.makedirs(run_dir)
                    launch = run_command(cmd, os.path.join(run_dir, "log.txt"), timeout=1800)
                    if launch.returncode != 0:
                        sys.exit(f"{' '.join(cmd)} failed: see {run_dir}/log.txt")
                    speeds[n].append(speed(os.path.join(run_dir, "metrics.csv"), unit))
                    print(f"{name} {n} process(es): {speeds[n][-1]:.0f} {unit}/s", file=sys.stderr, flush=True)
            one, two = statistics.median(speeds[1]), statistics.median(speeds[2])
            unit_name = "steps/s" if unit == "global_step" else "tokens/s"
            shown = f"{name}: `{script}.py {' '.join(flags)}`"
            lines.append(f"| {shown} | {one:,.0f} {unit_name} | {two:,.0f} {unit_name} | {two / one:.2f}x |")
    report = "\n".join(
        [*lines, "", *machine_lines(), "", f"`python benchmarks/scaling.py {' '.join(argv or sys.argv[1:])}`"]
    )
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
