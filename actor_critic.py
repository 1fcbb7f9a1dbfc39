"""Advantage actor-critic (A2C) with GAE(lambda), and time limits told apart from terminations.

The idea. REINFORCE waits for the end of every episode and weights each action by the whole return
that followed it: unbiased, but noisy, and slow to start. An actor-critic learns a critic V_phi(s) and
uses it twice: as a baseline, and to *bootstrap*, replacing the unseen rest of an episode by the
critic's estimate of it. Then the policy can learn from short slices of experience: step several
environments together for n steps, estimate every step's advantage from those few rewards and the
critic, take one gradient step on the actor and the critic, and carry on where the environments are.

Objective and gradient, with the names used in the code (T = --num-steps steps of N = --num-envs envs):
    J(theta)   = E_tau[ sum_t gamma^t r_t ]
    delta_t    = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)         TD error; s'_t the true next state
    A_t        = sum_{l>=0} (gamma*lambda)^l delta_{t+l}                     gae(), each sum stopping at the end
               = delta_t + gamma*lambda * (1 - done_t) * A_{t+1}             of its episode or of the rollout
    G^lam_t    = A_t + V(s_t)                                                the lambda-return: the critic's target
    grad J    ~= E[ sum_t grad log pi(a_t|s_t) * A_t ]                       (exact at gamma = 1 when V = V^pi)
    L          = -mean_t log pi(a_t|s_t) A_t                                policy_loss(), a mean over the T*N steps
                 + vf_coef * 1/2 mean_t (V_phi(s_t) - G^lam_t)^2             value_loss(), G^lam_t held fixed
                 - ent_coef * mean_t H[pi(.|s_t)]                            the entropy bonus
Facts about A_t that tests/test_actor_critic.py proves exactly:
  * lambda = 1 gives A_t = (discounted rewards to the episode's end, plus gamma^k V of the state where
    the rollout stops if it stops mid-episode) - V(s_t): REINFORCE with a baseline and a bootstrap.
    lambda = 0 gives the one-step TD error delta_t. Lambda slides between the two.
  * with the true V^pi as critic, E[delta_{t+l} | s_t, a_t] = 0 for every l >= 1 and Q^pi(s_t,a_t) - V^pi(s_t)
    for l = 0, so the expected gradient is grad J for *every* lambda (at gamma = 1; with gamma < 1 the
    gamma^t weight applies exactly as in reinforce.py, and the script drops it for the same reason).
  * with a wrong critic V = V^pi + e, A_t gains -e(s_t) (a baseline: no bias) plus
    (1 - lambda) sum_{l>=1} gamma^l lambda^(l-1) e(s_{t+l}), which does bias the gradient, except at
    lambda = 1. Lambda trades that bias against the variance of longer sums of rewards.
Time limits. A Gymnasium episode ends in one of two ways, and they must not be confused (Pardo et al.
2018). terminated: the MDP reached a terminal state (the pole fell); there is no future, V(s') = 0.
truncated: a time limit stopped the episode (CartPole-v1 at 500 steps, Pendulum-v1 at 200), but the state
s' had a future that the observation cannot tell apart from any other state's: the advantage bootstraps
from V(s'), the *final* observation of the ended episode (never the reset observation that the vector env
already returns in its place). Treating truncation as termination (as CleanRL and many others do) teaches
the critic that identical-looking states are worth a full return in one episode and nothing in another.
Either way the sum in A_t stops at the episode's end: the next row of the batch belongs to a new episode.
What changed since reinforce.py: a critic that bootstraps, GAE instead of returns-to-go, n-step rollouts
of a Gymnasium vector env instead of whole episodes (so the loss is a mean over the batch's T*N steps,
a constant), one optimiser step on a joint actor + critic loss with an entropy bonus, and an option to
share the hidden layers between actor and critic (--network shared).
References: Mnih et al. 2016 (A3C; A2C is its synchronous form); Schulman et al. 2016 (GAE);
Sutton & Barto 2018 ch. 12 (lambda-returns); Pardo et al. 2018 ("Time limits in reinforcement learning").
Run:  python actor_critic.py --help
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
    total_timesteps: int = arg(200_000, "training budget in environment steps (all envs together)")
    learning_rate: float = arg(4e-3, "Adam step size of the actor and the critic")
    num_envs: int = arg(4, "N: environments stepped together (a Gymnasium SyncVectorEnv)")
    num_steps: int = arg(16, "T: steps of each env per update (the rollout's length)")
    gamma: float = arg(0.99, "discount factor in [0, 1]")
    gae_lambda: float = arg(0.95, "GAE's lambda in [0, 1]: 0 one-step TD error, 1 Monte Carlo with a bootstrap")
    ent_coef: float = arg(0.0, "weight of the entropy bonus in the loss (0.01 helps Acrobot-v1)")
    vf_coef: float = arg(0.5, "weight of the critic's loss in the joint loss")
    # separate by default: measured on CartPole-v1 (5 seeds, benchmarks/solve.py), shared hidden layers needed
    # ~3x the steps (median 101k vs 32k), the critic's regression gradients pulling the policy's features around
    network: str = arg("separate", "actor and critic: separate MLPs, or shared hidden layers with two heads",
                       choices=("separate", "shared"))  # fmt: skip
    hidden_size: int = arg(64, "width of the two hidden layers")
    max_grad_norm: float = arg(1.0, "clip the joint gradient's global norm (0 = off)")
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one")
    device: str = arg("auto", "auto | cpu | cuda (auto picks CUDA when available)", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg(
        "", "where metrics.csv, episodes.csv and model.pt go (default runs/actor_critic__<env>__<seed>__<time>)"
    )
    log_interval: int = arg(100, "print a progress line (and save the checkpoint) every this many updates")
    eval: str = arg("", "path of a model.pt: evaluate it and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval (greedy actions: argmax or the Gaussian mean)")


def validate(args: Args) -> None:
    """Raise ValueError with what is wrong and what is accepted."""
    checks = [
        (args.total_timesteps > 0, f"--total-timesteps must be > 0 (got {args.total_timesteps})"),
        (args.learning_rate > 0, f"--learning-rate must be > 0 (got {args.learning_rate})"),
        (args.num_envs >= 1, f"--num-envs must be >= 1 (got {args.num_envs})"),
        (args.num_steps >= 1, f"--num-steps must be >= 1 (got {args.num_steps})"),
        (0.0 <= args.gamma <= 1.0, f"--gamma must be in [0, 1] (got {args.gamma})"),
        (0.0 <= args.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1] (got {args.gae_lambda})"),
        (args.ent_coef >= 0, f"--ent-coef must be >= 0 (got {args.ent_coef})"),
        (args.vf_coef > 0, f"--vf-coef must be > 0 (got {args.vf_coef})"),
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
    """V_phi(s): [..., obs_dim] -> [...]. Its own MLP, or (shared_with=policy) a linear head on the
    policy's two hidden layers, which the two losses then train together."""

    def __init__(self, obs_dim: int, hidden: int, shared_with: Policy | None = None):
        super().__init__()
        if shared_with is None:
            self.net = mlp(obs_dim, 1, hidden, out_gain=1.0)
        else:
            head = nn.Linear(hidden, 1)
            nn.init.orthogonal_(head.weight, 1.0)
            nn.init.zeros_(head.bias)
            self.net = nn.Sequential(*shared_with.net[:-1], head)  # the same modules: shared parameters

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# The estimator: pure functions on tensors
# ----------------------------------------------------------------------------------------------
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalized advantage estimates A_t = sum_{l>=0} (gamma*lam)^l delta_{t+l}, each sum stopping at
    its episode's last step or at the rollout's last step, whichever comes first.

    All [T, N] (time, env), float: rewards r_t; values V(s_t); next_values V(s'_t) of the true next
    state (at an episode's last step: its final observation, not the reset one); terminated / truncated
    1.0 at a step that ended its episode by a terminal state / by a time limit. Returns A: [T, N].
    """
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values  # no future after a terminal state
    not_done = 1.0 - torch.maximum(terminated, truncated)  # either way the next row is a new episode
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages


def policy_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean_t log pi(a_t|s_t) * A_t over the batch's T*N steps, whose gradient is -g (advantages are
    constants). The batch always holds T*N steps, so the mean is the sum times a constant.

    log_probs: [B] with grad; advantages: [B] (detached here).
    """
    return -(log_probs * advantages.detach()).mean()


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean squared error 1/2 mean_t (V(s_t) - G_t)^2, the target G_t held fixed. [B], [B] -> scalar."""
    return 0.5 * (values - returns.detach()).pow(2).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G]: 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var = returns.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (returns - values).var(unbiased=False) / var)


# ----------------------------------------------------------------------------------------------
# Rollout: T steps of N environments, continuing where the last rollout stopped
# ----------------------------------------------------------------------------------------------
class EnvironmentNotFinite(FloatingPointError):
    """The environment returned a NaN or an infinity: its fault, not the policy's. args: (what, steps_so_far)."""


def check_finite(obs, reward, steps_so_far: int) -> None:
    """Raise EnvironmentNotFinite, naming which, unless the observation(s) and the reward(s) are finite."""
    if not np.isfinite(obs).all():
        raise EnvironmentNotFinite("observation", steps_so_far)
    if not np.isfinite(reward).all():
        raise EnvironmentNotFinite("reward", steps_so_far)


def rollout(envs, policy: Policy, carry: dict, num_steps: int, device: torch.device, on_episode_end) -> dict:
    """Step every env num_steps times with actions sampled from the policy, continuing from carry["obs"].

    carry holds obs [N, obs_dim], the current observations, and episode_return, episode_length [N] of
    the episodes in progress; all three are updated in place. Returns the batch, each [T, N, ...]:
    obs s_t, actions a_t, rewards r_t, terminated, truncated (1.0 at the step that ended an episode),
    next_obs s'_t, the true next state: the next row's obs, except at an episode's last step, where it is
    the final observation of the ended episode. As each episode ends, on_episode_end(episode_return,
    length, steps_so_far) is called, steps_so_far counting the steps of all envs in this rollout so far.
    Every observation and reward is checked as it arrives: a NaN or an infinity raises EnvironmentNotFinite.
    """
    keys = ("obs", "actions", "rewards", "terminated", "truncated", "next_obs")
    steps = {k: [] for k in keys}
    space = envs.single_action_space
    check_finite(carry["obs"], 0.0, 0)  # from reset() before the first rollout (no reward), else checked already
    for t in range(num_steps):
        obs = carry["obs"]
        actions = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        env_actions = actions if policy.discrete else np.clip(actions, space.low, space.high)
        next_obs, rewards, terminated, truncated, infos = envs.step(env_actions)
        done = terminated | truncated
        true_next_obs = next_obs.copy()  # next_obs of an ended episode is already the next one's reset obs
        for i in np.flatnonzero(done):
            true_next_obs[i] = infos["final_obs"][i]
        check_finite((next_obs, true_next_obs), rewards, (t + 1) * envs.num_envs)
        for k, v in zip(keys, (obs, actions, rewards, terminated, truncated, true_next_obs), strict=True):
            steps[k].append(v)
        carry["episode_return"] += rewards
        carry["episode_length"] += 1
        for i in np.flatnonzero(done):
            on_episode_end(float(carry["episode_return"][i]), int(carry["episode_length"][i]), (t + 1) * envs.num_envs)
        carry["episode_return"][done], carry["episode_length"][done] = 0.0, 0
        carry["obs"] = next_obs
    batch = {k: torch.as_tensor(np.stack(v), device=device) for k, v in steps.items()}
    for k in ("obs", "rewards", "terminated", "truncated", "next_obs"):
        batch[k] = batch[k].float()
    return batch


# ----------------------------------------------------------------------------------------------
# Update
# ----------------------------------------------------------------------------------------------
def advantages_and_targets(value_net: ValueNet, batch: dict, gamma: float, lam: float):
    """(A [T, N], lambda-returns G^lam = A + V [T, N], V(s_t) [T, N]) with the critic as it is before this
    update: the values it gives are constants of the losses."""
    with torch.no_grad():
        values, next_values = value_net(batch["obs"]), value_net(batch["next_obs"])
    advantages = gae(batch["rewards"], values, next_values, batch["terminated"], batch["truncated"], gamma, lam)
    return advantages, advantages + values, values


def update(policy, value_net, optimizer, batch, args: Args) -> dict[str, float]:
    """One gradient step on the joint loss of the actor and the critic, from one rollout of T*N steps."""
    advantages, targets, values = advantages_and_targets(value_net, batch, args.gamma, args.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
    log_probs, entropy = policy.log_prob_entropy(flat(batch["obs"]), flat(batch["actions"]))
    pi_loss = policy_loss(log_probs, flat(advantages))
    v_loss = value_loss(value_net(flat(batch["obs"])), flat(targets))
    loss = pi_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
    if not torch.isfinite(loss):
        raise FloatingPointError("loss")
    optimizer.zero_grad()
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if args.max_grad_norm > 0:
        nn.utils.clip_grad_norm_(params, args.max_grad_norm)
    optimizer.step()
    if not all(torch.isfinite(p).all() for p in params):
        raise FloatingPointError("parameters")
    return {
        "policy_loss": pi_loss.item(),
        "value_loss": v_loss.item(),
        "entropy": entropy.mean().item(),
        "explained_variance": explained_variance(flat(values), flat(targets)),
    }


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


def make_envs(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """N copies of make_env(env_id), stepped one after another in this process (for envs as cheap as
    CartPole a subprocess per env costs more than it saves).

    The autoreset mode is chosen, not left to the default. SAME_STEP: when an episode ends at step t,
    step() returns (r_t, terminated_t, truncated_t) of that last step, the ended episode's final
    observation in infos["final_obs"], and, as the observation, the *reset* observation of the next
    episode, which is s_{t+1}. Every row of the batch is then a real transition (s_t, a_t, r_t, s'_t).
    The default, NEXT_STEP, returns the final observation first and resets one call later, ignoring
    that call's action and returning reward 0: a fake transition (final obs, ignored action, 0, reset
    obs) in every episode, which would have to be masked out of every loss and every count of steps.
    """
    return gym.vector.SyncVectorEnv(
        [lambda: make_env(env_id) for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def space_spec(env: gym.Env) -> dict:
    """What a checkpoint needs to rebuild the policy, and to check it matches an environment."""
    a = env.action_space
    action = {"n": int(a.n)} if isinstance(a, gym.spaces.Discrete) else {"low": a.low.tolist(), "high": a.high.tolist()}
    return {"obs_shape": list(env.observation_space.shape), "action": action}


def save_checkpoint(path: str, policy: Policy, value_net: ValueNet, args: Args, spaces: dict, global_step: int) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = {
        "algo": "actor_critic",
        "args": asdict(args),
        "spaces": spaces,
        "global_step": global_step,
        "policy": policy.state_dict(),
        "value": value_net.state_dict(),
    }
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Raise ValueError when the file is missing, unreadable or not an actor_critic.py checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("algo") != "actor_critic":
        raise ValueError(f"{path} is not an actor_critic.py checkpoint")
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
    envs = make_envs(args.env_id, args.num_envs)
    obs, _ = envs.reset(seed=args.seed)  # env i gets seed + i; later resets continue each env's own generator
    carry = {"obs": obs, "episode_return": np.zeros(args.num_envs), "episode_length": np.zeros(args.num_envs, int)}
    spaces = space_spec(envs.envs[0])
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    value_net = ValueNet(obs_dim, args.hidden_size, shared_with=policy if args.network == "shared" else None).to(device)
    params = list({id(p): p for net in (policy, value_net) for p in net.parameters()}.values())  # shared ones once
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)

    run_dir = args.run_dir or f"runs/actor_critic__{args.env_id}__{args.seed}__{int(start)}"
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
    print(f"actor_critic on {args.env_id} | device {device} | network {args.network} | run dir {run_dir}")

    global_step, update_idx, recent, recent_lengths, saved = 0, 0, [], [], False

    def on_episode_end(episode_return: float, length: int, steps_so_far: int) -> None:
        episodes.writerow([global_step + steps_so_far, f"{time.time() - start:.3f}", episode_return, length])
        recent.append(episode_return)
        recent_lengths.append(length)

    previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)  # restored when train() returns
    try:
        while global_step < args.total_timesteps:
            t0 = time.time()
            ended_before = len(recent)
            try:
                batch = rollout(envs, policy, carry, args.num_steps, device, on_episode_end)
                global_step += batch["rewards"].numel()
                stats = update(policy, value_net, optimizer, batch, args)
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
            ended = slice(ended_before, len(recent))  # the episodes that ended during this rollout (maybe none)
            update_idx += 1
            row = {
                "global_step": global_step,
                "wall_time": round(time.time() - start, 3),
                "sps": round(batch["rewards"].numel() / (time.time() - t0)),
                "episodic_return": float(np.mean(recent[ended])) if recent[ended] else float("nan"),
                "episode_length": float(np.mean(recent_lengths[ended])) if recent[ended] else float("nan"),
                **stats,
            }
            metrics.writerow([row[c] for c in columns])
            metrics_file.flush()
            if update_idx % args.log_interval == 0 or global_step >= args.total_timesteps:
                save_checkpoint(model_path, policy, value_net, args, spaces, global_step)
                saved = True
                print(
                    f"step {global_step:>8} | return(last 20) {np.mean(recent[-20:] or [np.nan]):8.2f} | "
                    f"sps {row['sps']:>6} | pi_loss {stats['policy_loss']:9.3f} | v_loss {stats['value_loss']:8.3f} | "
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
        envs.close()

    summary = {
        "global_step": global_step,
        "episodes": len(recent),
        "mean_return_last_20": float(np.mean(recent[-20:] or [np.nan])),
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
        prog="actor_critic.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        print(f"actor_critic.py: error: {e}", file=sys.stderr)
        return 2
    except EnvironmentNotFinite as e:  # in --eval (training reports its own, exits 1 and keeps its checkpoint)
        what, steps = e.args
        cause = f"the environment returned a non-finite {what} at evaluation step {steps}"
        print(f"actor_critic.py: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # the checkpoint and metrics are saved already
        return 143 if isinstance(e, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
