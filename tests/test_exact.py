"""The harness checks itself: two independent ways to compute J, V^pi and grad J must agree."""

import torch
from exact import F64, assert_close, bandit, fd_grad, random_mdp, token_sequences


def test_dynamic_programming_agrees_with_enumeration():
    mdp = random_mdp(seed=1)
    theta = torch.randn(mdp.S, mdp.A, generator=torch.Generator().manual_seed(0), dtype=F64)
    pi = torch.softmax(theta, -1)
    trajectories = mdp.trajectories(pi)
    assert abs(sum(float(p) for _, p in trajectories) - 1.0) < 1e-12
    assert {len(tau) for tau, _ in trajectories} == {1, 2, 3}
    for gamma in (1.0, 0.9):
        V, Q = mdp.values(pi, gamma)
        assert abs(float(V[0] - mdp.J(pi, gamma))) < 1e-12
        assert_close((pi * Q).sum(-1), V[:-1], rtol=1e-12)


def test_finite_differences_match_autograd():
    mdp = random_mdp(seed=2)
    theta = torch.randn(mdp.S, mdp.A, generator=torch.Generator().manual_seed(1), requires_grad=True, dtype=F64)
    exact = torch.autograd.grad(mdp.J(torch.softmax(theta, -1), 0.9), theta)[0]
    assert_close(fd_grad(lambda t: mdp.J(torch.softmax(t, -1), 0.9), theta), exact, rtol=1e-8)


def test_bandit_and_token_sequences():
    b = bandit([1.0, 0.0, 2.0])
    assert abs(float(b.J(torch.full((1, 3), 1 / 3, dtype=F64), 1.0)) - 1.0) < 1e-12
    seqs = token_sequences(vocab_size=3, eos=0, max_len=3)
    # length 1: (0); length 2: (x, 0) for x != 0; length 3: every (x, y, z) with x, y != 0
    assert len(seqs) == 1 + 2 + 2 * 2 * 3
    assert all(0 not in s[:-1] for s in seqs)
