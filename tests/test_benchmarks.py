"""The benchmark's own arithmetic, on small files made here, so that a wrong table cannot go unnoticed: the
rolling mean of the last 20 returns, the solve step, median and worst over seeds (unsolved seeds included),
the ratio ours / theirs, the clock from process launch, the learning curves' quartiles, a whole table from
run directories, and the SB3 runner's files against the format our scripts write.

Needs only requirements.txt: matplotlib and Stable-Baselines3 (benchmarks/requirements.txt) are used by
the two tests that skip, with the reason, where they are absent.
"""

import csv
import importlib.util
import json
import math
import os
import sys
import time

import numpy as np
import pytest
from runs import ROOT, read_csv, run_script

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import common  # noqa: E402
import run as bench  # noqa: E402
import sb3_runner  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_SB3 = importlib.util.find_spec("stable_baselines3") is not None and importlib.util.find_spec("sb3_contrib")


def write_csv(path, header, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_rolling_mean_is_the_mean_of_the_last_20_or_of_all_so_far():
    returns = np.arange(1.0, 31.0) ** 1.5  # no two windows share a mean by accident
    got = common.rolling_mean(returns)
    for i in range(len(returns)):
        assert got[i] == pytest.approx(np.mean(returns[max(0, i - 19) : i + 1]), rel=1e-12)
    assert common.rolling_mean([4.0, 6.0, 11.0], window=2).tolist() == [4.0, 5.0, 8.5]


def test_solve_index_is_the_first_episode_whose_last_20_reach_the_threshold():
    # 19 perfect episodes are not enough: the mean of the last 20 needs 20 episodes.
    assert common.solve_index([500.0] * 19, 475) is None
    assert common.solve_index([500.0] * 20, 475) == 19
    # 10 bad episodes, then perfect ones: the window's mean is (500 k + 0 (20 - k)) / 20 >= 475 from k = 19.
    returns = [0.0] * 10 + [500.0] * 40
    i = common.solve_index(returns, 475)
    assert i == 10 + 19 - 1
    assert np.mean(returns[i - 19 : i + 1]) >= 475 > np.mean(returns[i - 20 : i])
    # Reaching the threshold exactly counts; negative thresholds (Acrobot-v1) work the same way.
    assert common.solve_index([475.0] * 20, 475) == 19
    # Acrobot-v1: with 10 episodes at -150 first, the window's mean reaches -100 once at most 3 of them are
    # left in it, at index 26.
    assert common.solve_index([-150.0] * 10 + [-90.0] * 30, -100) == 26


def test_mean_at_step_uses_the_episodes_ended_by_then():
    ep = common.Episodes(steps=np.array([100, 200, 300, 400]), seconds=np.zeros(4), returns=np.array([1.0, 2, 3, 4]))
    assert common.mean_at_step(ep, 299, window=2) == 1.5
    assert common.mean_at_step(ep, 300, window=2) == 2.5  # an episode ending exactly at the step counts
    assert common.mean_at_step(ep, 10_000, window=20) == 2.5
    assert math.isnan(common.mean_at_step(ep, 99))


def test_median_and_worst_count_an_unsolved_seed_as_slower_than_any():
    assert common.median_and_worst([30, 10, 20]) == (20, 30)
    assert common.median_and_worst([40, 10, 30, 20]) == (25, 40)
    assert common.median_and_worst([10, None, 30]) == (30, None)  # not the median of the solved (20)
    assert common.median_and_worst([10, None, 30, None]) == (None, None)
    assert common.median_and_worst([10, 20, 30, None]) == (25, None)
    # Returns: higher is better, so the worst is the lowest.
    assert common.median_and_worst([-150.0, -200.0, -180.0], higher_is_better=True) == (-180.0, -200.0)
    assert common.median_and_worst([]) == (None, None)


def test_ratio_is_ours_over_theirs():
    assert common.ratio(10_000, 40_000) == 0.25
    assert common.ratio(3.0, 2.0) == 1.5
    assert common.ratio(None, 2.0) is None and common.ratio(2.0, None) is None


def test_launch_offset_from_the_metrics_file_written_last(tmp_path):
    path = tmp_path / "metrics.csv"
    write_csv(path, ["global_step", "wall_time", "sps"], [[64, 0.5, 100], [128, 2.25, 90]])
    launch = 1_700_000_000.0
    os.utime(path, (launch + 5.0, launch + 5.0))  # the last row (wall_time 2.25) was written 5 s after launch
    assert common.launch_offset(str(path), launch) == pytest.approx(2.75, abs=1e-6)
    ep_path = tmp_path / "episodes.csv"
    write_csv(ep_path, ["global_step", "wall_time", "return", "length"], [[10, 0.25, 10.0, 10], [30, 1.0, 20.0, 20]])
    ep = common.read_episodes(str(ep_path), offset=2.75)
    assert ep.seconds.tolist() == [3.0, 3.75] and ep.steps.tolist() == [10, 30]


def test_read_rows_leaves_out_a_row_being_written(tmp_path):
    path = tmp_path / "episodes.csv"
    path.write_text("global_step,wall_time,return,length\n10,0.1,10.0,10\n20,0.2,10.0,")
    assert [r["global_step"] for r in common.read_rows(str(path))] == ["10"]
    assert common.read_rows(str(tmp_path / "missing.csv")) == []


def test_curves_hold_the_last_value_and_quartiles_ignore_seeds_not_there_yet():
    grid = np.array([0.0, 1.0, 2.5, 3.0, 9.0])
    got = common.curve_on_grid([1.0, 3.0], [10.0, 30.0], grid)
    assert np.isnan(got[0]) and got[1:].tolist() == [10.0, 10.0, 30.0, 30.0]
    assert np.isnan(common.curve_on_grid([1.0, 3.0], [10.0, 30.0], grid, hold_last=False)[-1])
    curves = np.array([[np.nan, 1.0, 1.0], [np.nan, np.nan, 5.0], [np.nan, 3.0, 9.0]])
    q25, med, q75 = common.quartiles(curves)
    assert np.isnan(med[0]) and med[1] == 2.0 and med[2] == 5.0
    assert (q25[2], q75[2]) == (3.0, 7.0)


def fake_run(out, task, algo, seed, budget, episodes, offset):
    """A finished run's directory as run.py leaves it: episodes.csv, and run.json with the launch offset."""
    job = bench.Job(algo, task, seed, budget, [], os.path.join(out, "runs", task, algo, f"seed{seed}"))
    write_csv(os.path.join(job.run_dir, "episodes.csv"), ["global_step", "wall_time", "return", "length"], episodes)
    record = {"command": job.shown(), "returncode": 0, "launch_time": 0.0, "seconds": 1.0, "offset": offset}
    with open(os.path.join(job.run_dir, "run.json"), "w") as f:
        json.dump(record, f)
    return job, record


def episodes_solving_at(k: int, step_per_episode: int = 100, total: int = 60, dt: float = 0.5):
    """`total` episodes, returns 0 until episode k-20 and 490 after: solved at episode index k - 1 exactly (19
    episodes of 490 average 465.5)."""
    return [[(i + 1) * step_per_episode, f"{(i + 1) * dt:.3f}", 490.0 if i >= k - 20 else 0.0, 100]
            for i in range(total)]  # fmt: skip


def test_a_whole_table_from_run_directories(tmp_path):
    """ppo solves at episodes 30, 40, 50 (steps 3,000 / 4,000 / 5,000; seconds 15 / 20 / 25 after 1.5 s of
    start-up); sb3-ppo at 40, at 60, and never: every number of the table follows by hand."""
    out, task, jobs, records = str(tmp_path), "CartPole-v1", [], {}
    for seed, (ours, theirs) in enumerate([(30, 40), (40, 60), (50, None)], start=1):
        for algo, k in (("ppo", ours), ("sb3-ppo", theirs)):
            episodes = episodes_solving_at(k) if k else [[(i + 1) * 100, f"{(i + 1) * 0.5:.3f}", 100.0, 100]
                                                         for i in range(60)]  # fmt: skip
            job, record = fake_run(out, task, algo, seed, 6_000, episodes, offset=1.5)
            records[len(jobs)] = record
            jobs.append(job)
    lines = bench.task_report(task, jobs, records, "python benchmarks/run.py (test)", out)
    split = next(i for i, line in enumerate(lines) if line.startswith("Each seed"))
    table, per_seed = lines[:split], lines[split:]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table if line.startswith("| ")}
    ppo, sb3 = rows["ppo"], rows["sb3-ppo"]
    assert ppo[1] == "4,000 (5,000)"  # steps: median and worst
    assert ppo[2] == "21.5 (26.5)"  # seconds: 1.5 s to start, then 0.5 s an episode
    assert ppo[3] == "3/3"
    assert ppo[4] == "490.0 (490.0)"  # final mean return
    assert sb3[1] == "6,000 (not solved)" and sb3[3] == "2/3" and sb3[4] == "490.0 (100.0)"
    assert ppo[5] == f"{4000 / 6000:.2f}x"  # the ratio of the medians, ours / theirs
    assert ppo[6].rstrip(" |") == f"{21.5 / 31.5:.2f}x"
    assert sb3[5] == "-"
    assert "| ppo | 3,000 / 16.5 s | 4,000 / 21.5 s | 5,000 / 26.5 s |" in per_seed
    assert "| sb3-ppo | 4,000 / 21.5 s | 6,000 / 31.5 s | not solved |" in per_seed
    assert os.path.exists(tmp_path / "CartPole-v1.md")
    assert os.path.exists(tmp_path / "CartPole-v1.png") == HAS_MATPLOTLIB


def test_jobs_interleave_seed_by_seed_and_rotate_the_algorithms(tmp_path):
    jobs = bench.plan_jobs(["ppo", "sb3-ppo", "actor_critic"], ["CartPole-v1"], [1, 2], str(tmp_path))
    order = [(j.seed, j.algo) for j in jobs]
    assert order == [(1, "actor_critic"), (1, "ppo"), (1, "sb3-ppo"), (2, "ppo"), (2, "sb3-ppo"), (2, "actor_critic")]
    assert len({j.run_dir for j in jobs}) == len(jobs)
    cmd = jobs[0].command()
    assert cmd[1].endswith("actor_critic.py") and cmd[cmd.index("--seed") + 1] == "1"
    assert cmd[cmd.index("--total-timesteps") + 1] == "100000" and "--torch-threads" in cmd


def test_sb3_runner_files_have_our_format(tmp_path):
    """The SB3 runner's writer against a real run of reinforce.py: the same columns, read back alike, and
    the clock from launch found the same way."""
    ours = tmp_path / "ours"
    launch = time.time()
    result = run_script("reinforce", "--total-timesteps", "600", "--run-dir", str(ours))
    assert result.returncode == 0, result.stderr
    ours_offset = common.launch_offset(str(ours / "metrics.csv"), launch)
    assert 0 < ours_offset < time.time() - launch

    start = time.time() - 10.0  # training "started" 10 s ago
    files = sb3_runner.RunFiles(str(tmp_path / "theirs"), start)
    files.rollout_end(8)  # a rollout in which no episode ended
    files.episode(16, 9.0, 2)
    files.episode(24, 11.0, 3)
    files.rollout_end(32)
    theirs = read_csv(tmp_path / "theirs" / "episodes.csv")  # flushed: readable while the writer is open
    assert list(theirs[0]) == list(read_csv(ours / "episodes.csv")[0])
    assert [(r["global_step"], r["return"], r["length"]) for r in theirs] == [("16", "9.0", "2"), ("24", "11.0", "3")]
    assert all(10.0 <= float(r["wall_time"]) < 11.0 for r in theirs)
    metrics = read_csv(tmp_path / "theirs" / "metrics.csv")
    assert list(metrics[0])[:2] == list(read_csv(ours / "metrics.csv")[0])[:2] == ["global_step", "wall_time"]
    assert metrics[0]["global_step"] == "8" and math.isnan(float(metrics[0]["episodic_return"]))
    assert metrics[1]["global_step"] == "32" and float(metrics[1]["episodic_return"]) == 10.0
    files.close()
    offset = common.launch_offset(str(tmp_path / "theirs" / "metrics.csv"), start - 2.0)
    assert offset == pytest.approx(2.0, abs=0.05)


@pytest.mark.skipif(not HAS_SB3, reason="stable-baselines3 / sb3-contrib not installed (benchmarks/requirements.txt)")
def test_sb3_runner_counts_steps_as_our_scripts_do(tmp_path):
    """With 8 environments stepped together, an episode ending at vector step t has global_step 8 t, and the
    first episode to end ended at t = its own length."""
    cmd = ["benchmarks/sb3_runner.py", "--algo", "a2c", "--seed", "3", "--total-timesteps", "1200",
           "--run-dir", str(tmp_path)]  # fmt: skip
    import subprocess

    result = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = read_csv(tmp_path / "episodes.csv")
    assert len(rows) > 8
    assert int(rows[0]["global_step"]) == 8 * int(rows[0]["length"])
    assert all(int(r["global_step"]) % 8 == 0 for r in rows)
    steps = [int(r["global_step"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] <= 1200


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed (benchmarks/requirements.txt)")
def test_plot_writes_a_png(tmp_path):
    grid = np.linspace(0, 10, 11)
    series = {"ppo": (grid, grid - 1, grid, grid + 1), "sb3-ppo": (grid, grid, grid * 2, grid * 3)}
    path = tmp_path / "curves.png"
    common.plot_curves(str(path), "test", [("steps", series), ("seconds", series)], "return", hline=5.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_check_says_so_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: benchmarks/gpu_check.py measures instead")
    import subprocess

    result = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and result.stdout == ""
