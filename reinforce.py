"""REINFORCE: the score-function policy gradient, with returns-to-go and a baseline.

The idea. To improve a stochastic policy pi_theta(a|s) we need the gradient of its expected return,
but the return depends on theta only through which actions get sampled. The score-function
(likelihood-ratio) identity turns that gradient into an expectation we can sample:
grad E[f(tau)] = E[f(tau) grad log p_theta(tau)], and grad log p_theta(tau) = sum_t grad log pi(a_t|s_t)
because the environment's dynamics do not depend on theta. Play some episodes, weight each action's
log-probability by how good what followed it was, and climb.

Objective and gradient, with the names used in the code:
    J(theta)   = E_tau[ sum_t gamma^t r_t ]
    G_t        = sum_{k>=t} gamma^(k-t) r_k                             returns_to_go()
    A_t        = G_t - b_t                                              the advantage we weight with
    grad J     = E[ sum_t gamma^t * grad log pi(a_t|s_t) * A_t ]        (exact for any gamma <= 1)
    g          = 1/N sum_i sum_t grad log pi(a_t^i|s_t^i) * A_t^i       policy_loss() = -that, over N episodes
Three facts make g a good estimator, and tests/test_reinforce.py proves each one exactly:
  * returns-to-go: an action cannot change rewards that came before it, so replacing the whole
    return R(tau) by G_t removes terms whose expectation is zero (same mean, usually lower variance);
  * baseline: any b_t that does not depend on a_t (given s_t) has E[grad log pi(a_t|s_t) b_t] = 0,
    so subtracting it changes the variance, not the mean. `--baseline` chooses b_t:
      none   b_t = 0;
      mean   b_t = the mean of G_t over the *other* episodes of the batch at the same time step t
             (leave-one-out). Including the episode itself would make b_t depend on a_t: with whole
             returns the expectation shrinks to exactly (N-1)/N grad J. Leaving it out keeps g unbiased;
      moving b_t = an exponentially weighted moving average, across updates, of the batch's mean G_t at
             time step t (MovingBaseline; 0 at a time step no batch has reached yet; the first batch to
             reach t sets it, later ones move it: b_t <- decay * b_t + (1 - decay) * mean_t). update()
             reads it before folding this batch in, so b_t is built from earlier batches only;
      value  b_t = V_phi(s_t), a value network regressed on G_t (value_loss()), evaluated before
             it is updated on this batch, so it never saw these returns.
  * the discount: the exact gradient of the discounted J carries gamma^t. Like nearly every
    library, g drops it, because with gamma < 1 it would make late steps count for almost nothing
    (gamma^300 = 0.05 at gamma = 0.99). g is therefore exactly grad J at gamma = 1, and for gamma < 1
    it is not the gradient of any function (Nota & Thomas 2020), just a useful direction: gamma then
    acts as a variance-reduction knob that shortens the credit horizon. To get the exact gradient of
    the discounted objective, multiply A_t by gamma^t (the tests do, and it matches).

Episodes are Monte Carlo: an episode cut by a time limit contributes the rewards it saw, with no
bootstrapped tail (a return-to-go sums only observed rewards). For a task scored by its time-limited
return, like CartPole-v1, that is exactly the objective. Bootstrapping arrives in actor_critic.py.
Each update is one Adam step on policy_loss, its gradient's norm clipped (a step-size guard that keeps
the direction). The loss averages over episodes, not steps: dividing by the total number of steps in the batch
would make the weight of each episode depend on the lengths of the others, which biases g.

What this script is the first of: the five later scripts keep its shape and command line.
References: Williams 1992 (REINFORCE); Sutton et al. 2000 (policy gradient theorem);
Greensmith et al. 2004 (baselines); Kool et al. 2019 (leave-one-out baseline);
Nota & Thomas 2020 ("Is the policy gradient a gradient?").
Run:  python reinforce.py --help
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn


# ----------------------------------------------------------------------------------------------
# Hyperparameters
# ----------------------------------------------------------------------------------------------
def arg(default, help: str, choices: tuple | None = None):
    """A hyperparameter: its default, a one-line help for --help, and the values it accepts."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Args:
    env_id: str = arg("CartPole-v1", "Gymnasium id (Box observations; Discrete or Box actions)")
    seed: int = arg(1, "seeds Python, numpy, torch and the environments")
    total_timesteps: int = arg(200_000, "training budget in environment steps")
    learning_rate: float = arg(3e-3, "Adam step size of the policy")
    episodes_per_batch: int = arg(8, "N: episodes per policy update (played at once)")
    gamma: float = arg(0.99, "discount factor in [0, 1]")
    baseline: str = arg(
        "value", "b_t: none | mean (leave-one-out) | moving | value", choices=("none", "mean", "moving", "value")
    )
    baseline_decay: float = arg(0.9, "decay in [0, 1) of the moving average of --baseline moving")
    value_learning_rate: float = arg(1e-2, "Adam step size of the value network (--baseline value)")
    value_iters: int = arg(20, "full-batch value regression steps per update (--baseline value)")
    hidden_size: int = arg(64, "width of the two hidden layers")
    max_grad_norm: float = arg(1.0, "clip the policy gradient's global norm (0 = off)")
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one")
    device: str = arg("auto", "auto | cpu | cuda (auto picks CUDA when available)", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg(
        "", "where metrics.csv, episodes.csv and model.pt go (default runs/reinforce__<env>__<seed>__<time>)"
    )
    log_interval: int = arg(5, "print a progress line (and save the checkpoint) every this many updates")
    eval: str = arg("", "path of a model.pt: evaluate it and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval (greedy actions: argmax or the Gaussian mean)")


def validate(args: Args) -> None:
    """Raise ValueError with what is wrong and what is accepted."""
    checks = [
        (args.total_timesteps > 0, f"--total-timesteps must be > 0 (got {args.total_timesteps})"),
        (args.learning_rate > 0, f"--learning-rate must be > 0 (got {args.learning_rate})"),
        (args.value_learning_rate > 0, f"--value-learning-rate must be > 0 (got {args.value_learning_rate})"),
        (args.episodes_per_batch >= 1, f"--episodes-per-batch must be >= 1 (got {args.episodes_per_batch})"),
        (0.0 <= args.gamma <= 1.0, f"--gamma must be in [0, 1] (got {args.gamma})"),
        (args.baseline != "mean" or args.episodes_per_batch >= 2, "--baseline mean needs --episodes-per-batch >= 2"),
        (0.0 <= args.baseline_decay < 1.0, f"--baseline-decay must be in [0, 1) (got {args.baseline_decay})"),
        (args.value_iters >= 1, f"--value-iters must be >= 1 (got {args.value_iters})"),
        (args.hidden_size >= 1, f"--hidden-size must be >= 1 (got {args.hidden_size})"),
        (args.max_grad_norm >= 0, f"--max-grad-norm must be >= 0 (got {args.max_grad_norm})"),
        (args.log_interval >= 1, f"--log-interval must be >= 1 (got {args.log_interval})"),
        (args.torch_threads >= 1, f"--torch-threads must be >= 1 (got {args.torch_threads})"),
        (args.eval_episodes >= 1, f"--eval-episodes must be >= 1 (got {args.eval_episodes})"),
        (
            args.device != "cuda" or torch.cuda.is_available(),
            "--device cuda was asked for but CUDA is not available; use cpu or auto",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------
def mlp(n_in: int, n_out: int, hidden: int, out_gain: float) -> nn.Sequential:
    """Two tanh hidden layers, orthogonal init; a small out_gain starts the policy near uniform."""
    net = nn.Sequential(
        nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out)
    )
    for layer, gain in zip(net[::2], (math.sqrt(2), math.sqrt(2), out_gain), strict=True):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return net


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log N(action; mean, diag(exp(log_std))^2), summed over action dims. [B, D], [D] or [B, D], [B, D] -> [B]."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, sum_d (1/2 log(2 pi e) + log_std_d). [..., D] -> [...]."""
    return (0.5 * (1.0 + math.log(2 * math.pi)) + log_std).sum(-1)


class Policy(nn.Module):
    """pi(a|s): Categorical over logits for Discrete actions, diagonal Gaussian (state-independent
    log-std) for Box actions. Box actions are sampled unbounded and clipped only when sent to the env."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        n_out = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.net = mlp(obs_dim, n_out, hidden, out_gain=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(n_out))

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, obs_dim], [B] or [B, D] -> log pi(a|s) [B], entropy [B]."""
        out = self.net(obs)
        if self.discrete:
            logp = out.log_softmax(-1)
            return logp.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)
        return gaussian_log_prob(out, self.log_std, action), gaussian_entropy(self.log_std).expand(len(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Sample a ~ pi(.|s), or take its mode when greedy. [B, obs_dim] -> [B] or [B, D]."""
        out = self.net(obs)
        if not torch.isfinite(out).all():
            raise FloatingPointError("policy output")
        if self.discrete:
            return out.argmax(-1) if greedy else torch.multinomial(out.softmax(-1), 1).squeeze(-1)
        return out if greedy else out + torch.exp(self.log_std) * torch.randn_like(out)


class ValueNet(nn.Module):
    """V_phi(s): [B, obs_dim] -> [B]."""

    def __init__(self, obs_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# The estimator: pure functions on tensors
# ----------------------------------------------------------------------------------------------
def returns_to_go(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1}, restarting at every episode end; no bootstrap past an end.

    rewards, dones (float or bool): [T], whole episodes laid end to end, or [T, N], N envs side by side;
    dones[t] = 1 at the last step of an episode (terminated or cut by a time limit alike). Returns G, shaped
    as rewards, on its device. Instead of T sequential steps, log2(T) whole-tensor passes: after the pass
    with span s, G_t sums the rewards of steps t .. t + 2s - 1, each discounted to t, and reach_t is the
    discount by which G_{t + 2s} would join it (0 past an episode's end).
    """
    G, reach = rewards.clone(), gamma * (1.0 - dones.to(rewards.dtype))
    span = 1
    while span < len(G):
        G[:-span] = G[:-span] + reach[:-span] * G[span:]
        reach[:-span] = reach[:-span] * reach[span:]
        span *= 2
    return G


def per_step_sums(returns: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each time step t = 0 .. max(timesteps): the sum of the returns-to-go at t, and how many episodes
    reached t. returns: [T], timesteps: [T] long, step index within its episode. Returns two [max + 1]."""
    zeros = returns.new_zeros(int(timesteps.max()) + 1)
    return zeros.index_add(0, timesteps, returns), zeros.index_add(0, timesteps, torch.ones_like(returns))


def leave_one_out_baseline(returns: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """b_t for each step: the mean return-to-go at the same time step t over the *other* episodes
    of the batch that reached t (0 where none did). It is independent of the episode's own actions.

    returns: [T] returns-to-go of a batch of episodes; timesteps: [T] long, step index within its
    episode (each episode holds each t at most once). Returns b: [T].
    """
    total, count = per_step_sums(returns, timesteps)
    others = count[timesteps] - 1
    return torch.where(others > 0, (total[timesteps] - returns) / others.clamp(min=1), torch.zeros_like(returns))


class MovingBaseline(nn.Module):
    """b_t: per time step t, an exponentially weighted moving average across updates of the batch's mean
    return-to-go at t; 0 at time steps no batch has reached. Read it (forward), then fold_in() the batch."""

    def __init__(self):
        super().__init__()
        self.register_buffer("averages", torch.zeros(0))  # one per time step reached so far: always t = 0 .. L-1

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """timesteps: [T] long -> b: [T]."""
        unseen = self.averages.new_zeros(max(0, int(timesteps.max()) + 1 - len(self.averages)))
        return torch.cat([self.averages, unseen])[timesteps]

    @torch.no_grad()
    def fold_in(self, returns: torch.Tensor, timesteps: torch.Tensor, decay: float) -> None:
        """b_t <- decay * b_t + (1 - decay) * mean_t for the time steps the batch reached (mean_t itself where
        b_t was unseen); time steps it did not reach keep their average. returns, timesteps: [T]."""
        total, count = per_step_sums(returns.to(self.averages.dtype), timesteps)
        means, seen = total / count, min(len(total), len(self.averages))
        means[:seen] = decay * self.averages[:seen] + (1 - decay) * means[:seen]
        self.averages = torch.cat([means, self.averages[len(means) :]])


def policy_loss(log_probs: torch.Tensor, advantages: torch.Tensor, num_episodes: int) -> torch.Tensor:
    """-(1/N) sum_i sum_t log pi(a_t|s_t) * A_t, whose gradient is -g (advantages are constants).

    log_probs: [T] with grad; advantages: [T] (detached here); num_episodes: N, the episodes in the batch.
    """
    return -(log_probs * advantages.detach()).sum() / num_episodes


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean squared error 1/2 mean_t (V(s_t) - G_t)^2. [T], [T] -> scalar."""
    return 0.5 * (values - returns.detach()).pow(2).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G]: 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var = returns.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (returns - values).var(unbiased=False) / var)


# ----------------------------------------------------------------------------------------------
# Rollout: N whole episodes, played at once
# ----------------------------------------------------------------------------------------------
class EnvironmentNotFinite(FloatingPointError):
    """The environment returned a NaN or an infinity: its fault, not the policy's. args: (what, steps_so_far)."""


def check_finite(obs, reward: float, steps_so_far: int) -> None:
    """Raise EnvironmentNotFinite, naming which, unless the observation(s) and the reward are finite."""
    if not np.isfinite(obs).all():
        raise EnvironmentNotFinite("observation", steps_so_far)
    if not math.isfinite(reward):  # a scalar: math is ~30x faster than numpy here, and this runs every step
        raise EnvironmentNotFinite("reward", steps_so_far)


def rollout(envs: list[gym.Env], policy: Policy, device: torch.device, on_episode_end) -> dict[str, torch.Tensor]:
    """Play one episode in each env, batching the policy over the episodes still running.

    Returns the episodes laid end to end (episode 0's steps, then episode 1's, ...):
    obs [T, obs_dim], actions [T] or [T, D], rewards [T], dones [T] (1 at each episode's last step),
    timesteps [T] (index within the episode). As each episode ends, on_episode_end(episode_return, length,
    steps_so_far) is called, steps_so_far counting the steps of all envs in this rollout up to that moment.
    Every observation and reward is checked as it arrives: a NaN or an infinity raises EnvironmentNotFinite.
    """
    steps = [{"obs": [], "actions": [], "rewards": []} for _ in envs]
    obs = [env.reset()[0] for env in envs]
    running = list(range(len(envs)))
    steps_so_far = 0
    check_finite(obs, 0.0, steps_so_far)  # reset() returns no reward
    while running:
        batch_obs = torch.as_tensor(np.stack([obs[i] for i in running]), dtype=torch.float32, device=device)
        actions = policy.act(batch_obs).cpu().numpy()
        still_running = []
        for i, action in zip(running, actions, strict=True):
            env_action = (
                action if policy.discrete else np.clip(action, envs[i].action_space.low, envs[i].action_space.high)
            )
            next_obs, reward, terminated, truncated, _ = envs[i].step(env_action)
            steps_so_far += 1
            check_finite(next_obs, reward, steps_so_far)
            steps[i]["obs"].append(obs[i])
            steps[i]["actions"].append(action)
            steps[i]["rewards"].append(float(reward))
            obs[i] = next_obs
            if terminated or truncated:
                on_episode_end(sum(steps[i]["rewards"]), len(steps[i]["rewards"]), steps_so_far)
            else:
                still_running.append(i)
        running = still_running

    lengths = [len(s["rewards"]) for s in steps]
    dones = np.concatenate([np.arange(n) == n - 1 for n in lengths])
    return {
        "obs": torch.as_tensor(np.concatenate([np.stack(s["obs"]) for s in steps]), dtype=torch.float32, device=device),
        "actions": torch.as_tensor(np.concatenate([np.stack(s["actions"]) for s in steps]), device=device),
        "rewards": torch.as_tensor(np.concatenate([s["rewards"] for s in steps]), dtype=torch.float32, device=device),
        "dones": torch.as_tensor(dones, dtype=torch.float32, device=device),
        "timesteps": torch.as_tensor(np.concatenate([np.arange(n) for n in lengths]), device=device),
    }


# ----------------------------------------------------------------------------------------------
# Update
# ----------------------------------------------------------------------------------------------
def update(policy, value_net, optimizer, value_optimizer, moving_baseline, batch, args: Args) -> dict[str, float]:
    """One policy-gradient step on a batch of N episodes; then fit V to G (--baseline value), or fold G into
    the moving average (--baseline moving). value_net, value_optimizer, moving_baseline: None when unused."""
    G = returns_to_go(batch["rewards"], batch["dones"], args.gamma)
    stats = {"value_loss": float("nan"), "explained_variance": float("nan")}
    if args.baseline == "none":
        baseline = torch.zeros_like(G)
    elif args.baseline == "mean":
        baseline = leave_one_out_baseline(G, batch["timesteps"])
    elif args.baseline == "moving":
        baseline = moving_baseline(batch["timesteps"])  # earlier batches only: b_t independent of a_t
        moving_baseline.fold_in(G, batch["timesteps"], args.baseline_decay)
    else:
        with torch.no_grad():
            baseline = value_net(batch["obs"])  # V before it sees these returns: b_t independent of a_t
    if args.baseline in ("moving", "value"):
        stats["explained_variance"] = explained_variance(baseline, G)
    advantages = G - baseline

    log_probs, entropy = policy.log_prob_entropy(batch["obs"], batch["actions"])
    loss = policy_loss(log_probs, advantages, num_episodes=args.episodes_per_batch)
    if not torch.isfinite(loss):
        raise FloatingPointError("policy loss")
    optimizer.zero_grad()
    loss.backward()
    if args.max_grad_norm > 0:
        nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
    optimizer.step()

    if args.baseline == "value":
        for _ in range(args.value_iters):
            v_loss = value_loss(value_net(batch["obs"]), G)
            value_optimizer.zero_grad()
            v_loss.backward()
            value_optimizer.step()
        stats["value_loss"] = v_loss.item()
    for net in (policy, value_net):
        if net is not None and not all(torch.isfinite(p).all() for p in net.parameters()):
            raise FloatingPointError(f"{type(net).__name__} parameters")
    stats.update(policy_loss=loss.item(), entropy=entropy.mean().item())
    return stats


# ----------------------------------------------------------------------------------------------
# Checkpoints and environments
# ----------------------------------------------------------------------------------------------
def make_env(env_id: str) -> gym.Env:
    """gym.make, with the spaces this script supports checked; raises ValueError otherwise."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise ValueError(f"cannot make environment '{env_id}': {str(e).splitlines()[0]}") from None
    if not isinstance(env.observation_space, gym.spaces.Box):
        raise ValueError(f"{env_id}: observation space {env.observation_space} is not supported (Box only)")
    space = env.action_space
    if not (isinstance(space, gym.spaces.Discrete) or (isinstance(space, gym.spaces.Box) and len(space.shape) == 1)):
        raise ValueError(f"{env_id}: action space {space} is not supported (Discrete, or a 1-D Box)")
    return env


def space_spec(env: gym.Env) -> dict:
    """What a checkpoint needs to rebuild the policy, and to check it matches an environment."""
    a = env.action_space
    action = {"n": int(a.n)} if isinstance(a, gym.spaces.Discrete) else {"low": a.low.tolist(), "high": a.high.tolist()}
    return {"obs_shape": list(env.observation_space.shape), "action": action}


def save_checkpoint(path: str, policy: Policy, value_net, args: Args, spaces: dict, global_step: int) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = {
        "algo": "reinforce",
        "args": asdict(args),
        "spaces": spaces,
        "global_step": global_step,
        "policy": policy.state_dict(),
        "value": value_net.state_dict() if value_net is not None else None,
    }
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Raise ValueError when the file is missing, unreadable or not a reinforce.py checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("algo") != "reinforce":
        raise ValueError(f"{path} is not a reinforce.py checkpoint")
    return state


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`, `docker stop`), raised wherever training is, and handled like Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated


def train(args: Args) -> dict[str, float]:
    """Train, writing metrics.csv (a row per update), episodes.csv (a row per episode) and model.pt."""
    start = time.time()
    seed_everything(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = resolve_device(args.device)
    envs = [make_env(args.env_id) for _ in range(args.episodes_per_batch)]
    for i, env in enumerate(envs):
        env.reset(seed=args.seed + i)  # later resets continue each env's own seeded generator
    spaces = space_spec(envs[0])
    obs_dim = int(np.prod(envs[0].observation_space.shape))
    policy = Policy(obs_dim, envs[0].action_space, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    value_net = value_optimizer = None
    if args.baseline == "value":
        value_net = ValueNet(obs_dim, args.hidden_size).to(device)
        value_optimizer = torch.optim.Adam(value_net.parameters(), lr=args.value_learning_rate)
    moving_baseline = MovingBaseline().to(device) if args.baseline == "moving" else None

    run_dir = args.run_dir or f"runs/reinforce__{args.env_id}__{args.seed}__{int(start)}"
    model_path = os.path.join(run_dir, "model.pt")
    columns = ["global_step", "wall_time", "sps", "episodic_return", "episode_length",
               "policy_loss", "value_loss", "entropy", "explained_variance"]  # fmt: skip
    try:  # a run directory that cannot be created or written is bad input, found before training starts
        os.makedirs(run_dir, exist_ok=True)
        metrics_file = open(os.path.join(run_dir, "metrics.csv"), "w", newline="")
        episodes_file = open(os.path.join(run_dir, "episodes.csv"), "w", newline="")
    except OSError as e:
        raise ValueError(f"--run-dir {run_dir} cannot be created or written: {e.strerror or e}") from None
    metrics, episodes = csv.writer(metrics_file), csv.writer(episodes_file)
    metrics.writerow(columns)
    episodes.writerow(["global_step", "wall_time", "return", "length"])
    print(f"reinforce on {args.env_id} | device {device} | baseline {args.baseline} | run dir {run_dir}")

    global_step, update_idx, recent, saved = 0, 0, [], False

    def on_episode_end(episode_return: float, length: int, steps_so_far: int) -> None:
        episodes.writerow([global_step + steps_so_far, f"{time.time() - start:.3f}", episode_return, length])
        recent.append(episode_return)

    previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)  # restored when train() returns
    try:
        while global_step < args.total_timesteps:
            t0 = time.time()
            try:
                batch = rollout(envs, policy, device, on_episode_end)
                global_step += len(batch["rewards"])
                stats = update(policy, value_net, optimizer, value_optimizer, moving_baseline, batch, args)
            except FloatingPointError as e:  # keep the last checkpoint, which was saved with finite weights
                if isinstance(e, EnvironmentNotFinite):  # the environment's fault, not the policy's: say so
                    what, steps_so_far = e.args
                    cause = f"the environment returned a non-finite {what} at global step {global_step + steps_so_far}"
                else:
                    cause = f"non-finite {e} at global step {global_step}"
                kept = f"the last good checkpoint is {model_path}" if saved else "no checkpoint was saved before it"
                print(f"stopped: {cause}; {kept}", file=sys.stderr)
                raise SystemExit(1) from None
            episodes_file.flush()
            batch_returns = recent[-args.episodes_per_batch :]
            update_idx += 1
            row = {
                "global_step": global_step,
                "wall_time": round(time.time() - start, 3),
                "sps": round(len(batch["rewards"]) / (time.time() - t0)),
                "episodic_return": float(np.mean(batch_returns)),
                "episode_length": len(batch["rewards"]) / args.episodes_per_batch,
                **stats,
            }
            metrics.writerow([row[c] for c in columns])
            metrics_file.flush()
            if update_idx % args.log_interval == 0 or global_step >= args.total_timesteps:
                save_checkpoint(model_path, policy, value_net, args, spaces, global_step)
                saved = True
                print(
                    f"step {global_step:>8} | return(last 20) {np.mean(recent[-20:]):8.2f} | sps {row['sps']:>6} | "
                    f"pi_loss {stats['policy_loss']:9.3f} | v_loss {stats['value_loss']:8.3f} | "
                    f"entropy {stats['entropy']:6.3f} | expl_var {stats['explained_variance']:6.3f}"
                )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as Terminated
        save_checkpoint(model_path, policy, value_net, args, spaces, global_step)
        print(f"\ninterrupted at global step {global_step}; checkpoint and metrics saved in {run_dir}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        metrics_file.close()
        episodes_file.close()
        for env in envs:
            env.close()

    summary = {
        "global_step": global_step,
        "episodes": len(recent),
        "mean_return_last_20": float(np.mean(recent[-20:])),
        "seconds": time.time() - start,
    }
    print(
        f"done: {summary['global_step']} steps, {summary['episodes']} episodes in {summary['seconds']:.1f} s; "
        f"mean return of the last 20 episodes {summary['mean_return_last_20']:.2f}; files in {run_dir}"
    )
    return summary


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def evaluate(path: str, episodes: int, seed: int, device_name: str = "auto") -> tuple[float, float]:
    """Run a saved policy greedily for `episodes` episodes on the env it was trained on; return (mean, std)."""
    state = load_checkpoint(path)
    env = make_env(state["args"]["env_id"])
    if space_spec(env) != state["spaces"]:
        raise ValueError(f"{path} was trained on spaces {state['spaces']}, which do not match {env.spec.id} here")
    device = resolve_device(device_name)
    obs_dim = int(np.prod(env.observation_space.shape))
    policy = Policy(obs_dim, env.action_space, state["args"]["hidden_size"]).to(device)
    try:
        policy.load_state_dict(state["policy"])
    except RuntimeError:
        raise ValueError(f"{path}: the weights do not fit the network its args describe") from None
    returns, steps = [], 0
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        check_finite(obs, 0.0, steps)
        done, total = False, 0.0
        while not done:
            action = (
                policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device)[None], greedy=True)[0].cpu().numpy()
            )
            if not policy.discrete:
                action = np.clip(action, env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            steps += 1
            check_finite(obs, reward, steps)  # the environment's fault, named as in training
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, not argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None) -> Args:
    parser = Parser(
        prog="reinforce.py", description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in fields(Args):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            choices=f.metadata["choices"], help=f.metadata["help"])  # fmt: skip
    return Args(**vars(parser.parse_args(argv)))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        validate(args)
        if args.eval:
            mean, std = evaluate(args.eval, args.eval_episodes, args.seed, args.device)
            print(f"eval {args.eval}: mean return {mean:.2f} +- {std:.2f} over {args.eval_episodes} episodes")
        else:
            train(args)
    except ValueError as e:
        print(f"reinforce.py: error: {e}", file=sys.stderr)
        return 2
    except EnvironmentNotFinite as e:  # in --eval (training reports its own, exits 1 and keeps its checkpoint)
        what, steps = e.args
        cause = f"the environment returned a non-finite {what} at evaluation step {steps}"
        print(f"reinforce.py: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # the checkpoint and metrics are saved already
        return 143 if isinstance(e, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
