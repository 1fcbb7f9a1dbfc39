"""The command-line contract of every script (the README's "The command line" section), checked the same way for each.

Bad input gets one line on stderr, exit status 2, no traceback and no files (argparse's own errors, for an unknown flag
or a malformed value, add its usage before that line); so does a run directory that cannot be created or written,
before training starts; a corrupt or foreign checkpoint is refused the same way; Ctrl-C saves the checkpoint and
metrics and exits with 130, SIGTERM the same with 143; a non-finite loss stops the run with exit status 1 and keeps
the last good checkpoint, and so does a non-finite observation or reward, named as the environment's; the same seed
gives the same metrics.csv apart from wall-clock columns; the scripts that run on one process refuse torchrun's; every
command in the READMEs' code blocks runs.
"""

import importlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from runs import ROOT, read_csv, run_script, script_command

COMMON_BAD_INPUT = [
    (["--learning-rate", "-0.1"], "--learning-rate"),
    (["--learning-rate", "inf"], "--learning-rate"),  # passes "> 0", but no run can train on it
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--eval", "/nonexistent/model.pt"], "FileNotFoundError"),
    (["--device", "tpu"], "argument --device"),
    (["--no-such-flag", "1"], "unrecognized arguments"),
]
GYMNASIUM_BAD_INPUT = [
    (["--env-id", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--env-id", "FrozenLake-v1"], "not supported"),
    (["--gamma", "1.5"], "--gamma"),
    (["--env-id", "no_such_module:Env-v0"], "no_such_module"),  # gym.make imports the module: ModuleNotFoundError
    (["--env-id", "ImageObservations-v0"], "not supported"),  # a Box of shape (3, 8, 8)
    (["--env-id", "ScalarObservation-v0"], "not supported"),  # a Box of shape ()
]
GYMNASIUM_SCRIPT = {  # what the scripts that train on Gymnasium environments share
    "long": ["--total-timesteps", "100000000"],
    "loss": "policy_loss",
    "step": "global_step",
    "clock": {"wall_time", "sps"},
    # the global step at which the test environment turns NaN: after the first update, and the end of a
    # vector step for 1, 2, 3, 4, 5, 6, 8, 10, 12 or 16 envs, so that a script's global step can name it exactly
    "nan_at_step": 240,
    "width": "hidden_size",
}
GRPO_BAD_INPUT = [
    (["--task", "poetry"], "argument --task"),
    (["--max-completion-len", "100000"], "--max-completion-len"),  # more positions than the model holds
    (["--group-size", "1"], "--group-size"),
    (["--beta", "-0.1"], "--beta"),
    (["--kl-estimator", "k1"], "argument --kl-estimator"),
]
GRPO_SCRIPT = {  # what grpo.py and dr_grpo.py share
    "short": ["--total-updates", "3", "--prompts-per-update", "4", "--group-size", "3", "--num-iterations", "1"],
    "long": ["--total-updates", "100000000"],
    "loss": "grpo_loss",
    "step": "global_step",
    "clock": {"wall_time", "tokens_per_second"},
    "width": "d_model",
}
SCRIPTS = {
    "reinforce": {
        **GYMNASIUM_SCRIPT,
        "short": ["--total-timesteps", "3000"],
        "bad": [
            *GYMNASIUM_BAD_INPUT,
            (["--baseline", "median"], "argument --baseline"),
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
            (["--network", "tied"], "argument --network"),
            (["--num-steps", "five"], "argument --num-steps"),
        ],
    },
    "ppo": {
        **GYMNASIUM_SCRIPT,
        "short": "--total-timesteps 3000 --num-steps 16 --update-epochs 2 --num-minibatches 2 --norm-obs".split(),
        "bad": [
            *GYMNASIUM_BAD_INPUT,
            (["--num-minibatches", "5"], "--num-minibatches"),
            (["--update-epochs", "0"], "--update-epochs"),
            (["--clip-coef", "0"], "--clip-coef"),
            (["--clip-coef", "inf"], "--clip-coef"),
            (["--num-envs", "1", "--num-steps", "8", "--num-minibatches", "8"], "--num-minibatches"),  # of one step
            (["--target-kl", "-0.01"], "--target-kl"),
            (["--norm-adv", "yes"], "unrecognized arguments: yes"),
        ],
    },
    "trpo": {
        **GYMNASIUM_SCRIPT,
        "short": ["--total-timesteps", "1024", "--num-steps", "32"],
        "loss": "surrogate",
        "bad": [
            *GYMNASIUM_BAD_INPUT,
            (["--delta", "0"], "--delta"),
            (["--delta", "inf"], "--delta"),
            (["--damping", "-0.1"], "--damping"),
            (["--damping", "inf"], "--damping"),
            (["--cg-iters", "0"], "--cg-iters"),
            (["--backtrack-coef", "1.0"], "--backtrack-coef"),
            (["--num-minibatches", "3"], "--num-minibatches"),
        ],
    },
    "grpo": {**GRPO_SCRIPT, "bad": [*GRPO_BAD_INPUT, *[(["--adv-eps", v], "--adv-eps") for v in ("0", "inf")]]},
    "dr_grpo": {**GRPO_SCRIPT, "bad": [*GRPO_BAD_INPUT, (["--max-completion-len", "0"], "--max-completion-len")]},
}


class Observations(gym.Env):
    """Observations of any shape (the scripts take 1-D Boxes only), two actions."""

    action_space = gym.spaces.Discrete(2)

    def __init__(self, shape: tuple):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape, np.float32)


gym.register("ImageObservations-v0", entry_point=Observations, kwargs={"shape": (3, 8, 8)})
gym.register("ScalarObservation-v0", entry_point=Observations, kwargs={"shape": ()})
BAD_INPUT = [(s, argv, needle) for s, spec in SCRIPTS.items() for argv, needle in spec["bad"] + COMMON_BAD_INPUT]
GYMNASIUM = [s for s, spec in SCRIPTS.items() if "nan_at_step" in spec]


def exit_status(script: str, argv: list[str]) -> int:
    """Run <script>.main(argv) in this process and return its exit status, as the command line would see it."""
    try:
        return importlib.import_module(script).main(argv)
    except SystemExit as e:  # argparse's own errors (and --help) exit from inside the parser
        return e.code


ARGPARSE = ("argument --", "unrecognized arguments")  # argparse's own errors: its usage first, then the error line


@pytest.mark.parametrize("script,argv,needle", BAD_INPUT)
def test_bad_input_gets_one_line_exit_2_and_no_files(script, argv, needle, tmp_path, capsys):
    code = exit_status(script, [*argv, "--run-dir", str(tmp_path / "run")])
    *usage, line = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and needle in line and line.startswith(f"{script}.py: error: "), line
    assert usage[0].startswith("usage: ") if needle.startswith(ARGPARSE) else usage == [], usage
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["under a regular file", "in /proc"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_unusable_run_dir_is_bad_input_before_training(script, where, tmp_path, capsys):
    """A run directory that cannot be created: one line, exit status 2, no files, and not a line of progress."""
    (tmp_path / "a-file").write_text("")
    run_dir = tmp_path / "a-file" / "run" if where == "under a regular file" else Path("/proc/no-such-run-dir")
    if where == "in /proc" and not os.path.isdir("/proc"):
        pytest.skip("no /proc on this system")
    code = exit_status(script, [*SCRIPTS[script]["short"], "--run-dir", str(run_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"{script}.py: error: --run-dir {run_dir} cannot be created or written")
    assert out == ""  # training never started: not even the line that names the run
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"] and not run_dir.exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_real_command_line_error_has_no_traceback(script, tmp_path):
    argv, _ = SCRIPTS[script]["bad"][1]
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
def test_ctrl_c_and_sigterm_save_checkpoint_and_metrics(script, tmp_path):
    """Ctrl-C (SIGINT) exits with 130 and SIGTERM with 143, both after saving: a process for each, side by side.
    No periodic checkpoint within the run (--log-interval too large), so model.pt can only come from the signal."""
    exits = {signal.SIGINT: 130, signal.SIGTERM: 143}
    runs = {sig: tmp_path / sig.name for sig in exits}
    procs = {
        sig: subprocess.Popen(
            script_command(script, *SCRIPTS[script]["long"], "--log-interval", "1000000", "--run-dir", str(run)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for sig, run in runs.items()
    }
    try:
        deadline = time.time() + 90
        for sig, proc in procs.items():
            while not (runs[sig] / "metrics.csv").exists() or len(read_csv(runs[sig] / "metrics.csv")) < 2:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(sig)
        for sig, proc in procs.items():
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == exits[sig] and "interrupted" in err and str(runs[sig]) in err, (sig, err)
            assert "Traceback" not in err
            state = torch.load(runs[sig] / "model.pt", weights_only=True)
            assert state[SCRIPTS[script]["step"]] >= int(read_csv(runs[sig] / "metrics.csv")[-1]["global_step"])
    finally:
        for proc in procs.values():
            proc.kill()


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
    rows = stopped_keeping_the_last_good_checkpoint(script, argv, run, capsys, "non-finite ")
    assert len(rows) == 4  # every finished update is in metrics.csv, and the checkpoint is from update 4


def stopped_keeping_the_last_good_checkpoint(script: str, argv: list[str], run: Path, capsys, says: str) -> list:
    """Run main(argv), which must stop with exit status 1 saying `says` and naming the checkpoint it kept: the
    one of the last row of metrics.csv, with finite weights. Returns the rows of metrics.csv."""
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 1 and says in err and str(run / "model.pt") in err, err
    rows = read_csv(run / "metrics.csv")
    state = torch.load(run / "model.pt", weights_only=True)
    assert state[SCRIPTS[script]["step"]] == int(rows[-1]["global_step"])
    assert all(torch.isfinite(v).all() for v in state["policy"].values())
    return rows


class TurnsNonFinite(gym.Env):
    """Episodes of 7 steps, observation (t/7, t/7), reward 1, until the steps taken by every instance together
    reach `at`: from that step on, `what` ("observation" or "reward") is NaN."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    steps_taken, at = 0, 0  # over all instances: a script's global step counts the steps of all its envs

    def __init__(self, what: str):
        self.what, self.t = what, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        TurnsNonFinite.steps_taken += 1
        self.t += 1
        broken = TurnsNonFinite.steps_taken >= TurnsNonFinite.at
        obs = np.full(2, np.nan if broken and self.what == "observation" else self.t / 7, np.float32)
        reward = np.nan if broken and self.what == "reward" else 1.0
        return obs, reward, self.t == 7, False, {}


@pytest.mark.parametrize("what", ["observation", "reward"])
@pytest.mark.parametrize("script", GYMNASIUM)
def test_non_finite_environment_is_named_and_the_last_good_checkpoint_kept(script, what, tmp_path, monkeypatch, capsys):
    at = SCRIPTS[script]["nan_at_step"]
    env_id = f"TurnsNonFinite{what.title()}-v0"
    spec = gym.envs.registration.EnvSpec(env_id, entry_point=TurnsNonFinite, kwargs={"what": what})
    monkeypatch.setitem(gym.registry, env_id, spec)  # registered for this test only
    monkeypatch.setattr(TurnsNonFinite, "steps_taken", 0)
    monkeypatch.setattr(TurnsNonFinite, "at", at)
    run = tmp_path / "run"
    argv = [*SCRIPTS[script]["short"], "--env-id", env_id, "--log-interval", "1", "--run-dir", str(run)]
    says = f"the environment returned a non-finite {what} at global step {at};"
    rows = stopped_keeping_the_last_good_checkpoint(script, argv, run, capsys, says)
    assert 0 < int(rows[-1]["global_step"]) < at
    # --eval of the kept checkpoint meets the same environment (now broken from its first step): named the same way
    assert importlib.import_module(script).main(["--eval", str(run / "model.pt"), "--eval-episodes", "1"]) == 1
    err = capsys.readouterr().err
    assert f"the environment returned a non-finite {what} at evaluation step" in err and "Traceback" not in err, err


@pytest.mark.parametrize("script", SCRIPTS)
def test_same_seed_same_metrics(script, tmp_path):
    """Also: training in this process leaves the SIGTERM handler as it found it."""
    module = importlib.import_module(script)
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    tables = []
    for name in ("a", "b"):
        assert module.main([*SCRIPTS[script]["short"], "--seed", "7", "--run-dir", str(tmp_path / name)]) == 0
        rows = read_csv(tmp_path / name / "metrics.csv")
        tables.append([{k: v for k, v in row.items() if k not in SCRIPTS[script]["clock"]} for row in rows])
    assert len(tables[0]) >= 2 and tables[0] == tables[1]
    assert signal.getsignal(signal.SIGTERM) is sigterm_handler


READMES = ("README.md", "benchmarks/README.md", "tests/README.md")


def readme_commands() -> list[tuple[str, str]]:
    """(README, command) for every line of the READMEs' fenced bash blocks, without its `# comment` but for a
    `# long`, which stays: a command that runs for minutes by design (the benchmarks, whose budgets are what
    they measure), of which only the file it runs is checked."""
    commands = []
    for readme in READMES:
        text = Path(ROOT, readme).read_text()
        for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            for line in block.splitlines():
                command, _, comment = line.partition(" #")
                if command.strip():
                    commands.append((readme, command.strip() + (" # long" if comment.strip() == "long" else "")))
    return commands


@pytest.fixture(scope="module")
def checkpoint_of(tmp_path_factory):
    """checkpoint_of(script): the model.pt of a short run of it, trained once for every test of this module."""
    made = {}

    def make(script: str) -> str:
        if script not in made:
            run = tmp_path_factory.mktemp(f"{script}-checkpoint")
            assert importlib.import_module(script).main([*SCRIPTS[script]["short"], "--run-dir", str(run)]) == 0
            made[script] = str(run / "model.pt")
        return made[script]

    return make


def test_the_readme_has_a_command_for_every_script():
    """Keeps the search below honest: a README code block without a command of some script would be a gap."""
    found = {m[1] for _, c in readme_commands() if (m := re.match(r"python (\w+)\.py", c))}
    assert found >= set(SCRIPTS)


@pytest.mark.parametrize("readme, command", readme_commands())
def test_readme_command_runs(readme, command, checkpoint_of, tmp_path, capsys):
    """`python <script>.py ...` (and `torchrun ... <script>.py ...`, on this one process) as written, through main():
    a training command gets a small budget and a run directory in tmp appended (the last value of a flag wins),
    and a placeholder path of a checkpoint, `runs/<...>/model.pt`, becomes one this test trained: a flag renamed
    or removed fails. `pip install -r FILE`: FILE exists. `pytest ...`: it selects tests. `... # long`: the file
    it runs exists. Any other line is one this test cannot check, and fails."""
    placeholders = re.findall(r"\S*<[^>]*>\S*", command)  # runs/<the run directory it printed>/model.pt
    assert all(p.endswith("model.pt") for p in placeholders), f"a placeholder this test cannot fill: {placeholders}"
    words = shlex.split(re.sub(r"\S*<[^>]*>\S*", "CHECKPOINT", command.removesuffix(" # long")))
    if command.endswith(" # long"):
        path = next(w for w in words if w.endswith(".py"))
        assert Path(ROOT, path).is_file(), f"{readme}: {command}: no {path}"
        return
    if words[:3] == ["pip", "install", "-r"]:
        files = [w for w in words[3:] if w != "-r"]
        assert all(Path(ROOT, f).is_file() for f in files), f"{readme}: {command}"
        return
    if words[0] == "pytest":
        run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              *words[1:]], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, f"{readme}: {command}: {run.stdout[-500:]}"  # 5: it selects no test
        return
    if words[0] == "torchrun":
        words = ["python", *words[next(i for i, w in enumerate(words) if w.endswith(".py")) :]]
    assert words[0] == "python" and re.fullmatch(r"\w+\.py", words[1]), f"{readme}: a command this test cannot check"
    script = words[1].removesuffix(".py")
    assert script in SCRIPTS, f"{readme} runs {script}.py, which SCRIPTS in this file does not know yet"
    argv = [checkpoint_of(script) if w == "CHECKPOINT" else w for w in words[2:]]
    if "--eval" not in argv and "--help" not in argv:
        argv += [*SCRIPTS[script]["short"], "--run-dir", str(tmp_path / "run")]
    assert exit_status(script, argv) == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Nothing lost under misuse: run directories, checkpoints, --eval's environment, signals during a save
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_run_dir_that_holds_a_run_is_refused_unless_overwrite(script, tmp_path, capsys):
    run, short = tmp_path / "run", SCRIPTS[script]["short"]
    assert exit_status(script, [*short, "--run-dir", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert exit_status(script, [*short, "--seed", "7", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(run) in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # not a byte written
    assert exit_status(script, [*short, "--seed", "7", "--run-dir", str(run), "--overwrite"]) == 0
    assert torch.load(run / "model.pt", weights_only=True)["args"]["seed"] == 7


# Runs a script as `python script.py` would, with the clock stopped at one instant: runs started at once get one time.
STOPPED_CLOCK = """import runpy, sys, time
time.time = lambda: 1_700_000_000.0
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", ["reinforce", "ppo", "grpo"])  # one of each plumbing text (tests/test_shape.py)
def test_default_run_dirs_of_runs_started_at_once_are_two(script, tmp_path):
    """Two processes started at once, their clocks stopped at the same instant, get two default run directories, each
    with a whole run, and no temporary file is left."""
    (tmp_path / "stopped_clock.py").write_text(STOPPED_CLOCK)
    command = [sys.executable, "stopped_clock.py", os.path.join(ROOT, f"{script}.py"), *SCRIPTS[script]["short"]]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in "ab"]
    assert [proc.wait(timeout=300) for proc in procs] == [0, 0], [proc.stderr.read() for proc in procs]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((run / "model.pt").exists() and (run / "metrics.csv").exists() for run in runs)
    assert all("__1700000000_" in run.name for run in runs) and not list(tmp_path.rglob("model.pt.*"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_during_a_save_leaves_a_complete_checkpoint_and_no_traceback(script, tmp_path, monkeypatch, capsys):
    """Every save is hit by a Ctrl-C: the first (a periodic save) stops training, the second (the save that Ctrl-C
    asks for) must still complete. Exit status 130, no partial file, a checkpoint that loads, and no traceback."""
    real_save = torch.save

    def save_then_ctrl_c(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # arrives before the temporary file is renamed

    monkeypatch.setattr(torch, "save", save_then_ctrl_c)
    run = tmp_path / "run"
    assert exit_status(script, [*SCRIPTS[script]["long"], "--log-interval", "1", "--run-dir", str(run)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err, err
    assert not list(run.glob("model.pt.*"))
    state = torch.load(run / "model.pt", weights_only=True)
    assert state[SCRIPTS[script]["step"]] == int(read_csv(run / "metrics.csv")[-1]["global_step"])


@pytest.mark.parametrize("damage", ["no args", "another width", "an unknown arg", "NaN weights"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_damaged_or_older_checkpoints_are_refused_at_load(script, damage, checkpoint_of, tmp_path, capsys):
    state = torch.load(checkpoint_of(script), weights_only=True)
    if damage == "no args":
        del state["args"]
    elif damage == "another width":  # weights that do not fit the network its args describe
        state["args"][SCRIPTS[script]["width"]] *= 2
    elif damage == "an unknown arg":
        state["args"]["no_such_arg"] = 1
    else:
        weight = next(v for v in state["policy"].values() if v.is_floating_point())
        weight.view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "damaged.pt")
    assert exit_status(script, ["--eval", str(tmp_path / "damaged.pt")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "damaged.pt" in err and "Traceback" not in err, err


@pytest.mark.parametrize("script", GYMNASIUM)
def test_eval_uses_the_checkpoints_env_unless_env_id_names_one_with_the_same_spaces(script, checkpoint_of, capsys):
    path = checkpoint_of(script)  # trained on CartPole-v1
    assert exit_status(script, ["--eval", path, "--eval-episodes", "1"]) == 0
    assert " on CartPole-v1:" in capsys.readouterr().out
    assert exit_status(script, ["--eval", path, "--eval-episodes", "1", "--env-id", "CartPole-v0"]) == 0  # same spaces
    assert " on CartPole-v0:" in capsys.readouterr().out
    assert exit_status(script, ["--eval", path, "--eval-episodes", "1", "--env-id", "Acrobot-v1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Acrobot-v1" in err, err


class ActionsFromOne(gym.Env):
    """Discrete(3, start=1): actions 1, 2, 3, and every other action is recorded as wrong. Episodes of 5 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(3, start=1)
    wrong: list = []

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        if not self.action_space.contains(action):
            ActionsFromOne.wrong.append(action)
        self.t += 1
        return np.full(2, self.t / 5, np.float32), float(action == 3), self.t == 5, False, {}


gym.register("ActionsFromOne-v0", entry_point=ActionsFromOne)


@pytest.mark.parametrize("script", GYMNASIUM)
def test_discrete_actions_that_start_at_one_reach_the_env_as_such(script, tmp_path, monkeypatch):
    monkeypatch.setattr(ActionsFromOne, "wrong", [])
    run = tmp_path / "run"
    assert exit_status(script, [*SCRIPTS[script]["short"], "--env-id", "ActionsFromOne-v0", "--run-dir", str(run)]) == 0
    assert exit_status(script, ["--eval", str(run / "model.pt"), "--eval-episodes", "2"]) == 0
    assert ActionsFromOne.wrong == []


# ----------------------------------------------------------------------------------------------
# torchrun: the same command on 2 processes
# ----------------------------------------------------------------------------------------------
TORCHRUN = ["ppo", "grpo", "dr_grpo"]  # the update's equality with one process's: each one's own test file
ONE_PROCESS = [s for s in SCRIPTS if s not in TORCHRUN]


@pytest.mark.parametrize("script", ONE_PROCESS)
def test_the_scripts_that_run_on_one_process_refuse_torchruns_processes(script, tmp_path, monkeypatch, capsys):
    """Started by torchrun on 2 processes (its environment variables), each process exits 2 before anything is written,
    with one line that names the scripts that do run under torchrun."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert exit_status(script, [*SCRIPTS[script]["short"], "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(f"{s}.py" in err for s in TORCHRUN), err
    assert not (tmp_path / "run").exists()


OPTIONAL = {"episodes.csv", "groups.csv"}  # the Gymnasium scripts' episodes, the GRPO scripts' groups


# Each process runs the script as `python script.py` would (__main__), then exits 3 if a thread of gloo's outlives
# it: a process group that destroy_process_group() could not free, whose threads can abort the exit (SIGABRT).
AS_MAIN = """import os, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    status = e.code
tasks, names = "/proc/self/task", []  # the process's threads, by name (Linux)
for t in os.listdir(tasks) if os.path.isdir(tasks) else []:
    try:
        names.append(open(f"{tasks}/{t}/comm").read())
    except OSError:  # a thread that ended meanwhile
        pass
sys.exit(3 if any("gloo" in name for name in names) else status)
"""


@pytest.mark.parametrize("script", TORCHRUN)
def test_torchrun_on_two_processes_trains_into_one_run_directory(script, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    (tmp_path / "as_main.py").write_text(AS_MAIN)
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "as_main.py", os.path.join(ROOT, f"{script}.py")]
    out = subprocess.run(
        [*command, *SCRIPTS[script]["short"]], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()  # one default run directory: rank 0 alone writes
    assert {"metrics.csv", "model.pt"} <= {p.name for p in run.iterdir()} <= {"metrics.csv", "model.pt", *OPTIONAL}
    assert int(read_csv(run / "metrics.csv")[-1][SCRIPTS[script]["step"]]) >= int(SCRIPTS[script]["short"][1])
    assert out.stdout.count("run dir") == 1 and out.stdout.count("done: ") == 1  # rank 0 alone prints
