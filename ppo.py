"""Proximal policy optimisation (PPO-clip), with GAE(lambda) and time limits told apart from terminations.

The idea. An actor-critic takes one gradient step per rollout and throws the rollout away: the gradient
of log pi(a|s) * A is only the policy gradient at the policy that collected the data. PPO reuses each
rollout for several epochs of minibatch steps. After the first step the policy pi_theta is no longer the
one that acted, pi_old, so the surrogate weights each step by the probability ratio r_t = pi_theta / pi_old
(importance sampling; at theta = theta_old it is 1 and its gradient is the policy gradient again). Left
alone, maximising r_t * A_t would push the ratio as far as the data allows, far outside the region where
the old rollout says anything about the new policy. The clip removes that incentive: once r_t has moved
past 1 +- eps in the direction its advantage favours, the term is constant and its gradient zero.

Objective and gradient, with the names used in the code (T = --num-steps steps of N = --num-envs envs):
    J(theta)   = E_tau[ sum_t gamma^t r_t ]
    delta_t    = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)         TD error; s'_t the true next state
    A_t        = delta_t + gamma*lambda * (1 - done_t) * A_{t+1}             gae(), with the critic before the update
    G^lam_t    = A_t + V(s_t)                                                the lambda-return: the critic's target
    ratio_t    = pi_theta(a_t|s_t) / pi_old(a_t|s_t) = exp(log_probs - old_log_probs)
    L^CLIP     = mean_t min( ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t )    the paper's objective (maximised)
    policy_loss = -L^CLIP                                       policy_loss(), the loss we minimise; eps = clip_coef
    L^V        = 1/2 mean_t (V_phi(s_t) - G^lam_t)^2, or with --clip-vloss          value_loss()
                 1/2 mean_t max( (V_phi - G^lam)^2, (V_old + clip(V_phi - V_old, -eps, eps) - G^lam)^2 )
    L          = policy_loss + vf_coef * L^V - ent_coef * mean_t H[pi(.|s_t)]     one minibatch's loss
    grad policy_loss at theta = theta_old  =  -mean_t grad log pi(a_t|s_t) A_t      the actor-critic gradient
Per minibatch, A_t is normalised to mean 0 and std 1 (normalize(); --no-norm-adv turns it off).
Why min(...) is a pessimistic bound: the clipped term and the unclipped one agree inside [1 - eps, 1 + eps];
outside, min picks the smaller, so L^CLIP never credits the new policy with more improvement than the
unclipped estimate does, and where the unclipped estimate is *worse* (the ratio moved the wrong way,
A_t > 0 with ratio_t < 1 - eps, or A_t < 0 with ratio_t > 1 + eps) it keeps that worse value and its
gradient, which pulls the policy back. So the surrogate is a lower bound of the importance-sampled one.
What the clip does not do: bound how far the policy moves. Steps on the other samples, and the
network's generalisation, still move every ratio; the diagnostics say how far: approx_kl(), the k3
estimator mean_t (ratio_t - 1) - log ratio_t of KL(pi_old || pi_theta), unbiased and never negative,
and clip_fraction(), the share of samples with |ratio_t - 1| > eps, as CleanRL and Stable-Baselines3
count it (it includes samples whose gradient the clip keeps, such as A_t > 0 with ratio_t < 1 - eps; the
GRPO scripts' clip_fraction counts something else, the tokens whose gradient the clip zeroes).
--target-kl stops the epochs early once the approximate KL on a minibatch passes the target: a guard for
when many epochs, a large step size or a small batch let the policy run away from the data it is being
fitted to.
What changed since actor_critic.py: a rollout is used for --update-epochs epochs of --num-minibatches
shuffled minibatches instead of one step; the policy loss is the clipped ratio surrogate instead of
log pi * A (the two agree, value and gradient, at theta = theta_old); the log-probabilities of the acting
policy are stored in the rollout; per-minibatch advantage normalisation; a learning rate that decays
linearly to 0 over the budget (--no-anneal-lr keeps it constant); optional value clipping, running
observation normalisation and reward scaling (rewards divided, not centred, by a running std of the
discounted return; their statistics travel in the checkpoint); the KL and clip-fraction diagnostics.
Time limits bootstrap from V of the final observation exactly as in actor_critic.py.
What changed since trpo.py: TRPO maximises the unclipped surrogate mean_t ratio_t A_t subject to a hard
constraint KL(pi_old || pi_theta) <= delta, which takes a natural-gradient direction (conjugate
gradient on Fisher-vector products) and a line search. PPO drops the constraint and the second-order
machinery: no penalty term either, just a clip that makes moving further worthless to the objective,
and plain first-order Adam steps on minibatches. It is a stand-in for the trust region, not one.
References: Schulman et al. 2017 (PPO); Schulman et al. 2016 (GAE); Schulman et al. 2015 (TRPO);
Engstrom et al. 2020 and Andrychowicz et al. 2021 (which implementation details matter); Huang et al.
2022 ("The 37 implementation details of PPO"); Pardo et al. 2018 (time limits).
Run:  python ppo.py --help
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
    total_timesteps: int = arg(100_000, "training budget in environment steps (all envs together)")
    learning_rate: float = arg(2.5e-3, "Adam step size of the actor and the critic")
    # on by default: see the README's ablations
    anneal_lr: bool = arg(True, "decay the learning rate linearly to 0 over the budget (--no-anneal-lr: constant)")
    num_envs: int = arg(4, "N: environments stepped together (a Gymnasium SyncVectorEnv)")
    num_steps: int = arg(64, "T: steps of each env per rollout")
    gamma: float = arg(0.99, "discount factor in [0, 1]")
    gae_lambda: float = arg(0.95, "GAE's lambda in [0, 1]: 0 one-step TD error, 1 Monte Carlo with a bootstrap")
    update_epochs: int = arg(10, "K: passes over each rollout")
    num_minibatches: int = arg(4, "minibatches per epoch; must divide N*T")
    norm_adv: bool = arg(True, "normalise the advantages of each minibatch to mean 0, std 1")
    clip_coef: float = arg(0.2, "eps: the ratio's clip range [1 - eps, 1 + eps] (and the value clip's)")
    # off by default: see the README's ablations
    clip_vloss: bool = arg(False, "clip the critic's change per rollout to +-clip_coef around its old values")
    ent_coef: float = arg(0.0, "weight of the entropy bonus in the loss")
    vf_coef: float = arg(0.5, "weight of the critic's loss in the joint loss")
    max_grad_norm: float = arg(0.5, "clip the joint gradient's global norm (0 = off)")
    target_kl: float = arg(0.0, "stop the epochs once a minibatch's approximate KL passes this (0 = off)")
    norm_obs: bool = arg(False, "normalise observations by running mean and std (saved with the model)")
    norm_reward: bool = arg(False, "scale rewards by the running std of the discounted return")
    # separate by default, as in actor_critic.py (see the README)
    network: str = arg("separate", "actor and critic: separate MLPs, or shared hidden layers with two heads",
                       choices=("separate", "shared"))  # fmt: skip
    hidden_size: int = arg(64, "width of the two hidden layers")
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one")
    device: str = arg("auto", "auto | cpu | cuda (auto picks CUDA when available)", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv, episodes.csv and model.pt go (default runs/ppo__<env>__<seed>__<time>)")
    log_interval: int = arg(10, "print a progress line (and save the checkpoint) every this many updates")
    eval: str = arg("", "path of a model.pt: evaluate it and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval (greedy actions: argmax or the Gaussian mean)")


def validate(args: Args) -> None:
    """Raise ValueError with what is wrong and what is accepted."""
    batch_size = args.num_envs * args.num_steps
    checks = [
        (args.total_timesteps > 0, f"--total-timesteps must be > 0 (got {args.total_timesteps})"),
        (args.learning_rate > 0, f"--learning-rate must be > 0 (got {args.learning_rate})"),
        (args.num_envs >= 1, f"--num-envs must be >= 1 (got {args.num_envs})"),
        (args.num_steps >= 1, f"--num-steps must be >= 1 (got {args.num_steps})"),
        (0.0 <= args.gamma <= 1.0, f"--gamma must be in [0, 1] (got {args.gamma})"),
        (0.0 <= args.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1] (got {args.gae_lambda})"),
        (args.update_epochs >= 1, f"--update-epochs must be >= 1 (got {args.update_epochs})"),
        (args.num_minibatches >= 1, f"--num-minibatches must be >= 1 (got {args.num_minibatches})"),
        (
            batch_size % max(args.num_minibatches, 1) == 0,
            f"--num-minibatches must divide the batch of --num-envs x --num-steps = {batch_size} steps "
            f"(got {args.num_minibatches})",
        ),
        (
            not args.norm_adv or batch_size >= 2 * args.num_minibatches,
            f"--num-minibatches {args.num_minibatches} makes minibatches of one step from a batch of {batch_size}; "
            "--norm-adv needs at least 2 per minibatch (or use --no-norm-adv)",
        ),
        (args.clip_coef > 0, f"--clip-coef must be > 0 (got {args.clip_coef})"),
        (args.ent_coef >= 0, f"--ent-coef must be >= 0 (got {args.ent_coef})"),
        (args.vf_coef > 0, f"--vf-coef must be > 0 (got {args.vf_coef})"),
        (args.max_grad_norm >= 0, f"--max-grad-norm must be >= 0 (got {args.max_grad_norm})"),
        (args.target_kl >= 0, f"--target-kl must be >= 0 (got {args.target_kl})"),
        (args.hidden_size >= 1, f"--hidden-size must be >= 1 (got {args.hidden_size})"),
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
    log-std) for Box actions. Box actions are sampled unbounded and clipped only when sent to the env,
    so the stored log-probability is that of the action the ratio will be computed on."""

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
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a ~ pi(.|s), or take its mode when greedy; with log pi(a|s), the old log-probability
        of the ratio. [B, obs_dim] -> action [B] or [B, D], log-probability [B]."""
        out = self.net(obs)
        if not torch.isfinite(out).all():
            raise FloatingPointError("policy output")
        if self.discrete:
            logp = out.log_softmax(-1)
            action = out.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1).squeeze(-1)
            return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        action = out if greedy else out + torch.exp(self.log_std) * torch.randn_like(out)
        return action, gaussian_log_prob(out, self.log_std, action)  # the unclipped sample's density


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

    All [T, N] (time, env): rewards r_t; values V(s_t); next_values V(s'_t) of the true next state (at an
    episode's last step: its final observation, not the reset one); terminated / truncated true (or 1.0) at a
    step that ended its episode by a terminal state / by a time limit, bool or float, tensors or the numpy
    arrays Gymnasium returns. Returns A: [T, N], on rewards' device.
    """
    terminated, truncated = (
        torch.as_tensor(x, device=rewards.device).to(rewards.dtype) for x in (terminated, truncated)
    )
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values  # no future after a terminal state
    not_done = 1.0 - torch.maximum(terminated, truncated)  # either way the next row is a new episode
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages


def normalize(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(A - mean A) / (std A + eps) over a minibatch [B] -> [B]: the step size no longer depends on the
    scale of the rewards. Subtracting the mean is a baseline shift, shared by the whole minibatch."""
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def policy_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip_coef: float
) -> torch.Tensor:
    """-L^CLIP = -mean_t min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t), ratio_t = exp(log_probs -
    old_log_probs): the paper's clipped surrogate is an objective to maximise; this is its negation, minimised.

    log_probs: [B] log pi_theta(a_t|s_t), with grad; old_log_probs: [B] log pi_old(a_t|s_t) of the policy
    that acted; advantages: [B] (both detached here); clip_coef: eps > 0. At log_probs = old_log_probs the
    gradient is that of policy_loss in actor_critic.py, -mean_t grad log pi(a_t|s_t) A_t.
    """
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantages = advantages.detach()
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    return -torch.min(ratio * advantages, clipped * advantages).mean()


def value_loss(
    values: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor | None = None, clip_coef: float = 0.2
) -> torch.Tensor:
    """1/2 mean_t (V(s_t) - G_t)^2, the target G_t held fixed. With old_values (the critic's outputs before
    this update) the clipped form 1/2 mean_t max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2):
    the critic gains nothing by moving more than eps from V_old. All [B] -> scalar."""
    returns = returns.detach()
    loss = (values - returns).pow(2)
    if old_values is not None:
        old_values = old_values.detach()
        clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
        loss = torch.max(loss, (clipped - returns).pow(2))
    return 0.5 * loss.mean()


def approx_kl(log_probs: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
    """k3 = mean_t (ratio_t - 1) - log ratio_t, ratio_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t), a_t ~ pi_old.
    Unbiased for KL(pi_old || pi_theta) (E[ratio] = 1) and, unlike -log ratio, never negative
    (x - 1 >= log x). [B], [B] -> scalar."""
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


def update_mean_var(mean, var, count: float, batch):
    """Merge a batch [B, ...] into running statistics (mean [...], var [...], count) of everything seen
    so far (Chan et al. 1979: the pooled mean and population variance, exactly). numpy arrays, or tensors
    on any one device; count 0 starts from nothing. Returns (mean, var, count)."""
    batch_count = batch.shape[0]
    batch_mean = batch.mean(0)
    batch_var = ((batch - batch_mean) ** 2).mean(0)
    delta = batch_mean - mean
    total = count + batch_count
    m2 = var * count + batch_var * batch_count + delta**2 * count * batch_count / total
    return mean + delta * batch_count / total, m2 / total, total


class Normalizer:
    """--norm-obs: observations -> clip((obs - mean) / sqrt(var + 1e-8), -10, 10), with the running mean
    and variance of every observation seen in training. --norm-reward: r -> clip(r / sqrt(Var[R] + 1e-8),
    -10, 10), with R the running discounted return of each env (R <- gamma R + r, 0 at an episode's start):
    the rewards are divided, not centred, so they keep their sign but not their mean, and the critic's
    targets get a scale near 1. Both statistics start as Stable-Baselines3's RunningMeanStd does: mean 0,
    variance 1, count 1e-4 (a prior worth 1e-4 samples), so the first step is not divided by a variance of 0.
    Training updates the statistics; --eval loads them from the checkpoint and keeps them fixed, so the
    policy sees the inputs it was trained on. Either flag off: the identity. Host-side numpy: it sits
    between Gymnasium's numpy arrays and the tensors the policy gets."""

    def __init__(self, obs_shape, num_envs: int, gamma: float, norm_obs: bool, norm_reward: bool):
        self.norm_obs, self.norm_reward, self.gamma = norm_obs, norm_reward, gamma
        self.obs_mean, self.obs_var, self.obs_count = np.zeros(obs_shape), np.ones(obs_shape), 1e-4
        self.return_mean, self.return_var, self.return_count = np.zeros(()), np.ones(()), 1e-4
        self.returns = np.zeros(num_envs)

    def obs(self, raw: np.ndarray, update: bool = True) -> np.ndarray:
        """[B, *obs_shape] -> the same, normalised; update=True first merges raw into the statistics."""
        if not self.norm_obs:
            return raw
        if update:
            stats = update_mean_var(self.obs_mean, self.obs_var, self.obs_count, raw)
            self.obs_mean, self.obs_var, self.obs_count = stats
        return np.clip((raw - self.obs_mean) / np.sqrt(self.obs_var + 1e-8), -10.0, 10.0).astype(raw.dtype)

    def reward(self, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        """[N] rewards of one step of the N envs, and which of them ended an episode -> [N], scaled."""
        if not self.norm_reward:
            return rewards
        self.returns = self.gamma * self.returns + rewards
        stats = update_mean_var(self.return_mean, self.return_var, self.return_count, self.returns)
        self.return_mean, self.return_var, self.return_count = stats
        self.returns[done] = 0.0
        return np.clip(rewards / np.sqrt(self.return_var + 1e-8), -10.0, 10.0)

    def state_dict(self) -> dict:
        names = ("obs_mean", "obs_var", "obs_count", "return_mean", "return_var", "return_count")
        return {k: torch.as_tensor(getattr(self, k), dtype=torch.float64) for k in names}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v.numpy() if v.dim() else float(v))


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


def rollout(
    envs, policy: Policy, carry: dict, num_steps: int, device: torch.device, on_episode_end, normalizer: Normalizer
) -> dict:
    """Step every env num_steps times with actions sampled from the policy, continuing from carry["obs"].

    carry holds obs [N, obs_dim], the current (normalised) observations, and episode_return,
    episode_length [N] of the episodes in progress; all three are updated in place. Returns the batch,
    each [T, N, ...]: obs s_t, actions a_t (unclipped), log_probs log pi_old(a_t|s_t), rewards r_t
    (scaled by the normalizer), terminated, truncated (1.0 at the step that ended an episode), next_obs
    s'_t, the true next state: the next row's obs, except at an episode's last step, where it is the final
    observation of the ended episode. As each episode ends, on_episode_end(episode_return, length,
    steps_so_far) is called with its raw return, steps_so_far counting the steps of all envs so far.
    Every observation and reward is checked as it arrives: a NaN or an infinity raises EnvironmentNotFinite.
    """
    keys = ("obs", "actions", "log_probs", "rewards", "terminated", "truncated", "next_obs")
    steps = {k: [] for k in keys}
    space = envs.single_action_space
    check_finite(carry["obs"], 0.0, 0)  # from reset() before the first rollout (no reward), else checked already
    for t in range(num_steps):
        obs = carry["obs"]
        actions, log_probs = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device))
        actions, log_probs = actions.cpu().numpy(), log_probs.cpu().numpy()
        env_actions = actions if policy.discrete else np.clip(actions, space.low, space.high)
        next_obs, rewards, terminated, truncated, infos = envs.step(env_actions)
        done = terminated | truncated
        true_next_obs = next_obs.copy()  # next_obs of an ended episode is already the next one's reset obs
        for i in np.flatnonzero(done):
            true_next_obs[i] = infos["final_obs"][i]
        check_finite((next_obs, true_next_obs), rewards, (t + 1) * envs.num_envs)
        next_obs = normalizer.obs(next_obs)
        true_next_obs = normalizer.obs(true_next_obs, update=False)
        scaled = normalizer.reward(rewards, done)
        row = (obs, actions, log_probs, scaled, terminated, truncated, true_next_obs)
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


# ----------------------------------------------------------------------------------------------
# Update
# ----------------------------------------------------------------------------------------------
def advantages_and_targets(value_net: ValueNet, batch: dict, gamma: float, lam: float):
    """(A [T, N], lambda-returns G^lam = A + V [T, N], V(s_t) [T, N]) with the critic as it is before this
    update: the values it gives are constants of the losses for all the epochs."""
    with torch.no_grad():
        values, next_values = value_net(batch["obs"]), value_net(batch["next_obs"])
    advantages = gae(batch["rewards"], values, next_values, batch["terminated"], batch["truncated"], gamma, lam)
    return advantages, advantages + values, values


def minibatches(batch_size: int, num_minibatches: int, generator: torch.Generator | None = None) -> list:
    """One epoch: a random permutation of range(batch_size) cut into num_minibatches index tensors."""
    return torch.randperm(batch_size, generator=generator).chunk(num_minibatches)


def update(policy, value_net, optimizer, batch, args: Args, generator: torch.Generator | None = None) -> dict:
    """--update-epochs passes over one rollout, each in --num-minibatches shuffled minibatches, one
    gradient step on the joint loss per minibatch; stops early when --target-kl is set and passed."""
    advantages, targets, values = advantages_and_targets(value_net, batch, args.gamma, args.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
    obs, actions, old_log_probs = flat(batch["obs"]), flat(batch["actions"]), flat(batch["log_probs"])
    advantages, targets, values = flat(advantages), flat(targets), flat(values)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sums = dict.fromkeys(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), 0.0)
    n_steps, stop = 0, False
    for _ in range(args.update_epochs):
        for idx in minibatches(len(obs), args.num_minibatches, generator):
            log_probs, entropy = policy.log_prob_entropy(obs[idx], actions[idx])
            kl = approx_kl(log_probs.detach(), old_log_probs[idx])  # of the policy as it is now, on this minibatch
            if args.target_kl > 0 and n_steps > 0 and kl > args.target_kl:
                stop = True  # the policy has moved far enough from the one that collected the data
                break
            mb_advantages = normalize(advantages[idx]) if args.norm_adv else advantages[idx]
            pi_loss = policy_loss(log_probs, old_log_probs[idx], mb_advantages, args.clip_coef)
            old_values = values[idx] if args.clip_vloss else None
            v_loss = value_loss(value_net(obs[idx]), targets[idx], old_values, args.clip_coef)
            loss = pi_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
            if not torch.isfinite(loss):
                raise FloatingPointError("loss")
            optimizer.zero_grad()
            loss.backward()
            if args.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            n_steps += 1
            clipped = clip_fraction(log_probs.detach(), old_log_probs[idx], args.clip_coef)
            for k, v in zip(sums, (pi_loss, v_loss, entropy.mean(), kl, clipped), strict=True):
                sums[k] += v.item()
        if stop:
            break
    if not all(torch.isfinite(p).all() for p in params):
        raise FloatingPointError("parameters")
    return {
        **{k: v / n_steps for k, v in sums.items()},
        "epochs": n_steps / args.num_minibatches,
        "explained_variance": explained_variance(values, targets),
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


def save_checkpoint(
    path: str, policy: Policy, value_net: ValueNet, normalizer: Normalizer, args: Args, spaces: dict, global_step: int
) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = {
        "algo": "ppo",
        "args": asdict(args),
        "spaces": spaces,
        "global_step": global_step,
        "policy": policy.state_dict(),
        "value": value_net.state_dict(),
        "normalizer": normalizer.state_dict(),
    }
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Raise ValueError when the file is missing, unreadable or not a ppo.py checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("algo") != "ppo":
        raise ValueError(f"{path} is not a ppo.py checkpoint")
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
    generator = torch.Generator().manual_seed(args.seed)  # the minibatch permutations
    torch.set_num_threads(args.torch_threads)
    device = resolve_device(args.device)
    envs = make_envs(args.env_id, args.num_envs)
    spaces = space_spec(envs.envs[0])
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    value_net = ValueNet(obs_dim, args.hidden_size, shared_with=policy if args.network == "shared" else None).to(device)
    params = list({id(p): p for net in (policy, value_net) for p in net.parameters()}.values())  # shared ones once
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-5)
    obs_shape = envs.single_observation_space.shape
    normalizer = Normalizer(obs_shape, args.num_envs, args.gamma, args.norm_obs, args.norm_reward)
    num_updates = math.ceil(args.total_timesteps / (args.num_envs * args.num_steps))

    run_dir = args.run_dir or f"runs/ppo__{args.env_id}__{args.seed}__{int(start)}"
    model_path = os.path.join(run_dir, "model.pt")
    columns = ["global_step", "wall_time", "sps", "episodic_return", "episode_length", "learning_rate",
               "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "epochs",
               "explained_variance"]  # fmt: skip
    try:  # a run directory that cannot be created or written is bad input, found before training starts
        os.makedirs(run_dir, exist_ok=True)
        metrics_file = open(os.path.join(run_dir, "metrics.csv"), "w", newline="")
        episodes_file = open(os.path.join(run_dir, "episodes.csv"), "w", newline="")
    except OSError as e:
        raise ValueError(f"--run-dir {run_dir} cannot be created or written: {e.strerror or e}") from None
    metrics, episodes = csv.writer(metrics_file), csv.writer(episodes_file)
    metrics.writerow(columns)
    episodes.writerow(["global_step", "wall_time", "return", "length"])
    print(f"ppo on {args.env_id} | device {device} | network {args.network} | run dir {run_dir}")

    global_step, update_idx, recent, recent_lengths, saved = 0, 0, [], [], False

    def on_episode_end(episode_return: float, length: int, steps_so_far: int) -> None:
        episodes.writerow([global_step + steps_so_far, f"{time.time() - start:.3f}", episode_return, length])
        recent.append(episode_return)
        recent_lengths.append(length)

    previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)  # restored when train() returns
    try:
        obs, _ = envs.reset(seed=args.seed)  # env i gets seed + i; later resets continue each env's own generator
        carry = {
            "obs": normalizer.obs(obs),
            "episode_return": np.zeros(args.num_envs),
            "episode_length": np.zeros(args.num_envs, int),
        }
        while global_step < args.total_timesteps:
            t0 = time.time()
            ended_before = len(recent)
            if args.anneal_lr:  # linearly from learning_rate at the first update to learning_rate / num_updates
                for group in optimizer.param_groups:
                    group["lr"] = args.learning_rate * (1.0 - update_idx / num_updates)
            try:
                batch = rollout(envs, policy, carry, args.num_steps, device, on_episode_end, normalizer)
                global_step += batch["rewards"].numel()
                stats = update(policy, value_net, optimizer, batch, args, generator)
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
                "learning_rate": optimizer.param_groups[0]["lr"],
                **stats,
            }
            metrics.writerow([row[c] for c in columns])
            metrics_file.flush()
            if update_idx % args.log_interval == 0 or global_step >= args.total_timesteps:
                save_checkpoint(model_path, policy, value_net, normalizer, args, spaces, global_step)
                saved = True
                print(
                    f"step {global_step:>8} | return(last 20) {np.mean(recent[-20:] or [np.nan]):8.2f} | "
                    f"sps {row['sps']:>6} | pi_loss {stats['policy_loss']:7.3f} | v_loss {stats['value_loss']:8.3f} | "
                    f"entropy {stats['entropy']:6.3f} | kl {stats['approx_kl']:.4f} | "
                    f"clipfrac {stats['clip_fraction']:.3f} | expl_var {stats['explained_variance']:6.3f}"
                )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as Terminated
        save_checkpoint(model_path, policy, value_net, normalizer, args, spaces, global_step)
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
def load_policy(path: str, device: torch.device) -> tuple[Policy, Normalizer, gym.Env]:
    """Rebuild a saved policy, its observation statistics (fixed from now on) and its environment."""
    state = load_checkpoint(path)
    args = state["args"]
    env = make_env(args["env_id"])
    if space_spec(env) != state["spaces"]:
        raise ValueError(f"{path} was trained on spaces {state['spaces']}, which do not match {env.spec.id} here")
    obs_dim = int(np.prod(env.observation_space.shape))
    policy = Policy(obs_dim, env.action_space, args["hidden_size"]).to(device)
    normalizer = Normalizer(env.observation_space.shape, 1, args["gamma"], args["norm_obs"], args["norm_reward"])
    try:
        policy.load_state_dict(state["policy"])
        normalizer.load_state_dict(state["normalizer"])
    except (RuntimeError, KeyError, AttributeError):
        raise ValueError(f"{path}: the weights do not fit the network its args describe") from None
    return policy, normalizer, env


def evaluate(path: str, episodes: int, seed: int, device_name: str = "auto") -> tuple[float, float]:
    """Run a saved policy greedily for `episodes` episodes on the env it was trained on; return (mean, std)."""
    device = resolve_device(device_name)
    policy, normalizer, env = load_policy(path, device)
    returns, steps = [], 0
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        check_finite(obs, 0.0, steps)
        done, total = False, 0.0
        while not done:
            obs = normalizer.obs(obs[None], update=False)
            action = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device), greedy=True)[0][0]
            action = action.cpu().numpy()
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
        prog="ppo.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(Args):
        name, meta = "--" + f.name.replace("_", "-"), f.metadata
        if isinstance(f.default, bool):  # --norm-adv / --no-norm-adv
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=f.default, help=meta["help"])
        else:
            kind = type(f.default)
            parser.add_argument(name, type=kind, default=f.default, choices=meta["choices"], help=meta["help"])
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
        print(f"ppo.py: error: {e}", file=sys.stderr)
        return 2
    except EnvironmentNotFinite as e:  # in --eval (training reports its own, exits 1 and keeps its checkpoint)
        what, steps = e.args
        cause = f"the environment returned a non-finite {what} at evaluation step {steps}"
        print(f"ppo.py: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # the checkpoint and metrics are saved already
        return 143 if isinstance(e, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
