"""REINFORCE: the score-function policy gradient, with returns-to-go and a baseline.

To improve a stochastic policy pi_theta(a|s) we need the gradient of its expected return, but the return depends
on theta only through which actions get sampled. The score-function (likelihood-ratio) identity turns it into an
expectation we can sample: grad E[f(tau)] = E[f(tau) grad log p_theta(tau)], and grad log p_theta(tau) =
sum_t grad log pi(a_t|s_t), as the environment's dynamics do not depend on theta. So: play N whole episodes,
weight each action's log-probability by how good what followed it was, and climb.

Objective and gradient, with the names used in the code:
    J(theta)   = E_tau[ sum_t gamma^t r_t ]
    G_t        = sum_{k>=t} gamma^(k-t) r_k                             returns_to_go()
    A_t        = G_t - b_t                                              the advantage we weight with
    grad J     = E[ sum_t gamma^t * grad log pi(a_t|s_t) * A_t ]        (exact for any gamma <= 1)
    g          = 1/N sum_i sum_t grad log pi(a_t^i|s_t^i) * A_t^i       policy_loss() = -that, over N episodes
Three facts make g a good estimator, and tests/test_reinforce.py proves each one exactly:
  * returns-to-go: an action cannot change the rewards before it, so replacing the whole return R(tau) by G_t
    removes terms whose expectation is zero (same mean, usually lower variance);
  * baseline: any b_t that does not depend on a_t (given s_t) has E[grad log pi(a_t|s_t) b_t] = 0, so subtracting
    it changes the variance, not the mean. `--baseline` chooses b_t:
      none    b_t = 0;
      mean    b_t = the mean G_t at time step t over the *other* episodes of the batch (leave-one-out). With the
              episode itself, b_t would depend on a_t: with whole returns E[g] shrinks to exactly (N-1)/N grad J;
      moving  b_t = an exponentially weighted moving average, across updates, of the batches' mean G_t at time
              step t (MovingBaseline): 0 until a batch reaches t, then that batch's mean, then b_t <- decay * b_t
              + (1 - decay) * mean_t. update() reads b before folding the batch in: earlier batches only;
      value   b_t = V_phi(s_t), a value network regressed on G_t (value_loss()), evaluated before it is fitted to
              this batch, so it never saw these returns;
  * the discount: the exact gradient of the discounted J carries gamma^t. Like nearly every library, g drops it
    (late steps would count for almost nothing), so g is grad J exactly at gamma = 1, and for gamma < 1 a useful
    direction that is not the gradient of any function (Nota & Thomas 2020): gamma shortens the credit horizon.
    Multiplying A_t by gamma^t gives the exact gradient (the tests do, and it matches).
Episodes are Monte Carlo: an episode cut by a time limit contributes the rewards it saw, with no bootstrapped
tail. For a task scored by its time-limited return, like CartPole-v1, that is exactly the objective (bootstrapping
arrives in actor_critic.py). Each update is one Adam step on policy_loss, its gradient's norm clipped. The loss
averages over episodes, not steps: dividing by the batch's steps would make each episode's weight depend on the
lengths of the others, which biases g.
What this script is the first of: the five later scripts keep its shape and command line.
References: Williams 1992 (REINFORCE); Sutton et al. 2000 (policy gradient theorem); Greensmith et al. 2004
(baselines); Kool et al. 2019 (leave-one-out baseline); Nota & Thomas 2020 ("Is the policy gradient a gradient?").
Run:  python reinforce.py --help
"""

from __future__ import annotations

import argparse
import math
import operator
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


# ---- Hyperparameters -------------------------------------------------------------------------------------------------
def arg(default, help: str, choices=None, above=None, at_least=None, below=None, at_most=None):
    """A hyperparameter: its default, a one-line help for --help, and the values it accepts."""
    bounds = {"above": above, "at_least": at_least, "below": below, "at_most": at_most}
    return field(default=default, metadata={"help": help, "choices": choices, **bounds})


@dataclass
class Args:
    env_id: str = arg("CartPole-v1", "Gymnasium id (1-D Box observations; Discrete or 1-D Box actions)")
    seed: int = arg(1, "seeds Python, numpy, torch and the environments")
    total_timesteps: int = arg(200_000, "training budget in environment steps", at_least=1)
    learning_rate: float = arg(3e-3, "Adam step size of the policy", above=0)
    episodes_per_batch: int = arg(8, "N: episodes per policy update (played at once)", at_least=1)
    gamma: float = arg(0.99, "discount factor", at_least=0, at_most=1)
    baseline: str = arg("value", "b_t: 0, the other episodes' mean, a moving average of earlier batches, or V(s_t)",
                        choices=("none", "mean", "moving", "value"))  # fmt: skip
    baseline_decay: float = arg(0.9, "decay of the moving average of --baseline moving", at_least=0, below=1)
    value_learning_rate: float = arg(1e-2, "Adam step size of the value network (--baseline value)", above=0)
    value_iters: int = arg(20, "full-batch value regression steps per update (--baseline value)", at_least=1)
    hidden_size: int = arg(64, "width of the two hidden layers", at_least=1)
    max_grad_norm: float = arg(1.0, "clip the policy gradient's global norm (0 = off)", at_least=0)
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one", at_least=1)
    device: str = arg("auto", "auto picks CUDA when available", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv, episodes.csv and model.pt go (default: a new dir in runs/)")
    overwrite: bool = arg(False, "replace the run that --run-dir already holds")
    log_interval: int = arg(5, "print a progress line and save the checkpoint every this many updates", at_least=1)
    eval: str = arg("", "path of a model.pt: evaluate it greedily and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval", at_least=1)

    def problems(self) -> list[str]:
        """Constraints between hyperparameters that no single range expresses."""
        if self.baseline == "mean" and self.episodes_per_batch < 2:
            return ["--baseline mean needs --episodes-per-batch >= 2 (each episode's b_t is the others' mean)"]
        return []


# ---- Networks -------------------------------------------------------------------------------------------------------
def mlp(n_in: int, n_out: int, hidden: int, out_gain: float) -> nn.Sequential:
    """Two tanh hidden layers, orthogonal init; a small out_gain starts the policy near uniform."""
    net = nn.Sequential(
        nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out)
    )
    for layer, gain in zip(net[::2], (math.sqrt(2), math.sqrt(2), out_gain), strict=True):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return net


class Policy(nn.Module):
    """pi(a|s): Categorical over logits for Discrete actions (an index 0..n-1), diagonal Gaussian with a
    state-independent log-std for Box actions, sampled unbounded and clipped only when sent to the env."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        n_out = int(action_space.n) if self.discrete else action_space.shape[0]
        self.net = mlp(obs_dim, n_out, hidden, out_gain=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(n_out))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """pi(.|s) for a batch [B, obs_dim]: batch shape [B], event shape [] (Discrete) or [D] (Box)."""
        out = self.net(obs)
        if not torch.isfinite(out).all():
            raise FloatingPointError("non-finite policy output")
        if self.discrete:
            return torch.distributions.Categorical(logits=out, validate_args=False)
        normal = torch.distributions.Normal(out, self.log_std.exp(), validate_args=False)
        return torch.distributions.Independent(normal, 1, validate_args=False)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, obs_dim], [B] or [B, D] -> log pi(a|s) [B], entropy [B]."""
        dist = self.dist(obs)
        return dist.log_prob(action), dist.entropy()

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Sample a ~ pi(.|s), or take its mode when greedy. [B, obs_dim] -> [B] or [B, D]."""
        dist = self.dist(obs)
        return dist.mode if greedy else dist.sample()


class ValueNet(nn.Module):
    """V_phi(s): [..., obs_dim] -> [...]."""

    def __init__(self, obs_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


# ---- The estimator: pure functions on tensors -----------------------------------------------------------------------
def returns_to_go(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1}, restarting at every episode end; no bootstrap past an end.

    rewards: float tensor [T], whole episodes laid end to end, or [T, N], N envs side by side; dones: the same shape,
    bool or 0/1, a tensor or a numpy array as Gymnasium returns it, true at the last step of an episode (terminated
    or cut by a time limit alike). Returns G, shaped as rewards, on its device. Instead of T sequential steps,
    log2(T) whole-tensor passes: after the pass with span s, G_t sums the rewards of steps t .. t + 2s - 1, each
    discounted to t, and reach_t is the discount by which G_{t + 2s} would join it (0 past the episode's end).
    """
    dones = torch.as_tensor(dones, dtype=rewards.dtype, device=rewards.device)
    G, reach = rewards.clone(), gamma * (1.0 - dones)
    span = 1
    while span < len(G):
        G[:-span] = G[:-span] + reach[:-span] * G[span:]
        reach[:-span] = reach[:-span] * reach[span:]
        span *= 2
    return G


def per_step_sums(returns: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each time step t = 0 .. L-1: the sum of the returns-to-go at t, and how many episodes reached t, over
    the batch's episodes (L: the longest). returns: [T], timesteps: [T] long, step index within its episode.
    Returns two [L]."""
    length = int(timesteps.max()) + 1
    sums = returns.new_zeros(2, length).index_add(1, timesteps, torch.stack([returns, torch.ones_like(returns)]))
    return sums[0], sums[1]


def leave_one_out_baseline(returns: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """b_t for each step: the mean return-to-go at the same time step t over the *other* episodes of the batch
    that reached t (0 where none did), independent of the episode's own actions. returns: [T] returns-to-go
    of a batch of episodes; timesteps: [T] long (each episode holds each t at most once). Returns b: [T]."""
    total, count = per_step_sums(returns, timesteps)
    others = count[timesteps] - 1
    return torch.where(others > 0, (total[timesteps] - returns) / others.clamp(min=1), torch.zeros_like(returns))


class MovingBaseline(nn.Module):
    """b_t: per time step t, an exponentially weighted moving average across updates of the batches' mean
    return-to-go at t; 0 at time steps no batch has reached. Read it (forward), then fold_in() the batch."""

    def __init__(self):
        super().__init__()
        self.register_buffer("averages", torch.zeros(0))  # one per time step reached so far: t = 0 .. L-1

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """timesteps: [T] long -> b: [T]."""
        unseen = self.averages.new_zeros(max(0, int(timesteps.max()) + 1 - len(self.averages)))
        return torch.cat([self.averages, unseen])[timesteps]

    @torch.no_grad()
    def fold_in(self, returns: torch.Tensor, timesteps: torch.Tensor, decay: float) -> None:
        """b_t <- decay * b_t + (1 - decay) * mean_t at the time steps the batch reached (mean_t itself where b_t
        was unseen); the time steps it did not reach keep their average. returns, timesteps: [T]."""
        total, count = per_step_sums(returns.to(self.averages.dtype), timesteps)
        means, seen = total / count, min(len(total), len(self.averages))
        means[:seen] = decay * self.averages[:seen] + (1 - decay) * means[:seen]
        self.averages = torch.cat([means, self.averages[len(means) :]])


def policy_loss(log_probs: torch.Tensor, advantages: torch.Tensor, num_episodes: float) -> torch.Tensor:
    """-(1/N) sum_i sum_t log pi(a_t|s_t) * A_t, whose gradient is -g (advantages are constants).
    log_probs: [T] with grad; advantages: [T] (detached here); num_episodes: N, the episodes in the batch."""
    return -(log_probs * advantages.detach()).sum() / num_episodes


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean squared error 1/2 mean_t (V(s_t) - G_t)^2, the target G_t held fixed. [T], [T] -> scalar."""
    return 0.5 * (values - returns.detach()).pow(2).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[G - b] / Var[G]: 1 is a perfect baseline (or critic), 0 no better than a constant, < 0 worse."""
    var = returns.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (returns - values).var(unbiased=False) / var)


# ---- Rollout: N whole episodes, played at once ----------------------------------------------------------------------
def env_action(actions: np.ndarray, space: gym.Space) -> np.ndarray:
    """The policy's actions as the env takes them: Discrete(n, start) gets start + index, a Box the clipped sample."""
    if isinstance(space, gym.spaces.Discrete):
        return actions + int(space.start)
    return np.clip(actions, space.low, space.high)


def rollout(envs: list[gym.Env], policy: Policy, device: torch.device, on_episode_end) -> dict[str, torch.Tensor]:
    """Play one episode in each env, batching the policy over the episodes still running.

    Returns the episodes laid end to end (episode 0's steps, then episode 1's, ...): obs [T, obs_dim], actions
    [T] or [T, D], rewards [T], dones [T] (1 at each episode's last step), timesteps [T] (index within the
    episode). Calls on_episode_end(episode_return, length, steps_so_far) as each episode ends, steps_so_far
    counting the steps of all envs in this rollout. A NaN or infinite observation or reward raises
    EnvironmentNotFinite.
    """
    steps = [{"obs": [], "actions": [], "rewards": [], "dones": [], "timesteps": []} for _ in envs]
    obs = [env.reset()[0] for env in envs]  # each env continues its own seeded generator
    check_finite(obs, 0.0, 0)  # reset() returns no reward
    running, steps_so_far = list(range(len(envs))), 0
    while running:
        actions = policy.act(torch.as_tensor(np.stack([obs[i] for i in running]), dtype=torch.float32, device=device))
        still_running = []
        for i, action in zip(running, actions.cpu().numpy(), strict=True):
            next_obs, reward, terminated, truncated, _ = envs[i].step(env_action(action, envs[i].action_space))
            steps_so_far += 1
            check_finite(next_obs, reward, steps_so_far)
            done, t = terminated or truncated, len(steps[i]["rewards"])
            for key, value in zip(steps[i], (obs[i], action, float(reward), done, t), strict=True):
                steps[i][key].append(value)
            obs[i] = next_obs
            if done:
                on_episode_end(sum(steps[i]["rewards"]), len(steps[i]["rewards"]), steps_so_far)
            else:
                still_running.append(i)
        running = still_running
    batch = {k: torch.as_tensor(np.concatenate([np.stack(s[k]) for s in steps]), device=device) for k in steps[0]}
    for k in ("obs", "rewards", "dones"):
        batch[k] = batch[k].float()
    return batch


# ---- Update ---------------------------------------------------------------------------------------------------------
def update(policy, value_net, optimizer, value_optimizer, moving_baseline, batch, args: Args) -> dict[str, float]:
    """One policy-gradient step on a batch of N episodes; then fit V to G (--baseline value), or fold G into the
    moving average (--baseline moving). value_net, value_optimizer, moving_baseline: None when not in use."""
    G = returns_to_go(batch["rewards"], batch["dones"], args.gamma)
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
    log_probs, entropy = policy.log_prob_entropy(batch["obs"], batch["actions"])
    loss = policy_loss(log_probs, G - baseline, num_episodes=batch["dones"].sum())  # an episode ends once
    if not torch.isfinite(loss):
        raise FloatingPointError("non-finite policy loss")
    optimizer.zero_grad()
    loss.backward()
    if args.max_grad_norm > 0:
        nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
    optimizer.step()
    v_loss = torch.tensor(float("nan"))
    for _ in range(args.value_iters if args.baseline == "value" else 0):
        v_loss = value_loss(value_net(batch["obs"]), G)
        value_optimizer.zero_grad()
        v_loss.backward()
        value_optimizer.step()
    for net in (policy, value_net):
        if net is not None and not all(torch.isfinite(p).all() for p in net.parameters()):
            raise FloatingPointError(f"non-finite {type(net).__name__} parameters")
    return {
        "policy_loss": loss.item(),
        "value_loss": v_loss.item(),
        "entropy": entropy.mean().item(),
        "explained_variance": explained_variance(baseline, G) if args.baseline != "none" else float("nan"),
    }


# ---- Training loop --------------------------------------------------------------------------------------------------
def train(args: Args) -> dict[str, float]:
    """The RL loop: play N whole episodes, take one step on the policy and fit the baseline, log; until the budget
    is spent."""
    device = setup(args)  # seeds, torch threads, the device
    envs = [make_env(args.env_id) for _ in range(args.episodes_per_batch)]
    for i, env in enumerate(envs):
        env.reset(seed=args.seed + i)  # env i gets seed + i; its later resets continue its own generator
    obs_dim = envs[0].observation_space.shape[0]
    policy = Policy(obs_dim, envs[0].action_space, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    value_net = value_optimizer = moving_baseline = None
    if args.baseline == "value":
        value_net = ValueNet(obs_dim, args.hidden_size).to(device)
        value_optimizer = torch.optim.Adam(value_net.parameters(), lr=args.value_learning_rate)
    elif args.baseline == "moving":
        moving_baseline = MovingBaseline().to(device)

    def checkpoint() -> dict:  # what model.pt holds besides the args, the spaces and the step
        return {"policy": policy.state_dict(), "value": value_net.state_dict() if value_net else None}

    with Run(args, envs[0], checkpoint) as run:
        while run.global_step < args.total_timesteps:
            batch = rollout(envs, policy, device, run.on_episode_end)
            stats = update(policy, value_net, optimizer, value_optimizer, moving_baseline, batch, args)
            run.log(len(batch["rewards"]), stats)
    for env in envs:
        env.close()
    return run.row


# ---- everything below is plumbing, not reinforcement learning -------------------------------------------------------
# Seeds and device, the env's spaces, the run's files and its end (Ctrl-C, SIGTERM, a non-finite number), --eval and the
# command line. Every error a user can cause is a ValueError: main() prints it as one line and exits with status 2.
ALGO = "reinforce"


def setup(args: Args) -> torch.device:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    return torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")


def make_env(env_id: str) -> gym.Env:
    try:
        env = gym.make(env_id)
    except Exception as e:  # an unknown id, a module that does not import, an entry point that fails
        raise ValueError(f"cannot make environment '{env_id}': {(str(e) or repr(e)).splitlines()[0]}") from None
    obs, act = env.observation_space, env.action_space
    if not (isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1):
        raise ValueError(f"{env_id}: observation space {obs} is not supported (a 1-D Box only)")
    if not (isinstance(act, gym.spaces.Discrete) or (isinstance(act, gym.spaces.Box) and len(act.shape) == 1)):
        raise ValueError(f"{env_id}: action space {act} is not supported (Discrete, or a 1-D Box)")
    return env


def check_finite(obs, reward, steps_so_far: int) -> None:
    """A NaN or an infinity from the environment is its fault, not the policy's: say so, and after how many steps."""
    for what, value in (("observation", obs), ("reward", reward)):
        if not np.isfinite(value).all():
            raise FloatingPointError(f"the environment returned a non-finite {what}", steps_so_far)


def mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


class Run:
    """`with Run(args, env, checkpoint) as run:` around the training loop. on_episode_end(): a row of episodes.csv.
    log(): a row of metrics.csv, and every --log-interval updates and at the end a progress line and model.pt, one dict
    of checkpoint()'s state dicts, the args, the spaces and the step. Ctrl-C and SIGTERM save it and exit 130 and 143; a
    FloatingPointError exits 1, keeping the last one."""

    def __init__(self, args: Args, env: gym.Env, checkpoint):
        name = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{ALGO}__{args.env_id}__{args.seed}")
        self.dir = args.run_dir or os.path.join("runs", f"{name}__{int(time.time())}_{os.getpid()}")  # never shared
        self.metrics, self.episodes = open_run_dir(self.dir, args.overwrite)
        print("global_step,wall_time,return,length", file=self.episodes, flush=True)
        print(f"{ALGO} on {args.env_id} | run dir {self.dir}")
        self.args, self.checkpoint, self.spaces = args, checkpoint, [str(env.observation_space), str(env.action_space)]
        self.global_step, self.updates, self.logged, self.returns, self.lengths, self.saved = 0, 0, 0, [], [], False
        self.start = self.last = time.time()

    def __enter__(self) -> Run:
        self.sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM: stop as Ctrl-C does
        return self

    def on_episode_end(self, episode_return: float, length: int, steps_so_far: int) -> None:
        step, now = self.global_step + steps_so_far, round(time.time() - self.start, 3)
        print(step, now, episode_return, length, sep=",", file=self.episodes, flush=True)
        self.returns.append(episode_return)
        self.lengths.append(length)

    def log(self, steps: int, stats: dict[str, float]) -> None:
        now, ended = time.time(), slice(self.logged, len(self.returns))  # the episodes that ended since the last row
        self.global_step, self.updates, self.logged = self.global_step + steps, self.updates + 1, len(self.returns)
        self.row = {"global_step": self.global_step, "wall_time": round(now - self.start, 3),
                    "sps": round(steps / max(now - self.last, 1e-9)), "episodic_return": mean(self.returns[ended]),
                    "episode_length": mean(self.lengths[ended]), **stats}  # fmt: skip
        if self.updates == 1:
            print(*self.row, sep=",", file=self.metrics)  # the header
        print(*self.row.values(), sep=",", file=self.metrics, flush=True)
        self.last = now
        if self.updates % self.args.log_interval == 0 or self.global_step >= self.args.total_timesteps:
            self.save()
            numbers = " | ".join(f"{k} {v:.4g}" for k, v in self.row.items() if k not in ("global_step", "wall_time"))
            print(f"step {self.global_step:>8} | return(last 20) {mean(self.returns[-20:]):8.2f} | {numbers}")

    def save(self) -> None:  # to a temporary file, then renamed: model.pt is never a partial file
        state = {"algo": ALGO, "args": asdict(self.args), "spaces": self.spaces, "global_step": self.global_step}
        torch.save({**state, **self.checkpoint()}, os.path.join(self.dir, f"model.pt.{os.getpid()}"))
        os.replace(os.path.join(self.dir, f"model.pt.{os.getpid()}"), os.path.join(self.dir, "model.pt"))
        self.saved = True

    def __exit__(self, kind, error, traceback) -> None:
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C or SIGTERM waits for this save
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            self.save()
            print(f"\ninterrupted at global step {self.global_step}; saved in {self.dir}", file=sys.stderr)
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, self.sigterm)
        self.metrics.close()
        self.episodes.close()
        if isinstance(error, FloatingPointError):  # args: what, and for the environment's, the steps into the rollout
            at = self.global_step + (error.args[1] if len(error.args) > 1 else 0)
            kept = f"the last good checkpoint is {self.dir}/model.pt" if self.saved else "no checkpoint was saved"
            print(f"stopped: {error.args[0]} at global step {at}; {kept}", file=sys.stderr)
            raise SystemExit(1) from None
        if error is None:
            print(f"done: {self.global_step} steps, {len(self.returns)} episodes in {time.time() - self.start:.1f} s; "
                  f"mean return of the last 20 {mean(self.returns[-20:]):.2f}; files in {self.dir}")  # fmt: skip


def open_run_dir(run_dir: str, overwrite: bool) -> tuple:
    """metrics.csv and episodes.csv in run_dir, opened for writing; metrics.csv must be new unless overwrite (mode "x":
    of two runs started at once in one directory, one gets it). Else a ValueError, before anything is written."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        metrics = open(os.path.join(run_dir, "metrics.csv"), "w" if overwrite else "x")
        return metrics, open(os.path.join(run_dir, "episodes.csv"), "w")
    except FileExistsError:
        raise ValueError(f"--run-dir {run_dir} already holds a run; add --overwrite to replace it") from None
    except OSError as e:
        raise ValueError(f"--run-dir {run_dir} cannot be created or written: {e.strerror}") from None


def evaluate(args: Args, env_id: str | None) -> None:
    """Print the mean and std of the returns of --eval-episodes greedy episodes of the policy in args.eval, on env_id
    if given (it must have the spaces the policy was trained on), else on its own env."""
    try:  # weights_only: loading runs no code
        state = torch.load(args.eval, map_location="cpu", weights_only=True)
        trained = Args(**{**state["args"], "seed": args.seed, "device": args.device})
        env, device = make_env(env_id or trained.env_id), setup(trained)
        if state["algo"] != ALGO or [str(env.observation_space), str(env.action_space)] != state["spaces"]:
            raise ValueError(f"{args.eval} holds a {state['algo']}.py policy for {state['spaces']}, not {env.spec.id}")
        policy = Policy(env.observation_space.shape[0], env.action_space, trained.hidden_size).to(device)
        policy.load_state_dict(state["policy"])
    except ValueError:  # an env that cannot be made, or has other spaces
        raise
    except Exception as e:  # no such file, not one torch reads without running code, or not a policy of these args
        raise ValueError(f"cannot load {args.eval} as a checkpoint of this {ALGO}.py ({type(e).__name__})") from None
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise ValueError(f"{args.eval} holds non-finite weights")
    returns, steps = [], 0
    for k in range(args.eval_episodes):
        (obs, _), done, total = env.reset(seed=args.seed + k), False, 0.0
        while not done:
            action = policy.act(torch.as_tensor(obs[None], dtype=torch.float32, device=device), greedy=True)
            obs, reward, terminated, truncated, _ = env.step(env_action(action[0].cpu().numpy(), env.action_space))
            steps, total, done = steps + 1, total + float(reward), terminated or truncated
            check_finite(obs, reward, steps)  # the environment's fault, named as in training
        returns.append(total)
    print(f"eval {args.eval} on {env.spec.id}: mean return {np.mean(returns):.2f} +- {np.std(returns):.2f}, "
          f"{args.eval_episodes} runs")  # fmt: skip


def validate(args: Args) -> None:
    bounds = {"above": (operator.gt, ">"), "at_least": (operator.ge, ">="), "below": (operator.lt, "<"),
              "at_most": (operator.le, "<=")}  # fmt: skip
    for f in fields(args):
        flag, value = "--" + f.name.replace("_", "-"), getattr(args, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number (got {value})")
        for bound, (holds, words) in bounds.items():
            if f.metadata[bound] is not None and not holds(value, f.metadata[bound]):
                raise ValueError(f"{flag} must be {words} {f.metadata[bound]} (got {value})")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use cpu or auto")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # torchrun's processes: each one exits here
        raise ValueError("runs on one process; of the six scripts, ppo.py, grpo.py and dr_grpo.py run under torchrun")
    for problem in args.problems():
        raise ValueError(problem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(  # argument_default=SUPPRESS: the flags given, no more (Args has the defaults)
        prog=f"{ALGO}.py", description=__doc__.split("\n")[0], allow_abbrev=False, argument_default=argparse.SUPPRESS
    )
    for f in fields(Args):
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        parser.add_argument("--" + f.name.replace("_", "-"), **kind, choices=f.metadata["choices"],
                            help=f"{f.metadata['help']} (default: {f.default})")  # fmt: skip
    given = vars(parser.parse_args(argv))  # argparse's own error for an unknown flag or a malformed value
    args = Args(**given)
    try:
        validate(args)
        if args.eval:  # on the checkpoint's env, unless --env-id names another one with the same spaces
            evaluate(args, given.get("env_id"))
        else:
            train(args)
    except ValueError as e:
        print(f"{ALGO}.py: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # in --eval (a training run says why itself, and keeps its last checkpoint)
        print(f"{ALGO}.py: {e.args[0]} at evaluation step {e.args[1]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: a training run is saved already
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
