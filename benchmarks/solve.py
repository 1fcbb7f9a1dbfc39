"""Steps and wall-clock seconds to solve a Gymnasium task, for several seeds of one script.

    python benchmarks/solve.py reinforce.py --env-id CartPole-v1 --threshold 475 --seeds 1 2 3 4 5

"Solved" is the README's definition (section Benchmarks): the first finished training episode at which the mean return
of the last 20 training episodes reaches the threshold, read from the run's episodes.csv. Steps are
that episode's global_step. Seconds are measured from launching the process (Python start-up and
imports included) to the moment that episode's row appears in episodes.csv (polled every 20 ms), so
they compare fairly with any other program timed the same way. A run is stopped once it solves.
Runs go one after another, so each has the machine's cores to itself. Extra arguments after `--` go
to the script unchanged. Prints a markdown table and the command line that produced it.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, read_episodes, solve_index


def first_solve(path: str, threshold: float):
    """(global_step, episode index) of the first episode where the mean of the last 20 returns reaches
    threshold, or None."""
    episodes = read_episodes(path)
    i = solve_index(episodes.returns, threshold) if len(episodes.returns) else None
    return None if i is None else (int(episodes.steps[i]), i)


def run_seed(script: str, env_id: str, seed: int, threshold: float, budget: int, extra: list[str], run_dir: str):
    cmd = [sys.executable, os.path.join(ROOT, script), "--env-id", env_id, "--seed", str(seed),
           "--total-timesteps", str(budget), "--run-dir", run_dir, "--overwrite", *extra]  # fmt: skip
    episodes = os.path.join(run_dir, "episodes.csv")
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    solved = None
    while solved is None and proc.poll() is None:
        time.sleep(0.02)
        solved = first_solve(episodes, threshold)
    seconds = time.time() - start
    if solved is None:  # the run ended; look once more at the complete file
        solved = first_solve(episodes, threshold)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed with exit status {proc.returncode}: {proc.stderr.read().strip()}")
    proc.kill()
    proc.wait()
    return (solved[0], seconds) if solved else (None, None)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("script")
    p.add_argument("--env-id", default="CartPole-v1")
    p.add_argument("--threshold", type=float, default=475.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--budget", type=int, default=500_000, help="--total-timesteps of each run")
    a = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            steps, seconds = run_seed(a.script, a.env_id, seed, a.threshold, a.budget, extra, f"{tmp}/{seed}")
            rows.append((seed, steps, seconds))
            shown = f"{steps} steps, {seconds:.1f} s" if steps else f"not solved within {a.budget} steps"
            print(f"seed {seed}: {shown}", file=sys.stderr)

    solved = [r for r in rows if r[1] is not None]
    print(f"`python benchmarks/solve.py {' '.join(sys.argv[1:])}`\n")
    print(f"| seed | steps to {a.threshold:g} | seconds |\n| --- | --- | --- |")
    for seed, steps, seconds in rows:
        print(f"| {seed} | {steps if steps else 'not solved'} | {f'{seconds:.1f}' if steps else '-'} |")
    if solved:
        med_steps = statistics.median(r[1] for r in solved)
        med_secs = statistics.median(r[2] for r in solved)
        print(f"| median of {len(solved)}/{len(rows)} solved | {med_steps:.0f} | {med_secs:.1f} |")


if __name__ == "__main__":
    main()
