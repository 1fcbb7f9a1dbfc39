"""Trust region policy optimization (TRPO): the natural gradient, in a KL trust region.

actor_critic.py steps along the plain gradient by a step size measured in parameters, but the same parameter step
can barely change one policy and wreck another (a logit step that does nothing to a saturated softmax flips a
uniform one). TRPO measures a step by how far it moves the *policy* on the batch's states, and takes the step that
improves the surrogate most within a KL radius delta (A_t from gae() on T*N steps, as in actor_critic.py):
    maximise    L(theta)  = mean_t[ pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t ]         surrogate()
    subject to  KL(theta) = mean_t KL( pi_old(.|s_t) || pi_theta(.|s_t) ) <= delta       mean_kl()
At theta_old, grad L = g = mean_t[ grad log pi(a_t|s_t) * A_t ], the actor-critic's gradient, and KL is 0 with zero
gradient and Hessian F = mean_t E_{a ~ pi_old(.|s_t)}[ grad log pi grad log pi^T ], the Fisher matrix. With L
linear and KL quadratic in s = theta - theta_old, the step solves
    max_s g^T s  subject to  1/2 s^T F s <= delta:    x = F^-1 g,   s = sqrt(2 delta / (x^T F x)) * x
x is the natural gradient (Kakade 2001), steepest ascent when distance is measured by KL rather than by the
Euclidean distance of the parameters; so the policy has no learning rate, only delta, a size of policy change.
Its independence of the parametrisation holds to first order only: under a smooth invertible theta = phi(eta)
with Jacobian J, g and F become J^T g and J^T F J, so J x_eta = x_theta and the infinitesimal change of policy
agrees; a finite step differs between parametrisations at O(|s|^2) (phi's curvature), and the damping
(J^T F J + damping I is not J^T (F + damping I) J) and a truncated conjugate gradient break even that.
F (P x P for P parameters) is never formed: fisher_vector_product() gives (F + damping I) v by back-propagating
twice through the mean KL (the damping stands in for the directions the batch cannot see), conjugate_gradient()
solves (F + damping I) x = g from --cg-iters such products, and x^T F x comes from one more. Both models hold only
near theta_old, so line_search() tries the fractions 1, c, c^2, ... of s (c = --backtrack-coef) and takes the
first whose measured KL is <= delta and whose surrogate improves; if none does, the policy stays.
What changed since actor_critic.py: the policy's step is this one instead of an Adam step on -log pi * A (so no
entropy bonus and no gradient clipping); the critic, a network of its own, is fitted after the advantages were
computed from it, by --vf-epochs epochs of minibatch Adam on value_loss() (--learning-rate is the critic's alone);
the batch is larger (4 envs x 128 steps), since each update does more work.
References: Schulman et al. 2015 (TRPO, the practical algorithm of its appendix C); Kakade 2001 (natural policy
gradient); Amari 1998; Nocedal & Wright 2006 ch. 5 (conjugate gradient); Schulman et al. 2016 (GAE); Achiam 2018
(Spinning Up); Martens 2020 ("New insights and perspectives on the natural gradient method": its invariance).
Run:  python trpo.py --help
"""

from __future__ import annotations

import argparse
import contextlib
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
    total_timesteps: int = arg(200_000, "training budget in environment steps (all envs together)", at_least=1)
    learning_rate: float = arg(1e-3, "the critic's Adam step size, constant (the policy's is set by --delta)", above=0)
    num_envs: int = arg(4, "N: environments stepped together (a Gymnasium SyncVectorEnv)", at_least=1)
    num_steps: int = arg(128, "T: steps of each env per update (the rollout's length)", at_least=1)
    gamma: float = arg(0.99, "discount factor", at_least=0, at_most=1)
    gae_lambda: float = arg(0.95, "GAE lambda: 0 one-step TD error, 1 Monte Carlo", at_least=0, at_most=1)
    delta: float = arg(0.01, "trust region: the largest mean KL(pi_old || pi_new) of a policy step", above=0)
    damping: float = arg(0.1, "added to the Fisher matrix's diagonal for conjugate gradient", at_least=0)
    cg_iters: int = arg(10, "conjugate gradient iterations to approximate F^-1 g", at_least=1)
    backtrack_coef: float = arg(0.8, "the line search tries the fractions 1, c, c^2, ... of the step", above=0, below=1)
    backtrack_iters: int = arg(10, "fractions the line search tries before it keeps the old policy", at_least=1)
    vf_epochs: int = arg(5, "epochs of the critic's regression on the lambda-returns per update", at_least=1)
    num_minibatches: int = arg(8, "minibatches per critic epoch (must divide num_envs * num_steps)", at_least=1)
    hidden_size: int = arg(64, "width of the two hidden layers", at_least=1)
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one", at_least=1)
    device: str = arg("auto", "auto picks CUDA when available", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv, episodes.csv and model.pt go (default: a new dir in runs/)")
    overwrite: bool = arg(False, "replace the run that --run-dir already holds")
    log_interval: int = arg(10, "print a progress line and save the checkpoint every this many updates", at_least=1)
    eval: str = arg("", "path of a model.pt: evaluate it greedily and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval", at_least=1)

    def problems(self) -> list[str]:
        """Constraints between hyperparameters (and torchrun's processes) that no single range expresses."""
        world = share()[1]
        if self.num_envs % world:
            return [f"--num-envs {self.num_envs} must split evenly over {world} processes"]
        batch = self.num_envs // world * self.num_steps  # a process's share of the T*N steps
        if batch % self.num_minibatches:
            return [f"--num-minibatches {self.num_minibatches} must divide the {batch} steps of a process's rollout"]
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

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, obs_dim], [B] or [B, D] -> log pi(a|s) [B], entropy [B]. (torch.distributions computes the same,
        at several times the cost for networks this small.)"""
        out = self.net(obs)
        if self.discrete:
            log_p = out.log_softmax(-1)
            return log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)
        z = (action - out) * torch.exp(-self.log_std)
        log_prob = (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_prob, (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum(-1).expand(len(obs))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Distribution:
        """pi(.|s) for a batch [B, obs_dim] as a torch distribution (batch shape [B]), for the trust-region step: its
        KL in closed form, and torch.func.functional_call(policy, parameters, (obs,)) gives it at other parameters."""
        out = self.net(obs)
        if self.discrete:
            return torch.distributions.Categorical(logits=out, validate_args=False)
        normal = torch.distributions.Normal(out, self.log_std.exp(), validate_args=False)
        return torch.distributions.Independent(normal, 1, validate_args=False)

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


def surrogate(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """L = mean_t pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t, to be maximised; its gradient at theta_old is the
    policy gradient. log_probs: [B] with grad; old_log_probs, advantages: [B] (detached here). -> scalar."""
    return (torch.exp(log_probs - old_log_probs.detach()) * advantages.detach()).mean()


def mean_kl(old: torch.distributions.Distribution, new: torch.distributions.Distribution) -> torch.Tensor:
    """The trust region's measure, mean_s KL(pi_old(.|s) || pi(.|s)), of two distributions of batch shape [B]."""
    return torch.distributions.kl_divergence(old, new).mean()


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean squared error 1/2 mean_t (V(s_t) - G_t)^2, the target G_t held fixed. [B], [B] -> scalar."""
    return 0.5 * (values - returns.detach()).pow(2).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G]: 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var = returns.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (returns - values).var(unbiased=False) / var)


# ---- The trust-region step: pure functions on flat parameter vectors [P] ---------------------------------------------
def unflatten(module: nn.Module, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """theta [P] cut into module's named parameters, in parameters() order (views, so gradients reach theta)."""
    names, params = zip(*module.named_parameters(), strict=True)
    pieces = theta.split([p.numel() for p in params])
    return {name: piece.view_as(p) for name, piece, p in zip(names, pieces, params, strict=True)}


def fisher_vector_product(mean_kl, theta: torch.Tensor, damping: float):
    """v [P] -> (F + damping I) v, F the Hessian at theta [P] of mean_kl(theta) (the mean KL from a fixed pi_old: at
    theta_old, the Fisher matrix), by back-propagating twice, F v = grad[ grad KL . v ], through one grad KL."""
    theta = theta.detach().requires_grad_(True)
    (grad_kl,) = torch.autograd.grad(mean_kl(theta), theta, create_graph=True)

    def product(v: torch.Tensor) -> torch.Tensor:
        (fv,) = torch.autograd.grad(grad_kl @ v.detach(), theta, retain_graph=True)
        return fv + damping * v

    return product


def conjugate_gradient(matvec, b: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """x ~= A^-1 b [P] for a symmetric positive definite A given only as matvec(v) = A v, from x_0 = 0. Iterate k
    minimises 1/2 x^T A x - b^T x over span{b, A b, ..., A^(k-1) b}: the residuals are mutually orthogonal, the
    directions A-conjugate, exact after P iterations in exact arithmetic. Stops when |b - A x|^2 <= tol."""
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()  # the iterate, the residual b - A x, the direction
    r_dot_r = r @ r
    for _ in range(iters):
        if r_dot_r <= tol:
            break
        Ap = matvec(p)
        alpha = r_dot_r / (p @ Ap)  # the exact minimiser along p
        x, r = x + alpha * p, r - alpha * Ap
        new_r_dot_r = r @ r
        p = r + (new_r_dot_r / r_dot_r) * p  # the next direction, A-conjugate to the previous ones
        r_dot_r = new_r_dot_r
    return x


def line_search(evaluate, theta_old: torch.Tensor, full_step: torch.Tensor, max_kl: float,
                backtrack_coef: float, backtrack_iters: int) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The first theta_old + backtrack_coef^j full_step, j = 0 .. backtrack_iters - 1, whose surrogate beats the old
    one and whose mean KL is <= max_kl, else theta_old. evaluate(theta [P]) -> (L(theta), KL(theta)), two floats.
    Returns (theta [P], {the step's "kl" and "surrogate_improvement", "backtracks": j, "accepted": 1.0 or 0.0})."""
    L_old, _ = evaluate(theta_old)
    for j in range(backtrack_iters):
        theta = theta_old + backtrack_coef**j * full_step
        L, kl = evaluate(theta)
        if kl <= max_kl and L > L_old:
            return theta, {"kl": kl, "surrogate_improvement": L - L_old, "backtracks": float(j), "accepted": 1.0}
    return theta_old, {"kl": 0.0, "surrogate_improvement": 0.0, "backtracks": float(backtrack_iters), "accepted": 0.0}


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


def rollout(envs, policy: Policy, carry: dict, num_steps: int, device: torch.device, on_episode_end) -> dict:
    """Step every env num_steps times with actions from the policy, continuing from carry (obs [N, obs_dim] and
    the episode_return, episode_length [N] of the episodes in progress, all updated in place).

    Returns the batch, each [T, N, ...]: obs s_t, actions a_t, rewards r_t, terminated, truncated (1.0 at the step
    that ended an episode), next_obs s'_t (the true next state: at an episode's last step its final observation).
    Calls on_episode_end(episode_return, length, steps_so_far) as each episode ends, steps_so_far counting the
    steps of all envs in this rollout. A NaN or infinite observation or reward raises EnvironmentNotFinite.
    """
    keys = ("obs", "actions", "rewards", "terminated", "truncated", "next_obs")
    steps = {k: [] for k in keys}
    check_finite(carry["obs"], 0.0, 0)  # from reset() before the first rollout (no reward), else checked already
    for t in range(num_steps):
        obs = carry["obs"]
        actions = policy.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        next_obs, rewards, terminated, truncated, infos = envs.step(env_action(actions, envs.single_action_space))
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


# ---- Update ---------------------------------------------------------------------------------------------------------
def advantages_and_targets(value_net: ValueNet, batch: dict, gamma: float, lam: float):
    """(A [T, N], lambda-returns G^lam = A + V [T, N], V(s_t) [T, N]) with the critic as it is before this
    update: the values it gives are constants of the losses."""
    with torch.no_grad():
        values, next_values = value_net(batch["obs"]), value_net(batch["next_obs"])
    advantages = gae(batch["rewards"], values, next_values, batch["terminated"], batch["truncated"], gamma, lam)
    return advantages, advantages + values, values


def policy_step(policy: Policy, obs: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor, args: Args):
    """The trust-region step of the policy on a batch (obs [B, obs_dim], actions [B] or [B, D], advantages [B]):
    g, x = CG(F + damping I, g), the full step, the line search. Sets the policy's parameters; returns the record."""
    theta_old = nn.utils.parameters_to_vector(policy.parameters()).detach()
    with torch.no_grad():
        old_dist = policy(obs)  # pi_old: constants
        old_log_probs = old_dist.log_prob(actions)

    def dist_at(theta: torch.Tensor) -> torch.distributions.Distribution:
        return torch.func.functional_call(policy, unflatten(policy, theta), (obs,))

    def surrogate_at(theta: torch.Tensor) -> torch.Tensor:
        return surrogate(dist_at(theta).log_prob(actions), old_log_probs, advantages)

    theta = theta_old.clone().requires_grad_(True)
    L = surrogate_at(theta)
    (g,) = torch.autograd.grad(L, theta)  # the policy gradient at theta_old
    L = L.detach()
    all_mean([L, g])  # under torchrun, every mean here is over every process's steps
    if not torch.isfinite(L):
        raise FloatingPointError("surrogate")
    local_fvp = fisher_vector_product(lambda theta: mean_kl(old_dist, dist_at(theta)), theta_old, args.damping)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        product = local_fvp(v)
        all_mean([product])
        return product

    x = conjugate_gradient(fvp, g, args.cg_iters)  # ~ (F + damping I)^-1 g, the natural gradient
    xFx = float(x @ fvp(x))  # the full step s has 1/2 s^T (F + damping I) s = delta
    full_step = math.sqrt(2 * args.delta / xFx) * x if xFx > 0 else torch.zeros_like(x)
    if not torch.isfinite(full_step).all():
        raise FloatingPointError("policy step")

    @torch.no_grad()
    def evaluate(theta: torch.Tensor) -> tuple[float, float]:
        values = torch.stack([surrogate_at(theta), mean_kl(old_dist, dist_at(theta))])
        all_mean([values])
        return float(values[0]), float(values[1])

    theta, record = line_search(evaluate, theta_old, full_step, args.delta, args.backtrack_coef, args.backtrack_iters)
    nn.utils.vector_to_parameters(theta, policy.parameters())
    return record


def update(policy, value_net, optimizer, batch, args: Args) -> dict[str, float]:
    """One TRPO update from one rollout of T*N steps: advantages from the critic as it is, the policy's trust-region
    step, then --vf-epochs epochs of the critic's Adam on value_loss over --num-minibatches random minibatches."""
    advantages, targets, values = advantages_and_targets(value_net, batch, args.gamma, args.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
    obs, actions, flat_targets = flat(batch["obs"]), flat(batch["actions"]), flat(targets)
    with torch.no_grad():
        entropy = policy.log_prob_entropy(obs, actions)[1].mean().item()
    record = policy_step(policy, obs, actions, flat(advantages), args)
    for _ in range(args.vf_epochs):
        losses = []
        for idx in torch.randperm(len(obs), device=obs.device).split(len(obs) // args.num_minibatches):
            loss = value_loss(value_net(obs[idx]), flat_targets[idx])
            optimizer.zero_grad()
            loss.backward()
            all_mean([p.grad for p in value_net.parameters()])
            optimizer.step()
            losses.append(loss.detach())
    v_loss = torch.stack(losses).mean().item()  # the last epoch's
    if not math.isfinite(v_loss):
        raise FloatingPointError("value loss")
    if not all(torch.isfinite(p).all() for net in (policy, value_net) for p in net.parameters()):
        raise FloatingPointError("parameters")
    explained = explained_variance(flat(values), flat_targets)
    return {**record, "value_loss": v_loss, "entropy": entropy, "explained_variance": explained}


# ---- Training loop --------------------------------------------------------------------------------------------------
def train(args: Args) -> dict[str, float]:
    """The RL loop: roll out T steps of N envs, a trust-region step and the critic's fit, log; until the budget."""
    device = setup(args)  # seeds, torch threads, the device; under torchrun, the process group
    rank, world = share()  # this process's rank and the number of processes (0, 1 without torchrun)
    envs = make_envs(args.env_id, args.num_envs // world)  # this process's share of the N envs
    obs_dim = envs.single_observation_space.shape[0]
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    value_net = ValueNet(obs_dim, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(value_net.parameters(), lr=args.learning_rate)  # the critic's, at a constant rate
    obs, _ = envs.reset(seed=args.seed + rank * envs.num_envs)  # env i of N gets seed + i, then its own generator
    carry = {"obs": obs, "episode_return": np.zeros(envs.num_envs), "episode_length": np.zeros(envs.num_envs, int)}
    with Run(args, envs.envs[0], lambda: {"policy": policy.state_dict(), "value": value_net.state_dict()}) as run:
        while run.global_step < args.total_timesteps:
            batch = rollout(envs, policy, carry, args.num_steps, device, run.on_episode_end)
            stats = update(policy, value_net, optimizer, batch, args)
            run.log(batch["rewards"].numel(), stats)
    envs.close()
    return run.summary


# ---- everything below is plumbing, not reinforcement learning -------------------------------------------------------
# setup() seeds and picks the device; make_env() checks an env's spaces; Run writes a training run (its directory,
# metrics.csv, episodes.csv, model.pt, progress lines) and handles Ctrl-C, SIGTERM and non-finite numbers;
# load_checkpoint() and evaluate() serve --eval; validate() and main() the command line. Every error a user can
# cause is a ValueError, which main() prints as one line before exiting with status 2.
ALGO = "trpo"


def setup(args: Args) -> torch.device:
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)  # alike on every process: the networks start identical
    torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    rank, world = share()
    if world > 1 and not dist.is_initialized():  # under torchrun: gloo on CPU, NCCL with a GPU for each process
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        # torch.optim imports torch._dynamo on first use; imported after the group exists, it keeps references to the
        # group, which destroy_process_group() then cannot free, and gloo's leftover threads can abort the exit.
        importlib.import_module("torch._dynamo")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        sys.stdout = sys.stdout if rank == 0 else open(os.devnull, "w")  # rank 0 alone prints progress
    return device


def share() -> tuple[int, int]:
    """(rank, number of processes), as torchrun sets them; (0, 1) for a plain `python script.py`."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def all_mean(tensors: list[torch.Tensor]) -> None:
    """Average each tensor in place over the processes, whose batches together are the one batch of one process
    (in one all_reduce: the tensors travel as one flat vector)."""
    if dist.is_initialized():
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
        dist.all_reduce(flat)
        for tensor, part in zip(tensors, flat.split([tensor.numel() for tensor in tensors]), strict=True):
            tensor.copy_(part.view_as(tensor) / dist.get_world_size())


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


class EnvironmentNotFinite(FloatingPointError):
    """The environment returned a NaN or an infinity: its fault, not the policy's. args: (what, steps_so_far)."""


def check_finite(obs, reward, steps_so_far: int) -> None:
    for what, value in (("observation", obs), ("reward", reward)):
        if not np.isfinite(value).all():
            raise EnvironmentNotFinite(what, steps_so_far)


def interrupt(signum, frame):
    raise KeyboardInterrupt(signum)  # Ctrl-C (SIGINT), or SIGTERM from a scheduler, `timeout`, `docker stop`


def mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")


class Run:
    """`with Run(args, env, checkpoint) as run:` around the training loop. run.on_episode_end(...): a row of
    episodes.csv; run.log(steps, stats): a row of metrics.csv per update, and every --log-interval updates (and at
    the end) model.pt, {algo, args, env spaces, global_step} and the dict checkpoint() returns, and a progress line.
    Ctrl-C or SIGTERM: save, exit 130 or 143. A FloatingPointError: exit 1, keeping the last good checkpoint."""

    def __init__(self, args: Args, env: gym.Env, checkpoint):
        self.args, self.spaces, self.checkpoint = args, [str(env.observation_space), str(env.action_space)], checkpoint
        self.global_step, self.updates, self.saved, self.returns, self.lengths, self.logged = 0, 0, False, [], [], 0

    def __enter__(self) -> Run:
        rank, self.world = share()
        if self.world > 1:  # the networks were built alike on every process; from here each samples its own actions
            torch.manual_seed(self.args.seed + rank)
        self.dir = self.model_path = ""
        self.metrics, self.episodes = open(os.devnull, "w"), open(os.devnull, "w")
        if rank == 0:  # rank 0 alone writes the run directory
            self.open_run_dir()
        self.previous_sigterm = signal.signal(signal.SIGTERM, interrupt)
        self.start = self.last = time.time()
        return self

    def open_run_dir(self) -> None:
        self.dir = self.args.run_dir
        held = [f for f in ("model.pt", "metrics.csv") if os.path.exists(os.path.join(self.dir, f))]
        if held and not self.args.overwrite:
            raise ValueError(f"--run-dir {self.dir} already holds a run ({held[0]}); add --overwrite to replace it")
        try:
            if not self.dir:  # runs/<algo>__<env>__<seed>__<time>, or _2, _3, ... after it if a run took that name
                env = "".join(c if c.isalnum() or c in "-_." else "-" for c in self.args.env_id)
                base = os.path.join("runs", f"{ALGO}__{env}__{self.args.seed}__{int(time.time())}")
                os.makedirs("runs", exist_ok=True)
                for self.dir in (base, *(f"{base}_{k}" for k in range(2, 100))):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(self.dir)  # atomic: of two runs started at once, one gets the name
                        break
            os.makedirs(self.dir, exist_ok=True)
            self.metrics = open(os.path.join(self.dir, "metrics.csv"), "w")
            self.episodes = open(os.path.join(self.dir, "episodes.csv"), "w")
        except OSError as e:
            raise ValueError(f"--run-dir {self.dir} cannot be created or written: {e.strerror or e}") from None
        print("global_step,wall_time,return,length", file=self.episodes, flush=True)
        self.model_path = os.path.join(self.dir, "model.pt")
        print(f"{ALGO} on {self.args.env_id} | {self.world} process(es) | run dir {self.dir}")

    def on_episode_end(self, episode_return: float, length: int, steps_so_far: int) -> None:
        step, now = self.global_step + steps_so_far * self.world, round(time.time() - self.start, 3)
        print(step, now, episode_return, length, sep=",", file=self.episodes, flush=True)
        self.returns.append(episode_return)
        self.lengths.append(length)

    def log(self, steps: int, stats: dict[str, float]) -> None:
        now, ended = time.time(), slice(self.logged, len(self.returns))  # the episodes that ended since the last row
        steps *= self.world  # every process took as many
        self.global_step, self.updates, self.logged = self.global_step + steps, self.updates + 1, len(self.returns)
        row = {"global_step": self.global_step, "wall_time": round(now - self.start, 3),
               "sps": round(steps / max(now - self.last, 1e-9)), "episodic_return": mean(self.returns[ended]),
               "episode_length": mean(self.lengths[ended]), **stats}  # fmt: skip
        if self.updates == 1:
            print(*row, sep=",", file=self.metrics)  # the header
        print(*row.values(), sep=",", file=self.metrics, flush=True)
        self.last = now
        if self.updates % self.args.log_interval == 0 or self.global_step >= self.args.total_timesteps:
            self.save()
            numbers = " | ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("global_step", "wall_time"))
            print(f"step {self.global_step:>8} | return(last 20) {mean(self.returns[-20:]):8.2f} | {numbers}")

    def save(self) -> None:  # atomically: a temporary file of this process, then a rename; never a partial file
        if not self.model_path:  # a process other than rank 0
            return
        state = {"algo": ALGO, "args": asdict(self.args), "spaces": self.spaces, "global_step": self.global_step}
        tmp = f"{self.model_path}.{os.getpid()}.tmp"
        try:
            torch.save({**state, **self.checkpoint()}, tmp)
            os.replace(tmp, self.model_path)
            self.saved = True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)  # there only if the save was interrupted

    def __exit__(self, kind, error, traceback) -> None:
        self.metrics.close()
        self.episodes.close()
        signals = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}  # no 2nd Ctrl-C now
        try:
            if isinstance(error, KeyboardInterrupt):  # main() then exits 128 + the signal's number: 130 or 143
                self.save()
                if self.dir:  # rank 0
                    print(f"\ninterrupted at global step {self.global_step}; saved in {self.dir}", file=sys.stderr)
            elif isinstance(error, FloatingPointError):
                cause, at = f"non-finite {error.args[0]}", self.global_step
                if isinstance(error, EnvironmentNotFinite):  # the environment's fault, not the policy's: say so
                    cause, at = f"the environment returned a {cause}", at + error.args[1]
                kept = f"the last good checkpoint is {self.model_path}" if self.saved else "no checkpoint was saved"
                print(f"stopped: {cause} at global step {at}; {kept}", file=sys.stderr)
                raise SystemExit(1) from None
            elif error is None:
                seconds, last_20 = time.time() - self.start, mean(self.returns[-20:])
                self.summary = {"global_step": self.global_step, "episodes": len(self.returns), "seconds": seconds}
                print(f"done: {self.global_step} steps, {len(self.returns)} episodes in {seconds:.1f} s; mean return "
                      f"of the last 20 episodes {last_20:.2f}; files in {self.dir}")  # fmt: skip
        finally:
            signal.signal(signal.SIGINT, signals[signal.SIGINT])
            signal.signal(signal.SIGTERM, self.previous_sigterm)


def load_checkpoint(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # weights_only: a file runs no code
    except FileNotFoundError:
        raise ValueError(f"checkpoint not found: {path}") from None
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("algo") != ALGO:
        raise ValueError(f"{path} is not a {ALGO}.py checkpoint")
    names, parts = {f.name for f in fields(Args)}, ("args", "spaces", "global_step", "policy")
    if not all(k in state for k in parts) or not isinstance(state["args"], dict) or set(state["args"]) != names:
        raise ValueError(f"{path} is not a checkpoint of this version of {ALGO}.py (its parts or args differ)")
    try:
        validate(Args(**{**state["args"], "device": "auto"}))  # trained on CUDA, evaluated where there is none
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    tensors = [v for part in state.values() if isinstance(part, dict) for v in part.values() if torch.is_tensor(v)]
    if not all(torch.isfinite(v).all() for v in tensors if v.is_floating_point()):
        raise ValueError(f"{path} holds non-finite weights")
    return state


def evaluate(path: str, episodes: int, seed: int, device_name: str = "auto", env_id: str = "") -> tuple:
    """Greedy episodes of a saved policy on env_id (default: its own env; another must have the same spaces):
    (mean, std) of the returns, and the env's id."""
    state = load_checkpoint(path)
    args = Args(**{**state["args"], "seed": seed, "device": device_name})
    env = make_env(env_id or args.env_id)
    if [str(env.observation_space), str(env.action_space)] != state["spaces"]:
        raise ValueError(f"--env-id {env_id} has other spaces than {path} was trained on: {state['spaces']}")
    device = setup(args)
    policy = Policy(env.observation_space.shape[0], env.action_space, args.hidden_size).to(device)
    try:
        policy.load_state_dict(state["policy"])
    except RuntimeError:
        raise ValueError(f"{path}: the weights do not fit the network its args describe") from None
    returns, steps = [], 0
    for k in range(episodes):
        (obs, _), done, total = env.reset(seed=seed + k), False, 0.0
        check_finite(obs, 0.0, steps)
        while not done:
            action = policy.act(torch.as_tensor(obs[None], dtype=torch.float32, device=device), greedy=True)
            obs, reward, terminated, truncated, _ = env.step(env_action(action[0].cpu().numpy(), env.action_space))
            steps, total, done = steps + 1, total + float(reward), terminated or truncated
            check_finite(obs, reward, steps)  # the environment's fault, named as in training
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns)), env_id or args.env_id


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


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, not argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(prog=f"{ALGO}.py", description=__doc__.split("\n")[0], allow_abbrev=False,
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    for f in fields(Args):
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        parser.add_argument("--" + f.name.replace("_", "-"), **kind, default=f.default, choices=f.metadata["choices"],
                            help=f.metadata["help"])  # fmt: skip
    args = Args(**vars(parser.parse_args(argv)))
    try:
        validate(args)
        if args.eval:  # on the checkpoint's env, unless --env-id names another one with the same spaces
            env_id = args.env_id if any(a.split("=")[0] == "--env-id" for a in argv) else ""
            mean_return, std, env_id = evaluate(args.eval, args.eval_episodes, args.seed, args.device, env_id)
            print(
                f"eval {args.eval} on {env_id}: mean return {mean_return:.2f} +- {std:.2f}, {args.eval_episodes} runs"
            )
        else:
            train(args)
    except ValueError as e:
        print(f"{ALGO}.py: error: {e}", file=sys.stderr)
        return 2
    except EnvironmentNotFinite as e:  # in --eval (training reports its own, exits 1 and keeps its checkpoint)
        print(f"{ALGO}.py: the environment returned a non-finite {e.args[0]} at evaluation step {e.args[1]}",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt as e:  # a run's checkpoint and metrics are saved already
        return 128 + (e.args[0] if e.args else signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    finally:
        if dist.is_initialized():  # torchrun's processes leave the group before they exit (else gloo can abort)
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
