"""Exact objectives and exact expected gradients on problems small enough to enumerate.

Every test of a gradient estimator in this project follows one recipe, in float64:

1. the true gradient:  grad J(theta) by central finite differences of an objective J that is
   computed exactly (by enumerating every outcome, or by dynamic programming);
2. the estimator's expectation:  E[grad L] = sum_k P(sample_k) * grad L(sample_k), enumerating every
   sample (a trajectory, a batch of N trajectories, a group of G completions) with its probability
   held fixed (detached), and L built with the script's own functions;
3. a comparison to about 1e-6 relative, or a proof that the two differ by an exactly known amount.

Nothing here samples, so nothing here is flaky. The pieces:

    fd_grad(f, theta)                 central differences of a scalar function of a tensor
    assert_close(a, b) / cosine(a, b) relative agreement / the angle between two gradients
    LayeredMDP                        a small episodic tabular MDP (and a bandit as its one-state case):
                                      every trajectory with its probability, J exactly, V^pi and Q^pi
    random_mdp(seed), bandit(rewards) the two problems the tests use
    MDP, THETA                        the MDP and the policy parameters that the scripts' tests share
    independent_batches(samples, n)   every ordered batch of n independent samples, with probability
    expected_grad(theta, weighted, L) sum_k P_k * grad L(x_k), one backward pass
    token_sequences(vocab, eos, T)    every completion a token model can emit (for the GRPO tests)
    TokenTree(vocab, eos, T)          a tabular autoregressive model over those completions: the per-token
                                      log-probabilities of every one, padded to T with a mask, and their
                                      probabilities (a tiny language model whose J is exact); rows_after(start)
                                      names the rows of theta that decide how a completion goes on
    true_grad(mdp, theta, gamma)      grad J of the softmax table policy, by finite differences (appended)
    trajectory_log_probs(tau, theta)  log pi(a_t|s_t) along one trajectory, a function of theta (appended)
    discounted_visits(mdp, pi, gamma) d_gamma(s) = sum_t gamma^t P(s_t = s), by dynamic programming (appended)
    every_group(probs, G)             every group of G draws from a categorical distribution (appended)
    one_group_per_prompt(probs, G)    every batch of one such group for each of B prompts (appended)
    conditional_advantages(p, G, adv) E[A_i | r_i = 1], E[A_i | r_i = 0] for binary rewards (appended)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

F64 = torch.float64  # every tensor of an exact computation is float64


# ----------------------------------------------------------------------------------------------
# Numerical tools
# ----------------------------------------------------------------------------------------------
def fd_grad(f, theta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """d f / d theta by central differences, (f(theta + eps e_i) - f(theta - eps e_i)) / (2 eps).

    In float64 the truncation error is O(eps^2) ~ 1e-10 and the rounding error O(1e-16 / eps) ~ 1e-11.
    """
    base = theta.detach().clone()
    grad = torch.zeros_like(base)
    for i in range(base.numel()):
        step = torch.zeros_like(base)
        step.view(-1)[i] = eps
        grad.view(-1)[i] = (float(f(base + step)) - float(f(base - step))) / (2 * eps)
    return grad


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-6) -> None:
    """||actual - expected|| <= rtol * ||expected||, with both norms in the message."""
    err = (actual - expected).norm().item()
    scale = expected.norm().item()
    assert err <= rtol * scale, f"relative error {err / max(scale, 1e-300):.3e} > {rtol:g} (|expected| = {scale:.3e})"


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between two gradients (1.0 means parallel)."""
    return float((a.reshape(-1) @ b.reshape(-1)) / (a.norm() * b.norm()))


# ----------------------------------------------------------------------------------------------
# A small episodic MDP
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trajectory:
    """One episode: s_0 a_0 r_0 s_1 a_1 r_1 ... ending in the terminal state after len(actions) steps."""

    states: tuple[int, ...]
    actions: tuple[int, ...]
    rewards: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.actions)


class LayeredMDP:
    """An episodic MDP whose states are numbered by depth: a transition from a state at depth d goes to
    a state at depth d + 1 or to the terminal state. Every episode therefore ends within `depth` steps,
    the time step is a function of the state, and V^pi, Q^pi depend on the state alone.

    P[s, a, s'] and R[s, a, s'] have shape [S, A, S + 1]; the last index s' = S is the terminal state.
    The start state is 0. The policy is a table pi[s, a] (rows sum to one).
    """

    def __init__(self, P: torch.Tensor, R: torch.Tensor):
        S, A, S1 = P.shape
        assert S1 == S + 1 and R.shape == P.shape
        assert torch.allclose(P.sum(-1), torch.ones(S, A, dtype=P.dtype))
        for s in range(S):  # layered: only forward transitions, so episodes end
            assert P[s, :, : s + 1].abs().sum() == 0, "transitions must go to a later state"
        self.P, self.R, self.S, self.A, self.terminal = P, R, S, A, S

    def trajectories(self, pi: torch.Tensor) -> list[tuple[Trajectory, torch.Tensor]]:
        """Every trajectory with its probability under pi (a differentiable function of pi)."""
        out = []

        def extend(s, states, actions, rewards, prob):
            for a in range(self.A):
                for s2 in range(self.S + 1):
                    p = self.P[s, a, s2]
                    if p == 0:
                        continue
                    step = (states + (s,), actions + (a,), rewards + (float(self.R[s, a, s2]),), prob * pi[s, a] * p)
                    if s2 == self.terminal:
                        out.append((Trajectory(*step[:3]), step[3]))
                    else:
                        extend(s2, *step)

        extend(0, (), (), (), torch.ones((), dtype=pi.dtype))
        return out

    def J(self, pi: torch.Tensor, gamma: float) -> torch.Tensor:
        """J = E[sum_t gamma^t r_t], by enumerating every trajectory."""
        return sum(p * discounted_return(tau.rewards, gamma) for tau, p in self.trajectories(pi))

    def values(self, pi: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(V^pi [S + 1], Q^pi [S, A]) by dynamic programming from the deepest state back.

        Q(s, a) = sum_s' P(s'|s, a) (R(s, a, s') + gamma V(s')),  V(s) = sum_a pi(a|s) Q(s, a),  V(terminal) = 0.
        """
        V = torch.zeros(self.S + 1, dtype=pi.dtype)
        Q = torch.zeros(self.S, self.A, dtype=pi.dtype)
        for s in reversed(range(self.S)):
            Q[s] = (self.P[s] * (self.R[s] + gamma * V)).sum(-1)
            V[s] = (pi[s] * Q[s]).sum()
        return V, Q


def discounted_return(rewards, gamma: float) -> float:
    return sum(gamma**t * r for t, r in enumerate(rewards))


def random_mdp(seed: int = 0, n_actions: int = 2) -> LayeredMDP:
    """Five states in three layers, {0} -> {1, 2} -> {3, 4} -> terminal, with stochastic transitions,
    an early-termination chance at every step (so lengths vary from 1 to 3) and random rewards on
    transitions. Two actions give 42 trajectories."""
    g = torch.Generator().manual_seed(seed)
    layers = [[0], [1, 2], [3, 4]]
    S = 5
    P = torch.zeros(S, n_actions, S + 1, dtype=F64)
    for d, layer in enumerate(layers):
        nxt = (layers[d + 1] if d + 1 < len(layers) else []) + [S]
        for s in layer:
            w = torch.rand(n_actions, len(nxt), generator=g, dtype=F64) + 0.2
            P[s][:, nxt] = w / w.sum(-1, keepdim=True)
    R = torch.randn(S, n_actions, S + 1, generator=g, dtype=F64) * (P > 0)
    return LayeredMDP(P, R)


def bandit(rewards: list[float]) -> LayeredMDP:
    """A one-step problem: pull arm a, get rewards[a], the episode ends."""
    A = len(rewards)
    P = torch.zeros(1, A, 2, dtype=F64)
    P[0, :, 1] = 1.0
    R = torch.zeros(1, A, 2, dtype=F64)
    R[0, :, 1] = torch.tensor(rewards, dtype=P.dtype)
    return LayeredMDP(P, R)


MDP = random_mdp(seed=0)  # the problem the scripts' gradient tests share, and a policy theta [S, A] on it
THETA = torch.randn(MDP.S, MDP.A, generator=torch.Generator().manual_seed(3), dtype=F64)


# ----------------------------------------------------------------------------------------------
# Exact expectations
# ----------------------------------------------------------------------------------------------
def independent_batches(samples: list[tuple[object, torch.Tensor]], n: int):
    """Every ordered batch (x_1, ..., x_n) of n independent draws, with probability prod_i P(x_i)."""
    for combo in itertools.product(samples, repeat=n):
        prob = torch.ones((), dtype=F64)
        for _, p in combo:
            prob = prob * p
        yield tuple(x for x, _ in combo), prob


def expected_grad(theta: torch.Tensor, weighted, loss) -> torch.Tensor:
    """E[grad L] = sum_k P_k * grad_theta L(x_k) for (x_k, P_k) in `weighted`, with P_k detached:
    the expectation of the gradient a sampler would see, not the gradient of the expectation."""
    total = sum(p.detach() * loss(x) for x, p in weighted)
    return torch.autograd.grad(total, theta)[0]


def token_sequences(vocab_size: int, eos: int, max_len: int) -> list[tuple[int, ...]]:
    """Every completion a token model can emit: up to max_len tokens, stopping at the first eos
    (which is included), or cut at max_len without one."""
    out = []
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(vocab_size), repeat=length):
            first_eos = seq.index(eos) if eos in seq else None
            if first_eos == length - 1 or (first_eos is None and length == max_len):
                out.append(seq)
    return out


class TokenTree:
    """A tabular autoregressive model: one row of logits per prefix, pi(o_t | o_<t) = softmax(theta[row(o_<t)])[o_t],
    over every completion of token_sequences(vocab_size, eos, max_len). theta: [n_rows, vocab_size]."""

    def __init__(self, vocab_size: int, eos: int, max_len: int):
        self.vocab_size, self.eos, self.max_len = vocab_size, eos, max_len
        self.sequences = token_sequences(vocab_size, eos, max_len)
        self.prefixes = sorted({s[:t] for s in self.sequences for t in range(len(s))})  # one row of theta each
        self.n_rows = len(self.prefixes)
        row = {p: i for i, p in enumerate(self.prefixes)}
        pad = [(0, 0)] * max_len  # (row, token) of a padding position; masked out
        index = [[(row[s[:t]], s[t]) for t in range(len(s))] + pad[len(s) :] for s in self.sequences]
        self._rows = torch.tensor([[r for r, _ in seq] for seq in index])
        self._tokens = torch.tensor([[a for _, a in seq] for seq in index])
        self.mask = torch.tensor([[float(t < len(s)) for t in range(max_len)] for s in self.sequences], dtype=F64)
        self.lengths = self.mask.sum(-1)

    def logprobs(self, theta: torch.Tensor) -> torch.Tensor:
        """log pi(o_t | o_<t) of every token of every sequence, 0 at padding: [N, max_len]."""
        logp = theta.log_softmax(-1)[self._rows, self._tokens]
        return logp * self.mask

    def probs(self, theta: torch.Tensor) -> torch.Tensor:
        """pi(o) of every sequence: [N], summing to one."""
        return self.logprobs(theta).sum(-1).exp()

    def rows_after(self, start: tuple[int, ...]) -> list[int]:
        """The rows of theta that act only once a completion has begun with `start`: every prefix that extends it."""
        return [i for i, p in enumerate(self.prefixes) if p[: len(start)] == start]


# ----------------------------------------------------------------------------------------------
# Shared by the tests of several scripts
# ----------------------------------------------------------------------------------------------
def true_grad(mdp: LayeredMDP, theta: torch.Tensor, gamma: float) -> torch.Tensor:
    """grad J of the softmax table policy pi = softmax(theta) [S, A], by finite differences of the exact J."""
    return fd_grad(lambda t: mdp.J(torch.softmax(t, -1), gamma), theta)


def trajectory_log_probs(tau: Trajectory, theta: torch.Tensor) -> torch.Tensor:
    """log pi(a_t|s_t) of each step of tau under pi = softmax(theta): [len(tau)], a function of theta."""
    return torch.log_softmax(theta, -1)[list(tau.states), list(tau.actions)]


def discounted_visits(mdp: LayeredMDP, pi: torch.Tensor, gamma: float) -> torch.Tensor:
    """d_gamma(s) = sum_t gamma^t P(s_t = s) [S], forward from the start state (states are numbered in the
    order transitions allow). At gamma = 1: the expected number of visits to s in one episode."""
    d = torch.zeros(mdp.S, dtype=pi.dtype)
    d[0] = 1.0
    for s in range(mdp.S):
        d = d + gamma * d[s] * (pi[s, :, None] * mdp.P[s, :, : mdp.S]).sum(0)
    return d


def every_group(probs: torch.Tensor, G: int):
    """Every ordered group of G independent draws from a distribution over indices 0..len(probs) - 1,
    with its probability: independent_batches for a categorical distribution."""
    return independent_batches([(i, probs[i]) for i in range(len(probs))], G)


def one_group_per_prompt(probs: torch.Tensor, G: int):
    """Every batch of one group of G independent draws for each of B prompts, with its probability, where
    prompt b draws index k with probability probs[b, k]: yields ((group_1, ..., group_B), P)."""
    for combo in itertools.product(*(list(every_group(p, G)) for p in probs)):
        yield tuple(g for g, _ in combo), torch.stack([p for _, p in combo]).prod()


def conditional_advantages(p: float, G: int, advantage) -> tuple[float, float]:
    """(E[A_i | r_i = 1], E[A_i | r_i = 0]) for binary rewards, when each of the other G - 1 members of the
    group is right with probability p (k of them right, k ~ Binomial(G - 1, p)). advantage(r, m, G) is the
    advantage of a completion with reward r in a group of G whose rewards hold m ones."""
    right = wrong = 0.0
    for k in range(G):
        pk = math.comb(G - 1, k) * p**k * (1 - p) ** (G - 1 - k)
        right += pk * advantage(1.0, k + 1, G)
        wrong += pk * advantage(0.0, k, G)
    return right, wrong
