"""Trust region policy optimization (TRPO): the natural gradient, in a KL trust region.

The idea. actor_critic.py steps along the plain gradient with a step size measured in parameters. But
what matters is how far the *policy* moves, and the same parameter step can barely change one policy
and wreck another (a logit step that does nothing to a saturated softmax flips a uniform one). TRPO
measures a step by how much it changes the action distributions, the mean KL divergence between the
old and the new policy on the batch's states, and takes the step that improves the surrogate most
while that divergence stays within a radius delta:
    maximise    L(theta)  = mean_t[ pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t ]         surrogate()
    subject to  KL(theta) = mean_t KL( pi_old(.|s_t) || pi_theta(.|s_t) ) <= delta       mean_kl(), kl_divergence()
L is the importance-sampled advantage of the new policy on the old policy's data; at theta_old its
gradient is the actor-critic's, g = grad L = mean_t[ grad log pi(a_t|s_t) * A_t ]. KL(theta) is 0 at
theta_old with zero gradient, and its Hessian there is the Fisher information matrix of the policy:
    F = mean_t E_{a ~ pi_old(.|s_t)}[ grad log pi(a|s_t) grad log pi(a|s_t)^T ]
With L linear and KL quadratic around theta_old (s = theta - theta_old), the step solves
    max_s g^T s  subject to  1/2 s^T F s <= delta:    x = F^-1 g,   s = sqrt(2 delta / (x^T F x)) * x
x is the natural gradient (Kakade 2001): the steepest-ascent direction when distance is measured by KL,
where g is steepest only under the Euclidean distance of the parameters. Its invariance to the
parametrisation holds to first order only: under a smooth invertible change theta = phi(eta) with
Jacobian J, g and F become J^T g and J^T F J, so the natural gradients agree, J x_eta = x_theta, and
the *infinitesimal* change of policy is the same; a finite step s is taken in the parameters, where
the two paths differ at O(|s|^2) by phi's curvature, and the damping (F + damping I is not transformed
by J) and the truncated conjugate gradient break even the first-order agreement. The step's length
comes from delta, the size of a change of *policy*; there is no learning rate for the policy at all.
The Fisher matrix is never formed. It is P x P for P policy parameters (4,610 for CartPole-v1's 64x64
MLP: 21 million entries, and a dense solve costs P^3). What we can afford is its product with a vector:
F v = grad_theta[ (grad_theta KL(theta)) . v ] at theta_old, the Hessian-vector product of the mean KL by
back-propagating twice (fisher_vector_product(), which adds damping * v: the batch's F is singular in
every direction the batch cannot see, and the damping keeps F + damping I well conditioned).
Conjugate gradient (conjugate_gradient()) solves F x = g from such products alone: its k-th iterate
minimises 1/2 x^T F x - g^T x over span{g, F g, ..., F^(k-1) g}, each search direction F-conjugate to the
previous ones; it is exact after P iterations in exact arithmetic, and --cg-iters 10 already gives the
directions that matter most (CG resolves F's largest eigenvalues first). x^T F x comes from one more
product. In the code every product is with F + damping I: CG solves (F + damping I) x = g and the scale
uses xFx = x^T (F + damping I) x, so the quadratic model of the full step's KL is a little below delta.
The line search is needed because both models are approximations: the surrogate is linear and the KL
quadratic only near theta_old, so the full step can overshoot the KL radius or even make L worse.
line_search() tries the fractions 1, c, c^2, ... (c = --backtrack-coef) of the full step and accepts the
first whose *measured* mean KL is <= delta and whose surrogate is better than L(theta_old); when none is,
it keeps the old parameters. metrics.csv records the accepted step's KL, its surrogate improvement, the
backtracks, and whether a step was accepted.
The critic. V_phi is its own network, fitted after the advantages were computed from it: --vf-epochs
epochs of minibatch Adam regression on the lambda-returns G^lam_t = A_t + V(s_t), loss 1/2 (V - G^lam)^2.
What changed since actor_critic.py: the policy step is a natural-gradient step of KL size delta found by
conjugate gradient and a line search, instead of an Adam step on -log pi * A (so no entropy bonus and no
gradient clipping); the critic is fitted separately by several epochs of minibatch regression instead
of one step on a joint loss (--learning-rate is now the critic's alone); the batch is larger (4 envs x
128 steps), since each update now does more work. Rollouts, GAE and time limits are as there.
References: Schulman et al. 2015 (TRPO; the practical algorithm of its appendix C); Kakade 2001 (natural
policy gradient); Amari 1998 (natural gradient); Hestenes & Stiefel 1952, Nocedal & Wright 2006 ch. 5
(conjugate gradient); Schulman et al. 2016 (GAE); Achiam 2018 (Spinning Up, TRPO).
Run:  python trpo.py --help
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
    learning_rate: float = arg(1e-3, "the critic's Adam step size, constant (the policy's step is set by --delta)")
    num_envs: int = arg(4, "N: environments stepped together (a Gymnasium SyncVectorEnv)")
    num_steps: int = arg(128, "T: steps of each env per update (the rollout's length)")
    gamma: float = arg(0.99, "discount factor in [0, 1]")
    gae_lambda: float = arg(0.95, "GAE's lambda in [0, 1]: 0 one-step TD error, 1 Monte Carlo with a bootstrap")
    delta: float = arg(0.01, "trust region: the largest mean KL(pi_old || pi_new) a policy step may have")
    damping: float = arg(0.1, "added to the Fisher matrix's diagonal (F + damping I) for conjugate gradient")
    cg_iters: int = arg(10, "conjugate gradient iterations to approximate F^-1 g")
    backtrack_coef: float = arg(0.8, "the line search tries the fractions 1, c, c^2, ... of the full step")
    backtrack_iters: int = arg(10, "fractions the line search tries before it keeps the old policy")
    vf_epochs: int = arg(5, "epochs of minibatch regression of the critic on the lambda-returns per update")
    num_minibatches: int = arg(8, "minibatches per critic epoch (must divide num_envs * num_steps)")
    hidden_size: int = arg(64, "width of the two hidden layers")
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one")
    device: str = arg("auto", "auto | cpu | cuda (auto picks CUDA when available)", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv, episodes.csv and model.pt go (default runs/trpo__<env>__<seed>__<time>)")
    log_interval: int = arg(10, "print a progress line (and save the checkpoint) every this many updates")
    eval: str = arg("", "path of a model.pt: evaluate it and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval (greedy actions: argmax or the Gaussian mean)")


def validate(args: Args) -> None:
    """Raise ValueError with what is wrong and what is accepted."""
    batch = args.num_envs * args.num_steps
    checks = [
        (args.total_timesteps > 0, f"--total-timesteps must be > 0 (got {args.total_timesteps})"),
        (args.learning_rate > 0, f"--learning-rate must be > 0 (got {args.learning_rate})"),
        (args.num_envs >= 1, f"--num-envs must be >= 1 (got {args.num_envs})"),
        (args.num_steps >= 1, f"--num-steps must be >= 1 (got {args.num_steps})"),
        (0.0 <= args.gamma <= 1.0, f"--gamma must be in [0, 1] (got {args.gamma})"),
        (0.0 <= args.gae_lambda <= 1.0, f"--gae-lambda must be in [0, 1] (got {args.gae_lambda})"),
        (args.delta > 0, f"--delta must be > 0 (got {args.delta})"),
        (args.damping >= 0, f"--damping must be >= 0 (got {args.damping})"),
        (args.cg_iters >= 1, f"--cg-iters must be >= 1 (got {args.cg_iters})"),
        (0 < args.backtrack_coef < 1, f"--backtrack-coef must be in (0, 1) (got {args.backtrack_coef})"),
        (args.backtrack_iters >= 1, f"--backtrack-iters must be >= 1 (got {args.backtrack_iters})"),
        (args.vf_epochs >= 1, f"--vf-epochs must be >= 1 (got {args.vf_epochs})"),
        (
            args.num_minibatches >= 1 and batch % args.num_minibatches == 0,
            f"--num-minibatches must be >= 1 and divide num_envs * num_steps = {batch} (got {args.num_minibatches})",
        ),
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
    log-std) for Box actions. Box actions are sampled unbounded and clipped only when sent to the env.

    forward(obs) gives the distribution's parameters, `dist`: (logits [B, A],) or (mean [B, D], log_std [D]);
    log_prob_entropy() and kl_divergence() read them."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden: int):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        n_out = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        self.net = mlp(obs_dim, n_out, hidden, out_gain=0.01)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(n_out))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.net(obs),) if self.discrete else (self.net(obs), self.log_std)

    @staticmethod
    def log_prob_entropy(dist: tuple[torch.Tensor, ...], action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dist, actions [B] or [B, D] -> log pi(a|s) [B], entropy [B]."""
        if len(dist) == 1:
            logp = dist[0].log_softmax(-1)
            return logp.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)
        mean, log_std = dist
        return gaussian_log_prob(mean, log_std, action), gaussian_entropy(log_std).expand(len(mean))

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
    """V_phi(s): [..., obs_dim] -> [...], an MLP of its own."""

    def __init__(self, obs_dim: int, hidden: int):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, out_gain=1.0)

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
    episode's last step: its final observation, not the reset one); terminated / truncated true (or 1.0)
    at a step that ended its episode by a terminal state / by a time limit, as bool or float tensors or
    numpy arrays (Gymnasium returns bool arrays). Returns A: [T, N], of rewards' dtype and device.
    """
    terminated = torch.as_tensor(terminated, dtype=rewards.dtype, device=rewards.device)  # bool -> 0.0 / 1.0
    truncated = torch.as_tensor(truncated, dtype=rewards.dtype, device=rewards.device)
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values  # no future after a terminal state
    not_done = 1.0 - torch.maximum(terminated, truncated)  # either way the next row is a new episode
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages


def surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """L = mean_t pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t, to be maximised. At theta = theta_old its gradient
    is mean_t grad log pi(a_t|s_t) * A_t, the policy gradient.

    log_probs: [B] with grad; old_log_probs, advantages: [B] (detached here).
    """
    return (torch.exp(log_probs - old_log_probs.detach()) * advantages.detach()).mean()


def categorical_kl(old_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_old || p) = sum_a p_old(a) (log p_old(a) - log p(a)). [B, A], [B, A] -> [B]; old_logits detached here."""
    old_logp = old_logits.detach().log_softmax(-1)
    return (old_logp.exp() * (old_logp - logits.log_softmax(-1))).sum(-1)


def gaussian_kl(old_mean, old_log_std, mean, log_std) -> torch.Tensor:
    """KL(N_old || N) of diagonal Gaussians, sum_d [ log(s_d / s_old,d) + (s_old,d^2 + (m_old,d - m_d)^2) / (2 s_d^2)
    - 1/2 ]. Means [B, D], log-stds [D] or [B, D] -> [B]; the old ones detached here."""
    old_mean, old_log_std = old_mean.detach(), old_log_std.detach()
    var_ratio = torch.exp(2 * (old_log_std - log_std))  # s_old^2 / s^2
    mean_term = (old_mean - mean).pow(2) * torch.exp(-2 * log_std)  # (m_old - m)^2 / s^2
    return (log_std - old_log_std + 0.5 * (var_ratio + mean_term) - 0.5).sum(-1)


def kl_divergence(old_dist: tuple[torch.Tensor, ...], dist: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """KL(pi_old(.|s) || pi(.|s)) per state, [B], from two Policy.forward() outputs (old ones detached)."""
    return categorical_kl(*old_dist, *dist) if len(dist) == 1 else gaussian_kl(*old_dist, *dist)


# ----------------------------------------------------------------------------------------------
# The trust-region step: pure functions on flat parameter vectors [P]
# ----------------------------------------------------------------------------------------------
def fisher_vector_product(mean_kl, theta: torch.Tensor, damping: float):
    """The function v -> (F + damping I) v, F the Hessian at theta of mean_kl, by back-propagating twice:
    F v = grad[ grad KL . v ]. F is never formed.

    mean_kl: a function of a flat parameter vector [P] -> the scalar mean KL(pi_old || pi_theta), pi_old fixed;
    at theta = theta_old its Hessian is the Fisher matrix. theta: [P]. The returned function maps v [P] -> [P].
    The first derivative, grad KL, is built once with its graph; each product back-propagates through it again
    (conjugate gradient asks for --cg-iters + 1 products at the same theta).
    """
    theta = theta.detach().requires_grad_(True)
    (grad_kl,) = torch.autograd.grad(mean_kl(theta), theta, create_graph=True)

    def product(v: torch.Tensor) -> torch.Tensor:
        (fv,) = torch.autograd.grad(grad_kl @ v.detach(), theta, retain_graph=True)
        return fv + damping * v

    return product


def conjugate_gradient(matvec, b: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """x ~= A^-1 b for a symmetric positive definite A given only as products matvec(v) = A v, from x_0 = 0.

    Iterate k minimises 1/2 x^T A x - b^T x over span{b, A b, ..., A^(k-1) b}; the residuals r_k = b - A x_k are
    mutually orthogonal and the directions p_k A-conjugate, so in exact arithmetic it is exact after n iterations
    for an n x n A. Stops early when the squared residual falls below tol. b: [P] -> x: [P].
    """
    x = torch.zeros_like(b)
    r = b.clone()  # the residual b - A x
    p = b.clone()  # the search direction
    r_dot_r = r @ r
    for _ in range(iters):
        if r_dot_r <= tol:
            break
        Ap = matvec(p)
        alpha = r_dot_r / (p @ Ap)  # the exact minimiser along p
        x = x + alpha * p
        r = r - alpha * Ap
        new_r_dot_r = r @ r
        p = r + (new_r_dot_r / r_dot_r) * p  # the next direction, A-conjugate to the previous ones
        r_dot_r = new_r_dot_r
    return x


def line_search(evaluate, theta_old: torch.Tensor, full_step: torch.Tensor, max_kl: float,
                backtrack_coef: float, backtrack_iters: int) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Try theta_old + backtrack_coef^j * full_step for j = 0, 1, ..., backtrack_iters - 1; accept the first whose
    surrogate beats the old one and whose mean KL from the old policy is <= max_kl; otherwise keep theta_old.

    evaluate(theta [P]) -> (surrogate L(theta), mean KL(pi_old || pi_theta)), two floats. theta_old, full_step: [P].
    Returns (theta [P], {"accepted": 1.0 or 0.0, "backtracks": j, "kl": KL of the step taken (0 if none),
    "surrogate_improvement": L(theta) - L(theta_old) (0 if none)}).
    """
    L_old, _ = evaluate(theta_old)
    for j in range(backtrack_iters):
        theta = theta_old + backtrack_coef**j * full_step
        L, kl = evaluate(theta)
        if kl <= max_kl and L > L_old:
            return theta, {"accepted": 1.0, "backtracks": float(j), "kl": kl, "surrogate_improvement": L - L_old}
    return theta_old, {"accepted": 0.0, "backtracks": float(backtrack_iters), "kl": 0.0, "surrogate_improvement": 0.0}


def flat_params(module: nn.Module) -> torch.Tensor:
    """Every parameter of module, flattened and concatenated in parameters() order: [P], detached."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def unflatten(module: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The flat vector theta [P] cut back into module's named parameters (views, so gradients reach theta)."""
    params, offset = {}, 0
    for name, p in module.named_parameters():
        params[name] = theta[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return params


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


def policy_step(policy: Policy, obs: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor, args: Args):
    """One TRPO step of the policy on a batch: g, x = CG(F, g), the full step, the line search. obs [B, obs_dim],
    actions [B] or [B, D], advantages [B]. Sets the policy's parameters; returns the line search's record."""
    theta_old = flat_params(policy)
    policy_at = lambda theta: torch.func.functional_call(policy, unflatten(policy, theta), (obs,))  # noqa: E731
    with torch.no_grad():
        old_dist = tuple(d.detach() for d in policy(obs))  # pi_old: constants (log_std is a Parameter itself)
        old_log_probs, _ = policy.log_prob_entropy(old_dist, actions)

    def surrogate_at(theta: torch.Tensor) -> torch.Tensor:
        log_probs, _ = policy.log_prob_entropy(policy_at(theta), actions)
        return surrogate(log_probs, old_log_probs, advantages)

    def mean_kl(theta: torch.Tensor) -> torch.Tensor:
        return kl_divergence(old_dist, policy_at(theta)).mean()

    theta = theta_old.clone().requires_grad_(True)
    L = surrogate_at(theta)
    if not torch.isfinite(L):
        raise FloatingPointError("surrogate")
    (g,) = torch.autograd.grad(L, theta)  # the policy gradient at theta_old
    fvp = fisher_vector_product(mean_kl, theta_old, args.damping)  # v -> (F + damping I) v
    x = conjugate_gradient(fvp, g, args.cg_iters)  # ~ F^-1 g, the natural gradient
    xFx = float(x @ fvp(x))
    full_step = (
        math.sqrt(2 * args.delta / xFx) * x if xFx > 0 else torch.zeros_like(x)
    )  # 1/2 s^T (F + damping I) s = delta
    if not torch.isfinite(full_step).all():
        raise FloatingPointError("policy step")

    @torch.no_grad()
    def evaluate(theta: torch.Tensor) -> tuple[float, float]:
        return float(surrogate_at(theta)), float(mean_kl(theta))

    theta_new, record = line_search(
        evaluate, theta_old, full_step, args.delta, args.backtrack_coef, args.backtrack_iters
    )
    nn.utils.vector_to_parameters(theta_new, policy.parameters())
    return record


def fit_value(value_net: ValueNet, optimizer, obs: torch.Tensor, targets: torch.Tensor, args: Args) -> float:
    """--vf-epochs epochs of Adam on value_loss over random minibatches of (obs [B, obs_dim], targets [B]);
    returns the last epoch's mean loss."""
    size = len(obs) // args.num_minibatches
    for _ in range(args.vf_epochs):
        losses = []
        for idx in torch.randperm(len(obs), device=obs.device).split(size):
            loss = value_loss(value_net(obs[idx]), targets[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    return float(torch.stack(losses).mean())


def update(policy, value_net, optimizer, batch, args: Args) -> dict[str, float]:
    """One TRPO update from one rollout of T*N steps: advantages from the critic as it is, then the policy's
    trust-region step, then the critic's regression on the lambda-returns."""
    advantages, targets, values = advantages_and_targets(value_net, batch, args.gamma, args.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
    obs, actions = flat(batch["obs"]), flat(batch["actions"])
    with torch.no_grad():
        _, entropy = policy.log_prob_entropy(policy(obs), actions)
    record = policy_step(policy, obs, actions, flat(advantages), args)
    v_loss = fit_value(value_net, optimizer, obs, flat(targets), args)
    if not math.isfinite(v_loss):
        raise FloatingPointError("value loss")
    if not all(torch.isfinite(p).all() for net in (policy, value_net) for p in net.parameters()):
        raise FloatingPointError("parameters")
    return {
        **record,
        "value_loss": v_loss,
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
        "algo": "trpo",
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
    """Raise ValueError when the file is missing, unreadable or not a trpo.py checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("algo") != "trpo":
        raise ValueError(f"{path} is not a trpo.py checkpoint")
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
    value_net = ValueNet(obs_dim, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(value_net.parameters(), lr=args.learning_rate)

    run_dir = args.run_dir or f"runs/trpo__{args.env_id}__{args.seed}__{int(start)}"
    model_path = os.path.join(run_dir, "model.pt")
    columns = ["global_step", "wall_time", "sps", "episodic_return", "episode_length", "kl", "surrogate_improvement",
               "backtracks", "accepted", "value_loss", "entropy", "explained_variance"]  # fmt: skip
    try:  # a run directory that cannot be created or written is bad input, found before training starts
        os.makedirs(run_dir, exist_ok=True)
        metrics_file = open(os.path.join(run_dir, "metrics.csv"), "w", newline="")
        episodes_file = open(os.path.join(run_dir, "episodes.csv"), "w", newline="")
    except OSError as e:
        raise ValueError(f"--run-dir {run_dir} cannot be created or written: {e.strerror or e}") from None
    metrics, episodes = csv.writer(metrics_file), csv.writer(episodes_file)
    metrics.writerow(columns)
    episodes.writerow(["global_step", "wall_time", "return", "length"])
    print(f"trpo on {args.env_id} | device {device} | delta {args.delta} | run dir {run_dir}")

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
                    f"sps {row['sps']:>6} | kl {stats['kl']:.4f} | backtracks {stats['backtracks']:2.0f} | "
                    f"v_loss {stats['value_loss']:8.3f} | entropy {stats['entropy']:6.3f} | "
                    f"expl_var {stats['explained_variance']:6.3f}"
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
        prog="trpo.py",
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
        print(f"trpo.py: error: {e}", file=sys.stderr)
        return 2
    except EnvironmentNotFinite as e:  # in --eval (training reports its own, exits 1 and keeps its checkpoint)
        what, steps = e.args
        cause = f"the environment returned a non-finite {what} at evaluation step {steps}"
        print(f"trpo.py: {cause}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # the checkpoint and metrics are saved already
        return 143 if isinstance(e, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
