"""grpo.py: each piece of the estimator against exact quantities on problems small enough to enumerate.

The GRPO gradient is biased by design. These tests state what it does equal, prove it exactly, and
measure how far it is from the true grad J (computed by finite differences of the enumerated J).
"""

import copy
import dataclasses
import importlib
import itertools
import math
import os
import signal
import threading
import time

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
from processes import on_two_processes
from runs import read_csv, short_grpo_run_learns_and_eval_reloads
from wiring import (
    assert_each_hyperparameter_changes_the_update,
    assert_optimisers_hold_each_parameter_once,
    assert_update_is_hand_built_steps,
    first_update_of_train,
    flat_parameters,
    optimiser_step,
)

import dr_grpo
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
    parallel to grad J. (For G = 2 and G = 3 w is flat, 0.7070 and 1.1544 for every p: see the next test.)"""
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


def test_std_weight_is_flat_only_for_groups_of_2_and_3():
    """w(p) = a_right(p) - a_wrong(p) for binary rewards, exactly. G = 2: a mixed group is always {1, 0}, whose
    advantages are +-0.5 / (sqrt(1/2) + eps), so w = 0.7070 for every p. G = 3: the two mixed groups, one right
    or two right, have the same std sqrt(1/3), so w = (2/3) / (sqrt(1/3) + eps) = 1.1544. From G = 4 on, w
    depends on p."""
    ps = [0.05, 0.2, 0.5, 0.8, 0.95]

    def w(p, G):  # E[A_1 | r_1 = 1] - E[A_1 | r_1 = 0] by grpo.group_advantages, over the other G - 1 rewards
        others = torch.tensor(list(itertools.product([0.0, 1.0], repeat=G - 1)), dtype=F64)
        prob = (p**others * (1 - p) ** (1 - others)).prod(-1)
        A = [grpo.group_advantages(torch.cat([torch.full((len(others), 1), r, dtype=F64), others], 1), EPS)[:, 0]
             for r in (1.0, 0.0)]  # fmt: skip
        return float((prob * (A[0] - A[1])).sum())

    for G, flat in ((2, 0.5 / (math.sqrt(1 / 2) + EPS)), (3, (2 / 3) / (math.sqrt(1 / 3) + EPS))):
        assert all(w(p, G) == pytest.approx(flat, rel=1e-12) for p in ps), (G, [w(p, G) for p in ps])
    for G in (4, 6, 8):
        values = [w(p, G) for p in ps]
        assert max(values) - min(values) > 0.05 * max(values), (G, values)


def test_length_normalisation_biases_towards_long_wrong_answers():
    """A token model over {EOS, right, wrong} with completions of up to 3 tokens, whose length depends on
    whether the first token is right. Every group of G is enumerated.

    E[grad L] = -sum_o pi(o) a(r(o)) / |o| grad log pi(o): 1/|o| is inside the expectation, so the
    gradient is not parallel to grad J. With a constant normaliser (Dr. GRPO) in place of |o| it would be.
    The tilt has the direction the name says: per unit step, the expected GRPO step makes wrong answers
    longer (here: shortens them less) and right answers shorter than a step along grad J does, because a wrong
    answer's push down and a right answer's push up are both divided by its length."""
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
    grad_J = fd_grad(J, theta)

    def mean_length(t, correct):  # E[|o| | r(o) = correct]
        w = tree.probs(t) * (rewards_all == correct)
        return (w * tree.lengths).sum() / w.sum()

    for correct, sign in ((0.0, 1), (1.0, -1)):  # wrong answers drift longer, right ones shorter
        slope = fd_grad(lambda t, c=correct: mean_length(t, c), theta)
        along_grpo, along_J = (float((slope * d).sum() / d.norm()) for d in (-grad_L, grad_J))
        assert sign * (along_grpo - along_J) > 0.01, (correct, along_grpo, along_J)

    p = float((probs * rewards_all).sum())
    a_right, a_wrong = conditional_advantages(p, G, grpo_advantage)
    a = torch.where(rewards_all > 0, a_right, a_wrong)
    seq_logp = tree.logprobs(theta).sum(-1)  # log pi(o), a fresh graph
    derived = torch.autograd.grad((probs * a / tree.lengths * seq_logp).sum(), theta)[0]
    assert_close(-grad_L, derived)

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


KL_DIRECTIONS = [("k3", "forward"), ("k2", "reverse")]


def assert_kl_penalty_gradient(module, estimator: str, direction: str, loss_of_one_token) -> None:
    """One token drawn from pi over 5 values, loss_of_one_token(lp, ref_lp, beta) = N * the script's loss with
    A = 0 and that beta, N its normaliser for a one-token completion (1 in grpo.py, T in dr_grpo.py). Its
    expected gradient is beta grad KL(pi_ref || pi) for k3 (forward KL) and beta grad KL(pi || pi_ref) for k2
    (reverse KL): a positive beta pulls pi toward pi_ref. In value, E_pi[k3] = KL(pi || pi_ref), the reverse
    KL, and the script's kl_penalty() is >= 0 for every token, 0 where pi = pi_ref."""
    beta = 0.04
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(5, generator=gen, dtype=F64, requires_grad=True)
    ref = torch.softmax(torch.randn(5, generator=gen, dtype=F64), -1)
    pi = torch.softmax(theta, -1)
    logp = pi.log()

    def loss(token):
        return loss_of_one_token(logp[token].view(1, 1, 1), ref[token].log().view(1, 1, 1), beta)

    grad = expected_grad(theta, [(x, pi[x]) for x in range(5)], loss)
    forward = fd_grad(lambda t: beta * kl(ref, torch.softmax(t, -1)), theta)
    reverse = fd_grad(lambda t: beta * kl(torch.softmax(t, -1), ref), theta)
    right, wrong = (forward, reverse) if direction == "forward" else (reverse, forward)
    assert_close(grad, right)
    assert (grad - wrong).norm() > 0.1 * wrong.norm(), "the two KL directions should differ here"
    per_token = module.kl_penalty(logp, ref.log(), estimator)
    assert (per_token >= 0).all() and module.kl_penalty(ref.log(), ref.log(), estimator).abs().max() == 0
    if estimator == "k3":  # in value, k3 estimates the reverse KL: E_pi[k3] = KL(pi || pi_ref)
        assert_close((pi * per_token).sum(), kl(pi, ref), rtol=1e-12)


@pytest.mark.parametrize("estimator, direction", KL_DIRECTIONS)
def test_kl_penalty_gradient(estimator, direction):
    def loss(lp, ref_lp, beta):
        one = torch.ones(1, 1, 1, dtype=F64)
        return grpo.grpo_loss(lp, lp.detach(), ref_lp, torch.zeros(1, 1, dtype=F64), one, beta=beta,
                              kl_estimator=estimator)  # fmt: skip

    assert_kl_penalty_gradient(grpo, estimator, direction, loss)


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
    batch = grpo.sample(policy, prompts, 4, args.max_completion_len, grpo.EOS, torch.Generator().manual_seed(1))
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


@pytest.mark.parametrize("module", [grpo, dr_grpo], ids=["grpo", "dr_grpo"])
def test_sample_ends_completions_at_the_eos_it_is_given(module):
    """sample(..., eos, ...) with another token as end-of-sequence (FILLER) than the task's EOS, which is made
    likely too: each completion ends at its first FILLER, not at an EOS, is padded with FILLER, its mask is
    completion_mask(completions, FILLER); and when every completion ends before T, the padding holds FILLER."""
    torch.manual_seed(0)
    policy = module.make_policy(module.Args(max_completion_len=6, d_model=16, n_layers=1, n_heads=2)).to(F64)
    eos, other = module.FILLER, module.EOS
    prompts = module.Task("max", torch.device("cpu")).train_prompts[:16]
    for bias, all_end_early in ((1.0, False), (4.0, True)):
        with torch.no_grad():
            policy.head.bias[eos], policy.head.bias[other] = bias, 1.0
        batch = module.sample(policy, prompts, 4, 6, eos, torch.Generator().manual_seed(1))
        completions, mask = batch["completions"].view(-1, 6), batch["mask"].view(-1, 6)
        assert torch.equal(mask, module.completion_mask(completions, eos))
        seqs = completions.tolist()
        assert any(other in seq[: seq.index(eos) if eos in seq else 6] for seq in seqs), "an EOS inside a completion"
        ends = [seq.index(eos) + 1 if eos in seq else 7 for seq in seqs]
        assert (max(ends) < 6) == all_end_early, "the premise: every completion ends before T, so sample() pads"
        for seq, end in zip(seqs, ends, strict=True):
            assert seq[end:] == [eos] * (6 - end)


# ----------------------------------------------------------------------------------------------
# f. End to end, and the command line
# ----------------------------------------------------------------------------------------------
def test_short_run_learns_and_eval_reloads(tmp_path):
    short_grpo_run_learns_and_eval_reloads("grpo", tmp_path)


# ----------------------------------------------------------------------------------------------
# g. Copy-safe pure functions: graphs, padding, integer rewards, the clip at its edges
# ----------------------------------------------------------------------------------------------
def padded_inputs(seed: int = 0):
    """theta [B, G, T] and, for 2 prompts x 3 completions of up to 4 tokens, log-probabilities that are functions
    of theta, a second set for pi_old and pi_ref, advantages, and a mask with ends at 1 to 4 tokens."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    logp = torch.nn.functional.logsigmoid(theta)  # a log-probability per token, a function of theta
    old_logp = logp.detach() + 0.1 * torch.randn(2, 3, 4, generator=g, dtype=F64)
    ref_logp = logp.detach() + 0.3 * torch.randn(2, 3, 4, generator=g, dtype=F64)
    advantages = torch.randn(2, 3, generator=g, dtype=F64)
    lengths = torch.tensor([[1, 4, 2], [3, 4, 1]])
    mask = (torch.arange(4) < lengths[..., None]).to(F64)
    return theta, logp, old_logp, ref_logp, advantages, mask


def test_loss_detaches_its_constants_when_they_arrive_with_graphs():
    """A caller's old_logp, ref_logp, advantages and rewards may carry graphs back to theta (recomputed with grad,
    or from a learned reward): the loss's gradient must be the one with them held constant."""
    theta, logp, old_logp, ref_logp, advantages, mask = padded_inputs()
    shift = theta - theta.detach()  # zero in value, but with a graph back to theta
    attached = [old_logp + 0.7 * shift, ref_logp - 0.4 * shift, advantages + shift.sum(-1)]
    for estimator in ("k3", "k2"):
        loss = grpo.grpo_loss(logp, old_logp, ref_logp, advantages, mask, 0.2, 0.3, estimator)
        loss_attached = grpo.grpo_loss(logp, *attached, mask, 0.2, 0.3, estimator)
        grad = torch.autograd.grad(loss, theta, retain_graph=True)[0]
        grad_attached = torch.autograd.grad(loss_attached, theta, retain_graph=True)[0]
        assert loss_attached.item() == loss.item()
        assert_close(grad_attached, grad, rtol=1e-12)
    rewards = torch.tensor([[1.0, 0.0, 2.0]], dtype=F64) + theta[:1, 0, :3].sum() * 0
    assert not grpo.group_advantages(rewards).requires_grad


@pytest.mark.parametrize("padding", ["-inf", "-1e4", "depends on theta"])
def test_padding_changes_neither_loss_nor_gradient(padding):
    """What a padded position holds (a -inf or -1e4 log-probability, or one that depends on theta) leaves the
    loss and its gradient exactly as with zeros there, and finite."""
    theta, logp, old_logp, ref_logp, advantages, mask = padded_inputs()
    pad = mask == 0
    zeros = [torch.where(pad, 0.0, x) for x in (logp, old_logp, ref_logp)]
    if padding == "depends on theta":
        filled = [torch.where(pad, 5 * theta, x) for x in (logp, old_logp, ref_logp)]
    else:
        filled = [torch.where(pad, float(padding) + 0 * theta, x) for x in (logp, old_logp, ref_logp)]  # with a graph
    for estimator in ("k3", "k2"):
        reference = grpo.grpo_loss(*zeros, advantages, mask, 0.2, 0.3, estimator)
        loss = grpo.grpo_loss(*filled, advantages, mask, 0.2, 0.3, estimator)
        grad_reference = torch.autograd.grad(reference, theta, retain_graph=True)[0]
        grad = torch.autograd.grad(loss, theta, retain_graph=True)[0]
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
        assert_close(grad, grad_reference, rtol=1e-12)
    # aggregate() alone: masked per-token values, even -inf or NaN, are not summed
    per_token = torch.where(pad, float("nan") if padding == "-inf" else 5 * theta, logp)
    assert_close(grpo.aggregate(per_token, mask), grpo.aggregate(zeros[0], mask.bool()), rtol=1e-12)


def test_group_advantages_refuses_what_it_cannot_handle_and_accepts_integer_rewards():
    for bad in (torch.ones(6), torch.ones(2, 3, 4), torch.ones(4, 1)):
        with pytest.raises(ValueError, match=r"\[B, G\] with G >= 2"):
            grpo.group_advantages(bad)
    as_float = grpo.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]]))
    assert torch.equal(grpo.group_advantages(torch.tensor([[1, 0, 0, 1], [3, 1, 2, 2]])), as_float)
    assert torch.equal(grpo.group_advantages(torch.tensor([[True, False, False, True]])), as_float[:1])
    # a flat [B*G] layout, the G completions of a prompt adjacent: view(-1, G) in, view(-1) out
    flat = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 2.0])
    assert torch.equal(grpo.group_advantages(flat.view(-1, 4)).view(-1), as_float.view(-1))


@pytest.mark.parametrize("clip_eps", [0.1, 0.3])
def test_clip_acts_exactly_at_its_bounds(clip_eps):
    """Ratios just inside and just outside 1 - eps and 1 + eps (delta = 0.02), with A > 0 and A < 0: the
    surrogate's gradient is 0 exactly where the ratio left the range in the direction A pushes, rho * A
    elsewhere, and clip_fraction() counts exactly the zeroed tokens."""
    d = 0.02
    ratios = torch.tensor([1 - clip_eps - d, 1 - clip_eps + d, 1 + clip_eps - d, 1 + clip_eps + d] * 2, dtype=F64)
    adv = torch.tensor([1.5] * 4 + [-2.0] * 4, dtype=F64)
    zeroed = torch.tensor([False, False, False, True, True, False, False, False])
    old_logp = torch.full((1, 8, 1), -0.7, dtype=F64)
    logp = (old_logp + ratios.log().view(1, 8, 1)).requires_grad_(True)
    s = grpo.clipped_surrogate(logp, old_logp, adv.view(1, 8), clip_eps).view(8)
    grad = torch.autograd.grad(s.sum(), logp)[0].view(8)
    assert (grad[zeroed] == 0).all()
    assert_close(grad[~zeroed], (ratios * adv)[~zeroed], rtol=1e-12)
    bounded = ratios.clamp(1 - clip_eps, 1 + clip_eps)
    assert_close(s, torch.minimum(ratios * adv, bounded * adv), rtol=1e-12)
    fraction = grpo.clip_fraction(logp, old_logp, adv.view(1, 8), torch.ones(1, 8, 1), clip_eps)
    assert fraction.item() == zeroed.float().mean().item()


# ----------------------------------------------------------------------------------------------
# h. Where the k3 gradient claim holds, and where it does not
# ----------------------------------------------------------------------------------------------
def test_k3_gradient_is_forward_kl_only_when_tokens_come_from_pi_theta():
    """One token over 5 values. At the first of the --num-iterations passes the tokens were drawn from pi_theta
    and E[grad beta k3] = beta grad KL(pi_ref || pi_theta). From the second pass on they were drawn from
    pi_old != pi_theta: then E_{pi_old}[grad beta k3] is not that gradient, and E_{pi_old}[rho grad beta k3] is."""
    beta = 0.04
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(5, generator=gen, dtype=F64, requires_grad=True)
    ref = torch.softmax(torch.randn(5, generator=gen, dtype=F64), -1)
    old = torch.softmax(theta.detach() + 0.5 * torch.randn(5, generator=gen, dtype=F64), -1)  # an earlier policy
    forward = fd_grad(lambda t: beta * kl(ref, torch.softmax(t, -1)), theta)

    def loss(token, weight=1.0):
        lp = theta.log_softmax(-1)[token].view(1, 1, 1)
        one = torch.ones(1, 1, 1, dtype=F64)
        return weight * grpo.grpo_loss(lp, lp.detach(), ref[token].log() * one, torch.zeros(1, 1, dtype=F64), one,
                                       beta=beta, kl_estimator="k3")  # fmt: skip

    pi = theta.softmax(-1).detach()
    at_first_pass = expected_grad(theta, [(x, pi[x]) for x in range(5)], loss)
    later_pass = expected_grad(theta, [(x, old[x]) for x in range(5)], loss)
    reweighted = expected_grad(theta, [(x, old[x]) for x in range(5)], lambda x: loss(x, pi[x] / old[x]))
    assert_close(at_first_pass, forward)
    assert_close(reweighted, forward)
    assert (later_pass - forward).norm() > 0.1 * forward.norm(), "sampled from pi_old, k3 is not the forward KL"


def test_k3_with_length_normalisation_is_not_parallel_to_forward_kl_at_each_prefix():
    """The token model of the length test, completions of up to 3 tokens, at theta = theta_old and A = 0.
    With a constant normaliser T, the expected gradient of beta * aggregate(k3) on each prefix's row of theta
    is exactly P(prefix) / T * beta grad KL(pi_ref(.|prefix) || pi(.|prefix)). With grpo.py's 1/|o_i| it is not
    parallel to that gradient: |o_i| depends on the tokens after the prefix (EOS now or later)."""
    beta, eos = 0.04, 0
    tree = TokenTree(vocab_size=3, eos=eos, max_len=3)
    gen = torch.Generator().manual_seed(3)
    theta = (torch.randn(tree.n_rows, 3, generator=gen, dtype=F64) * 1.5).requires_grad_(True)
    ref_theta = torch.randn(tree.n_rows, 3, generator=gen, dtype=F64)
    ref_all = tree.logprobs(ref_theta)
    probs = tree.probs(theta).detach()

    def loss(idx, normaliser):
        lp, mask = tree.logprobs(theta)[idx].view(1, 1, -1), tree.mask[idx].view(1, 1, -1)
        L = grpo.grpo_loss(lp, lp.detach(), ref_all[idx].view(1, 1, -1), torch.zeros(1, 1, dtype=F64), mask,
                           beta=beta, kl_estimator="k3")  # fmt: skip
        return L if normaliser == "|o|" else L * tree.lengths[idx] / tree.max_len  # sum / T instead of sum / |o|

    samples = [(i, probs[i]) for i in range(len(tree.sequences))]
    pi, pi_ref = theta.softmax(-1), ref_theta.softmax(-1)
    reach = torch.zeros(tree.n_rows, dtype=F64)  # P(prefix) of each row
    for i, p in samples:
        reach[tree._rows[i, : int(tree.lengths[i])]] += p
    per_prefix = torch.autograd.grad((reach / tree.max_len * beta * (pi_ref * (pi_ref.log() - pi.log())).sum(-1)).sum(),
                                     theta)[0]  # fmt: skip
    assert_close(expected_grad(theta, samples, lambda i: loss(i, "T")), per_prefix)
    by_length = expected_grad(theta, samples, lambda i: loss(i, "|o|"))
    cosines = [cosine(by_length[r], per_prefix[r]) for r in range(tree.n_rows) if per_prefix[r].norm() > 0]
    assert min(cosines) < 0.999, f"1/|o_i| should tilt some prefix's gradient: min cosine {min(cosines):.4f}"
    assert min(cosines) > 0, "but not turn it around"


# ----------------------------------------------------------------------------------------------
# i. Wiring: update() is the loss of the pure functions; sample() and train() feed it the right tensors
# ----------------------------------------------------------------------------------------------
WIRING_ARGS = grpo.Args(max_completion_len=5, d_model=16, n_layers=1, n_heads=2, num_iterations=3,
                        clip_eps=0.1, beta=0.1, max_grad_norm=0.5, learning_rate=0.02)  # fmt: skip


def tiny_policy(seed: int) -> grpo.TinyLM:
    torch.manual_seed(seed)
    policy = grpo.make_policy(WIRING_ARGS).to(F64)
    with torch.no_grad():  # far from uniform, EOS likely enough that completions have several lengths
        policy.head.bias.copy_(torch.randn(len(grpo.VOCAB), dtype=F64))
        policy.head.bias[grpo.EOS] += 1.0
    return policy


def wiring_batch(policy, seed: int, B: int = 3, G: int = 4) -> dict[str, torch.Tensor]:
    """What train() hands update(): a sampled batch, ref_logp from another model, advantages of the rewards."""
    task = grpo.Task("max", torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    prompts, answers = task.training_batch(B, gen)
    batch = grpo.sample(policy, prompts, G, WIRING_ARGS.max_completion_len, grpo.EOS, gen)
    rewards = (torch.rand(B, G, generator=gen) < 0.5).float()  # random, so that every group has an advantage
    with torch.no_grad():
        batch["ref_logp"] = grpo.token_logprobs(tiny_policy(seed + 100), prompts, batch["completions"])
    batch.update(prompts=prompts, rewards=rewards, advantages=grpo.group_advantages(rewards.to(F64)))
    return batch


def grpo_state():
    """(policy, Adam) with Adam's moments warmed up by two updates on another batch, and the batch to check on."""
    policy = tiny_policy(0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=WIRING_ARGS.learning_rate)
    grpo.update(policy, optimizer, wiring_batch(policy, 1), WIRING_ARGS)
    return (policy, optimizer), wiring_batch(policy, 2)


def test_update_is_num_iterations_steps_on_grpo_loss_with_fixed_old_and_ref_logp():
    state, batch = grpo_state()
    args = WIRING_ARGS

    def by_hand(state):
        policy, optimizer = state
        for _ in range(args.num_iterations):  # pi_old is the sampler at every pass: batch["logp"], never recomputed
            logp = grpo.token_logprobs(policy, batch["prompts"], batch["completions"])
            loss = grpo.grpo_loss(logp, batch["logp"], batch["ref_logp"], batch["advantages"], batch["mask"],
                                  args.clip_eps, args.beta, args.kl_estimator)  # fmt: skip
            optimiser_step(optimizer, loss, args.max_grad_norm)

    assert_update_is_hand_built_steps(state, lambda s: grpo.update(*s, batch, args), by_hand)


def test_every_hyperparameter_of_the_loss_reaches_update():
    state, batch = grpo_state()
    changes = {"beta": 0.3, "kl_estimator": "k2", "clip_eps": 0.02, "num_iterations": 2, "max_grad_norm": 0.01}
    assert_each_hyperparameter_changes_the_update(
        state, lambda s, args: grpo.update(*s, batch, args), WIRING_ARGS, changes
    )


def rows(path) -> list[dict[str, float]]:
    """A CSV file's rows, every value a float, without the columns that depend on the clock."""
    clock = ("wall_time", "tokens_per_second")
    return [{k: float(v) for k, v in row.items() if k not in clock} for row in read_csv(path)]


def union_batch(policy) -> dict[str, torch.Tensor]:
    """4 prompts, 3 completions each, halves of 20 and 14 tokens whose longest completions have 5 and 4: a token mean
    or a longest length taken per process is not the batch's."""
    batch = wiring_batch(policy, 28, B=4, G=3)
    batch["p_right"] = batch["logp"][:, 0, 0].exp()  # any [B] column for groups.csv
    return batch


def update_and_log_a_share(rank: int | None, name: str, args, run_dir: str) -> dict:
    """update() of grpo_state()'s policy and warmed-up Adam on union_batch() (rank None), or on process `rank`'s 2 of
    its 4 prompts, then Run.log of that batch into run_dir: the parameters, update()'s statistics and the rows rank 0
    wrote."""
    module = importlib.import_module(name)
    (policy, optimizer), _ = grpo_state()
    batch = union_batch(policy)
    share = batch if rank is None else {k: v[2 * rank : 2 * rank + 2] for k, v in batch.items()}
    stats = module.update(policy, optimizer, share, args)
    args = dataclasses.replace(args, run_dir=run_dir, total_updates=1)
    with module.Run(args, lambda: {"policy": policy.state_dict()}) as run:
        run.log(share, {**stats, "eval_accuracy": 0.5})
    files = {f: rows(os.path.join(run_dir, f)) for f in ("metrics.csv", "groups.csv")} if rank in (0, None) else {}
    return {"parameters": flat_parameters([policy]), "stats": stats, "files": files, "metrics": run.metrics.name}


def train_on_a_share(rank: int, name: str, run_dir: str) -> dict:
    """train() for 2 updates of 4 prompts on process `rank` of 2: the prompts of each batch, the final parameters."""
    module, prompts, trained = importlib.import_module(name), [], []
    real_update = module.update

    def recording_update(policy, optimizer, batch, args):
        prompts.append(batch["prompts"])
        trained[:] = [policy]
        return real_update(policy, optimizer, batch, args)

    module.update = recording_update
    args = module.Args(total_updates=2, prompts_per_update=4, group_size=2, max_completion_len=3, d_model=8,
                       n_layers=1, n_heads=1, device="cpu", run_dir=run_dir)  # fmt: skip
    module.train(args)
    return {"prompts": torch.stack(prompts), "parameters": flat_parameters(trained)}


def with_and_without_clip(args) -> dict:
    """args without the gradient clip, and args: a clipped gradient hides any factor on the loss, such as 1/B."""
    return {"unclipped": dataclasses.replace(args, max_grad_norm=0.0), "clipped": args}


def on_two_processes_as_on_one(rank: int, name: str, args, tmp: str) -> dict:
    """On process `rank` of 2: update_and_log_a_share into tmp/clipped and tmp/unclipped, train_on_a_share into
    tmp/train."""
    update = {
        k: update_and_log_a_share(rank, name, a, os.path.join(tmp, k)) for k, a in with_and_without_clip(args).items()
    }
    return {"update": update, "train": train_on_a_share(rank, name, os.path.join(tmp, "train"))}


def assert_two_processes_update_as_one_on_their_union(name: str, args, tmp_path) -> None:
    """torchrun's split of a batch of 4 prompts into 2 whole groups per process: after update(), with and without the
    gradient clip, the parameters and update()'s statistics on both processes are the one-process ones on all 4
    (float64, rtol 1e-12); rank 0 alone writes, and its metrics.csv and groups.csv rows are those of one process.
    Through train(): the two processes sample different prompts and end with identical parameters; one run dir."""
    lengths = union_batch(grpo_state()[0][0])["mask"].sum(-1)
    assert lengths[:2].sum() != lengths[2:].sum() and lengths[:2].max() != lengths[2:].max()
    two = on_two_processes(on_two_processes_as_on_one, name, args, str(tmp_path / "two"))
    for clip, clip_args in with_and_without_clip(args).items():
        one = update_and_log_a_share(None, name, clip_args, str(tmp_path / "one" / clip))
        for process in two:
            assert_close(process["update"][clip]["parameters"], one["parameters"], rtol=1e-12)
            for k, v in one["stats"].items():
                assert process["update"][clip]["stats"][k] == pytest.approx(v, rel=1e-12, abs=0), (clip, k)
        for f, expected in one["files"].items():
            for row, expected_row in zip(two[0]["update"][clip]["files"][f], expected, strict=True):
                assert row == pytest.approx(expected_row, rel=1e-12, abs=0, nan_ok=True), (clip, f)
        assert sorted(os.listdir(tmp_path / "two" / clip)) == ["groups.csv", "metrics.csv", "model.pt"]
        assert two[1]["update"][clip]["metrics"] == os.devnull, "rank 1 opened a file in the run directory"
    trained = [process["train"] for process in two]
    assert trained[0]["prompts"].shape[:2] == (2, 2), "each of 2 updates must sample 2 of the 4 prompts here"
    assert not torch.equal(trained[0]["prompts"], trained[1]["prompts"]), "both processes sampled the same prompts"
    assert torch.equal(trained[0]["parameters"], trained[1]["parameters"])
    assert len(rows(tmp_path / "two" / "train" / "metrics.csv")) == 2


def test_update_on_two_processes_is_the_update_of_one_on_their_union(tmp_path):
    assert_two_processes_update_as_one_on_their_union("grpo", WIRING_ARGS, tmp_path)


@pytest.mark.parametrize("module", [grpo, dr_grpo], ids=["grpo", "dr_grpo"])  # dr_grpo.py samples as grpo.py does
def test_sampled_tokens_follow_the_stored_log_probabilities(module):
    """20,000 completions of one prompt: the frequency of each first token, and of each second token after the
    commonest first one, against the probability exp(stored logp) the sampler recorded. Each count must lie
    within 5.5 binomial standard deviations: a false alarm (normal approximation, two-sided, Bonferroni over
    at most 26 counts) has probability < 1e-6. Sampling from another distribution than the stored one (a
    temperature, a stale model) moves counts by tens of standard deviations."""
    policy = tiny_policy(0)
    prompt = module.Task("max", torch.device("cpu")).train_prompts[:1]
    n = 20_000
    batch = module.sample(policy, prompt, n, 2, module.EOS, torch.Generator().manual_seed(5))
    tokens, logp = batch["completions"][0], batch["logp"][0]  # [n, 2]

    def check(sampled, stored_logp):
        counts = torch.bincount(sampled, minlength=len(grpo.VOCAB)).to(F64)
        p = torch.zeros(len(grpo.VOCAB), dtype=F64).index_put_((sampled,), stored_logp.exp())  # one value per token
        assert p.sum() <= 1 + 1e-9
        m = len(sampled)
        z = (counts - m * p) / (m * p * (1 - p)).clamp(min=1e-12).sqrt()
        seen = counts > 0
        assert z[seen].abs().max() < 5.5, f"sampling frequencies off the stored probabilities: z = {z[seen]}"
        assert m * (1 - p.sum()) < 5.5 * math.sqrt(m) + 1, "tokens never sampled should carry little probability"

    check(tokens[:, 0], logp[:, 0])
    first = torch.bincount(tokens[:, 0][tokens[:, 0] != grpo.EOS]).argmax()
    after = tokens[:, 0] == first
    check(tokens[after, 1], logp[after, 1])


@pytest.mark.parametrize("module", [grpo, dr_grpo], ids=["grpo", "dr_grpo"])
def test_train_hands_update_the_sampler_logp_the_initial_reference_and_its_advantages(module, monkeypatch, tmp_path):
    """Through train() itself, for 4 updates: batch["ref_logp"] is always the log-probability under the initial
    model (the reference stays frozen while the policy moves), batch["logp"] that of the policy that update()
    is about to change (the sampler), and batch["advantages"] the group advantages of the task's rewards with
    --adv-eps for grpo.py (0.5 here, so that a default in its place would show; dr_grpo.py has no std, so no eps)."""
    eps = {"adv_eps": 0.5} if module is grpo else {}
    args = module.Args(total_updates=4, prompts_per_update=4, group_size=4, max_completion_len=4, **eps,
                       d_model=16, n_layers=1, n_heads=2, device="cpu", run_dir=str(tmp_path))  # fmt: skip
    real_update, seen = module.update, {}

    def checked_update(policy, optimizer, batch, args):
        seen.setdefault("initial", copy.deepcopy(policy))
        prompts, completions, mask = batch["prompts"], batch["completions"], batch["mask"]
        with torch.no_grad():
            initial = module.token_logprobs(seen["initial"], prompts, completions)
            current = module.token_logprobs(policy, prompts, completions)
        assert torch.allclose(batch["ref_logp"] * mask, initial * mask, atol=1e-6), "pi_ref must be the initial model"
        assert torch.allclose(batch["logp"] * mask, current * mask, atol=1e-5), "logp must be the sampler's"
        answers = module.TASKS[args.task](prompts[:, : module.NUM_DIGITS])
        rewards = module.Task.reward(answers, completions)
        assert torch.equal(batch["advantages"], module.group_advantages(rewards, *eps.values()))
        seen["calls"] = seen.get("calls", 0) + 1
        return real_update(policy, optimizer, batch, args)

    monkeypatch.setattr(module, "update", checked_update)
    module.train(args)
    assert seen["calls"] == 4


# ----------------------------------------------------------------------------------------------
# j. The learning rate each update applies: constant, the documented schedule
# ----------------------------------------------------------------------------------------------
def assert_learning_rate_is_constant(module, monkeypatch, tmp_path) -> None:
    """Through train() itself, for 4 updates: every optimiser update() is handed holds --learning-rate in every
    param group (a value no default has, so a hard-coded rate would show), the schedule the script documents:
    none, the same step size for every update."""
    learning_rate = 0.0123
    assert "the same for every update" in module.Args.__dataclass_fields__["learning_rate"].metadata["help"]
    args = module.Args(total_updates=4, prompts_per_update=2, group_size=2, max_completion_len=2, d_model=8,
                       n_layers=1, n_heads=1, learning_rate=learning_rate, run_dir=str(tmp_path))  # fmt: skip
    real_update, applied = module.update, []

    def recording_update(policy, optimizer, batch, args):
        assert isinstance(optimizer, torch.optim.Optimizer)
        applied.append([group["lr"] for group in optimizer.param_groups])
        return real_update(policy, optimizer, batch, args)

    monkeypatch.setattr(module, "update", recording_update)
    module.train(args)
    assert len(applied) == args.total_updates
    assert all(rates == [learning_rate] * len(rates) for rates in applied), applied


def test_learning_rate_is_the_same_for_every_update(monkeypatch, tmp_path):
    assert_learning_rate_is_constant(grpo, monkeypatch, tmp_path)


# ----------------------------------------------------------------------------------------------
# k. Misuse: the limits of one update, run directories, checkpoints this script did not write
# ----------------------------------------------------------------------------------------------
BOTH = pytest.mark.parametrize("module", [grpo, dr_grpo], ids=["grpo", "dr_grpo"])
TINY = ["--prompts-per-update", "2", "--group-size", "2", "--max-completion-len", "2", "--d-model", "8", "--n-layers",
        "1", "--n-heads", "1", "--num-iterations", "1"]  # fmt: skip


def largest_update(module) -> dict[str, int]:
    """The most work one update may do at the default width and depth: the longest completions, and as many prompts
    as the bound on tokens x layers x width^2 allows."""
    T, G = module.MAX_COMPLETION_LEN, 8
    B = module.MAX_WORK // (G * (module.NUM_DIGITS + 1 + T) * 2 * 64**2)
    return {"max_completion_len": T, "group_size": G, "prompts_per_update": B}


def flags(settings: dict) -> list[str]:
    return [x for name, value in settings.items() for x in ("--" + name.replace("_", "-"), str(value))]


def refused(module, argv: list[str], capsys) -> str:
    """main(argv) exits 2 with one line on stderr and no traceback; that line."""
    assert module.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@BOTH
def test_the_limits_of_one_update_are_bad_input(module, tmp_path, capsys):
    """--max-completion-len above MAX_COMPLETION_LEN, and one prompt more than the largest update allows: one line
    that names the flag and the limit, exit 2, nothing written. The largest update itself is accepted."""
    limit, largest = module.MAX_COMPLETION_LEN, largest_update(module)
    cheap = ["--total-updates", "1", "--num-iterations", "1", "--run-dir", str(tmp_path / "run")]  # if not refused
    err = refused(module, ["--max-completion-len", str(limit + 1), *TINY[:4], *cheap], capsys)
    assert "--max-completion-len" in err and f"<= {limit}" in err, err
    module.validate(module.Args(**largest))
    one_more = {**largest, "prompts_per_update": largest["prompts_per_update"] + 1, "d_model": 8, "n_heads": 1}
    err = refused(module, [*flags(one_more), *cheap], capsys)  # width 8 counts as 64: still too much work
    assert "--prompts-per-update" in err and str(module.MAX_WORK) in err, err
    assert not (tmp_path / "run").exists()


@BOTH
def test_prompts_that_do_not_split_over_the_processes_are_bad_input(module, monkeypatch, tmp_path, capsys):
    """Under torchrun (its WORLD_SIZE), --prompts-per-update is the total: 3 prompts on 2 processes is refused before
    any process group or run directory, with one line naming the flag; 4 pass validate()."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = refused(module, [*TINY[2:], "--prompts-per-update", "3", "--run-dir", str(tmp_path / "run")], capsys)
    assert "--prompts-per-update 3 must split evenly over 2 processes" in err, err
    assert not (tmp_path / "run").exists()
    module.validate(module.Args(prompts_per_update=4))


@BOTH
def test_sigterm_during_the_largest_backward_pass_ends_the_run_within_seconds(module, monkeypatch, tmp_path):
    """The longest stretch in which Python cannot run a signal handler is one backward pass of update(). At the
    largest update the bounds allow (sampling replaced by random completions of full length, so the test need not
    wait for it), a SIGTERM sent during the first backward pass ends the run, saved, with exit status 143 within
    20 seconds, and leaves no temporary file."""
    real_backward, in_backward, sent = torch.Tensor.backward, threading.Event(), []

    def backward(self, *args, **kwargs):
        in_backward.set()
        return real_backward(self, *args, **kwargs)

    def full_length_sample(policy, prompts, group_size, max_len, eos, generator, greedy=False):
        completions = torch.randint(0, eos, (len(prompts), group_size, max_len), generator=generator)  # no eos
        with torch.no_grad():
            logp = module.token_logprobs(policy, prompts, completions)
        return {
            "completions": completions,
            "logp": logp,
            "mask": torch.ones_like(logp),
            "entropy": torch.zeros_like(logp),
        }

    def terminate():
        if in_backward.wait(timeout=300):
            time.sleep(0.5)  # well inside the backward pass, which takes seconds here
            sent.append(time.time())
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    monkeypatch.setattr(module, "sample", full_length_sample)
    threading.Thread(target=terminate, daemon=True).start()
    run = tmp_path / "run"
    argv = [*flags(largest_update(module)), "--num-iterations", "1", "--log-interval", "1000", "--run-dir", str(run)]
    with pytest.raises(SystemExit) as stop:  # SIGTERM: sys.exit(143), once the run is saved
        module.main(argv)
    assert stop.value.code == 143
    assert time.time() - sent[0] < 20, f"SIGTERM took {time.time() - sent[0]:.1f} s to act"
    assert sorted(os.listdir(run)) == ["groups.csv", "metrics.csv", "model.pt"]
    assert torch.load(run / "model.pt", weights_only=True)["global_step"] == 0


@BOTH
@pytest.mark.parametrize("damage", ["a length over the limit", "a string for the width", "no weights"])
def test_a_checkpoint_this_script_did_not_write_is_refused(module, damage, tmp_path, capsys):
    """Beyond tests/test_command_line.py's damaged checkpoints: args whose network the weights do not fit, or that
    build none, or no weights. --eval exits 2 with one line naming the file, no traceback."""
    run = tmp_path / "run"
    assert module.main([*TINY, "--total-updates", "1", "--run-dir", str(run)]) == 0
    state = torch.load(run / "model.pt", weights_only=True)
    if damage == "a string for the width":
        state["args"]["d_model"] = "8"
    elif damage == "a length over the limit":
        state["args"]["max_completion_len"] = 100_000
    else:
        del state["policy"]
    torch.save(state, tmp_path / "damaged.pt")
    capsys.readouterr()
    err = refused(module, ["--eval", str(tmp_path / "damaged.pt")], capsys)
    assert str(tmp_path / "damaged.pt") in err, err


@BOTH
def test_a_checkpoint_trained_on_cuda_evaluates_on_a_cpu(module, tmp_path, capsys):
    """The device is where a run trained, not part of what the checkpoint is: --device cuda in its args does not make
    --eval --device cpu refuse it where CUDA is missing."""
    run = tmp_path / "run"
    assert module.main([*TINY, "--total-updates", "1", "--run-dir", str(run)]) == 0
    state = torch.load(run / "model.pt", weights_only=True)
    state["args"]["device"] = "cuda"
    torch.save(state, tmp_path / "cuda.pt")
    assert module.main(["--eval", str(tmp_path / "cuda.pt"), "--device", "cpu"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("module", [grpo, dr_grpo], ids=["grpo", "dr_grpo"])
def test_train_steps_every_parameter_of_the_policy_it_builds_and_not_the_reference(module, tmp_path, monkeypatch):
    """The networks train() builds, through its first update(): the optimiser holds exactly the policy's parameters;
    the update moves every one of them, and not one of the frozen reference's, which rollout() is handed."""
    args = module.Args(total_updates=1, prompts_per_update=16, group_size=8, d_model=16, n_layers=1, n_heads=2,
                       device="cpu", run_dir=str(tmp_path / "run"))  # fmt: skip
    first = first_update_of_train(module, args, monkeypatch, also=("rollout",))
    (policy, optimizer), reference = first.calls["update"][:2], first.calls["rollout"][1]
    assert_optimisers_hold_each_parameter_once([optimizer], policy)
    assert all(first.moved(policy).values()), first.moved(policy)
    assert not any(first.moved(reference).values()) and not any(p.requires_grad for p in reference.parameters())
