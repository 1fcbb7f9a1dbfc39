"""grpo.py: each piece of the estimator against exact quantities on problems small enough to enumerate.

The GRPO gradient is biased by design. These tests state what it does equal, prove it exactly, and
measure how far it is from the true grad J (computed by finite differences of the enumerated J).
"""

import math

import pytest
import torch
from exact import (
    F64,
    TokenTree,
    assert_close,
    bandit,
    conditional_advantages,
    cosine,
    every_group,
    expected_grad,
    fd_grad,
    one_group_per_prompt,
)
from runs import short_grpo_run_learns_and_eval_reloads

import grpo

EPS = 1e-4  # the eps of (r - mean) / (std + eps), passed explicitly so the tests do not depend on a default


# ----------------------------------------------------------------------------------------------
# Shared derivation: GRPO's advantage for binary rewards, in closed form
# ----------------------------------------------------------------------------------------------
def grpo_advantage(r: float, m: int, G: int) -> float:
    """(r - m/G) / (std + eps) for a completion with reward r in a group of G with m rewards equal to 1, where
    the Bessel std of m ones and G - m zeros is sqrt(m (G - m) / (G (G - 1)))."""
    return (r - m / G) / (math.sqrt(m * (G - m) / (G * (G - 1))) + EPS)


def loss_at_old_policy(logp: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """grpo.py's loss at theta = theta_old, beta = 0, from [B, G, T] log-probs (with grad) and [B, G] rewards."""
    advantages = grpo.group_advantages(rewards, EPS)
    return grpo.grpo_loss(logp, logp.detach(), logp.detach(), advantages, mask, clip_eps=0.2, beta=0.0)


# ----------------------------------------------------------------------------------------------
# a. Group advantages
# ----------------------------------------------------------------------------------------------
def test_group_advantages_hand_worked():
    rewards = torch.tensor([[2.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=F64)
    # [2, 0, 1]: mean 1, Bessel std sqrt((1 + 1 + 0) / 2) = 1 (the population std would be sqrt(2/3))
    # [1, 0, 0]: mean 1/3, Bessel std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3)
    s = math.sqrt(1 / 3)
    expected = torch.tensor(
        [
            [1 / (1 + EPS), -1 / (1 + EPS), 0.0],
            [(2 / 3) / (s + EPS), (-1 / 3) / (s + EPS), (-1 / 3) / (s + EPS)],
            [0.0, 0.0, 0.0],  # every reward equal: 0 / (0 + eps) = 0, no NaN, no gradient from this group
            [0.0, 0.0, 0.0],
        ],
        dtype=F64,
    )
    advantages = grpo.group_advantages(rewards, EPS)
    assert torch.isfinite(advantages).all()
    assert_close(advantages, expected, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# b. The expected GRPO gradient at theta = theta_old, beta = 0, and how it differs from grad J
# ----------------------------------------------------------------------------------------------
def test_std_normalisation_weights_prompts_by_success_rate():
    """Two prompts (two-armed bandits: arm 0 right, arm 1 wrong) solved with probability p_0 = 0.1 and
    p_1 = 0.5, one group of G = 6 completions each; every pair of groups is enumerated.

    E[grad L] = -1/B sum_q w(p_q) grad p_q, w(p) = a_right(p) - a_wrong(p), while grad J = 1/B sum_q grad p_q:
    the std division scales each prompt's share by a function of its success rate, so E[grad L] is not
    parallel to grad J. (w is flat only for G = 3: with binary rewards, the two stds a group can have agree.)"""
    G, B = 6, 2
    problem = bandit([1.0, 0.0])
    theta = torch.tensor([[-1.1, 1.1], [0.3, 0.3]], dtype=F64, requires_grad=True)

    def J(t):
        pi = torch.softmax(t, -1)
        return sum(problem.J(pi[q : q + 1], 1.0) for q in range(B)) / B

    pi = torch.softmax(theta, -1)
    logp = pi.log()

    def loss(batch):
        arms = torch.tensor(batch)  # [B, G]
        rewards = (arms == 0).to(F64)
        logp_b = logp.gather(1, arms).unsqueeze(-1)  # [B, G, 1]
        return loss_at_old_policy(logp_b, rewards, torch.ones_like(logp_b))

    grad_L = expected_grad(theta, one_group_per_prompt(pi.detach(), G), loss)

    success = pi[:, 0].detach()
    weights = [conditional_advantages(float(success[q]), G, grpo_advantage) for q in range(B)]
    w = torch.tensor([a_right - a_wrong for a_right, a_wrong in weights], dtype=F64)
    derived = torch.autograd.grad((w * torch.softmax(theta, -1)[:, 0]).sum() / B, theta)[0]
    assert_close(-grad_L, derived)

    grad_J = fd_grad(J, theta)
    scale = [float(-grad_L[q] @ grad_J[q] / grad_J[q].norm() ** 2) for q in range(B)]  # -grad_L[q] = scale_q grad_J[q]
    assert scale[0] / scale[1] > 1.1, f"prompt 0 (p = 0.1) should weigh more than prompt 1 (p = 0.5): {scale}"
    assert cosine(-grad_L, grad_J) < 1 - 1e-4


def test_length_normalisation_biases_towards_long_wrong_answers():
    """A token model over {EOS, right, wrong} with completions of up to 3 tokens, whose length depends on
    whether the first token is right. Every group of G is enumerated.

    E[grad L] = -sum_o pi(o) a(r(o)) / |o| grad log pi(o): 1/|o| is inside the expectation, so the
    gradient is not parallel to grad J. With a constant normaliser (Dr. GRPO) in place of |o| it would be."""
    G, eos, right = 3, 0, 1
    tree = TokenTree(vocab_size=3, eos=eos, max_len=3)
    theta = torch.randn(tree.n_rows, 3, generator=torch.Generator().manual_seed(3), dtype=F64) * 1.5
    theta.requires_grad_(True)
    rewards_all = torch.tensor([float(s[0] == right) for s in tree.sequences], dtype=F64)

    def J(t):
        return (tree.probs(t) * rewards_all).sum()

    logp_all = tree.logprobs(theta)
    probs = tree.probs(theta).detach()

    def loss(group):
        idx = torch.tensor(group)
        return loss_at_old_policy(logp_all[idx][None], rewards_all[idx][None], tree.mask[idx][None])

    grad_L = expected_grad(theta, every_group(probs, G), loss)

    p = float((probs * rewards_all).sum())
    a_right, a_wrong = conditional_advantages(p, G, grpo_advantage)
    a = torch.where(rewards_all > 0, a_right, a_wrong)
    seq_logp = tree.logprobs(theta).sum(-1)  # log pi(o), a fresh graph
    derived = torch.autograd.grad((probs * a / tree.lengths * seq_logp).sum(), theta)[0]
    assert_close(-grad_L, derived)

    grad_J = fd_grad(J, theta)
    lengths_right = (probs * rewards_all * tree.lengths).sum() / p
    lengths_wrong = (probs * (1 - rewards_all) * tree.lengths).sum() / (1 - p)
    assert abs(lengths_right - lengths_wrong) > 0.2, "the premise: length depends on correctness"
    assert cosine(-grad_L, grad_J) < 0.99, "1/|o_i| should tilt the gradient away from grad J"
    # the same expectation with a constant normaliser is (a_right - a_wrong) / T grad J exactly
    constant = torch.autograd.grad((probs * a / tree.max_len * tree.logprobs(theta).sum(-1)).sum(), theta)[0]
    assert_close(constant, (a_right - a_wrong) / tree.max_len * grad_J)


# ----------------------------------------------------------------------------------------------
# c. The KL penalty used as a loss
# ----------------------------------------------------------------------------------------------
def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum()


@pytest.mark.parametrize("estimator, direction", [("k3", "forward"), ("k2", "reverse")])
def test_kl_penalty_gradient(estimator, direction):
    """One token drawn from pi over 5 values, the loss grpo_loss(A = 0, beta): its expected gradient is
    beta grad KL(pi_ref || pi) for k3 (forward KL) and beta grad KL(pi || pi_ref) for k2 (reverse KL)."""
    beta = 0.04
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(5, generator=gen, dtype=F64, requires_grad=True)
    ref = torch.softmax(torch.randn(5, generator=gen, dtype=F64), -1)
    pi = torch.softmax(theta, -1)
    logp = pi.log()

    def loss(token):
        lp = logp[token].view(1, 1, 1)
        ref_lp = ref[token].log().view(1, 1, 1)
        return grpo.grpo_loss(lp, lp.detach(), ref_lp, torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, 1, dtype=F64),
                              beta=beta, kl_estimator=estimator)  # fmt: skip

    grad = expected_grad(theta, [(x, pi[x]) for x in range(5)], loss)
    forward = fd_grad(lambda t: beta * kl(ref, torch.softmax(t, -1)), theta)
    reverse = fd_grad(lambda t: beta * kl(torch.softmax(t, -1), ref), theta)
    right, wrong = (forward, reverse) if direction == "forward" else (reverse, forward)
    assert_close(grad, right)
    assert (grad - wrong).norm() > 0.1 * wrong.norm(), "the two KL directions should differ here"
    if estimator == "k3":  # in value, k3 estimates the reverse KL: E_pi[k3] = KL(pi || pi_ref)
        k3 = grpo.kl_penalty(logp, ref.log(), "k3")
        assert_close((pi * k3).sum(), kl(pi, ref), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# d. The clipped surrogate
# ----------------------------------------------------------------------------------------------
def test_clipped_surrogate_gradient():
    """Per token, d s / d log pi is 0 where the ratio left [1 - eps, 1 + eps] in the direction its advantage
    pushes (up for A > 0, down for A < 0), and rho * A (by finite differences) everywhere else."""
    clip_eps = 0.2
    ratios = torch.tensor([0.5, 0.9, 1.1, 1.5, 0.5, 0.9, 1.1, 1.5], dtype=F64)
    adv = torch.tensor([1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0], dtype=F64)
    clipped = torch.tensor([False, False, False, True, True, False, False, False])
    old_logp = torch.full((1, 8, 1), -1.3, dtype=F64)
    logp = (old_logp + ratios.log().view(1, 8, 1)).requires_grad_(True)

    def surrogate(lp):  # one token per completion, 8 completions: [1, 8, 1] -> [8]
        return grpo.clipped_surrogate(lp, old_logp, adv.view(1, 8), clip_eps).view(8)

    grad = torch.autograd.grad(surrogate(logp).sum(), logp)[0].view(8)
    fd = torch.stack([fd_grad(lambda lp, i=i: surrogate(lp)[i], logp)[0, i, 0] for i in range(8)])
    assert_close(grad, fd)
    assert (grad[clipped] == 0).all()
    assert_close(grad[~clipped], (ratios * adv)[~clipped], rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# e. Sampling
# ----------------------------------------------------------------------------------------------
def test_completion_mask_stops_at_first_eos():
    E = grpo.EOS
    completions = torch.tensor([[5, E, E, E], [1, 2, 3, 4], [E, 5, E, 3], [7, 7, E, 2]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float)
    assert torch.equal(grpo.completion_mask(completions, E), expected)


def test_sampled_logprobs_match_a_forward_pass():
    torch.manual_seed(0)
    args = grpo.Args(max_completion_len=6, d_model=16, n_layers=1, n_heads=2)
    policy = grpo.make_policy(args).to(F64)  # float64, so the comparison below can be tight
    with torch.no_grad():  # make EOS likely enough that some completions end early and some run to T
        policy.head.bias[grpo.EOS] = 1.5
    task = grpo.Task("sum", torch.device("cpu"))
    prompts = task.train_prompts[:16]
    batch = grpo.sample(policy, prompts, 4, args.max_completion_len, torch.Generator().manual_seed(1))
    completions, mask = batch["completions"], batch["mask"]
    lengths = mask.sum(-1)
    assert lengths.min() < args.max_completion_len and (lengths == args.max_completion_len).any()

    for seq, m in zip(completions.view(-1, 6).tolist(), mask.view(-1, 6).tolist(), strict=True):
        end = seq.index(grpo.EOS) + 1 if grpo.EOS in seq else len(seq)  # up to and including the first EOS
        assert m == [1.0] * end + [0.0] * (len(seq) - end)
        assert seq[end:] == [grpo.EOS] * (len(seq) - end)
    with torch.no_grad():
        recomputed = grpo.token_logprobs(policy, prompts, completions)
    assert_close(recomputed * mask, batch["logp"] * mask, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# f. End to end, and the command line
# ----------------------------------------------------------------------------------------------
def test_short_run_learns_and_eval_reloads(tmp_path):
    short_grpo_run_learns_and_eval_reloads("grpo", tmp_path)
