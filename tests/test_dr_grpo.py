"""dr_grpo.py: its loss is the policy gradient up to a known constant, exactly, on problems small enough to enumerate.

tests/test_grpo.py proves what GRPO's gradient equals and how far it is from grad J. Here the same
enumerations show that Dr. GRPO's expected gradient at theta = theta_old is (G - 1)/(G T) grad J: no
weight that depends on a prompt's success rate, and no pull on how long a completion is.
"""

import math
import re
from dataclasses import fields

import pytest
import torch
from exact import (
    F64,
    TokenTree,
    assert_close,
    bandit,
    conditional_advantages,
    every_group,
    expected_grad,
    fd_grad,
    one_group_per_prompt,
)
from runs import short_grpo_run_learns_and_eval_reloads
from test_grpo import (
    EPS,
    KL_DIRECTIONS,
    WIRING_ARGS,
    assert_kl_penalty_gradient,
    assert_learning_rate_is_constant,
    grpo_advantage,
    grpo_state,
)
from wiring import assert_each_hyperparameter_changes_the_update, assert_update_is_hand_built_steps, optimiser_step

import dr_grpo
import grpo


def dr_loss_at_old_policy(logp: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, max_len: int):
    """dr_grpo.py's loss at theta = theta_old, beta = 0, from [B, G, T] log-probs (with grad) and [B, G] rewards."""
    advantages = dr_grpo.group_advantages(rewards)
    return dr_grpo.grpo_loss(logp, logp.detach(), logp.detach(), advantages, mask, max_len, clip_eps=0.2, beta=0.0)


def grpo_loss_at_old_policy(logp: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same for grpo.py, whose loss divides by the std and by |o_i|."""
    advantages = grpo.group_advantages(rewards, EPS)
    return grpo.grpo_loss(logp, logp.detach(), logp.detach(), advantages, mask, clip_eps=0.2, beta=0.0)


def tree_problem(max_len: int = 3, seed: int = 3):
    """The token model of tests/exact.py over {EOS, right, wrong}: the reward is 1 when the first token is
    `right`, whatever follows, and theta is random, so the length of a completion depends on its first token."""
    eos, right, wrong = 0, 1, 2
    tree = TokenTree(vocab_size=3, eos=eos, max_len=max_len)
    theta = torch.randn(tree.n_rows, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) * 1.5
    rewards = torch.tensor([float(s[0] == right) for s in tree.sequences], dtype=F64)
    return tree, theta.requires_grad_(True), rewards, (eos, right, wrong)


def tree_expected_grad(tree: TokenTree, theta, rewards, G: int, loss_at_old_policy) -> torch.Tensor:
    """E[grad L] over every group of G completions of the token model, L = loss_at_old_policy(logp, r, mask)."""
    logp_all = tree.logprobs(theta)

    def loss(group):
        idx = torch.tensor(group)
        return loss_at_old_policy(logp_all[idx][None], rewards[idx][None], tree.mask[idx][None])

    return expected_grad(theta, every_group(tree.probs(theta).detach(), G), loss)


# ----------------------------------------------------------------------------------------------
# a. The expected gradient is (G - 1)/(G T) grad J
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("G", [2, 4])
def test_expected_gradient_is_scaled_grad_J_on_bandits_of_different_difficulty(G):
    """Two prompts (two-armed bandits, arm 0 right) solved with probability 0.1 and 0.5, one group of G
    each, every pair of groups enumerated, T = 3. GRPO weighs the two prompts by w(p) (tests/test_grpo.py);
    Dr. GRPO's E[-grad L] = (G - 1)/(G T) grad J, J the mean success rate over the two prompts."""
    T, B = 3, 2
    problem = bandit([1.0, 0.0])
    theta = torch.tensor([[-1.1, 1.1], [0.3, 0.3]], dtype=F64, requires_grad=True)
    logp = torch.log_softmax(theta, -1)

    def loss(batch):
        arms = torch.tensor(batch)  # [B, G]
        logp_b = logp.gather(1, arms).unsqueeze(-1)  # [B, G, 1]: one token per completion
        return dr_loss_at_old_policy(logp_b, (arms == 0).to(F64), torch.ones_like(logp_b), T)

    grad_L = expected_grad(theta, one_group_per_prompt(logp.exp().detach(), G), loss)
    grad_J = fd_grad(lambda t: sum(problem.J(torch.softmax(t, -1)[q : q + 1], 1.0) for q in range(B)) / B, theta)
    assert_close(-grad_L, (G - 1) / (G * T) * grad_J)


def test_expected_gradient_is_scaled_grad_J_on_the_token_model():
    """Completions of 1 to 3 tokens ending in EOS, whose length depends on their first token; every group of
    G = 3 enumerated: E[-grad L] = (G - 1)/(G T) grad J with T = 3 on every row of theta."""
    G = 3
    tree, theta, rewards, _ = tree_problem()
    grad_L = tree_expected_grad(tree, theta, rewards, G, lambda lp, r, m: dr_loss_at_old_policy(lp, r, m, tree.max_len))
    grad_J = fd_grad(lambda t: (tree.probs(t) * rewards).sum(), theta)
    assert_close(-grad_L, (G - 1) / (G * tree.max_len) * grad_J)


# ----------------------------------------------------------------------------------------------
# b. No pull toward long wrong completions: Dr. GRPO against GRPO on the same token model
# ----------------------------------------------------------------------------------------------
def test_no_pull_toward_longer_wrong_completions():
    """The reward is decided by the first token, so grad J is 0 on every row of theta that acts after it:
    J does not care how a completion goes on. On the rows after a wrong first token, Dr. GRPO's expected
    gradient is exactly 0 too, while GRPO's is the one its 1/|o_i| predicts,
        E[-grad L]_rows = pi(wrong) a_wrong grad E[1/|o| | o_1 = wrong],   a_wrong = E[A_i | r_i = 0] < 0,
    which lengthens the wrong completions: the expected length E[|o| | o_1 = wrong] grows along it.
    After a right first token it is pi(right) a_right grad E[1/|o| | o_1 = right], which shortens them."""
    G = 3
    tree, theta, rewards, (_, right, wrong) = tree_problem()
    lengths = tree.lengths

    def given_first(t, token, f):  # E[f(|o|) | o_1 = token] under pi_t
        probs = tree.probs(t)
        starts = torch.tensor([s[0] == token for s in tree.sequences], dtype=F64)
        return (probs * starts * f(lengths)).sum() / (probs * starts).sum()

    def rate(t, token):  # pi(o_1 = token)
        return torch.softmax(t[tree.prefixes.index(())], -1)[token]

    assert abs(given_first(theta, right, lambda n: n) - given_first(theta, wrong, lambda n: n)) > 0.2, "the premise"
    grad_J = fd_grad(lambda t: (tree.probs(t) * rewards).sum(), theta)
    dr = -tree_expected_grad(tree, theta, rewards, G, lambda lp, r, m: dr_loss_at_old_policy(lp, r, m, tree.max_len))
    gr = -tree_expected_grad(tree, theta, rewards, G, grpo_loss_at_old_policy)
    p = float(rate(theta.detach(), right))
    a_right, a_wrong = conditional_advantages(p, G, grpo_advantage)
    assert a_wrong < 0 < a_right

    for token, a, sign in [(wrong, a_wrong, +1), (right, a_right, -1)]:
        rows = tree.rows_after((token,))
        assert grad_J[rows].abs().max() < 1e-9 * grad_J.norm(), "J does not depend on the rows after o_1"
        assert dr[rows].abs().max() < 1e-12 * dr.norm(), f"Dr. GRPO moves the rows after token {token}"
        inverse_length = fd_grad(lambda t, token=token: given_first(t, token, lambda n: 1 / n), theta)
        predicted = float(rate(theta.detach(), token)) * a * inverse_length
        assert_close(gr[rows], predicted[rows])
        growth = fd_grad(lambda t, token=token: given_first(t, token, lambda n: n), theta)[rows].flatten()
        assert sign * float(growth @ gr[rows].flatten()) > 0.01 * growth.norm() * gr[rows].norm(), (
            f"GRPO should make completions that start with {token} {'longer' if sign > 0 else 'shorter'}"
        )


# ----------------------------------------------------------------------------------------------
# c. The constant normaliser, and padding
# ----------------------------------------------------------------------------------------------
def batch_with_lengths(lengths: list[list[int]], T: int, seed: int = 0):
    """logp (with grad), old_logp, ref_logp [B, G, T], binary rewards [B, G] and the mask of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    B, G = len(lengths), len(lengths[0])
    mask = (torch.arange(T) < torch.tensor(lengths, dtype=torch.long)[..., None]).to(F64)
    old_logp = -torch.rand(B, G, T, generator=g, dtype=F64) * 2 - 0.1
    logp = (old_logp + 0.1 * torch.randn(B, G, T, generator=g, dtype=F64)).requires_grad_(True)
    ref_logp = old_logp + 0.3 * torch.randn(B, G, T, generator=g, dtype=F64)
    rewards = torch.tensor([[float((b + i) % 3 == 0) for i in range(G)] for b in range(B)], dtype=F64)
    return logp, old_logp, ref_logp, rewards, mask


@pytest.mark.parametrize("padding", [float("-inf"), -1e4, float("nan"), "theta"])
def test_padding_changes_neither_loss_nor_gradient(padding):
    """Three more positions, masked out, holding -inf, -1e4, NaN, or log-probabilities that depend on theta:
    the loss and its gradient are those of the unpadded batch, to the last bit, with beta > 0 (k3 and
    the clip both see the padding)."""
    T, extra = 5, 3
    logp, old_logp, ref_logp, rewards, mask = batch_with_lengths([[1, 5, 3, 2], [4, 4, 1, 5]], T)
    adv = dr_grpo.group_advantages(rewards)
    loss = dr_grpo.grpo_loss(logp, old_logp, ref_logp, adv, mask, T, clip_eps=0.2, beta=0.1)
    (grad,) = torch.autograd.grad(loss, logp)

    B, G = rewards.shape
    theta = torch.zeros((), dtype=F64, requires_grad=True)  # the padding has a graph back to theta
    fill = theta * 1e4 - 1e4 if padding == "theta" else padding + 0 * theta
    logp_pad = torch.cat([logp, fill.expand(B, G, extra)], -1)
    pad = torch.full((B, G, extra), -1e4 if padding == "theta" else padding, dtype=F64)
    mask_pad = torch.cat([mask, torch.zeros(B, G, extra, dtype=F64)], -1)
    padded = dr_grpo.grpo_loss(logp_pad, torch.cat([old_logp, pad], -1), torch.cat([ref_logp, pad], -1), adv,
                               mask_pad, T, clip_eps=0.2, beta=0.1)  # fmt: skip
    grad_logp, grad_theta = torch.autograd.grad(padded, [logp, theta])
    assert padded.item() == loss.item()
    assert torch.equal(grad_logp, grad)
    assert grad_theta.item() == 0.0, "the padding must get a zero gradient, not NaN"


@pytest.mark.parametrize("padding", [float("nan"), float("inf")])
def test_aggregate_selects_masked_positions_out(padding):
    """aggregate() on its own, as a user might copy it: masked positions holding NaN or inf change nothing."""
    per_token = torch.tensor([[[1.0, 2.0, padding], [3.0, padding, padding]]], dtype=F64)
    mask = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]], dtype=F64)
    assert dr_grpo.aggregate(per_token, mask, 4).item() == ((1 + 2) / 4 + 3 / 4) / 2


def test_a_completions_weight_does_not_depend_on_its_length():
    """At theta = theta_old and beta = 0, d L / d log pi(o_i,t) = -A_i / (B G N_i) for each of o_i's tokens,
    with N_i = |o_i| in grpo.py and N_i = T in dr_grpo.py. Lengthening one completion by two tokens divides
    its per-token weight by (|o_i| + 2)/|o_i| in grpo.py and leaves it unchanged in dr_grpo.py, and leaves
    every other completion's weight unchanged in both."""
    T = 6
    B, G = 2, 3
    base = [[1, 3, 6], [2, 2, 4]]
    longer = [[3, 3, 6], [2, 2, 4]]  # completion (0, 0) goes from 1 token to 3

    def weights(lengths, script):
        logp, _, _, rewards, mask = batch_with_lengths(lengths, T)
        if script is dr_grpo:
            adv = dr_grpo.group_advantages(rewards)
            loss = dr_grpo.grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, T, beta=0.0)
        else:
            adv = grpo.group_advantages(rewards, EPS)
            loss = grpo.grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.0)
        (grad,) = torch.autograd.grad(loss, logp)
        n = mask.sum(-1, keepdim=True) if script is grpo else T
        assert_close(grad, -adv.detach()[..., None] * mask / (B * G * n), rtol=1e-12)
        return grad[..., 0], adv

    for script in (grpo, dr_grpo):
        w0, adv = weights(base, script)
        w1, _ = weights(longer, script)
        assert adv[0, 0] != 0, "the completion whose length changes carries an advantage"
        scale = base[0][0] / longer[0][0] if script is grpo else 1.0
        assert math.isclose(w1[0, 0].item(), scale * w0[0, 0].item(), rel_tol=1e-12), script.__name__
        assert torch.equal(w1.flatten()[1:], w0.flatten()[1:])


def test_group_advantages_no_std_and_refuses_bad_shapes():
    rewards = torch.tensor([[2, 0, 1], [1, 0, 0], [1, 1, 1]])  # integer rewards are accepted
    expected = torch.tensor([[1.0, -1.0, 0.0], [2 / 3, -1 / 3, -1 / 3], [0.0, 0.0, 0.0]])
    assert_close(dr_grpo.group_advantages(rewards), expected, rtol=1e-6)
    assert torch.equal(dr_grpo.group_advantages(rewards > 0), dr_grpo.group_advantages((rewards > 0).float()))
    for bad in (torch.ones(6), torch.ones(3, 1), torch.ones(2, 3, 4)):
        with pytest.raises(ValueError, match="G >= 2"):
            dr_grpo.group_advantages(bad)


# ----------------------------------------------------------------------------------------------
# Wiring: update() applies exactly dr_grpo's loss, and every hyperparameter of the loss reaches it
# ----------------------------------------------------------------------------------------------
DR_WIRING_ARGS = dr_grpo.Args(**{f.name: getattr(WIRING_ARGS, f.name) for f in fields(dr_grpo.Args)})


def test_update_is_num_iterations_steps_on_the_dr_grpo_loss():
    """On test_grpo.py's small batch and warmed-up Adam: update() makes the same parameter change as
    num_iterations optimiser steps on grpo_loss(..., max_len = --max-completion-len) built by hand, with pi_old
    the sampler at every pass."""
    state, batch = grpo_state()
    args = DR_WIRING_ARGS

    def by_hand(state):
        policy, optimizer = state
        for _ in range(args.num_iterations):
            logp = dr_grpo.token_logprobs(policy, batch["prompts"], batch["completions"])
            loss = dr_grpo.grpo_loss(logp, batch["logp"], batch["ref_logp"], batch["advantages"], batch["mask"],
                                     args.max_completion_len, args.clip_eps, args.beta, args.kl_estimator)  # fmt: skip
            optimiser_step(optimizer, loss, args.max_grad_norm)

    assert_update_is_hand_built_steps(state, lambda s: dr_grpo.update(*s, batch, args), by_hand)


def test_every_hyperparameter_of_the_loss_reaches_update():
    """The constant normaliser included: --max-completion-len 7 on a batch whose completions have at most 5 tokens
    changes the update (a normaliser read from the batch's width would not)."""
    state, batch = grpo_state()
    changes = {"beta": 0.3, "kl_estimator": "k2", "clip_eps": 0.02, "num_iterations": 2, "max_grad_norm": 0.01,
               "max_completion_len": 7}  # fmt: skip
    assert_each_hyperparameter_changes_the_update(
        state, lambda s, args: dr_grpo.update(*s, batch, args), DR_WIRING_ARGS, changes
    )


# ----------------------------------------------------------------------------------------------
# d. End to end (the same seed giving the same metrics.csv is in tests/test_command_line.py)
# ----------------------------------------------------------------------------------------------
def test_short_run_learns_and_eval_reloads(tmp_path):
    """60 updates where grpo.py's test takes 40: with beta = 0 and no std division, seed 1 is at 0.455 after 40."""
    short_grpo_run_learns_and_eval_reloads("dr_grpo", tmp_path, updates=60)


# ----------------------------------------------------------------------------------------------
# e. What the docstring states: the defaults, the KL penalty, the learning rate
# ----------------------------------------------------------------------------------------------
def stated_defaults(doc: str) -> dict[str, str]:
    """Every default the docstring states: each `--flag value` of its paragraph that starts with "Defaults",
    and each "<name> defaults to <value>" anywhere in it. Keys are Args field names."""
    paragraph = doc.split("\nDefaults", 1)[1].split("\n\n", 1)[0]
    flags = re.findall(r"--([a-z][a-z-]*) ([^\s,()]+)", paragraph)
    prose = re.findall(r"\b([a-z_]+) defaults to ([^\s,;]+)", doc)
    return {name.replace("-", "_"): value.rstrip(".") for name, value in flags + prose}


def test_defaults_are_the_ones_the_docstring_states():
    """The docstring's stated defaults, every one, equal Args's: changing a default without its docstring fails.
    And it states each default of the loss and of the schedule, beta = 0 first (the paper's, not grpo.py's)."""
    stated = stated_defaults(dr_grpo.__doc__)
    loss = {"beta", "kl_estimator", "clip_eps", "num_iterations", "group_size", "max_completion_len", "learning_rate"}
    assert loss <= set(stated), f"the docstring does not state {loss - set(stated)}"
    defaults = dr_grpo.Args()
    for name, value in stated.items():
        default = getattr(defaults, name)
        assert default == type(default)(value), f"the docstring says {name} = {value}, Args has {default!r}"
    assert defaults.beta == 0.0 != grpo.Args().beta


@pytest.mark.parametrize("estimator, direction", KL_DIRECTIONS)
def test_kl_penalty_gradient(estimator, direction):
    """dr_grpo.py's own kl_penalty() and grpo_loss(): with max_len = T = 3 and A = 0, T times the loss of a
    one-token completion has the expected gradient beta grad KL(pi_ref || pi) (k3) or beta grad KL(pi || pi_ref)
    (k2): the penalty pulls toward pi_ref, divided by the constant T like every token's term."""
    T = 3

    def loss(lp, ref_lp, beta):
        one = torch.ones(1, 1, 1, dtype=F64)
        return T * dr_grpo.grpo_loss(lp, lp.detach(), ref_lp, torch.zeros(1, 1, dtype=F64), one, T, beta=beta,
                                     kl_estimator=estimator)  # fmt: skip

    assert_kl_penalty_gradient(dr_grpo, estimator, direction, loss)


def test_learning_rate_is_the_same_for_every_update(monkeypatch, tmp_path):
    assert_learning_rate_is_constant(dr_grpo, monkeypatch, tmp_path)
