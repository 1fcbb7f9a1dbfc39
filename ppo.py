"""Proximal policy optimisation (PPO-clip), with GAE(lambda) and time limits told apart from terminations.

An actor-critic takes one gradient step per rollout and throws it away: log pi(a|s) * A has the policy gradient
only at the policy that collected the data. PPO reuses each rollout for K epochs of minibatch steps, weighting each
sample by the ratio pi_theta / pi_old of the policy now to the one that acted (importance sampling), and clipping
away any gain from moving a ratio past 1 +- eps in the direction its advantage favours.

Objective and gradient, with the names used in the code (T = --num-steps steps of N = --num-envs envs):
    J(theta)    = E_tau[ sum_t gamma^t r_t ]
    delta_t     = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)         TD error; s'_t the true next state
    A_t         = delta_t + gamma*lambda * (1 - done_t) * A_{t+1}             gae(), with the critic before the update
    G^lam_t     = A_t + V(s_t)                                                the lambda-return: the critic's target
    ratio_t     = pi_theta(a_t|s_t) / pi_old(a_t|s_t) = exp(log_probs - old_log_probs)
    L^CLIP      = mean_t min( ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t )   the paper's objective, maximised
    policy_loss = -L^CLIP                                                          what we minimise; eps = clip_coef
    value_loss  = 1/2 mean_t (V_phi(s_t) - G^lam_t)^2, or with --clip-vloss
                  1/2 mean_t max( (V_phi - G^lam)^2, (V_old + clip(V_phi - V_old, -eps, eps) - G^lam)^2 )
    L           = policy_loss + vf_coef * value_loss - ent_coef * mean_t H[pi(.|s_t)]   one minibatch's loss
    grad policy_loss at theta = theta_old  =  -mean_t grad log pi(a_t|s_t) A_t        the actor-critic gradient
A_t is normalised per minibatch (normalize(); --no-norm-adv: off). min(...) is pessimistic: where a ratio moved the
wrong way (A_t > 0 with ratio_t < 1 - eps, or A_t < 0 with ratio_t > 1 + eps) it keeps the unclipped, worse term
and its gradient, which pulls the policy back. The clip does not bound how far the policy moves; the diagnostics
say how far: approx_kl(), the k3 estimator of KL(pi_old || pi_theta), and clip_fraction(), the share of samples
with |ratio_t - 1| > eps, as CleanRL and Stable-Baselines3 count it (the GRPO scripts' clip_fraction counts the
tokens whose gradient the clip zeroes). --target-kl ends the epochs once a minibatch's KL passes it.
Normalisation (Normalizer): --norm-obs centres observations and divides them by their running std; --norm-reward
divides rewards, with no mean subtracted, by one running std pooled over all envs of the discounted returns
R <- gamma R + r (each env keeps its own R). The statistics start as Stable-Baselines3's RunningMeanStd (mean 0,
variance 1, count 1e-4) and travel in the checkpoint.
What changed since actor_critic.py: K epochs of shuffled minibatches per rollout instead of one step; the clipped
ratio surrogate instead of log pi * A (at theta = theta_old the two agree in gradient, not in value: the surrogate
is then mean_t A_t), with the acting policy's log-probabilities stored in the rollout; advantage normalisation; a
learning rate that decays linearly to 0 (--no-anneal-lr keeps it); optional value clipping and normalisation; KL
diagnostics.
What changed since trpo.py: no hard KL constraint, natural gradient or line search, but a clip that makes moving
further worthless to the objective, and first-order Adam steps: a stand-in for the trust region, not one.
References: Schulman et al. 2017 (PPO), 2016 (GAE), 2015 (TRPO); Engstrom et al. 2020; Andrychowicz et al. 2021;
Huang et al. 2022 ("The 37 implementation details of PPO"); Pardo et al. 2018 (time limits).
Run:  python ppo.py --help
"""

from __future__ import annotations

import argparse
import importlib
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
import torch.distributed as dist
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
    total_timesteps: int = arg(100_000, "training budget in environment steps (all envs together)", at_least=1)
    learning_rate: float = arg(2.5e-3, "Adam step size of the actor and the critic", above=0)
    anneal_lr: bool = arg(True, "decay the learning rate linearly to 0 over the budget (--no-anneal-lr: constant)")
    num_envs: int = arg(4, "N: environments stepped together (a Gymnasium SyncVectorEnv)", at_least=1)
    num_steps: int = arg(64, "T: steps of each env per rollout", at_least=1)
    gamma: float = arg(0.99, "discount factor", at_least=0, at_most=1)
    gae_lambda: float = arg(0.95, "GAE lambda: 0 one-step TD error, 1 Monte Carlo", at_least=0, at_most=1)
    update_epochs: int = arg(10, "K: passes over each rollout", at_least=1)
    num_minibatches: int = arg(4, "minibatches per epoch; must divide N*T", at_least=1)
    norm_adv: bool = arg(True, "normalise the advantages of each minibatch to mean 0, std 1")
    clip_coef: float = arg(0.2, "eps: the ratio's clip range [1 - eps, 1 + eps] (and the value clip's)", above=0)
    clip_vloss: bool = arg(False, "value loss: the larger of the squared errors of V and of V_old + clip(V - V_old)")
    ent_coef: float = arg(0.0, "weight of the entropy bonus in the loss", at_least=0)
    vf_coef: float = arg(0.5, "weight of the critic's loss in the joint loss", above=0)
    max_grad_norm: float = arg(0.5, "clip the joint gradient's global norm (0 = off)", at_least=0)
    target_kl: float = arg(0.0, "stop the epochs once a minibatch's approximate KL passes this (0 = off)", at_least=0)
    norm_obs: bool = arg(False, "normalise observations by their running mean and std (saved with the model)")
    norm_reward: bool = arg(False, "divide rewards by one running std of all envs' discounted returns (no mean taken)")
    network: str = arg("separate", "actor and critic: separate MLPs, or shared hidden layers with two heads",
                       choices=("separate", "shared"))  # fmt: skip
    hidden_size: int = arg(64, "width of the two hidden layers", at_least=1)
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one", at_least=1)
    device: str = arg("auto", "auto picks CUDA when available", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv, episodes.csv and model.pt go (default: a new dir in runs/)")
    overwrite: bool = arg(False, "replace the run that --run-dir already holds")
    log_interval: int = arg(10, "print a progress line and save the checkpoint every this many updates", at_least=1)
    eval: str = arg("", "path of a model.pt: evaluate it greedily and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval", at_least=1)

    def problems(self) -> list[str]:
        """Constraints that no single range expresses: the envs split over torchrun's processes, the minibatches
        split each process's batch, and normalize() needs at least two advantages in a minibatch."""
        world, n = share()[1], self.num_minibatches
        batch = self.num_envs // world * self.num_steps  # each process's batch
        if self.num_envs % world:
            return [f"--num-envs {self.num_envs} must split evenly over {world} processes"]
        if batch % n:
            return [f"--num-minibatches must divide --num-envs x --num-steps = {batch} steps per process (got {n})"]
        if self.norm_adv and batch * world < 2 * n:
            return [f"--num-minibatches {n} makes minibatches of one step; --norm-adv needs 2 (or --no-norm-adv)"]
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

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor, out=None) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, obs_dim], [B] or [B, D] -> log pi(a|s) [B], entropy [B]; out: self.net(obs), if already at hand.
        (torch.distributions computes the same, at several times the cost for networks this small.)"""
        out = self.net(obs) if out is None else out
        if self.discrete:
            log_p = out.log_softmax(-1)
            return log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)
        z = (action - out) * torch.exp(-self.log_std)
        log_prob = (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob, (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum(-1).expand(len(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a ~ pi(.|s), or take its mode when greedy; with log pi(a|s), which the ratio will divide by.
        [B, obs_dim] -> action [B] or [B, D], log-probability [B]."""
        out = self.net(obs)
        if not torch.isfinite(out).all():
            raise FloatingPointError("non-finite policy output")
        if self.discrete:
            action = out.argmax(-1) if greedy else torch.multinomial(out.softmax(-1), 1).squeeze(-1)
        else:
            action = out if greedy else out + torch.exp(self.log_std) * torch.randn_like(out)
        return action, self.log_prob_entropy(obs, action, out)[0]  # of the unclipped sample of a Box


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


# ---- The estimator: pure functions on tensors -----------------------------------------------------------------------
def gae(rewards, values, next_values, terminated, truncated, gamma: float, lam: float) -> torch.Tensor:
    """Generalized advantage estimates A_t = sum_{l>=0} (gamma*lam)^l delta_{t+l}, each sum stopping at
    its episode's last step or at the rollout's last step, whichever comes first.

    rewards r_t, values V(s_t), next_values V(s'_t): float tensors [T, N] (time, env); next_values of the true
    next state (at an episode's last step: its final observation, not the reset one). terminated, truncated:
    [T, N], bool or 0/1, tensors or numpy arrays as Gymnasium returns them: true at a step that ended its
    episode by a terminal state / by a time limit. Returns A: [T, N], on the device of rewards.
    """
    terminated = torch.as_tensor(terminated, dtype=rewards.dtype, device=rewards.device)
    truncated = torch.as_tensor(truncated, dtype=rewards.dtype, device=rewards.device)
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values  # no future after a terminal state
    not_done = 1.0 - torch.maximum(terminated, truncated)  # either way the next row is a new episode
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages


def normalize(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean A) / (std A + eps) over a minibatch [B] -> [B] (std unbiased; under torchrun, mean and std of the
    union of every process's B advantages): the step size no longer depends on the scale of the rewards, and
    subtracting the mean is a baseline shared by the minibatch. Fewer than 2 advantages in all: a ValueError (the
    unbiased std of one number is undefined)."""
    mean, n = advantages.mean(), len(advantages)
    square = (advantages - mean).pow(2).mean()
    if dist.is_initialized():  # one call for the processes' (m_r, s_r); the union's square is mean_r s_r + (m_r - m)^2
        stats = torch.stack([mean, square])
        parts = [torch.empty_like(stats) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, stats)
        means, squares = torch.stack(parts).unbind(1)
        mean, square, n = means.mean(), (squares + (means - means.mean()).pow(2)).mean(), n * dist.get_world_size()
    if n < 2:
        raise ValueError(f"normalize() needs 2 advantages or more for an unbiased std (got {n})")
    return (advantages - mean) / (torch.sqrt(square * n / (n - 1)) + eps)


def policy_loss(log_probs, old_log_probs, advantages, clip_coef: float) -> torch.Tensor:
    """-L^CLIP = -mean_t min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t), ratio_t = exp(log_probs -
    old_log_probs), to minimise. log_probs [B] with grad; old_log_probs (of the policy that acted) and advantages
    [B], both detached here. At log_probs = old_log_probs its gradient is -mean_t grad log pi(a_t|s_t) A_t."""
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantages = advantages.detach()
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    return -torch.min(ratio * advantages, clipped * advantages).mean()


def value_loss(values, returns, old_values=None, clip_coef: float = 0.2) -> torch.Tensor:
    """1/2 mean_t (V(s_t) - G_t)^2, the target G_t held fixed; with old_values (the critic's outputs before this
    update) 1/2 mean_t max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2). All [B] -> scalar."""
    returns = returns.detach()
    loss = (values - returns).pow(2)
    if old_values is not None:
        clipped = old_values.detach() + torch.clamp(values - old_values.detach(), -clip_coef, clip_coef)
        loss = torch.max(loss, (clipped - returns).pow(2))
    return 0.5 * loss.mean()


def approx_kl(log_probs: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
    """k3 = mean_t (ratio_t - 1) - log ratio_t, a_t ~ pi_old: unbiased for KL(pi_old || pi_theta) (E[ratio] = 1)
    and, unlike -log ratio, never negative (x - 1 >= log x). [B], [B] -> scalar."""
    log_ratio = log_probs - old_log_probs
    return (torch.exp(log_ratio) - 1.0 - log_ratio).mean()


def clip_fraction(log_probs: torch.Tensor, old_log_probs: torch.Tensor, clip_coef: float) -> torch.Tensor:
    """The share of samples with |ratio_t - 1| > eps, whether or not the clip zeroes their gradient (CleanRL's
    and Stable-Baselines3's count, not the GRPO scripts'). [B], [B] -> scalar."""
    return ((torch.exp(log_probs - old_log_probs) - 1.0).abs() > clip_coef).float().mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G]: 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var = returns.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (returns - values).var(unbiased=False) / var)


def all_mean(tensors: list[torch.Tensor]) -> None:
    """Average each tensor in place over torchrun's processes, whose batches together are the one batch of one process
    (in one all_reduce: the tensors travel as one flat vector); without torchrun, leave them as they are."""
    if dist.is_initialized():
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
        dist.all_reduce(flat)
        for tensor, part in zip(tensors, flat.split([tensor.numel() for tensor in tensors]), strict=True):
            tensor.copy_(part.view_as(tensor) / dist.get_world_size())


def gather(x: np.ndarray) -> np.ndarray:
    """Every process's x [B, ...], concatenated in rank order (the order of the N envs) under torchrun; else x."""
    if not dist.is_initialized():
        return x
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x)
    return np.concatenate(parts)


def update_mean_var(mean, var, count: float, batch):
    """Merge a batch [B, ...] into running statistics (mean [...], var [...], count) of everything seen so far
    (Chan et al. 1979: the pooled mean and population variance, exactly). numpy arrays, or tensors on any one
    device; count 0 starts from nothing. Returns (mean, var, count)."""
    batch_count, batch_mean = batch.shape[0], batch.mean(0)
    delta, total = batch_mean - mean, count + batch_count
    m2 = var * count + ((batch - batch_mean) ** 2).sum(0) + delta**2 * count * batch_count / total
    return mean + delta * batch_count / total, m2 / total, total


class Normalizer:
    """--norm-obs: obs -> clip((obs - mean) / sqrt(var + 1e-8), -10, 10), the statistics of every observation seen
    in training; --norm-reward: r -> clip(r / sqrt(var + 1e-8), -10, 10), those of every env's running discounted
    return (R <- gamma R + r, 0 at an episode's start). Both start at mean 0, variance 1, count 1e-4, so a first step
    is not divided by a variance of 0. --eval keeps them fixed. A flag off: the identity. Host-side numpy. Under
    torchrun every process merges the batches of all, so that the statistics are those of all N envs."""

    def __init__(self, obs_shape, num_envs: int, gamma: float, norm_obs: bool, norm_reward: bool):
        self.norm_obs, self.norm_reward, self.gamma = norm_obs, norm_reward, gamma
        self.obs_mean, self.obs_var, self.obs_count = np.zeros(obs_shape), np.ones(obs_shape), 1e-4
        self.return_mean, self.return_var, self.return_count = np.zeros(()), np.ones(()), 1e-4
        self.returns = np.zeros(num_envs)

    def obs(self, raw: np.ndarray, update: bool = True) -> np.ndarray:
        """[B, obs_dim] -> the same, normalised; update=True first merges raw into the statistics."""
        if not self.norm_obs:
            return raw
        if update:
            stats = update_mean_var(self.obs_mean, self.obs_var, self.obs_count, gather(raw))
            self.obs_mean, self.obs_var, self.obs_count = stats
        return np.clip((raw - self.obs_mean) / np.sqrt(self.obs_var + 1e-8), -10.0, 10.0).astype(raw.dtype)

    def reward(self, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        """[N] rewards of one step of the N envs, and which of them ended an episode -> [N], scaled."""
        if not self.norm_reward:
            return rewards
        self.returns = self.gamma * self.returns + rewards
        stats = update_mean_var(self.return_mean, self.return_var, self.return_count, gather(self.returns))
        self.return_mean, self.return_var, self.return_count = stats
        self.returns[done] = 0.0
        return np.clip(rewards / np.sqrt(self.return_var + 1e-8), -10.0, 10.0)

    def state_dict(self) -> dict:
        names = ("obs_mean", "obs_var", "obs_count", "return_mean", "return_var", "return_count")
        return {k: torch.as_tensor(getattr(self, k), dtype=torch.float64) for k in names}

    def load_state_dict(self, state: dict) -> None:
        for k in self.state_dict():
            setattr(self, k, state[k].numpy() if state[k].dim() else float(state[k]))


# ---- Rollout: T steps of N environments, continuing where the last rollout stopped ----------------------------------
def make_envs(env_id: str, num_envs: int) -> gym.vector.SyncVectorEnv:
    """N copies of make_env(env_id), stepped in this process. SAME_STEP autoreset: when an episode ends, step()
    returns that last step's reward and flags, its final observation in infos["final_obs"], and the next episode's
    reset observation as the observation, so every row of the batch is a real transition (s_t, a_t, r_t, s'_t).
    (The default, NEXT_STEP, would add a fake transition per episode, to be masked out of every loss.)"""
    return gym.vector.SyncVectorEnv(
        [lambda: make_env(env_id) for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )


def env_action(actions: np.ndarray, space: gym.Space) -> np.ndarray:
    """The policy's actions as the env takes them: Discrete(n, start) gets start + index, a Box the clipped sample."""
    if isinstance(space, gym.spaces.Discrete):
        return actions + int(space.start)
    return np.clip(actions, space.low, space.high)


def rollout(envs, policy: Policy, carry: dict, num_steps: int, device, on_episode_end, normalizer: Normalizer) -> dict:
    """Step every env num_steps times with actions from the policy, continuing from carry (obs [N, obs_dim],
    normalised, and the episode_return, episode_length [N] of the episodes in progress, all updated in place).

    Returns the batch, each [T, N, ...]: obs s_t, actions a_t (a Box action unclipped), log_probs log pi_old(a_t|s_t),
    rewards r_t (through normalizer.reward), terminated, truncated (1.0 at the step that ended an episode), next_obs
    s'_t (the true next state: at an episode's last step its final observation). Calls on_episode_end(raw
    episode_return, length, steps_so_far) as each episode ends, steps_so_far counting the steps of all envs in this
    rollout. A NaN or infinite observation or reward raises EnvironmentNotFinite.
    """
    keys = ("obs", "actions", "log_probs", "rewards", "terminated", "truncated", "next_obs")
    steps = {k: [] for k in keys}
    check_finite(carry["obs"], 0.0, 0)  # from reset() before the first rollout (no reward), else checked already
    for t in range(num_steps):
        obs = carry["obs"]
        actions, log_probs = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device))
        actions, log_probs = actions.cpu().numpy(), log_probs.cpu().numpy()  # of the sample, before any clip
        next_obs, rewards, terminated, truncated, infos = envs.step(env_action(actions, envs.single_action_space))
        done = terminated | truncated
        true_next_obs = next_obs.copy()  # next_obs of an ended episode is already the next one's reset obs
        for i in np.flatnonzero(done):
            true_next_obs[i] = infos["final_obs"][i]
        check_finite((next_obs, true_next_obs), rewards, (t + 1) * envs.num_envs)
        next_obs, true_next_obs = normalizer.obs(next_obs), normalizer.obs(true_next_obs, update=False)
        row = (obs, actions, log_probs, normalizer.reward(rewards, done), terminated, truncated, true_next_obs)
        for k, v in zip(keys, row, strict=True):
            steps[k].append(v)
        carry["episode_return"] += rewards
        carry["episode_length"] += 1
        for i in np.flatnonzero(done):
            on_episode_end(float(carry["episode_return"][i]), int(carry["episode_length"][i]), (t + 1) * envs.num_envs)
        carry["episode_return"][done], carry["episode_length"][done] = 0.0, 0
        carry["obs"] = next_obs
    batch = {k: torch.as_tensor(np.stack(v), device=device) for k, v in steps.items()}
    for k in ("obs", "log_probs", "rewards", "terminated", "truncated", "next_obs"):
        batch[k] = batch[k].float()
    return batch


# ---- Update ---------------------------------------------------------------------------------------------------------
def advantages_and_targets(value_net: ValueNet, batch: dict, gamma: float, lam: float):
    """(A [T, N], lambda-returns G^lam = A + V [T, N], V(s_t) [T, N]) with the critic as it is before this
    update: the values it gives are constants of the losses."""
    with torch.no_grad():
        values, next_values = value_net(batch["obs"]), value_net(batch["next_obs"])
    advantages = gae(batch["rewards"], values, next_values, batch["terminated"], batch["truncated"], gamma, lam)
    return advantages, advantages + values, values


def minibatches(batch_size: int, num_minibatches: int, generator: torch.Generator | None = None) -> list:
    """One epoch: a random permutation of range(batch_size) cut into num_minibatches index tensors."""
    return torch.randperm(batch_size, generator=generator).chunk(num_minibatches)


def update(policy, value_net, optimizer, batch, args: Args, generator: torch.Generator | None = None) -> dict:
    """--update-epochs passes over one rollout, each in --num-minibatches shuffled minibatches, one step of any
    torch.optim optimiser on the joint loss per minibatch; stops early once --target-kl is set and passed."""
    advantages, targets, values = advantages_and_targets(value_net, batch, args.gamma, args.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
    obs, actions, old_log_probs = flat(batch["obs"]), flat(batch["actions"]), flat(batch["log_probs"])
    advantages, targets, values = flat(advantages), flat(targets), flat(values)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
    sums = torch.zeros(len(names), dtype=torch.float64, device=obs.device)  # of the minibatches' means
    n_steps, stop = 0, False
    for _ in range(args.update_epochs):
        for idx in minibatches(len(obs), args.num_minibatches, generator):
            log_probs, entropy = policy.log_prob_entropy(obs[idx], actions[idx])
            kl = approx_kl(log_probs.detach(), old_log_probs[idx])  # of the policy as it is now, on this minibatch
            if args.target_kl > 0:
                all_mean([kl])  # under torchrun: on every process's minibatch, so that all stop together
            if args.target_kl > 0 and n_steps > 0 and kl > args.target_kl:
                stop = True  # the policy has moved far enough from the one that collected the data
                break
            mb_advantages = normalize(advantages[idx]) if args.norm_adv else advantages[idx]
            pi_loss = policy_loss(log_probs, old_log_probs[idx], mb_advantages, args.clip_coef)
            old_values = values[idx] if args.clip_vloss else None
            v_loss = value_loss(value_net(obs[idx]), targets[idx], old_values, args.clip_coef)
            loss = pi_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
            if not torch.isfinite(loss):
                raise FloatingPointError("non-finite loss")
            optimizer.zero_grad()
            loss.backward()
            all_mean([p.grad for p in params])  # under torchrun: the gradient of the union's mean loss
            if args.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            n_steps += 1
            clipped = clip_fraction(log_probs.detach(), old_log_probs[idx], args.clip_coef)
            sums += torch.stack([pi_loss.detach(), v_loss.detach(), entropy.detach().mean(), kl, clipped])
        if stop:
            break
    if not all(torch.isfinite(p).all() for p in params):
        raise FloatingPointError("non-finite parameters")
    all_mean([sums])  # under torchrun: the mean over every process's minibatches
    return {
        **dict(zip(names, (sums / n_steps).tolist(), strict=True)),
        "epochs": n_steps / args.num_minibatches,
        "explained_variance": explained_variance(values, targets),
    }


# ---- Training loop --------------------------------------------------------------------------------------------------
def train(args: Args) -> dict[str, float]:
    """The RL loop: set the learning rate, roll out T steps of N envs, K epochs of minibatch steps, log."""
    device = setup(args)  # seeds, torch threads, the device; under torchrun, the process group
    rank, world = share()  # this process's rank and the number of processes (0, 1 without torchrun)
    generator = torch.Generator().manual_seed(args.seed)  # the minibatch permutations, alike on every process
    envs = make_envs(args.env_id, args.num_envs // world)  # this process's share of the N envs
    obs_dim = envs.single_observation_space.shape[0]
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    value_net = ValueNet(obs_dim, args.hidden_size, shared_with=policy if args.network == "shared" else None).to(device)
    params = list({id(p): p for net in (policy, value_net) for p in net.parameters()}.values())  # shared ones once
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-5, fused=True)  # fused: one kernel per step
    normalizer = Normalizer((obs_dim,), envs.num_envs, args.gamma, args.norm_obs, args.norm_reward)
    num_updates = math.ceil(args.total_timesteps / (args.num_envs * args.num_steps))
    obs, _ = envs.reset(seed=args.seed + rank * envs.num_envs)  # env i of N gets seed + i, then its own generator
    carry = {"obs": normalizer.obs(obs), "episode_return": np.zeros(envs.num_envs),
             "episode_length": np.zeros(envs.num_envs, int)}  # fmt: skip
    nets = {"policy": policy, "value": value_net, "normalizer": normalizer}
    if world > 1:  # the networks are alike on every process; from here each samples its own actions
        torch.manual_seed(args.seed + rank)
    with Run(args, envs.envs[0], lambda: {name: net.state_dict() for name, net in nets.items()}) as run:
        for update_idx in range(num_updates):
            learning_rate = args.learning_rate * (1.0 - update_idx / num_updates if args.anneal_lr else 1.0)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            batch = rollout(envs, policy, carry, args.num_steps, device, run.on_episode_end, normalizer)
            stats = update(policy, value_net, optimizer, batch, args, generator)
            run.log(batch["rewards"].numel(), {"learning_rate": learning_rate, **stats})
    envs.close()
    return run.row


# ---- everything below is plumbing, not reinforcement learning -------------------------------------------------------
# Seeds and device, the env's spaces, the run's files and its end (Ctrl-C, SIGTERM, a non-finite number), --eval and the
# command line. Every error a user can cause is a ValueError: main() prints it as one line and exits with status 2.
ALGO = "ppo"


def setup(args: Args) -> torch.device:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if share()[1] > 1 and not dist.is_initialized():  # under torchrun: gloo on CPU, NCCL with a GPU for each process
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        # torch.optim imports torch._dynamo on first use; imported after the group exists, it keeps references to the
        # group, which destroy_process_group() then cannot free, and gloo's leftover threads can abort the exit.
        importlib.import_module("torch._dynamo")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        sys.stdout = sys.stdout if share()[0] == 0 else open(os.devnull, "w")  # rank 0 alone prints progress
    return device


def share() -> tuple[int, int]:
    """(rank, number of processes), as torchrun sets them; (0, 1) for a plain `python script.py`."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


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
        self.rank, self.world = share()  # under torchrun, rank 0 alone writes; every process steps as many envs
        devnull = [open(os.devnull, "w")] * 2
        self.metrics, self.episodes = open_run_dir(self.dir, args.overwrite) if self.rank == 0 else devnull
        print("global_step,wall_time,return,length", file=self.episodes, flush=True)
        print(f"{ALGO} on {args.env_id} | run dir {self.dir}")
        self.args, self.checkpoint, self.spaces = args, checkpoint, [str(env.observation_space), str(env.action_space)]
        self.global_step, self.updates, self.logged, self.returns, self.lengths, self.saved = 0, 0, 0, [], [], False
        self.start = self.last = time.time()

    def __enter__(self) -> Run:
        self.sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM: stop as Ctrl-C does
        return self

    def on_episode_end(self, episode_return: float, length: int, steps_so_far: int) -> None:
        step, now = self.global_step + steps_so_far * self.world, round(time.time() - self.start, 3)
        print(step, now, episode_return, length, sep=",", file=self.episodes, flush=True)
        self.returns.append(episode_return)
        self.lengths.append(length)

    def log(self, steps: int, stats: dict[str, float]) -> None:
        steps *= self.world  # this process's steps, and as many of every other process's
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
        if self.rank > 0:
            return
        state = {"algo": ALGO, "args": asdict(self.args), "spaces": self.spaces, "global_step": self.global_step}
        torch.save({**state, **self.checkpoint()}, os.path.join(self.dir, f"model.pt.{os.getpid()}"))
        os.replace(os.path.join(self.dir, f"model.pt.{os.getpid()}"), os.path.join(self.dir, "model.pt"))
        self.saved = True

    def __exit__(self, kind, error, traceback) -> None:
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C or SIGTERM waits for this save
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            self.save()
            if self.rank == 0:
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
        normalizer = Normalizer(env.observation_space.shape, 1, trained.gamma, trained.norm_obs, trained.norm_reward)
        normalizer.load_state_dict(state["normalizer"])
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
            obs = normalizer.obs(obs[None], update=False)[0]
            action, _ = policy.act(torch.as_tensor(obs[None], dtype=torch.float32, device=device), greedy=True)
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
    finally:
        if dist.is_initialized():  # torchrun's processes leave the group before they exit (else gloo can abort)
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
