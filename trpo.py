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
solves (F + damping I) x = g from --cg-iters such products, and one more gives x^T (F + damping I) x, which takes
the place of x^T F x in s. Both models hold only near theta_old, so line_search() tries the fractions 1, c, c^2, ...
of s (c = --backtrack-coef) and takes the first whose measured KL is <= delta and whose surrogate improves; if none
does, the policy stays.
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
        """Constraints between hyperparameters that no single range expresses."""
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            return [f"--num-minibatches {self.num_minibatches} must divide the {self.num_envs * self.num_steps} steps"]
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
            raise FloatingPointError("non-finite policy output")
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
    if not torch.isfinite(L):
        raise FloatingPointError("non-finite surrogate")
    fvp = fisher_vector_product(lambda theta: mean_kl(old_dist, dist_at(theta)), theta_old, args.damping)
    x = conjugate_gradient(fvp, g, args.cg_iters)  # ~ (F + damping I)^-1 g, the natural gradient
    xFx = float(x @ fvp(x))  # the full step s has 1/2 s^T (F + damping I) s = delta
    full_step = math.sqrt(2 * args.delta / xFx) * x if xFx > 0 else torch.zeros_like(x)
    if not torch.isfinite(full_step).all():
        raise FloatingPointError("non-finite policy step")

    @torch.no_grad()
    def evaluate(theta: torch.Tensor) -> tuple[float, float]:
        return float(surrogate_at(theta)), float(mean_kl(old_dist, dist_at(theta)))

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
            optimizer.step()
            losses.append(loss.detach())
    v_loss = torch.stack(losses).mean().item()  # the last epoch's
    if not math.isfinite(v_loss):
        raise FloatingPointError("non-finite value loss")
    if not all(torch.isfinite(p).all() for net in (policy, value_net) for p in net.parameters()):
        raise FloatingPointError("non-finite parameters")
    explained = explained_variance(flat(values), flat_targets)
    return {**record, "value_loss": v_loss, "entropy": entropy, "explained_variance": explained}


# ---- Training loop --------------------------------------------------------------------------------------------------
def train(args: Args) -> dict[str, float]:
    """The RL loop: roll out T steps of N envs, a trust-region step and the critic's fit, log; until the budget."""
    device = setup(args)  # seeds, torch threads, the device
    envs = make_envs(args.env_id, args.num_envs)
    obs_dim = envs.single_observation_space.shape[0]
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    value_net = ValueNet(obs_dim, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(value_net.parameters(), lr=args.learning_rate)  # the critic's, at a constant rate
    obs, _ = envs.reset(seed=args.seed)  # env i gets seed + i, then continues its own generator
    carry = {"obs": obs, "episode_return": np.zeros(envs.num_envs), "episode_length": np.zeros(envs.num_envs, int)}
    with Run(args, envs.envs[0], lambda: {"policy": policy.state_dict(), "value": value_net.state_dict()}) as run:
        while run.global_step < args.total_timesteps:
            batch = rollout(envs, policy, carry, args.num_steps, device, run.on_episode_end)
            stats = update(policy, value_net, optimizer, batch, args)
            run.log(batch["rewards"].numel(), stats)
    envs.close()
    return run.row


# ---- everything below is plumbing, not reinforcement learning -------------------------------------------------------
# Seeds and device, the env's spaces, the run's files and its end (Ctrl-C, SIGTERM, a non-finite number), --eval and the
# command line. Every error a user can cause is a ValueError: main() prints it as one line and exits with status 2.
ALGO = "trpo"


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
