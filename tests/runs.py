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
