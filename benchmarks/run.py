"""The benchmark: our scripts and Stable-Baselines3 side by side, same machine, same run, same clock.

    pip install -r requirements.txt -r benchmarks/requirements.txt
    python benchmarks/run.py --quick        # CartPole-v1, 2 seeds, 5 algorithms: a few minutes
    python benchmarks/run.py --full         # every row of PLAN below and the GRPO experiment: about an hour
    python benchmarks/run.py --algos ppo sb3-ppo --tasks Pendulum-v1 --seeds 1 2 3 --out runs/pendulum
    python benchmarks/run.py --report-only --out benchmarks/results    # tables and figures again, no training

Every run is a subprocess of its real command line (`python ppo.py --env-id ... --seed ... --total-timesteps
... --run-dir ... --torch-threads 1`, or benchmarks/sb3_runner.py with the same flags), one after another
(or --jobs at a time), interleaved seed by seed: seed 1 of every algorithm, then seed 2, ..., the order of
the algorithms rotating from seed to seed, so that whatever load the machine has falls on ours and on
Stable-Baselines3 alike. Runs always train to their full budget: the final mean return and the learning
curves need the whole run, and stopping the solved seeds early would leave only the slow ones in the
curves' later part.

Solved: the first training episode at which the mean return of the last 20 training episodes reaches the
task's threshold (CartPole-v1 475, Acrobot-v1 -100; Pendulum-v1 has none: the mean of the last 20 episodes
at 100k steps and at the end). Steps to solve: that episode's global_step. Seconds to solve: from launching
the process (Python start-up, imports and set-up included) to the end of that episode; the runner times the
launch itself, and finds when the script's own clock (wall_time) started from metrics.csv (common.py,
`launch_offset`). Medians and worst seeds over all seeds: a seed that does not solve within the budget counts
as slower than every seed that does.

Writes into --out: <task>.md (the table, each seed, the command) and <task>.png (learning curves, median and
inter-quartile band over seeds, against environment steps and against seconds from launch) per task,
machine.md, runs.csv (one line per run), results.md (all of it in one page), and runs/ with every run's
files and log. A run whose run.json says it finished with the same command is not run again, so an
interrupted benchmark resumes where it stopped (--fresh runs everything again).
"""

import argparse
import csv
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from common import (
    ROOT,
    curve_on_grid,
    fmt,
    launch_offset,
    load_average,
    machine_lines,
    mean_at_step,
    median_and_worst,
    plot_curves,
    quartiles,
    ratio,
    read_episodes,
    rolling_mean,
    run_command,
    solve_index,
    write_report,
)

# ================================================================================================
# THE BENCHMARK: one row per (algorithm, task) that --full runs. Edit here and nowhere else.
#   budget: --total-timesteps of every run. CartPole-v1's 100k is the RL Zoo's n_timesteps for PPO and
#           TRPO (PPO's learning rate and clip decay over it). SB3's A2C, whose Zoo entry trains 500k steps
#           at a constant learning rate, does not solve within 100k: it gets 200k, which leaves its first
#           100k unchanged. The table says so where a task's budgets differ.
#   seeds:  --full runs seeds 1..seeds
#   flags:  extra command-line arguments for that algorithm on that task
# ================================================================================================
PLAN = [
    # algorithm      task            budget    seeds  flags
    ("reinforce",    "CartPole-v1",  100_000,  10,    []),
    ("actor_critic", "CartPole-v1",  100_000,  10,    []),
    ("ppo",          "CartPole-v1",  100_000,  10,    []),
    ("trpo",         "CartPole-v1",  100_000,  10,    []),
    ("sb3-ppo",      "CartPole-v1",  100_000,  10,    []),
    ("sb3-a2c",      "CartPole-v1",  200_000,  10,    []),  # constant lr: more budget changes nothing before
    ("sb3-trpo",     "CartPole-v1",  100_000,  10,    []),
    ("reinforce",    "Acrobot-v1",   200_000,  5,     []),
    ("actor_critic", "Acrobot-v1",   200_000,  5,     ["--ent-coef", "0.01"]),  # README: Acrobot wants entropy
    ("ppo",          "Acrobot-v1",   200_000,  5,     []),
    ("trpo",         "Acrobot-v1",   200_000,  5,     []),
    ("sb3-ppo",      "Acrobot-v1",   200_000,  5,     []),
    ("actor_critic", "Pendulum-v1",  200_000,  5,     []),
    ("ppo",          "Pendulum-v1",  200_000,  5,     ["--num-steps", "256", "--num-minibatches", "16",  # README:
                                                       "--gamma", "0.9", "--learning-rate", "1e-3", "--anneal-lr",
                                                       "--norm-obs", "--norm-reward"]),  # ppo.py on Pendulum-v1
    ("trpo",         "Pendulum-v1",  200_000,  5,     ["--gamma", "0.9", "--num-steps", "256", "--delta", "0.02"]),
    ("sb3-ppo",      "Pendulum-v1",  200_000,  5,     []),
]  # fmt: skip
QUICK = {"tasks": ["CartPole-v1"], "seeds": [1, 2], "algos": ["reinforce", "actor_critic", "ppo", "sb3-ppo", "sb3-a2c"]}
GRPO_SEEDS = [1, 2, 3, 4, 5]  # --full: python benchmarks/grpo_vs_dr_grpo.py --seeds 1 2 3 4 5 --out OUT/grpo_vs_dr_grpo
GRPO_BENCHMARK = [
    "--seeds",
    *map(str, range(1, 11)),
    "--total-updates",
    "300",
]  # --full: grpo_benchmark.py ... OUT/grpo


@dataclass(frozen=True)
class Task:
    threshold: float | None  # None: no "solved", only mean returns
    marks: tuple[int, ...] = ()  # steps at which the table shows the mean return of the last 20 episodes


TASKS = {
    "CartPole-v1": Task(threshold=475.0),
    "Acrobot-v1": Task(threshold=-100.0),
    "Pendulum-v1": Task(threshold=None, marks=(100_000,)),
    **{
        task: Task(threshold=None) for task in ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5")
    },  # benchmarks/mujoco_benchmark.py
}

# algorithm: (command after the interpreter, the Stable-Baselines3 algorithm it is compared with)
ALGORITHMS = {
    "reinforce": (["reinforce.py"], None),
    "actor_critic": (["actor_critic.py"], "sb3-a2c"),
    "ppo": (["ppo.py"], "sb3-ppo"),
    "trpo": (["trpo.py"], "sb3-trpo"),
    "sb3-ppo": (["benchmarks/sb3_runner.py", "--algo", "ppo"], None),
    "sb3-a2c": (["benchmarks/sb3_runner.py", "--algo", "a2c"], None),
    "sb3-trpo": (["benchmarks/sb3_runner.py", "--algo", "trpo"], None),
}

COLOUR = {"reinforce": 0, "actor_critic": 1, "sb3-a2c": 1, "ppo": 2, "sb3-ppo": 2, "trpo": 3, "sb3-trpo": 3}


@dataclass
class Job:
    algo: str
    task: str
    seed: int
    budget: int
    flags: list[str]
    run_dir: str

    def command(self) -> list[str]:
        script, *fixed = ALGORITHMS[self.algo][0]
        return [sys.executable, os.path.join(ROOT, script), *fixed, "--env-id", self.task, "--seed", str(self.seed),
                "--total-timesteps", str(self.budget), "--run-dir", self.run_dir, "--torch-threads", "1",
                *self.flags]  # fmt: skip

    def shown(self) -> str:
        return " ".join(["python", *ALGORITHMS[self.algo][0], "--env-id", self.task, "--seed", str(self.seed),
                         "--total-timesteps", str(self.budget), *self.flags])  # fmt: skip


def plan_jobs(algos, tasks, seeds, out: str, budget: int | None = None) -> list[Job]:
    """The jobs in the order they run: task by task, seed by seed, the algorithms rotating with the seed."""
    jobs = []
    for task in tasks:
        rows = [r for r in PLAN if r[1] == task and r[0] in algos]
        task_seeds = seeds or range(1, max((r[3] for r in rows), default=0) + 1)
        for k, seed in enumerate(task_seeds):
            for algo, _, row_budget, n_seeds, flags in rows[k % len(rows) :] + rows[: k % len(rows)]:
                if seeds or seed <= n_seeds:
                    run_dir = os.path.join(out, "runs", task, algo, f"seed{seed}")
                    jobs.append(Job(algo, task, seed, budget or row_budget, list(flags), run_dir))
    return jobs


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------
def finished(job: Job) -> dict | None:
    """The run's record if it already finished with this very command."""
    path = os.path.join(job.run_dir, "run.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        record = json.load(f)
    return record if record.get("command") == job.shown() and record.get("returncode") == 0 else None


def execute(job: Job, timeout: float) -> dict:
    os.makedirs(job.run_dir, exist_ok=True)
    for name in ("episodes.csv", "metrics.csv", "model.pt", "run.json"):  # nothing left from an earlier try
        if os.path.exists(os.path.join(job.run_dir, name)):
            os.remove(os.path.join(job.run_dir, name))
    launch = run_command(job.command(), os.path.join(job.run_dir, "log.txt"), timeout)
    record = {"command": job.shown(), "returncode": launch.returncode, "launch_time": launch.launch_time,
              "seconds": round(launch.seconds, 3), "offset": None}  # fmt: skip
    if launch.returncode == 0:
        record["offset"] = round(launch_offset(os.path.join(job.run_dir, "metrics.csv"), launch.launch_time), 4)
    with open(os.path.join(job.run_dir, "run.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record


def describe(job: Job, record: dict) -> str:
    if record["returncode"] != 0:
        why = "timed out" if record["returncode"] is None else f"exit status {record['returncode']}"
        return f"FAILED ({why}; see {os.path.join(job.run_dir, 'log.txt')})"
    result = summarise(job, record)
    threshold = TASKS[job.task].threshold
    if threshold is None:
        return f"final mean return {result['final']:.1f} in {record['seconds']:.1f} s"
    solved = (f"solved at {result['steps']:,} steps, {result['seconds']:.1f} s" if result["steps"] is not None
              else "not solved")  # fmt: skip
    return f"{solved}; final mean return {result['final']:.1f}; ran {record['seconds']:.1f} s"


def run_all(jobs: list[Job], n_parallel: int, timeout: float, fresh: bool) -> dict[int, dict]:
    records = {}

    def one(i: int) -> None:
        job = jobs[i]
        record = None if fresh else finished(job)
        reused = record is not None
        record = record or execute(job, timeout)
        records[i] = record
        note = " (finished earlier, kept)" if reused else ""
        print(f"[{len(records)}/{len(jobs)}] {job.task} {job.algo} seed {job.seed}: {describe(job, record)}{note}",
              file=sys.stderr, flush=True)  # fmt: skip

    if n_parallel == 1:
        for i in range(len(jobs)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=n_parallel) as pool:
            list(pool.map(one, range(len(jobs))))
    return records


# ----------------------------------------------------------------------------------------------
# Reading the runs back: one result per run, the tables, the curves
# ----------------------------------------------------------------------------------------------
def summarise(job: Job, record: dict) -> dict:
    """A finished run's numbers: steps and seconds to solve (None if not solved), the mean return of the last
    20 episodes at each mark and at the end (a run may pass its budget to finish its last batch, as a script
    whose batches are whole episodes does), seconds from launch to its last episode."""
    ep = read_episodes(os.path.join(job.run_dir, "episodes.csv"), offset=record["offset"])
    task = TASKS[job.task]
    i = solve_index(ep.returns, task.threshold) if task.threshold is not None and len(ep.returns) else None
    return {
        "episodes": ep,
        "steps": int(ep.steps[i]) if i is not None else None,
        "seconds": float(ep.seconds[i]) if i is not None else None,
        "marks": [mean_at_step(ep, m) if m <= job.budget else None for m in task.marks],
        "final": mean_at_step(ep, math.inf),  # the last 20 episodes of the run, as the script's summary line
        "total_seconds": float(ep.seconds[-1]) if len(ep.seconds) else None,
    }


def times(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def pair(median_worst, digits: int = 1, missing: str = "-") -> str:
    """A table cell "median (worst)"; just `missing` when neither exists."""
    median, worst = median_worst
    if median is None and worst is None:
        return missing
    return f"{fmt(median, digits, missing)} ({fmt(worst, digits, missing)})"


def task_report(task: str, jobs: list[Job], records: dict[int, dict], command: str, out: str) -> list[str]:
    """Writes <task>.md and <task>.png; returns the markdown."""
    spec = TASKS[task]
    algos = list(dict.fromkeys(j.algo for j in jobs if j.task == task))
    results, failed = {a: [] for a in algos}, {a: 0 for a in algos}
    for i, job in enumerate(jobs):
        if job.task == task:
            if records[i]["returncode"] == 0:
                results[job.algo].append((job.seed, summarise(job, records[i])))
            else:
                failed[job.algo] += 1
    budgets = {j.algo: j.budget for j in jobs if j.task == task}
    one_budget = len(set(budgets.values())) == 1
    stats = {}
    for a in algos:
        res = [r for _, r in results[a]]
        stats[a] = {
            "steps": median_and_worst([r["steps"] for r in res]),
            "seconds": median_and_worst([r["seconds"] for r in res]),
            "final": median_and_worst([r["final"] for r in res], higher_is_better=True),
            "marks": [
                median_and_worst([r["marks"][k] for r in res], higher_is_better=True) for k in range(len(spec.marks))
            ],  # fmt: skip
            "total": median_and_worst([r["total_seconds"] for r in res]),
        }

    lines = [f"### {task}", ""]
    if spec.threshold is not None:
        lines += [f"Solved: the mean return of the last 20 training episodes reaches {spec.threshold:g}; "
                  f"{budget_note(budgets)}; median (worst) over seeds; seconds from process launch.", "",
                  "| algorithm | steps to solve | seconds to solve | solved | final mean return | "
                  "steps, ours / SB3 | seconds, ours / SB3 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    else:
        marks = " | ".join(f"mean return at {m // 1000}k" for m in spec.marks)
        lines += [f"Mean return of the last 20 training episodes; {budget_note(budgets)}; median (worst) over "
                  "seeds; seconds from process launch to the last episode.", "",
                  f"| algorithm | {marks} | final mean return | seconds | seconds, ours / SB3 |",
                  "| --- |" + " ---: |" * (len(spec.marks) + 3)]  # fmt: skip
    for a in algos:
        s, n = stats[a], len(results[a])
        match = ALGORITHMS[a][1] if ALGORITHMS[a][1] in stats else None
        not_run = f" ({failed[a]} failed)" if failed[a] else ""
        not_run += "" if one_budget else f" ({budgets[a] // 1000}k steps)"
        final = pair(s["final"])
        if spec.threshold is not None:
            solved = sum(r["steps"] is not None for _, r in results[a])
            steps, secs = pair(s["steps"], 0, "not solved"), pair(s["seconds"], 1, "not solved")
            r_steps = times(ratio(s["steps"][0], stats[match]["steps"][0])) if match else "-"
            r_secs = times(ratio(s["seconds"][0], stats[match]["seconds"][0])) if match else "-"
            lines.append(f"| {a}{not_run} | {steps} | {secs} | {solved}/{n} | {final} | {r_steps} | {r_secs} |")
        else:
            at = " | ".join(pair(m) for m in s["marks"])
            secs = pair(s["total"])
            r_secs = times(ratio(s["total"][0], stats[match]["total"][0])) if match else "-"
            lines.append(f"| {a}{not_run} | {at} | {final} | {secs} | {r_secs} |")

    seeds = sorted({seed for a in algos for seed, _ in results[a]})
    what = "steps / seconds to solve" if spec.threshold is not None else "final mean return / seconds"
    lines += ["", f"Each seed ({what}):", "", "| algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "| --- |" + " ---: |" * len(seeds)]  # fmt: skip
    for a in algos:
        by_seed = dict(results[a])
        cells = []
        for seed in seeds:
            r = by_seed.get(seed)
            if r is None:
                cells.append("-")
            elif spec.threshold is None:
                cells.append(f"{fmt(r['final'])} / {fmt(r['total_seconds'])} s")
            else:
                cells.append(f"{r['steps']:,} / {r['seconds']:.1f} s" if r["steps"] is not None else "not solved")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")

    png = f"{task}.png"
    try:
        plot_task(os.path.join(out, png), task, results, budgets, spec.threshold)
        lines += ["", f"![{task}: learning curves]({png})"]
    except ImportError:
        lines += ["", "(no figure: matplotlib is not installed; `pip install -r benchmarks/requirements.txt`)"]
    lines += ["", f"Produced by `{command}`."]
    write_report(os.path.join(out, f"{task}.md"), lines)
    return lines


def budget_note(budgets: dict[str, int]) -> str:
    if len(set(budgets.values())) == 1:
        return f"budget {next(iter(budgets.values())):,} steps"
    return "budgets in steps as shown"


def plot_task(path: str, task: str, results: dict, budgets: dict[str, int], threshold) -> None:
    """Median and inter-quartile band over seeds of the mean of the last 20 returns, against environment
    steps (up to each algorithm's budget) and against seconds from launch (a finished run keeps its last
    value). Our scripts solid, Stable-Baselines3 dashed, an algorithm and its SB3 match in one colour."""
    step_grid = np.linspace(0, max(budgets.values()), 201)
    longest = max((r["total_seconds"] or 0 for runs in results.values() for _, r in runs), default=1.0)
    second_grid = np.linspace(0, longest, 201)
    by_steps, by_seconds = {}, {}
    for algo, runs in results.items():
        if not runs:
            continue
        means = [(r["episodes"], rolling_mean(r["episodes"].returns)) for _, r in runs]
        on_steps = np.array([curve_on_grid(e.steps, m, step_grid) for e, m in means])
        on_steps[:, step_grid > budgets[algo]] = np.nan
        by_steps[algo] = (step_grid, *quartiles(on_steps))
        by_seconds[algo] = (second_grid, *quartiles([curve_on_grid(e.seconds, m, second_grid) for e, m in means]))
    n = max(len(runs) for runs in results.values())
    title = f"{task}: mean return of the last 20 training episodes, median and IQR over {n} seeds"
    colours = {a: f"C{COLOUR[a]}" for a in results}
    plot_curves(path, title, [("environment steps", by_steps), ("seconds from process launch", by_seconds)],
                "return", hline=threshold, colours=colours)  # fmt: skip


def write_reports(jobs: list[Job], records: dict[int, dict], out: str, command: str, started: str, load: str,
                  grpo: dict | None) -> None:  # fmt: skip
    page = ["## Benchmark results", "", f"Produced by `{command}` ({started}).", ""]
    for task in dict.fromkeys(j.task for j in jobs):
        page += task_report(task, jobs, records, command, out) + [""]
    if grpo is not None:
        page += ["### GRPO and Dr. GRPO", ""]
        if grpo.get("returncode") == 0:
            page += ["See [grpo_vs_dr_grpo/grpo_vs_dr_grpo.md](grpo_vs_dr_grpo/grpo_vs_dr_grpo.md), "
                     "![GRPO vs Dr. GRPO](grpo_vs_dr_grpo/grpo_vs_dr_grpo.png) and [grpo/grpo.md](grpo/grpo.md)",
                     ""]  # fmt: skip
        else:
            page += [f"Not produced: {grpo.get('why', 'the experiment failed')}.", ""]

    finished_at = time.strftime("%Y-%m-%d %H:%M %Z")
    machine = ["### Machine", "", *machine_lines(), f"- started {started}; finished {finished_at}",
               f"- load average (1, 5, 15 min) before {load}, after {load_average()}", f"- `{command}`"]  # fmt: skip
    with open(os.path.join(out, "machine.md"), "w") as f:
        f.write("\n".join(machine) + "\n")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join([*page, "The machine, the commit and the load: [machine.md](machine.md)."]) + "\n")

    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "algorithm", "seed", "budget", "returncode", "steps_to_solve", "seconds_to_solve",
                         "final_mean_return", "seconds_to_last_episode", "launch_to_training_start",
                         "command"])  # fmt: skip
        for i, job in enumerate(jobs):
            rec = records[i]
            r = summarise(job, rec) if rec["returncode"] == 0 else {}
            writer.writerow([job.task, job.algo, job.seed, job.budget, rec["returncode"], r.get("steps"),
                             fmt(r.get("seconds"), 3, ""), fmt(r.get("final"), 3, ""),
                             fmt(r.get("total_seconds"), 3, ""), rec["offset"], rec["command"]])  # fmt: skip


def run_grpo(out: str, timeout: float) -> dict:
    """The GRPO experiments of --full: grpo_vs_dr_grpo.py into OUT/grpo_vs_dr_grpo, grpo_benchmark.py into OUT/grpo."""
    record = {"returncode": 0, "seconds": 0.0}
    experiments = [("grpo_vs_dr_grpo.py", ["--seeds", *map(str, GRPO_SEEDS)], "grpo_vs_dr_grpo"),
                   ("grpo_benchmark.py", GRPO_BENCHMARK, "grpo")]  # fmt: skip
    for file, args, name in experiments:
        script, target = os.path.join(ROOT, "benchmarks", file), os.path.join(out, name)
        os.makedirs(target, exist_ok=True)
        shown = os.path.relpath(target, ROOT) if target.startswith(ROOT + os.sep) else target  # no local path
        cmd = [sys.executable, script, *args, "--out", shown]
        print(f"GRPO experiment: {' '.join(cmd)}", file=sys.stderr, flush=True)
        launch = run_command(cmd, os.path.join(target, "log.txt"), timeout)
        record["seconds"] = round(record["seconds"] + launch.seconds, 1)
        if launch.returncode != 0:
            record["returncode"] = launch.returncode
            record["why"] = f"exit status {launch.returncode}, see {os.path.join(target, 'log.txt')}"
    print(f"GRPO experiments: {record}", file=sys.stderr, flush=True)
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help=f"{QUICK['tasks']}, seeds {QUICK['seeds']}, {QUICK['algos']}"
    )
    mode.add_argument("--full", action="store_true", help="every row of PLAN, and the GRPO experiment")
    p.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), help="only these algorithms (default: PLAN's)")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), help="only these tasks (default: PLAN's)")
    p.add_argument("--seeds", nargs="+", type=int, help="these seeds for every row (default: 1..PLAN's seeds)")
    p.add_argument("--budget", type=int, help="--total-timesteps for every run instead of PLAN's (a smoke test)")
    p.add_argument("--grpo", action="store_true", help="also run the GRPO/Dr. GRPO experiment (on with --full)")
    p.add_argument("--out", help="results folder (default: benchmarks/results with --full, else runs/benchmark)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (1: each run has the machine to itself)")
    p.add_argument("--run-timeout", type=float, default=1800, help="seconds before a run is killed and counted failed")
    p.add_argument("--fresh", action="store_true", help="run again the runs that finished in an earlier call")
    p.add_argument("--list", action="store_true", help="print the runs it would make, in order, and stop")
    p.add_argument("--report-only", action="store_true", help="no training: tables and figures from --out's runs")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")

    algos = args.algos or (QUICK["algos"] if args.quick else list(ALGORITHMS))
    tasks = args.tasks or (QUICK["tasks"] if args.quick else list(TASKS))
    seeds = args.seeds or (QUICK["seeds"] if args.quick else None)
    out = os.path.abspath(args.out or os.path.join(ROOT, "benchmarks/results" if args.full else "runs/benchmark"))
    missing = sorted({a for a in algos if not os.path.exists(os.path.join(ROOT, ALGORITHMS[a][0][0]))})
    if missing:
        print(f"skipping {', '.join(missing)}: not in this checkout", file=sys.stderr)
    jobs = plan_jobs([a for a in algos if a not in missing], tasks, seeds, out, args.budget)
    if not jobs:
        p.error("nothing to run: no row of PLAN matches --algos and --tasks")
    if args.list:
        print("\n".join(job.shown() for job in jobs))
        print(f"{len(jobs)} runs" + (", then the GRPO experiment" if args.full or args.grpo else ""))
        return
    os.makedirs(out, exist_ok=True)
    command = " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])
    started, load = time.strftime("%Y-%m-%d %H:%M %Z"), load_average()

    if args.report_only:
        records = {}
        for i, job in enumerate(jobs):
            path = os.path.join(job.run_dir, "run.json")
            if not os.path.exists(path):
                sys.exit(f"error: {path} is missing: run the benchmark first (without --report-only)")
            with open(path) as f:
                records[i] = json.load(f)
            if records[i]["command"] != job.shown():
                sys.exit(f"error: {job.run_dir} was run as `{records[i]['command']}`, not as PLAN and the arguments "
                         f"say now (`{job.shown()}`): run the benchmark (without --report-only)")  # fmt: skip
        grpo = None
    else:
        print(f"{len(jobs)} runs into {out}; load average {load}", file=sys.stderr, flush=True)
        records = run_all(jobs, args.jobs, args.run_timeout, args.fresh)
        grpo = run_grpo(out, args.run_timeout) if (args.full or args.grpo) else None
    write_reports(jobs, records, out, command, started, load, grpo)
    print(open(os.path.join(out, "results.md")).read())
    failures = sum(r["returncode"] != 0 for r in records.values()) + (grpo is not None and grpo["returncode"] != 0)
    if failures:
        sys.exit(f"{failures} run(s) failed; the tables leave them out and say so")


if __name__ == "__main__":
    main()
