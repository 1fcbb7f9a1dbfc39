"""Train Stable-Baselines3's PPO or A2C, or sb3-contrib's TRPO, with the RL Zoo's tuned hyperparameters, and
write the same episodes.csv and metrics.csv as our scripts, so that benchmarks/run.py reads both alike.

    python benchmarks/sb3_runner.py --algo ppo --env-id CartPole-v1 --seed 1 --total-timesteps 100000 --run-dir DIR

The command line is our scripts' (`--env-id`, `--seed`, `--total-timesteps`, `--run-dir`, `--torch-threads`,
`--device`), plus `--algo ppo|a2c|trpo`. The hyperparameters are the RL Zoo's for that (algorithm, task), in
ZOO below (on MuJoCo, CleanRL's instead: CLEANRL), applied the way the Zoo applies them: `n_envs` copies in a
DummyVecEnv with a Monitor each, seeded with `--seed`; `normalize: true` wraps a VecNormalize with the algorithm's
gamma; `lin_X` is a schedule from X down to 0 over the budget. Only the budget is ours (`--total-timesteps`, not
the Zoo's `n_timesteps`).

Files, as our scripts write them (CONVENTIONS.md): episodes.csv, one row per finished training episode
(`global_step` at its end, counting the steps of every env, `wall_time` in seconds since training started,
`return` undiscounted and unnormalised as the Monitor saw it, `length`), and metrics.csv, one row per rollout
(`global_step`, `wall_time`, `sps`, `episodic_return`), both flushed as they are written. Training starts,
as in our scripts, before the environments and the networks are built.
"""

import argparse
import csv
import os
import sys
import time

# The RL Zoo's tuned hyperparameters, copied from rl-baselines3-zoo (github.com/DLR-RM/rl-baselines3-zoo),
# hyperparams/ppo.yml (commit 208b6fdf), hyperparams/a2c.yml (commit c6c209e7) and hyperparams/trpo.yml
# (commit eb5d9c77), the entries for CartPole-v1, Pendulum-v1 and Acrobot-v1. `n_timesteps` and `policy`
# ('MlpPolicy' everywhere) are left out; ("lin", X) stands for the Zoo's "lin_X".
ZOO = {
    ("ppo", "CartPole-v1"): dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                                 ent_coef=0.0, learning_rate=("lin", 1e-3), clip_range=("lin", 0.2)),
    ("ppo", "Pendulum-v1"): dict(n_envs=4, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                                 learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4),
    ("ppo", "Acrobot-v1"): dict(normalize=True, n_envs=16, n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4,
                                ent_coef=0.0),
    ("a2c", "CartPole-v1"): dict(n_envs=8, ent_coef=0.0),
    ("a2c", "Pendulum-v1"): dict(normalize=True, n_envs=8, ent_coef=0.0, max_grad_norm=0.5, n_steps=8,
                                 gae_lambda=0.9, vf_coef=0.4, gamma=0.9, use_rms_prop=True, normalize_advantage=False,
                                 learning_rate=("lin", 7e-4), use_sde=True,
                                 policy_kwargs=dict(log_std_init=-2, ortho_init=False)),
    ("a2c", "Acrobot-v1"): dict(normalize=True, n_envs=16, ent_coef=0.0),
    ("trpo", "CartPole-v1"): dict(n_envs=2, n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98,
                                  gamma=0.99, learning_rate=1e-3, n_critic_updates=20),
    ("trpo", "Pendulum-v1"): dict(n_envs=2, n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True,
                                  sde_sample_freq=4),
    ("trpo", "Acrobot-v1"): dict(normalize=True, n_envs=2, n_steps=1024),
}  # fmt: skip
# MuJoCo (benchmarks/mujoco_benchmark.py): not the Zoo's settings but CleanRL's ppo_continuous_action.py defaults,
# those ppo.py runs with there, so that both libraries train with the same hyperparameters (no value clipping).
CLEANRL = dict(normalize=True, n_envs=1, n_steps=2048, batch_size=64, n_epochs=10, learning_rate=("lin", 3e-4),
               gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)  # fmt: skip
ZOO |= {("ppo", task): CLEANRL for task in ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5")}

EPISODE_COLUMNS = ["global_step", "wall_time", "return", "length"]
METRIC_COLUMNS = ["global_step", "wall_time", "sps", "episodic_return"]


class RunFiles:
    """episodes.csv and metrics.csv in run_dir, in our scripts' format; `start` is the time.time() that
    wall_time counts from. Plain Python, so the format can be tested without Stable-Baselines3."""

    def __init__(self, run_dir: str, start: float):
        os.makedirs(run_dir, exist_ok=True)
        self.start, self.last_step, self.last_time, self.returns = start, 0, start, []
        self._episodes_file = open(os.path.join(run_dir, "episodes.csv"), "w", newline="")
        self._metrics_file = open(os.path.join(run_dir, "metrics.csv"), "w", newline="")
        self._episodes, self._metrics = csv.writer(self._episodes_file), csv.writer(self._metrics_file)
        self._episodes.writerow(EPISODE_COLUMNS)
        self._metrics.writerow(METRIC_COLUMNS)
        self._episodes_file.flush()
        self._metrics_file.flush()

    def episode(self, global_step: int, episode_return: float, length: int) -> None:
        """A training episode ended at global_step (every env's steps counted)."""
        self._episodes.writerow([global_step, f"{time.time() - self.start:.3f}", float(episode_return), int(length)])
        self.returns.append(float(episode_return))

    def rollout_end(self, global_step: int) -> None:
        """One row of metrics.csv for the steps since the last call; flushes both files."""
        self._episodes_file.flush()
        now = time.time()
        mean = sum(self.returns) / len(self.returns) if self.returns else float("nan")
        sps = round((global_step - self.last_step) / max(now - self.last_time, 1e-9))
        self._metrics.writerow([global_step, round(now - self.start, 3), sps, mean])
        self._metrics_file.flush()
        self.last_step, self.last_time, self.returns = global_step, now, []

    def close(self) -> None:
        self._episodes_file.close()
        self._metrics_file.close()


def zoo_kwargs(algo: str, env_id: str) -> tuple[int, bool, dict]:
    """(n_envs, normalize, the model's keyword arguments) for the Zoo's entry, schedules made callables."""
    kwargs = dict(ZOO[(algo, env_id)])
    n_envs, normalize = kwargs.pop("n_envs"), kwargs.pop("normalize", False)
    for key, value in kwargs.items():
        if isinstance(value, tuple) and value[0] == "lin":  # SB3 calls it with the fraction of training left
            kwargs[key] = lambda progress_remaining, x=value[1]: progress_remaining * x
    return n_envs, normalize, kwargs


def train(args) -> None:
    import torch
    from sb3_contrib import TRPO
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    start = time.time()
    torch.set_num_threads(args.torch_threads)
    n_envs, normalize, kwargs = zoo_kwargs(args.algo, args.env_id)
    env = make_vec_env(args.env_id, n_envs=n_envs, seed=args.seed)
    if normalize:
        env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99))
    files = RunFiles(args.run_dir, start)

    class WriteEpisodes(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:  # the Monitor's record of an episode that ended at this step
                    files.episode(self.num_timesteps, info["episode"]["r"], info["episode"]["l"])
            return True

        def _on_rollout_end(self) -> None:
            files.rollout_end(self.num_timesteps)

    model_class = {"ppo": PPO, "a2c": A2C, "trpo": TRPO}[args.algo]
    model = model_class("MlpPolicy", env, seed=args.seed, device=args.device, verbose=0, **kwargs)
    try:
        model.learn(total_timesteps=args.total_timesteps, callback=WriteEpisodes())
    finally:
        files.close()
    print(f"done: sb3 {args.algo} on {args.env_id}, {model.num_timesteps} steps in {time.time() - start:.1f} s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algo", choices=["ppo", "a2c", "trpo"], required=True)
    p.add_argument("--env-id", default="CartPole-v1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--total-timesteps", type=int, default=100_000)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.total_timesteps < 1 or args.torch_threads < 1:
        p.error("--total-timesteps and --torch-threads must be >= 1")
    if (args.algo, args.env_id) not in ZOO:  # before anything is imported or written
        p.error(f"no RL Zoo hyperparameters here for {args.algo} on {args.env_id}; known: "
                + ", ".join(f"{a}/{e}" for a, e in ZOO))  # fmt: skip
    train(args)


if __name__ == "__main__":
    sys.exit(main())
