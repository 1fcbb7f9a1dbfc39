"""The command-line contract of every script (CONVENTIONS.md sections 2 and 3), checked the same way for each.

Bad input gets one line on stderr, exit status 2, no traceback and no files; a corrupt or foreign
checkpoint is refused the same way; Ctrl-C saves the checkpoint and metrics and exits with 130; a
non-finite loss stops the run with exit status 1 and keeps the last good checkpoint; the same seed gives
the same metrics.csv apart from wall-clock columns.
"""

import importlib
import signal
import subprocess
import time

import pytest
import torch
from runs import read_csv, run_script, script_command

COMMON_BAD_INPUT = [
    (["--learning-rate", "-0.1"], "--learning-rate"),
    (["--eval", "/nonexistent/model.pt"], "not found"),
    (["--device", "tpu"], "--device"),
]
GYMNASIUM_BAD_INPUT = [
    (["--env-id", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--env-id", "FrozenLake-v1"], "not supported"),
    (["--gamma", "1.5"], "--gamma"),
]
GYMNASIUM_SCRIPT = {  # what the scripts that train on Gymnasium environments share
    "long": ["--total-timesteps", "100000000"],
    "loss": "policy_loss",
    "step": "global_step",
    "clock": {"wall_time", "sps"},
}
SCRIPTS = {
    "reinforce": {
        **GYMNASIUM_SCRIPT,
        "short": ["--total-timesteps", "3000"],
        "bad": [
            *GYMNASIUM_BAD_INPUT,
            (["--baseline", "median"], "--baseline"),
            (["--episodes-per-batch", "1", "--baseline", "mean"], "--episodes-per-batch"),
        ],
    },
    "actor_critic": {
        **GYMNASIUM_SCRIPT,
        "short": ["--total-timesteps", "3000", "--network", "shared"],
        "bad": [
            *GYMNASIUM_BAD_INPUT,
            (["--gae-lambda", "-0.1"], "--gae-lambda"),
            (["--num-envs", "0"], "--num-envs"),
            (["--network", "tied"], "--network"),
            (["--num-steps", "five"], "--num-steps"),
        ],
    },
    "trpo": {
        **GYMNASIUM_SCRIPT,
        "short": ["--total-timesteps", "1024", "--num-steps", "32"],
        "loss": "surrogate",
        "bad": [
            *GYMNASIUM_BAD_INPUT,
            (["--delta", "0"], "--delta"),
            (["--damping", "-0.1"], "--damping"),
            (["--cg-iters", "0"], "--cg-iters"),
            (["--backtrack-coef", "1.0"], "--backtrack-coef"),
            (["--num-minibatches", "3"], "--num-minibatches"),
        ],
    },
    "grpo": {
        "short": ["--total-updates", "3", "--prompts-per-update", "4", "--group-size", "3", "--num-iterations", "1"],
        "long": ["--total-updates", "100000000"],
        "loss": "grpo_loss",
        "step": "update",
        "clock": {"wall_time", "tokens_per_second"},
        "bad": [
            (["--task", "poetry"], "--task"),
            (["--group-size", "1"], "--group-size"),
            (["--beta", "-0.1"], "--beta"),
            (["--kl-estimator", "k1"], "--kl-estimator"),
        ],
    },
}
BAD_INPUT = [(s, argv, needle) for s, spec in SCRIPTS.items() for argv, needle in spec["bad"] + COMMON_BAD_INPUT]


@pytest.mark.parametrize("script,argv,needle", BAD_INPUT)
def test_bad_input_gets_one_line_exit_2_and_no_files(script, argv, needle, tmp_path, capsys):
    module = importlib.import_module(script)
    try:
        code = module.main([*argv, "--run-dir", str(tmp_path / "run")])
    except SystemExit as e:  # argparse's own errors exit from inside the parser
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert err.startswith(f"{script}.py: error: ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_real_command_line_error_has_no_traceback(script, tmp_path):
    argv, _ = SCRIPTS[script]["bad"][0]
    out = run_script(script, *argv, "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_corrupt_and_foreign_checkpoints_are_refused(script, tmp_path, capsys):
    module = importlib.import_module(script)
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    torch.save({"algo": "someone-else"}, tmp_path / "foreign.pt")
    for name in ("corrupt.pt", "foreign.pt"):
        assert module.main(["--eval", str(tmp_path / name)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_saves_checkpoint_and_metrics(script, tmp_path):
    """No periodic checkpoint within the run (--log-interval too large), so model.pt can only come from Ctrl-C."""
    run = tmp_path / "run"
    argv = [*SCRIPTS[script]["long"], "--log-interval", "1000000", "--run-dir", str(run)]
    proc = subprocess.Popen(script_command(script, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while not (run / "metrics.csv").exists() or len(read_csv(run / "metrics.csv")) < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and str(run) in err and "Traceback" not in err
    state = importlib.import_module(script).load_checkpoint(str(run / "model.pt"))
    assert state[SCRIPTS[script]["step"]] >= int(read_csv(run / "metrics.csv")[-1]["global_step"])


@pytest.mark.parametrize("script", SCRIPTS)
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(script, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(script)
    real_loss, real_update = getattr(module, SCRIPTS[script]["loss"]), module.update
    updates = []  # counted, not the loss's calls: TRPO's line search and PPO's epochs call it several times

    def update_counted(*args, **kwargs):
        stats = real_update(*args, **kwargs)
        updates.append(1)
        return stats

    def loss_that_breaks(*args, **kwargs):  # the real loss for 4 updates, then NaN
        return real_loss(*args, **kwargs) * (float("nan") if len(updates) >= 4 else 1.0)

    monkeypatch.setattr(module, "update", update_counted)
    monkeypatch.setattr(module, SCRIPTS[script]["loss"], loss_that_breaks)
    run = tmp_path / "run"
    argv = [*SCRIPTS[script]["short"], "--log-interval", "2", "--run-dir", str(run)]
    argv[1] = str(max(int(argv[1]), 8))  # a budget of at least 8 updates: 4 good ones, then the NaN
    with pytest.raises(SystemExit) as stop:
        module.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 1 and "non-finite" in err and str(run / "model.pt") in err
    rows = read_csv(run / "metrics.csv")
    assert len(rows) == 4  # every finished update is in metrics.csv, and the checkpoint is from update 4
    state = module.load_checkpoint(str(run / "model.pt"))
    assert state[SCRIPTS[script]["step"]] == int(rows[-1]["global_step"])
    assert all(torch.isfinite(v).all() for v in state["policy"].values())


@pytest.mark.parametrize("script", SCRIPTS)
def test_same_seed_same_metrics(script, tmp_path):
    module = importlib.import_module(script)
    tables = []
    for name in ("a", "b"):
        assert module.main([*SCRIPTS[script]["short"], "--seed", "7", "--run-dir", str(tmp_path / name)]) == 0
        rows = read_csv(tmp_path / name / "metrics.csv")
        tables.append([{k: v for k, v in row.items() if k not in SCRIPTS[script]["clock"]} for row in rows])
    assert len(tables[0]) >= 2 and tables[0] == tables[1]
