"""MuJoCo: ppo.py beside Stable-Baselines3's PPO with the same hyperparameters, and trpo.py, on Hopper, HalfCheetah
and Walker2d (v5), 1M steps each, against the published numbers.

    pip install -r requirements.txt -r benchmarks/requirements.txt
    python benchmarks/mujoco_benchmark.py                 # 21 runs of 1M steps, 2 at a time: about 100 min of 2 cores
    python benchmarks/mujoco_benchmark.py --report-only   # the table and figures again from the runs kept in --out

(Not benchmarks/mujoco.py: a script there would be imported as the `mujoco` package by every script beside it.)

The hyperparameters are CleanRL's `ppo_continuous_action.py` defaults, for both libraries: 1 env, 2048 steps per
rollout, 10 epochs of 32 minibatches (64 steps), Adam at 3e-4 decaying linearly to 0, gamma 0.99, GAE lambda 0.95,
clip 0.2, no entropy bonus, value coefficient 0.5, gradient norm clipped at 0.5, advantages normalised per
minibatch, observations and rewards normalised by running statistics (clipped to +-10), 64-64 tanh networks.
No value clipping in either (CleanRL clips the value loss by default; SB3's clip_range_vf is another formula).
trpo.py runs on Hopper-v5 only, with settings chosen here (TRPO in the table). Runs are interleaved, seed by seed,
the order rotating, two at a time, each on one torch thread (SB3 too), through benchmarks/run.py's runner: every
run is its real command line, and a run whose run.json says it finished with the same command is kept, so the
set can span several sessions. Each finished run keeps episodes.csv, metrics.csv and run.json under --out.

Final return: the mean of the last 100 training episodes of a run (CleanRL's measure); per task the median and the
range over the 3 seeds. Seconds: from launching the process to its exit; ours / SB3's: the ratio of the medians.
"""

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np
from common import (
    ROOT,
    curve_on_grid,
    load_average,
    machine_lines,
    plot_curves,
    read_episodes,
    rolling_mean,
    spread,
    write_report,
)
from run import Job, finished, run_all

TASKS = ["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"]
SEEDS = [1, 2, 3]
BUDGET = 1_000_000
WINDOW = 100  # the final return: the mean of the last 100 training episodes
PPO = ["--num-envs", "1", "--num-steps", "2048", "--num-minibatches", "32", "--learning-rate", "3e-4", "--norm-obs",
       "--norm-reward"]  # fmt: skip
TRPO = ["--num-envs", "2", "--num-steps", "2048", "--delta", "0.01", "--gae-lambda", "0.97", "--vf-epochs", "10",
        "--num-minibatches", "64"]  # fmt: skip
PLAN = [(task, "ppo", PPO) for task in TASKS] + [(task, "sb3-ppo", []) for task in TASKS]
PLAN += [("Hopper-v5", "trpo", TRPO)]
# The published numbers, each with its source and what its +- means.
PUBLISHED = {
    "Hopper-v5": [
        (
            "CleanRL ppo_continuous_action, Hopper-v4, 1M",
            "2382.9 +- 271.7",
            "mean +- std over 3 seeds of each "
            "seed's mean of its last 100 training episodes (docs/benchmark/ppo_continuous_action.md)",
        ),
        ("RL Zoo SB3 PPO, tuned, Hopper-v3", "2410", "one agent (its benchmark.md: not a quantitative benchmark)"),
        ("sb3-contrib TRPO, Hopper-v3", "3372 +- 215", "its documentation's result table"),
    ],
    "HalfCheetah-v5": [
        ("CleanRL ppo_continuous_action, HalfCheetah-v4, 1M", "1442.6 +- 46.0", "as for Hopper"),
        ("RL Zoo SB3 PPO, tuned, HalfCheetah-v3", "5819", "one agent"),
    ],
    "Walker2d-v5": [
        ("CleanRL ppo_continuous_action, Walker2d-v4, 1M", "2288.0 +- 571.8", "as for Hopper"),
        ("RL Zoo SB3 PPO, tuned, Walker2d-v3", "3479", "one agent"),
    ],
}
NAMES = {"ppo": "ppo.py", "sb3-ppo": "SB3 PPO", "trpo": "trpo.py"}


def plan_jobs(out: str) -> list[Job]:
    """Seed by seed, each seed's runs in a rotating order, so that whatever load the machine has falls on all."""
    jobs = []
    for k, seed in enumerate(SEEDS):
        for task, algo, flags in PLAN[k % len(PLAN) :] + PLAN[: k % len(PLAN)]:
            jobs.append(Job(algo, task, seed, BUDGET, list(flags), os.path.join(out, task, algo, f"seed{seed}")))
    return jobs


def final_return(returns: np.ndarray) -> float:
    return float(np.mean(returns[-WINDOW:])) if len(returns) else math.nan


def report(jobs: list[Job], records: dict[int, dict], out: str, command: str, redrawn: bool = False) -> str:
    """out/mujoco.md and one figure per task, out/<task>.png; returns the markdown."""
    lines = ["## MuJoCo: ppo.py and SB3 PPO with the same hyperparameters, trpo.py", "",
             f"Produced by `{command.replace(' --report-only', '')}`{' (redrawn with --report-only)' * redrawn}; the "
             "machine and the commit: [machine.md](machine.md). Final return: the mean "
             f"of the last {WINDOW} training episodes of a run; median and range over the seeds. Seconds: process "
             "launch to exit, median over the seeds; ours / SB3: the ratio of the medians, from the same interleaved "
             "run.", ""]  # fmt: skip
    for task in TASKS:
        runs = {}
        for i, job in enumerate(jobs):
            if job.task == task and i in records and records[i]["returncode"] == 0:
                ep = read_episodes(os.path.join(job.run_dir, "episodes.csv"), offset=records[i]["offset"])
                runs.setdefault(job.algo, []).append((job.seed, ep, records[i]["seconds"]))
        lines += [f"### {task}", "", "| | seeds | final return: median (range) | per seed | seconds per run | / SB3 |",
                  "| --- | ---: | ---: | --- | ---: | ---: |"]  # fmt: skip
        sb3 = statistics.median(s for _, _, s in runs["sb3-ppo"]) if runs.get("sb3-ppo") else None
        for algo, done in runs.items():
            finals = [final_return(ep.returns) for _, ep, _ in done]
            seconds = statistics.median(s for _, _, s in done)
            vs = f"{seconds / sb3:.2f}x" if sb3 and algo != "sb3-ppo" else "-"
            per_seed = ", ".join(f"{f:.0f}" for f in finals)
            lines.append(f"| {NAMES[algo]} | {len(done)} | {statistics.median(finals):.0f} ({min(finals):.0f} to "
                         f"{max(finals):.0f}) | {per_seed} | {seconds:.0f} | {vs} |")  # fmt: skip
        lines += ["", "Published:", "", "| source | return | what +- means |", "| --- | ---: | --- |"]
        lines += [f"| {source} | {value} | {means} |" for source, value, means in PUBLISHED[task]]
        lines += ["", f"![{task}]({task}.png)", ""]
        grid = np.linspace(0, BUDGET, 201)
        series = {}
        for algo, done in runs.items():
            median, low, high = spread(
                [curve_on_grid(ep.steps, rolling_mean(ep.returns, WINDOW), grid) for _, ep, _ in done]
            )
            series[NAMES[algo] if algo != "sb3-ppo" else "sb3 PPO"] = (grid, low, median, high)
        if series:
            title = f"{task}: mean of the last {WINDOW} returns, median and range of {len(SEEDS)} seeds"
            plot_curves(os.path.join(out, f"{task}.png"), title, [("environment steps", series)], "return")
    return write_report(os.path.join(out, "mujoco.md"), lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "mujoco"), help="results folder")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--run-timeout", type=float, default=3 * 3600, help="seconds before a run is killed")
    p.add_argument("--report-only", action="store_true", help="no training: the report from the runs in --out")
    args = p.parse_args(argv)
    out = os.path.join(ROOT, args.out)
    jobs = plan_jobs(out)
    command = " ".join(["python benchmarks/mujoco_benchmark.py", *(argv if argv is not None else sys.argv[1:])])
    os.makedirs(out, exist_ok=True)
    if args.report_only:
        records = {i: r for i, job in enumerate(jobs) if (r := finished(job))}
    else:  # each run keeps episodes.csv, metrics.csv and run.json (model.pt and log.txt: .gitignore'd)
        started, load, machine = time.strftime("%Y-%m-%d %H:%M %Z"), load_average(), machine_lines()  # the commit run
        print(f"{len(jobs)} runs into {out}, those that finished before kept; load average {load}", file=sys.stderr)
        records = run_all(jobs, args.jobs, args.run_timeout, fresh=False)
        with open(os.path.join(out, "machine.md"), "a") as f:  # one entry per session that ran some of the set
            f.write("\n".join(["", f"### {started} to {time.strftime('%Y-%m-%d %H:%M %Z')}", "", *machine,
                               f"- load average before: {load}", f"- `{command}`"]) + "\n")  # fmt: skip
    print(report(jobs, records, out, command, args.report_only))


if __name__ == "__main__":
    main()
