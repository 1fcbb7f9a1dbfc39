"""Steps (or tokens) per second of every script on CPU and on CUDA, side by side.

    python benchmarks/gpu_check.py                  # every script in this checkout, a short run on each device
    python benchmarks/gpu_check.py --scripts ppo grpo --timesteps 50000 --updates 40

Each script runs once with `--device cpu` and once with `--device cuda`, as a subprocess of its own command
line (Gymnasium scripts: `--total-timesteps`; GRPO scripts: `--total-updates`), into a temporary folder.
The speed is the median of metrics.csv's own speed column (`sps`, or `tokens_per_second`) over the rows after
the first (the first update carries CUDA's start-up), and the seconds are the run's wall_time at its last
row. Exits with status 2 and says so where torch sees no CUDA device.
"""

import argparse
import os
import statistics
import sys
import tempfile

from common import ROOT, cpu_model, read_rows, run_command, version

GYMNASIUM_SCRIPTS = ["reinforce", "actor_critic", "trpo", "ppo"]
GRPO_SCRIPTS = ["grpo", "dr_grpo"]


def speed(metrics_path: str) -> tuple[float, float, str]:
    """(median speed over the rows after the first, wall_time of the last row, the speed column's name)."""
    rows = read_rows(metrics_path)
    column = "sps" if rows and "sps" in rows[0] else "tokens_per_second"
    values = [float(r[column]) for r in rows[1:]] or [float(r[column]) for r in rows]
    return statistics.median(values), float(rows[-1]["wall_time"]), column


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scripts", nargs="+", choices=GYMNASIUM_SCRIPTS + GRPO_SCRIPTS,
                   default=GYMNASIUM_SCRIPTS + GRPO_SCRIPTS)  # fmt: skip
    p.add_argument("--timesteps", type=int, default=20_000, help="--total-timesteps of the Gymnasium scripts")
    p.add_argument("--updates", type=int, default=20, help="--total-updates of the GRPO scripts")
    p.add_argument("--timeout", type=float, default=600, help="seconds before a run is killed")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            f"error: no CUDA device: torch {torch.__version__} sees none (torch.cuda.is_available() is False). "
            "Run this on a machine with an NVIDIA GPU and a CUDA build of torch (see pytorch.org).",
            file=sys.stderr,
        )
        sys.exit(2)

    scripts = [s for s in args.scripts if os.path.exists(os.path.join(ROOT, f"{s}.py"))]
    print(f"CPU: {cpu_model()}; GPU: {torch.cuda.get_device_name(0)}; torch {version('torch')}\n")
    print("| script | budget | CPU speed | CUDA speed | CUDA / CPU | CPU seconds | CUDA seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for script in scripts:
            budget = (["--total-updates", str(args.updates)] if script in GRPO_SCRIPTS
                      else ["--total-timesteps", str(args.timesteps)])  # fmt: skip
            results = {}
            for device in ("cpu", "cuda"):
                run_dir = os.path.join(tmp, f"{script}-{device}")
                cmd = [sys.executable, os.path.join(ROOT, f"{script}.py"), *budget, "--device", device,
                       "--run-dir", run_dir]  # fmt: skip
                os.makedirs(run_dir, exist_ok=True)
                launch = run_command(cmd, os.path.join(tmp, f"{script}-{device}.log"), args.timeout)
                if launch.returncode != 0:
                    with open(os.path.join(tmp, f"{script}-{device}.log")) as f:
                        tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
                    print(f"| {script} | {device} run failed (exit {launch.returncode}): {tail[0]} |||||")
                    failed += 1
                    break
                results[device] = speed(os.path.join(run_dir, "metrics.csv"))
            if len(results) == 2:
                (cpu, cpu_s, unit), (gpu, gpu_s, _) = results["cpu"], results["cuda"]
                unit = "steps/s" if unit == "sps" else "tokens/s"
                print(f"| {script} | {' '.join(budget)} | {cpu:,.0f} {unit} | {gpu:,.0f} {unit} | {gpu / cpu:.2f}x "
                      f"| {cpu_s:.1f} | {gpu_s:.1f} |")  # fmt: skip
    if failed:
        sys.exit(f"{failed} script(s) failed (the last line of each log is in the table); rerun one by hand for more")


if __name__ == "__main__":
    main()
