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
