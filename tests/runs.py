"""Helpers for the tests that run a script end to end."""

import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_csv(path) -> list[dict[str, str]]:
    """The rows of a metrics.csv or episodes.csv, as dicts keyed by the header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def script_command(script: str, *args: str) -> list[str]:
    """The command line that runs <script>.py from the repository root with this Python."""
    return [sys.executable, os.path.join(ROOT, f"{script}.py"), *args]


def run_script(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(script_command(script, *args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def eval_mean_return(module, path, capsys) -> float:
    """Run `<script>.py --eval path` in this process (module: the imported script) for 3 episodes; the mean return."""
    assert module.main(["--eval", str(path), "--eval-episodes", "3"]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.startswith("eval ") and "mean return" in last_line
    return float(last_line.split("mean return ")[1].split()[0])


def short_run_improves(module, run_dir, *argv: str) -> list[dict[str, str]]:
    """Train <script>.py (module: the imported script) in this process with seed 1 and argv: the mean return of
    the last 20 episodes must be over 100 and over 4 times that of the first 20. Returns metrics.csv's rows."""
    assert module.main([*argv, "--seed", "1", "--run-dir", str(run_dir)]) == 0
    returns = [float(e["return"]) for e in read_csv(os.path.join(run_dir, "episodes.csv"))]
    first, last = sum(returns[:20]) / 20, sum(returns[-20:]) / 20
    assert last > 4 * first and last > 100, (first, last)
    return read_csv(os.path.join(run_dir, "metrics.csv"))


def short_grpo_run_learns_and_eval_reloads(script: str, run_dir, updates: int = 40) -> None:
    """Train <script>.py (grpo or dr_grpo) briefly with a fixed seed: greedy accuracy on the held-out prompts
    ends at 0.5 or more and 0.3 above where it began; --eval reloads the checkpoint and reports that accuracy."""
    run = run_script(script, "--total-updates", str(updates), "--seed", "1", "--run-dir", str(run_dir),
                     "--log-interval", str(updates // 2))  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = read_csv(os.path.join(run_dir, "metrics.csv"))
    assert len(rows) == updates
    first, last = float(rows[0]["eval_accuracy"]), float(rows[-1]["eval_accuracy"])
    assert last >= 0.5 and last >= first + 0.3, (first, last)

    evaluated = run_script(script, "--eval", os.path.join(run_dir, "model.pt"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"greedy accuracy {last:.3f}" in evaluated.stdout
