"""trpo.py: the Fisher-vector product against the exact Fisher matrix and against finite differences, conjugate
gradient against a dense solve and its theory, the surrogate's gradient against grad J on the exact MDP, the
trust-region step and line search on a small network, the wiring of update() (and its learning rate),
and short real runs.

Everything exact is float64. The Fisher matrix is formed densely only here, to check the products that the
script uses instead.
"""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from exact import F64, MDP, THETA, assert_close, expected_grad, fd_grad, trajectory_log_probs, true_grad
from runs import eval_mean_return, read_csv, short_run_improves
from wiring import (
    assert_each_hyperparameter_changes_the_update,
    assert_optimisers_hold_each_parameter_once,
    assert_update_is_hand_built_steps,
    first_update_of_train,
    ids,
    optimiser_step,
    record_learning_rates,
    rollout_batch,
)

import actor_critic as ac
import trpo


def flat_params(module):
    """Every parameter of module, flattened and concatenated in parameters() order: [P], detached."""
    return torch.nn.utils.parameters_to_vector(module.parameters()).detach()


def small_policy(action_space, obs_dim=3, hidden=4, seed=0):
    """A float64 trpo.Policy small enough to form its Fisher matrix, with a non-trivial output layer (the
    script's 0.01 gain would make every policy nearly uniform) and, for a Gaussian, a non-zero log-std."""
    torch.manual_seed(seed)
    policy = trpo.Policy(obs_dim, action_space, hidden).double()
    with torch.no_grad():
        policy.net[-1].weight.normal_(0.0, 1.0)
        if not policy.discrete:
            policy.log_std.copy_(torch.linspace(-0.5, 0.3, len(policy.log_std)))
    return policy


def policy_functions(policy, obs, actions, advantages):
    """(surrogate_at, mean_kl): the surrogate L(theta) and the mean KL(pi_old || pi_theta) on a batch, as functions
    of the flat parameter vector, written here from the script's pure functions with pi_old the policy as it is."""

    def dist_at(theta):
        return torch.func.functional_call(policy, trpo.unflatten(policy, theta), (obs,))

    with torch.no_grad():
        old_dist = dist_at(flat_params(policy))
        old_log_probs = old_dist.log_prob(actions)

    def surrogate_at(theta):
        return trpo.surrogate(dist_at(theta).log_prob(actions), old_log_probs, advantages)

    def mean_kl(theta):
        return trpo.mean_kl(old_dist, dist_at(theta))

    return surrogate_at, mean_kl


DISCRETE, BOX = gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,))


def random_batch(action_space, B=16, obs_dim=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, obs_dim, generator=g, dtype=F64)
    if isinstance(action_space, gym.spaces.Discrete):
        actions = torch.randint(0, action_space.n, (B,), generator=g)
    else:
        actions = torch.randn(B, action_space.shape[0], generator=g, dtype=F64)
    return obs, actions, torch.randn(B, generator=g, dtype=F64)


# ----------------------------------------------------------------------------------------------
# Rollouts, time limits and GAE are actor_critic.py's, which tests/test_actor_critic.py proves
# ----------------------------------------------------------------------------------------------
gym.register(
    "CartPoleCutAt15-v0", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv", max_episode_steps=15
)


def test_rollout_and_gae_are_actor_critics():
    """The same policy weights and seeds give the same batch, the same episode ends and the same advantages, on an
    environment whose episodes end both ways (the pole falls: terminated; 15 steps: truncated)."""
    results = []
    for module in (ac, trpo):
        envs = module.make_envs("CartPoleCutAt15-v0", 3)
        obs, _ = envs.reset(seed=0)
        carry = {"obs": obs, "episode_return": np.zeros(3), "episode_length": np.zeros(3, int)}
        torch.manual_seed(0)
        policy, value_net = module.Policy(4, envs.single_action_space, 8), module.ValueNet(4, 8)
        ended = []
        batch = module.rollout(envs, policy, carry, 40, torch.device("cpu"), lambda *e, ended=ended: ended.append(e))
        results.append((batch, ended, module.advantages_and_targets(value_net, batch, 0.9, 0.8)))
    (batch, ended, advantages), (trpo_batch, trpo_ended, trpo_advantages) = results
    assert batch["terminated"].sum() > 0 and batch["truncated"].sum() > 0
    assert batch.keys() == trpo_batch.keys() and all(torch.equal(batch[k], trpo_batch[k]) for k in batch)
    assert ended == trpo_ended and all(torch.equal(a, b) for a, b in zip(advantages, trpo_advantages, strict=True))


def test_gae_takes_the_bool_arrays_gymnasium_returns():
    """terminated / truncated as bool numpy arrays (what a Gymnasium step() returns) or bool tensors give exactly
    the advantages of their 0.0 / 1.0 float forms, in the rewards' dtype."""
    g = torch.Generator().manual_seed(0)
    rewards, values, next_values = torch.randn(3, 12, 4, generator=g, dtype=F64)
    terminated = torch.rand(12, 4, generator=g) < 0.2
    truncated = ~terminated & (torch.rand(12, 4, generator=g) < 0.2)
    assert terminated.any() and truncated.any()
    expected = trpo.gae(rewards, values, next_values, terminated.to(F64), truncated.to(F64), 0.9, 0.8)
    for terminated_as_given, truncated_as_given in ((terminated, truncated), (terminated.numpy(), truncated.numpy())):
        advantages = trpo.gae(rewards, values, next_values, terminated_as_given, truncated_as_given, 0.9, 0.8)
        assert advantages.dtype == F64 and torch.equal(advantages, expected)


# ----------------------------------------------------------------------------------------------
# a. The Fisher-vector product
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action_space", [DISCRETE, BOX], ids=["categorical", "gaussian"])
def test_forward_is_the_policy_that_acts(action_space):
    """forward()'s distribution, the one the trust-region step differentiates, is the policy of log_prob_entropy()
    and act(): the same log-probabilities (of every action, for a Categorical) and entropies, and act()'s greedy
    action is its mode."""
    policy = small_policy(action_space)
    obs, actions, _ = random_batch(action_space)
    every_action = [torch.full_like(actions, a) for a in range(action_space.n)] if policy.discrete else [actions]
    with torch.no_grad():
        dist = policy(obs)
        for a in every_action:
            log_probs, entropy = policy.log_prob_entropy(obs, a)
            assert_close(dist.log_prob(a), log_probs, rtol=1e-12)
        assert_close(dist.entropy(), entropy, rtol=1e-12)
    assert torch.equal(dist.mode, policy.act(obs, greedy=True))


def test_mean_kl_is_the_closed_forms_in_the_right_direction():
    """mean_s KL(pi_old || pi) of the policy's two kinds of distribution, against the closed forms written out
    here: sum_a p_old (log p_old - log p), and for diagonal Gaussians sum_d [log(s_d / s_old,d)
    + (s_old,d^2 + (m_old,d - m_d)^2) / (2 s_d^2) - 1/2]; the two directions differ on these inputs."""
    g = torch.Generator().manual_seed(0)
    old_logits, logits = torch.randn(2, 5, 4, generator=g, dtype=F64).log_softmax(-1)
    categorical = torch.distributions.Categorical
    expected = (old_logits.exp() * (old_logits - logits)).sum(-1).mean()
    reverse = (logits.exp() * (logits - old_logits)).sum(-1).mean()
    assert_close(trpo.mean_kl(categorical(logits=old_logits), categorical(logits=logits)), expected, rtol=1e-12)
    assert abs(expected - reverse) > 0.01 * expected  # so a swapped direction cannot pass
    old_mean, mean = torch.randn(2, 5, 3, generator=g, dtype=F64)
    old_log_std, log_std = torch.randn(2, 3, generator=g, dtype=F64)
    gaussian = lambda m, s: torch.distributions.Independent(torch.distributions.Normal(m, s.exp()), 1)  # noqa: E731

    def closed_form(old_mean, old_log_std, mean, log_std):
        var_ratio, mean_term = torch.exp(2 * (old_log_std - log_std)), (old_mean - mean) ** 2 * torch.exp(-2 * log_std)
        return (log_std - old_log_std + 0.5 * (var_ratio + mean_term) - 0.5).sum(-1).mean()

    expected = closed_form(old_mean, old_log_std, mean, log_std)
    reverse = closed_form(mean, log_std, old_mean, old_log_std)
    kl = trpo.mean_kl(gaussian(old_mean, old_log_std), gaussian(mean, log_std))
    assert_close(kl, expected, rtol=1e-12)
    assert abs(expected - reverse) > 0.01 * expected


def test_fisher_vector_product_is_the_exact_fisher_matrix_of_a_tabular_softmax_policy():
    """pi(.|s) = softmax(theta[s]) on the states of a batch (with repeats): F = mean_s sum_a pi(a|s) u u^T with
    u = grad log pi(a|s) = (e_a - pi(.|s)) in row s, formed densely, against the product by double backprop."""
    S, A = THETA.shape
    states = [0, 1, 2, 2, 3, 4, 4, 4]
    old_policy = torch.distributions.Categorical(logits=THETA[states])

    def mean_kl(theta):
        return trpo.mean_kl(old_policy, torch.distributions.Categorical(logits=theta.view(S, A)[states]))

    pi = torch.softmax(THETA, -1)
    F = torch.zeros(S * A, S * A, dtype=F64)
    for s in states:
        for a in range(A):
            u = torch.zeros(S, A, dtype=F64)
            u[s] = -pi[s]
            u[s, a] += 1.0
            F += pi[s, a] * torch.outer(u.view(-1), u.view(-1)) / len(states)
    v = torch.randn(S * A, generator=torch.Generator().manual_seed(5), dtype=F64)
    theta_old = THETA.reshape(-1)
    assert_close(trpo.fisher_vector_product(mean_kl, theta_old, damping=0.0)(v), F @ v, rtol=1e-10)
    assert_close(trpo.fisher_vector_product(mean_kl, theta_old, damping=0.3)(v), F @ v + 0.3 * v, rtol=1e-10)


@pytest.mark.parametrize("action_space", [DISCRETE, BOX], ids=["categorical", "gaussian"])
def test_fisher_vector_product_is_the_derivative_of_the_kl_gradient(action_space):
    """F v = d/de grad KL(theta_old + e v) at e = 0, by central differences of autograd's first gradient."""
    policy = small_policy(action_space)
    obs, actions, advantages = random_batch(action_space)
    _, mean_kl = policy_functions(policy, obs, actions, advantages)
    theta_old = flat_params(policy)
    v = torch.randn(len(theta_old), generator=torch.Generator().manual_seed(2), dtype=F64)

    def kl_grad(theta):
        theta = theta.detach().requires_grad_(True)
        return torch.autograd.grad(mean_kl(theta), theta)[0]

    eps = 1e-5
    expected = (kl_grad(theta_old + eps * v) - kl_grad(theta_old - eps * v)) / (2 * eps)
    assert_close(trpo.fisher_vector_product(mean_kl, theta_old, damping=0.0)(v), expected, rtol=1e-6)
    assert_close(trpo.fisher_vector_product(mean_kl, theta_old, damping=0.1)(v), expected + 0.1 * v, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# b. Conjugate gradient
# ----------------------------------------------------------------------------------------------
def test_conjugate_gradient_is_exact_in_n_iterations_and_minimises_over_the_krylov_spaces():
    n = 8
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    eigenvalues = torch.logspace(0, 1, n, dtype=F64)  # condition number 10
    A = Q @ torch.diag(eigenvalues) @ Q.T
    b = torch.randn(n, generator=g, dtype=F64)
    x_star = torch.linalg.solve(A, b)

    x = trpo.conjugate_gradient(lambda v: A @ v, b, iters=n, tol=0.0)
    assert (A @ x - b).norm() <= 1e-10 * b.norm()

    phi = lambda x: 0.5 * x @ A @ x - b @ x  # noqa: E731  the quadratic CG minimises
    a_norm_error = lambda x: float(torch.sqrt((x - x_star) @ A @ (x - x_star)))  # noqa: E731
    kappa = float(eigenvalues[-1] / eigenvalues[0])
    rate = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    iterates = [trpo.conjugate_gradient(lambda v: A @ v, b, iters=k, tol=0.0) for k in range(1, n + 1)]
    residuals = [b - A @ x_k for x_k in iterates]
    for k, x_k in enumerate(iterates, start=1):
        # x_k is the minimiser of phi over the Krylov space K_k = span{b, A b, ..., A^(k-1) b}
        K, _ = torch.linalg.qr(torch.stack([torch.linalg.matrix_power(A, j) @ b for j in range(k)], 1))
        y = torch.linalg.solve(K.T @ A @ K, K.T @ b)
        assert_close(x_k, K @ y, rtol=1e-8)
        # the error in the A-norm falls at least as fast as the classical bound 2 ((sqrt k - 1) / (sqrt k + 1))^k
        assert a_norm_error(x_k) <= 2 * rate**k * a_norm_error(torch.zeros(n, dtype=F64)) + 1e-12
        if k > 1:
            assert phi(x_k) < phi(iterates[k - 2]) and a_norm_error(x_k) < a_norm_error(iterates[k - 2])
    for i in range(n - 1):  # the residuals are mutually orthogonal
        for j in range(i):
            assert abs(float(residuals[i] @ residuals[j])) <= 1e-8 * float(residuals[i].norm() * residuals[j].norm())


# ----------------------------------------------------------------------------------------------
# c. The surrogate's gradient at theta_old is the policy gradient
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_surrogate_gradient_at_theta_old_is_grad_J(gamma):
    """E[grad of len(tau) * L] over every trajectory, with the exact advantages A = Q^pi - V^pi (weighted by
    gamma^t, as in tests/test_actor_critic.py), and pi_old = pi_theta, equals grad J by finite differences."""
    pi = torch.softmax(THETA, -1)
    V, Q = MDP.values(pi, gamma)
    theta = THETA.clone().requires_grad_(True)

    def loss(tau):
        A = (Q[list(tau.states), list(tau.actions)] - V[list(tau.states)]) * gamma ** torch.arange(len(tau))
        log_probs = trajectory_log_probs(tau, theta)
        return len(tau) * trpo.surrogate(log_probs, log_probs.detach(), A)

    g = expected_grad(theta, MDP.trajectories(torch.softmax(theta, -1)), loss)
    assert_close(g, true_grad(MDP, THETA, gamma))


def test_surrogate_is_the_importance_weighted_advantage():
    log_probs = torch.tensor([-0.5, -1.0, -2.0], dtype=F64)
    old = torch.tensor([-0.7, -1.0, -1.5], dtype=F64)
    A = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    expected = (math.exp(0.2) * 1.0 + 1.0 * -2.0 + math.exp(-0.5) * 3.0) / 3
    assert float(trpo.surrogate(log_probs, old, A)) == pytest.approx(expected, rel=1e-12)
    assert_close(fd_grad(lambda lp: trpo.surrogate(lp, old, A), log_probs), torch.exp(log_probs - old) * A / 3)


# ----------------------------------------------------------------------------------------------
# d. The trust-region step on a small network, and the line search
# ----------------------------------------------------------------------------------------------
def exact_fisher(policy, obs):
    """F = mean_s sum_a pi(a|s) grad log pi(a|s) grad log pi(a|s)^T for a categorical policy, formed densely."""
    theta_old = flat_params(policy)
    F = torch.zeros(len(theta_old), len(theta_old), dtype=F64)
    for s in range(len(obs)):
        for a in range(policy.net[-1].out_features):
            theta = theta_old.clone().requires_grad_(True)
            dist = torch.func.functional_call(policy, trpo.unflatten(policy, theta), (obs[s : s + 1],))
            logp = dist.log_prob(torch.tensor([a]))[0]
            (u,) = torch.autograd.grad(logp, theta)
            F += logp.exp().detach() * torch.outer(u, u) / len(obs)
    return F


def step_args(**kw):
    return trpo.Args(**{"delta": 0.01, "damping": 0.1, "backtrack_coef": 0.5, "backtrack_iters": 10, **kw})


def test_search_direction_is_the_dense_natural_gradient():
    policy = small_policy(DISCRETE)
    obs, actions, advantages = random_batch(DISCRETE)
    surrogate_at, mean_kl = policy_functions(policy, obs, actions, advantages)
    theta_old = flat_params(policy).requires_grad_(True)
    (g,) = torch.autograd.grad(surrogate_at(theta_old), theta_old)
    P, damping = len(g), 0.1
    x = trpo.conjugate_gradient(trpo.fisher_vector_product(mean_kl, theta_old, damping), g, iters=P, tol=0.0)
    F = exact_fisher(policy, obs)
    assert_close(x, torch.linalg.solve(F + damping * torch.eye(P, dtype=F64), g), rtol=1e-6)


def policy_step(policy, obs, actions, advantages, **kw):
    """trpo.policy_step on a copy of the policy; returns (step taken theta - theta_old, the line search's record)."""
    before = flat_params(policy)
    moved = small_policy(DISCRETE)
    moved.load_state_dict(policy.state_dict())
    record = trpo.policy_step(moved, obs, actions, advantages, step_args(**kw))
    return flat_params(moved) - before, record


def test_a_step_keeps_the_kl_within_delta_improves_the_surrogate_and_scales_with_sqrt_delta():
    policy = small_policy(DISCRETE)
    obs, actions, advantages = random_batch(DISCRETE)
    surrogate_at, mean_kl = policy_functions(policy, obs, actions, advantages)
    theta_old = flat_params(policy)
    delta = 1e-4  # small enough for the quadratic model of the KL to be accurate
    step, record = policy_step(policy, obs, actions, advantages, delta=delta)
    kl = float(mean_kl(theta_old + step))
    assert record["accepted"] == 1.0 and record["backtracks"] == 0
    assert kl <= delta and kl == pytest.approx(record["kl"], rel=1e-9)
    # the full step's size: 1/2 s^T (F + damping I) s = delta, and the measured KL is close to its 1/2 s^T F s
    assert kl + 0.5 * step_args().damping * float(step @ step) == pytest.approx(delta, rel=0.01)
    improvement = float(surrogate_at(theta_old + step) - surrogate_at(theta_old))
    assert improvement > 0 and improvement == pytest.approx(record["surrogate_improvement"], rel=1e-9)
    half_step, _ = policy_step(policy, obs, actions, advantages, delta=delta / 2)
    assert float(half_step.norm() / step.norm()) == pytest.approx(1 / math.sqrt(2), rel=1e-9)


def test_a_full_step_that_breaks_the_kl_bound_is_backtracked():
    policy = small_policy(DISCRETE)
    obs, actions, advantages = random_batch(DISCRETE)
    _, mean_kl = policy_functions(policy, obs, actions, advantages)
    theta_old = flat_params(policy)
    step, record = policy_step(policy, obs, actions, advantages, delta=0.5, damping=0.0)  # far from quadratic
    assert record["accepted"] == 1.0 and record["backtracks"] >= 1
    assert float(mean_kl(theta_old + step)) <= 0.5
    full_step = step / 0.5 ** record["backtracks"]
    assert float(mean_kl(theta_old + full_step)) > 0.5  # the full step was tried and rejected


def toy_evaluate(theta):
    """A surrogate and a 'KL' with known answers: L = theta_0 - theta_1^2, KL = |theta|^2."""
    return float(theta[0] - theta[1] ** 2), float(theta @ theta)


@pytest.mark.parametrize(
    "full_step,max_kl,expected_fraction",
    [
        ([1.0, 0.0], 2.0, 1.0),  # L +1, KL 1: the full step
        ([2.0, 0.0], 1.5, 0.5),  # the full step's KL 4 > 1.5: back to half (KL 1)
        ([1.0, 2.0], 100.0, 0.125),  # L = f - 4 f^2 improves only for f < 1/4 (at 1/4 it is equal)
        ([0.1, 4.0], 100.0, None),  # L falls at every fraction: keep the old parameters
        ([1.0, 0.0], 1e-6, None),  # every fraction tried (down to 1/2^4) breaks the KL bound
    ],
)
def test_line_search_accepts_the_first_fraction_that_improves_within_the_kl_bound(full_step, max_kl, expected_fraction):
    theta_old, full_step = torch.zeros(2, dtype=F64), torch.tensor(full_step, dtype=F64)
    theta, record = trpo.line_search(toy_evaluate, theta_old, full_step, max_kl, backtrack_coef=0.5, backtrack_iters=5)
    if expected_fraction is None:
        assert torch.equal(theta, theta_old) and record == {
            "accepted": 0.0, "backtracks": 5.0, "kl": 0.0, "surrogate_improvement": 0.0
        }  # fmt: skip
        return
    assert_close(theta, expected_fraction * full_step, rtol=1e-15)
    L, kl = toy_evaluate(theta)
    assert record == {"accepted": 1.0, "backtracks": float(-math.log2(expected_fraction)), "kl": kl,
                      "surrogate_improvement": L}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# e. Wiring: update() applies exactly what the pure functions define
# ----------------------------------------------------------------------------------------------
WIRING_ARGS = trpo.Args(gamma=0.9, gae_lambda=0.8, delta=0.02, damping=0.2, cg_iters=5, learning_rate=0.01,
                        num_minibatches=2, vf_epochs=2, hidden_size=8)  # fmt: skip


def run_update(state, batch, args):
    torch.manual_seed(4)  # the critic's minibatches are drawn from torch's generator: the same for both runs
    return trpo.update(*state, batch, args)


def trpo_state():
    """(policy, critic, the critic's Adam) in float64, as train() builds them, Adam warmed up by two updates."""
    torch.manual_seed(0)
    policy, value_net = trpo.Policy(4, gym.spaces.Discrete(2), 8).to(F64), trpo.ValueNet(4, 8).to(F64)
    state = (policy, value_net, torch.optim.Adam(value_net.parameters(), lr=WIRING_ARGS.learning_rate))
    for seed in (1, 2):
        run_update(state, rollout_batch(seed), WIRING_ARGS)
    return state, rollout_batch(3)


def test_update_is_the_pure_functions_with_advantages_from_the_critic_before_the_update():
    state, batch = trpo_state()
    args = WIRING_ARGS

    def by_hand(state):
        policy, value_net, optimizer = state
        with torch.no_grad():  # the critic before the update: its values are constants of the surrogate
            V, V_next = value_net(batch["obs"]), value_net(batch["next_obs"])
        rewards, terminated, truncated = batch["rewards"], batch["terminated"], batch["truncated"]
        A = trpo.gae(rewards, V, V_next, terminated, truncated, args.gamma, args.gae_lambda)
        obs, actions = batch["obs"].reshape(-1, 4), batch["actions"].reshape(-1)
        # the policy: g, x = CG(F + damping I, g), the full step sqrt(2 delta / x^T F x) x, the line search
        surrogate_at, mean_kl = policy_functions(policy, obs, actions, A.reshape(-1))
        theta_old = flat_params(policy).requires_grad_(True)
        (g,) = torch.autograd.grad(surrogate_at(theta_old), theta_old)
        theta_old = theta_old.detach()
        fvp = trpo.fisher_vector_product(mean_kl, theta_old, args.damping)
        x = trpo.conjugate_gradient(fvp, g, args.cg_iters)
        full_step = torch.sqrt(2 * args.delta / (x @ fvp(x))) * x

        def evaluate(theta):
            with torch.no_grad():
                return float(surrogate_at(theta)), float(mean_kl(theta))

        theta, record = trpo.line_search(evaluate, theta_old, full_step, args.delta, args.backtrack_coef, 10)
        assert record["accepted"] == 1.0  # the check exercises a step that is taken
        torch.nn.utils.vector_to_parameters(theta, policy.parameters())
        # the critic: --vf-epochs epochs of Adam on 1/2 (V - G^lam)^2 over random minibatches, G^lam = A + V
        targets = (A + V).reshape(-1)
        torch.manual_seed(4)
        for _ in range(args.vf_epochs):
            for idx in torch.randperm(len(obs)).split(len(obs) // args.num_minibatches):
                optimiser_step(optimizer, 0.5 * ((value_net(obs[idx]) - targets[idx]) ** 2).mean())

    assert_update_is_hand_built_steps(state, lambda s: run_update(s, batch, args), by_hand)


def test_every_hyperparameter_of_the_update_reaches_it():
    """The policy's (delta, damping, cg_iters), the advantages' (gamma, gae_lambda) and the critic's fit's."""
    state, batch = trpo_state()
    changes = {"delta": 0.005, "damping": 0.5, "cg_iters": 2, "gamma": 0.5, "gae_lambda": 0.3}
    changes |= {"vf_epochs": 3, "num_minibatches": 3}
    assert_each_hyperparameter_changes_the_update(
        state, lambda s, args: run_update(s, batch, args), WIRING_ARGS, changes
    )


def test_every_critic_step_of_every_update_applies_the_constant_learning_rate(tmp_path, monkeypatch):
    """The documented schedule: the critic's Adam steps at --learning-rate throughout (TRPO's policy step has no
    learning rate). Read from the optimiser each update() is given, at each of its steps, which must be
    --vf-epochs * --num-minibatches steps on the critic's parameters and no others."""
    calls = record_learning_rates(trpo, monkeypatch)
    argv = ["--total-timesteps", "768", "--num-envs", "2", "--learning-rate", "0.0025", "--vf-epochs", "2"]
    assert trpo.main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    assert len(calls) == 3
    for (_, value_net, *_), [(params, steps)] in calls:
        assert params == ids(value_net) and steps == [[0.0025]] * (2 * trpo.Args.num_minibatches)


# ----------------------------------------------------------------------------------------------
# f. Short runs, the files they write, and --eval
# ----------------------------------------------------------------------------------------------
def test_cartpole_learns_writes_files_and_reloads(tmp_path, capsys):
    run = tmp_path / "run"
    rows = short_run_improves(trpo, run, "--total-timesteps", "10240")
    assert len(rows) == 10240 // 512 and all(float(r["kl"]) <= trpo.Args.delta for r in rows)
    assert {r["accepted"] for r in rows} <= {"0.0", "1.0"}
    assert eval_mean_return(trpo, run / "model.pt", capsys) > 100


def test_pendulum_gaussian_path_runs(tmp_path, capsys):
    run = tmp_path / "run"
    assert trpo.main(["--env-id", "Pendulum-v1", "--total-timesteps", "1024", "--run-dir", str(run)]) == 0
    assert [int(e["length"]) for e in read_csv(run / "episodes.csv")] == [200] * 4  # cut by the time limit
    rows = read_csv(run / "metrics.csv")
    assert len(rows) == 2 and all(float(r["kl"]) <= trpo.Args.delta for r in rows)
    eval_mean_return(trpo, run / "model.pt", capsys)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # Discrete; a Gaussian policy with its log-std
def test_train_steps_every_parameter_of_the_networks_it_builds(env_id, tmp_path, monkeypatch):
    """The networks train() builds, through its first update(): the optimiser holds exactly the critic's parameters
    (the policy moves by the trust-region step, not by an optimiser), and the update moves every parameter of both:
    the critic by Adam, the policy, log-std included, by the accepted step."""
    args = trpo.Args(env_id=env_id, total_timesteps=1, num_envs=2, num_steps=32, num_minibatches=4, hidden_size=8,
                     run_dir=str(tmp_path / "run"))  # fmt: skip
    accepted = []
    real_policy_step = trpo.policy_step
    monkeypatch.setattr(trpo, "policy_step", lambda *a: accepted.append(real_policy_step(*a)["accepted"]) or {})
    first = first_update_of_train(trpo, args, monkeypatch)
    policy, value_net, optimizer = first.calls["update"][:3]
    assert_optimisers_hold_each_parameter_once([optimizer], value_net)
    assert accepted == [1.0]
    assert all(first.moved(policy, value_net).values()), first.moved(policy, value_net)
