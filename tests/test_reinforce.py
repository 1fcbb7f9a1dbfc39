"""reinforce.py: its estimator, proved exactly on a small MDP; then its command line, run for real.

The gradient tests use the recipe of tests/exact.py: grad J by finite differences of the exactly
enumerated objective, against the exact expectation of the gradient of reinforce.py's own
policy_loss, with advantages built by its own returns_to_go, leave_one_out_baseline and MovingBaseline.
"""

import copy
import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from exact import (
    F64,
    MDP,
    THETA,
    LayeredMDP,
    assert_close,
    bandit,
    expected_grad,
    independent_batches,
    trajectory_log_probs,
    true_grad,
)
from runs import read_csv
from wiring import (
    assert_each_hyperparameter_changes_the_update,
    assert_optimisers_hold_each_parameter_once,
    assert_update_is_hand_built_steps,
    first_update_of_train,
    ids,
    optimiser_step,
    record_learning_rates,
)

import reinforce


# ----------------------------------------------------------------------------------------------
# Building blocks: one trajectory as the tensors the script works on
# ----------------------------------------------------------------------------------------------
def episode_tensors(tau, theta):
    """log pi(a_t|s_t) [T] (a function of theta), rewards [T], dones [T], timesteps [T]."""
    log_probs = trajectory_log_probs(tau, theta)
    rewards = torch.tensor(tau.rewards, dtype=F64)
    dones = torch.zeros(len(tau), dtype=F64)
    dones[-1] = 1.0
    return log_probs, rewards, dones, torch.arange(len(tau))


def advantage(tau, theta, mdp, gamma, form, discount_weight):
    """Weight of each log pi(a_t|s_t): `whole` R(tau), `rtg` G_t, `rtg-v` G_t - V^pi(s_t); times gamma^t if asked."""
    _, rewards, dones, timesteps = episode_tensors(tau, theta)
    G = reinforce.returns_to_go(rewards, dones, gamma)
    if form == "whole":
        A = G[0].expand(len(tau))
    elif form == "rtg":
        A = G
    else:
        V, _ = mdp.values(torch.softmax(theta, -1), gamma)
        A = G - V[list(tau.states)]
    return A * gamma**timesteps if discount_weight else A


def estimator_mean(mdp, theta, gamma, form, discount_weight):
    """E[g] for a batch of one episode: -E[grad policy_loss], enumerating every trajectory."""
    theta = theta.clone().requires_grad_(True)
    trajectories = mdp.trajectories(torch.softmax(theta, -1))

    def loss(tau):
        log_probs = episode_tensors(tau, theta)[0]
        return reinforce.policy_loss(log_probs, advantage(tau, theta.detach(), mdp, gamma, form, discount_weight), 1)

    return -expected_grad(theta, trajectories, loss)


# ----------------------------------------------------------------------------------------------
# a. The estimator's expectation is grad J
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["whole", "rtg", "rtg-v"])
def test_undiscounted_estimator_is_exact_gradient(form):
    """gamma = 1: the script's form (no gamma^t) is exactly grad J, with or without the V^pi baseline."""
    assert_close(estimator_mean(MDP, THETA, 1.0, form, discount_weight=False), true_grad(MDP, THETA, 1.0))


@pytest.mark.parametrize("form", ["rtg", "rtg-v"])
def test_discounted_objective_needs_the_gamma_t_factor(form):
    """gamma < 1: weighting by gamma^t gives exactly grad J; the usual form (the script's) does not."""
    gamma = 0.8
    exact = true_grad(MDP, THETA, gamma)
    assert_close(estimator_mean(MDP, THETA, gamma, form, discount_weight=True), exact)
    usual = estimator_mean(MDP, THETA, gamma, form, discount_weight=False)
    assert (usual - exact).norm() > 0.05 * exact.norm()


def test_whole_return_needs_no_gamma_t_factor():
    """The whole discounted return R(tau) already is sum_t gamma^t r_t: grad log p(tau) R(tau) is exact."""
    gamma = 0.8
    assert_close(estimator_mean(MDP, THETA, gamma, "whole", discount_weight=False), true_grad(MDP, THETA, gamma))


# ----------------------------------------------------------------------------------------------
# b. Baselines: the batch mean (with and without the episode itself) and a moving average of earlier batches
# ----------------------------------------------------------------------------------------------
def batch_estimator_mean(mdp, theta, n, advantages_of_batch):
    """-E[grad policy_loss] over every batch of n independent episodes."""
    theta = theta.clone().requires_grad_(True)
    trajectories = mdp.trajectories(torch.softmax(theta, -1))

    def loss(batch):
        parts = [episode_tensors(tau, theta) for tau in batch]
        log_probs, rewards, dones, timesteps = (torch.cat(x) for x in zip(*parts, strict=True))
        A = advantages_of_batch(reinforce.returns_to_go(rewards, dones, 1.0), timesteps, dones)
        return reinforce.policy_loss(log_probs, A, num_episodes=n)

    return -expected_grad(theta, independent_batches(trajectories, n), loss)


def whole_return_minus_inclusive_mean(G, timesteps, dones):
    starts = timesteps == 0
    R = G[starts]  # each episode's whole return
    episode = torch.cumsum(starts.long(), 0) - 1
    return (R - R.mean())[episode]


@pytest.mark.parametrize("problem,n", [("mdp", 2), ("bandit", 3)])
def test_inclusive_batch_mean_shrinks_gradient_by_n_minus_1_over_n(problem, n):
    """R_i - mean_j R_j = (N-1)/N (R_i - mean_{j != i} R_j), so E[g] = (N-1)/N grad J exactly."""
    mdp = MDP if problem == "mdp" else bandit([1.0, 0.0, 2.5])
    theta = THETA if problem == "mdp" else torch.tensor([[0.3, -0.2, 0.1]], dtype=F64)
    got = batch_estimator_mean(mdp, theta, n, whole_return_minus_inclusive_mean)
    exact = true_grad(mdp, theta, 1.0)
    assert_close(got, (n - 1) / n * exact)
    assert (got - exact).norm() > 0.1 * exact.norm()


@pytest.mark.parametrize("n", [2, 3])
def test_script_leave_one_out_baseline_is_unbiased(n):
    """The script's --baseline mean (returns-to-go minus the leave-one-out per-step mean) has E[g] = grad J."""
    mdp = MDP if n == 2 else bandit([1.0, 0.0, 2.5])
    theta = THETA if n == 2 else torch.tensor([[0.3, -0.2, 0.1]], dtype=F64)
    got = batch_estimator_mean(mdp, theta, n, lambda G, t, d: G - reinforce.leave_one_out_baseline(G, t))
    assert_close(got, true_grad(mdp, theta, 1.0))


# A moving baseline built from earlier batches: sampled trajectories of MDP as if from earlier updates (lengths 1 to
# 3, the last batch reaching t = 0 and 1 only), folded in with DECAY. It holds b_0, b_1, b_2 (none of them zero).
DECAY = 0.5
EARLIER_BATCHES = [(0, 7, 20), (3, 11)]


def moving_baseline_from_earlier_batches():
    trajectories = [tau for tau, _ in MDP.trajectories(torch.softmax(THETA, -1))]
    moving = reinforce.MovingBaseline().to(F64)
    for picks in EARLIER_BATCHES:
        parts = [episode_tensors(trajectories[i], THETA) for i in picks]
        _, rewards, dones, timesteps = (torch.cat(x) for x in zip(*parts, strict=True))
        moving.fold_in(reinforce.returns_to_go(rewards, dones, 1.0), timesteps, DECAY)
    return moving


@pytest.mark.parametrize("n", [1, 2])
def test_moving_baseline_from_earlier_batches_is_unbiased(n):
    """--baseline moving: b_t built from earlier batches is fixed given them, so E[g] = grad J exactly. Folding this
    batch in before computing its advantages (the wrong order) makes b_t depend on a_t: biased, shown exactly."""
    moving = moving_baseline_from_earlier_batches()
    assert len(moving.averages) == 3 and moving.averages.abs().min() > 0, moving.averages
    exact = true_grad(MDP, THETA, 1.0)
    assert_close(batch_estimator_mean(MDP, THETA, n, lambda G, t, d: G - moving(t)), exact)

    def folded_in_first(G, t, d):
        twin = reinforce.MovingBaseline().to(F64)
        twin.averages = moving.averages.clone()
        twin.fold_in(G, t, DECAY)
        return G - twin(t)

    biased = batch_estimator_mean(MDP, THETA, n, folded_in_first)
    assert (biased - exact).norm() > 0.05 * exact.norm(), (biased - exact).norm() / exact.norm()
    if n == 1:  # b_t = decay * b_t + (1 - decay) * G_t makes A_t = decay * (G_t - b_t): exactly decay * grad J
        assert_close(biased, DECAY * exact)


def test_moving_baseline_by_hand():
    moving = reinforce.MovingBaseline().to(F64)
    t = torch.tensor
    assert torch.equal(moving(t([0, 1, 2])), t([0.0, 0.0, 0.0], dtype=F64))  # no batch yet: 0 everywhere
    # episodes of lengths 3, 1: means at t = 0, 1, 2 are (6+2)/2, 4, 1; the first batch sets them
    moving.fold_in(t([6.0, 4.0, 1.0, 2.0], dtype=F64), t([0, 1, 2, 0]), 0.5)
    assert_close(moving.averages, t([4.0, 4.0, 1.0], dtype=F64), rtol=1e-12)
    # lengths 2, 4: means 5.5, 3.5, 4, 2; t = 0, 1, 2 move halfway there, t = 3 is set
    moving.fold_in(t([3.0, 1.0, 8.0, 6.0, 4.0, 2.0], dtype=F64), t([0, 1, 0, 1, 2, 3]), 0.5)
    assert_close(moving.averages, t([4.75, 3.75, 2.5, 2.0], dtype=F64), rtol=1e-12)
    # one episode of length 1: only t = 0 moves (decay 0.8); t = 5 was never reached: b = 0
    moving.fold_in(t([1.0], dtype=F64), t([0]), 0.8)
    assert_close(moving(t([0, 3, 1, 5])), t([0.8 * 4.75 + 0.2, 2.0, 3.75, 0.0], dtype=F64), rtol=1e-12)


def test_leave_one_out_baseline_by_hand():
    # three episodes of lengths 3, 1, 2 laid end to end; G and t per step
    G = torch.tensor([6.0, 4.0, 1.0, 2.0, 9.0, 3.0], dtype=F64)
    t = torch.tensor([0, 1, 2, 0, 0, 1])
    # t=0: {6, 2, 9} -> (2+9)/2, (6+9)/2, (6+2)/2;  t=1: {4, 3} -> 3, 4;  t=2: only one episode -> 0
    expected = torch.tensor([5.5, 3.0, 0.0, 7.5, 4.0, 4.0], dtype=F64)
    assert_close(reinforce.leave_one_out_baseline(G, t), expected, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# c. Exact variance of the one-episode estimator
# ----------------------------------------------------------------------------------------------
# Neither reduction is a theorem for every MDP: dropping past rewards removes their variance but also
# their covariance with the later terms, which can be negative. With rewards of one sign, as in
# CartPole's +1 per step, both reductions hold; the test shows them exactly on such a problem.
POSITIVE_MDP = LayeredMDP(MDP.P, (MDP.R.abs() + 0.5) * (MDP.P > 0))


def estimator_variance(form):
    """E ||g - E g||^2 of the one-episode estimator (gamma = 1), by enumeration, with E g checked = grad J."""
    theta = THETA.clone().requires_grad_(True)
    gs, ps = [], []
    for tau, p in POSITIVE_MDP.trajectories(torch.softmax(THETA, -1)):
        log_probs = episode_tensors(tau, theta)[0]
        loss = reinforce.policy_loss(log_probs, advantage(tau, THETA, POSITIVE_MDP, 1.0, form, False), 1)
        gs.append(-torch.autograd.grad(loss, theta)[0].reshape(-1))
        ps.append(float(p))
    g, p = torch.stack(gs), torch.tensor(ps, dtype=F64)
    mean = (p[:, None] * g).sum(0)
    assert_close(mean, true_grad(POSITIVE_MDP, THETA, 1.0).reshape(-1))  # same mean: only the variance differs
    return float((p * ((g - mean) ** 2).sum(-1)).sum())


def test_returns_to_go_and_value_baseline_reduce_variance():
    whole, rtg, rtg_v = estimator_variance("whole"), estimator_variance("rtg"), estimator_variance("rtg-v")
    assert rtg < 0.9 * whole, (rtg, whole)
    assert rtg_v < 0.5 * rtg, (rtg_v, rtg)


# ----------------------------------------------------------------------------------------------
# d. Returns-to-go over a batch of several episodes, one of them cut by a time limit
# ----------------------------------------------------------------------------------------------
def test_returns_to_go_by_hand():
    # episode A terminates after 3 steps, B is cut by a time limit after 2 (no bootstrap), C lasts 1 step
    rewards = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0, 5.0], dtype=F64)
    dones = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0], dtype=F64)
    expected = torch.tensor([1 + 0.5 * 3.5, 2 + 0.5 * 3, 3, 1 + 0.5 * 1, 1, 5], dtype=F64)
    assert_close(reinforce.returns_to_go(rewards, dones, 0.5), expected, rtol=1e-12)


def test_returns_to_go_of_envs_side_by_side():
    """[T, N]: each column is one env's steps in time order, episodes restarting after each done (bool as
    Gymnasium returns them); a column that ends mid-episode sums what it saw (no bootstrap)."""
    rewards = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 4.0], [1.0, 1.0], [1.0, 3.0]], dtype=F64)
    dones = torch.tensor([[False, True], [False, False], [True, True], [False, False], [True, False]])
    expected = torch.tensor([[1 + 0.5 * 3.5, 2], [2 + 0.5 * 3, 1 + 0.5 * 4], [3, 4], [1 + 0.5, 1 + 0.5 * 3], [1, 3]])
    assert_close(reinforce.returns_to_go(rewards, dones, 0.5), expected.to(F64), rtol=1e-12)
    for n in range(2):  # and each column as the [T] case computes it
        assert_close(reinforce.returns_to_go(rewards[:, n], dones[:, n].to(F64), 0.5), expected[:, n].to(F64))
    for numpy_dones in (dones.numpy(), dones.numpy().astype(np.float32)):  # the arrays Gymnasium returns, as gae()
        assert_close(reinforce.returns_to_go(rewards, numpy_dones, 0.5), expected.to(F64), rtol=1e-12)


class StaysOnDevice(torch.Tensor):
    """A tensor whose every copy to the host raises; torch's operations on it return this type again."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (
            torch.Tensor.tolist,
            torch.Tensor.numpy,
            torch.Tensor.item,
            torch.Tensor.cpu,
            torch.Tensor.__array__,
        ):
            raise AssertionError(f"{func.__name__}() copies the tensor to the host")
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("shape", [(6,), (6, 3)])
def test_returns_to_go_stays_on_the_tensors_device(shape):
    """No round trip through the host (tolist, numpy, item, cpu), and G is made by torch operations on the inputs."""
    rewards, dones = torch.rand(shape, dtype=F64), torch.rand(shape) < 0.3
    G = reinforce.returns_to_go(rewards.as_subclass(StaysOnDevice), dones.as_subclass(StaysOnDevice), 0.9)
    assert type(G) is StaysOnDevice and G.shape == shape
    assert_close(G.as_subclass(torch.Tensor), reinforce.returns_to_go(rewards, dones, 0.9), rtol=1e-12)


def test_rollout_lays_out_whole_episodes_including_truncated_ones():
    envs = [gym.make("CartPole-v1", max_episode_steps=7) for _ in range(3)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    ended = []
    policy = reinforce.Policy(4, envs[0].action_space, 8)
    batch = reinforce.rollout(envs, policy, torch.device("cpu"), lambda ret, n, k: ended.append((ret, n)))
    lengths = [n for _, n in ended]
    assert len(ended) == 3 and max(lengths) <= 7 and sum(lengths) == len(batch["rewards"])
    # timesteps restart at each episode, and dones mark exactly the last step of each
    assert (batch["dones"] == 1).sum() == 3
    starts = torch.nonzero(batch["timesteps"] == 0).squeeze(-1)
    assert torch.equal(
        batch["dones"].nonzero().squeeze(-1), torch.cat([starts[1:] - 1, starts.new_tensor([len(batch["dones"]) - 1])])
    )


# ----------------------------------------------------------------------------------------------
# e. The Gaussian policy's log-probability and entropy
# ----------------------------------------------------------------------------------------------
def test_gaussian_policy_log_prob_entropy_and_their_gradients_closed_forms():
    """Box actions: log N(a; mean, diag(exp(log_std))^2) summed over the action's dims, its entropy
    sum_d (1/2 log(2 pi e) + log_std_d), and their gradients in log_std, z^2 - 1 and 1 (z = (a - mean) / std)."""
    torch.manual_seed(0)
    policy = reinforce.Policy(4, gym.spaces.Box(-1.0, 1.0, (3,)), 8).to(F64)
    with torch.no_grad():
        policy.log_std.copy_(torch.randn(3, dtype=F64))
    obs, action = torch.randn(5, 4, dtype=F64), torch.randn(5, 3, dtype=F64)
    log_prob, entropy = policy.log_prob_entropy(obs, action)
    mean, log_std = policy.net(obs).detach(), policy.log_std.detach()
    z = (action - mean) / log_std.exp()
    closed = (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert_close(log_prob, closed, rtol=1e-12)
    closed_entropy = sum(0.5 * math.log(2 * math.pi * math.e * math.exp(2 * s)) for s in log_std.tolist())
    assert_close(entropy, torch.full((5,), closed_entropy, dtype=F64), rtol=1e-12)
    assert_close(
        torch.autograd.grad(log_prob.sum(), policy.log_std, retain_graph=True)[0], (z**2 - 1).sum(0), rtol=1e-12
    )
    assert_close(torch.autograd.grad(entropy.sum(), policy.log_std)[0], torch.full((3,), 5.0, dtype=F64), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# f. Short runs, the files they write, and --eval
# ----------------------------------------------------------------------------------------------
def test_cartpole_learns_writes_files_and_reloads(tmp_path, capsys):
    run = tmp_path / "run"
    assert reinforce.main(["--total-timesteps", "15000", "--seed", "1", "--run-dir", str(run)]) == 0
    rows = read_csv(run / "metrics.csv")
    first = sum(float(r["episodic_return"]) for r in rows[:3]) / 3
    last = sum(float(r["episodic_return"]) for r in rows[-3:]) / 3
    assert last > 2 * first and last > 100, (first, last)
    episodes = read_csv(run / "episodes.csv")
    assert int(episodes[-1]["global_step"]) <= int(rows[-1]["global_step"])
    assert reinforce.main(["--eval", str(run / "model.pt"), "--eval-episodes", "3"]) == 0
    assert "mean return" in capsys.readouterr().out


def test_every_update_applies_the_constant_learning_rates(tmp_path, monkeypatch):
    """The documented schedule is constant: each update steps the policy's Adam once at --learning-rate and the
    value network's --value-iters times at --value-learning-rate, read from the optimisers update() is given, as
    they step, and each optimiser holds exactly its network's parameters."""
    calls = record_learning_rates(reinforce, monkeypatch)
    argv = "--total-timesteps 600 --learning-rate 0.002 --value-learning-rate 0.03 --value-iters 2".split()
    assert reinforce.main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    assert len(calls) == len(read_csv(tmp_path / "run" / "metrics.csv")) >= 2
    for (policy, value_net, *_), [(policy_params, policy_steps), (value_params, value_steps)] in calls:
        assert policy_params == ids(policy) and policy_steps == [[0.002]]
        assert value_params == ids(value_net) and value_steps == [[0.03]] * 2


@pytest.mark.parametrize("value", ["1.0", "-0.1", "nan"])
def test_baseline_decay_outside_0_1_is_refused(value, tmp_path, capsys):
    assert reinforce.main(["--baseline-decay", value, "--run-dir", str(tmp_path / "run")]) == 2
    assert "--baseline-decay" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_pendulum_gaussian_path_runs(tmp_path):
    run = tmp_path / "run"
    assert reinforce.main(["--env-id", "Pendulum-v1", "--total-timesteps", "3200", "--run-dir", str(run)]) == 0
    assert len(read_csv(run / "metrics.csv")) == 2 and (run / "model.pt").exists()
    assert reinforce.main(["--eval", str(run / "model.pt"), "--eval-episodes", "1"]) == 0


# ----------------------------------------------------------------------------------------------
# g. Wiring: update() is one step on policy_loss with the baseline as it was before this batch
# ----------------------------------------------------------------------------------------------
WIRING_ARGS = reinforce.Args(
    gamma=0.9, episodes_per_batch=3, value_iters=3, hidden_size=8, max_grad_norm=0.5, baseline_decay=0.6
)
LENGTHS = (4, 2, 5)  # three episodes laid end to end, as rollout() returns them


def wiring_batch(seed: int, action_space: gym.Space, lengths: tuple[int, ...] = LENGTHS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    if isinstance(action_space, gym.spaces.Discrete):
        actions = torch.randint(0, int(action_space.n), (T,), generator=g)
    else:
        actions = torch.randn(T, *action_space.shape, generator=g, dtype=F64)
    return {
        "obs": torch.randn(T, 4, generator=g, dtype=F64),
        "actions": actions,
        "rewards": torch.rand(T, generator=g, dtype=F64) + 0.5,
        "dones": torch.cat([(torch.arange(n) == n - 1).to(F64) for n in lengths]),
        "timesteps": torch.cat([torch.arange(n) for n in lengths]),
    }


def reinforce_state(action_space: gym.Space):
    """(policy, value net, their two Adams, a moving baseline) in float64, the Adams and the moving baseline warmed
    up by updates on other, shorter batches (so the moving baseline has not yet reached the last time step)."""
    torch.manual_seed(0)
    policy = reinforce.Policy(4, action_space, 8).to(F64)
    value_net = reinforce.ValueNet(4, 8).to(F64)
    state = (
        policy,
        value_net,
        torch.optim.Adam(policy.parameters(), 0.01),
        torch.optim.Adam(value_net.parameters(), 0.01),
        reinforce.MovingBaseline().to(F64),
    )
    for seed in (1, 2):
        for baseline in ("value", "moving"):
            args = dataclasses.replace(WIRING_ARGS, baseline=baseline)
            reinforce.update(*state, wiring_batch(seed, action_space, lengths=(4, 2, 3)), args)
    return state, wiring_batch(3, action_space)


SPACES = {"discrete": gym.spaces.Discrete(3), "gaussian": gym.spaces.Box(-1.0, 1.0, (2,))}


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("baseline", ["none", "mean", "moving", "value"])
def test_update_is_one_policy_step_with_the_baseline_before_the_value_fit(baseline, space):
    state, batch = reinforce_state(SPACES[space])
    args = dataclasses.replace(WIRING_ARGS, baseline=baseline)

    def by_hand(state):
        policy, value_net, optimizer, value_optimizer, moving = state
        G = reinforce.returns_to_go(batch["rewards"], batch["dones"], args.gamma)
        if baseline == "value":
            with torch.no_grad():
                b = value_net(batch["obs"])  # the critic as it is before it sees these returns
        elif baseline == "moving":
            b = moving(batch["timesteps"])  # the average of earlier batches, before this one is folded in
        else:
            b = reinforce.leave_one_out_baseline(G, batch["timesteps"]) if baseline == "mean" else 0 * G
        log_probs, _ = policy.log_prob_entropy(batch["obs"], batch["actions"])
        n_episodes = int(batch["dones"].sum())
        optimiser_step(optimizer, reinforce.policy_loss(log_probs, G - b, n_episodes), args.max_grad_norm)
        if baseline == "value":
            for _ in range(args.value_iters):
                optimiser_step(value_optimizer, reinforce.value_loss(value_net(batch["obs"]), G))

    assert_update_is_hand_built_steps(state, lambda s: reinforce.update(*s, batch, args), by_hand)


def test_update_folds_this_batch_into_the_moving_baseline_with_its_decay():
    """After its step, update() folds the batch's returns-to-go into the moving baseline, with --baseline-decay."""
    state, batch = reinforce_state(SPACES["discrete"])
    G = reinforce.returns_to_go(batch["rewards"], batch["dones"], WIRING_ARGS.gamma)
    for decay in (0.0, 0.3):
        twin = copy.deepcopy(state)
        reinforce.update(*twin, batch, dataclasses.replace(WIRING_ARGS, baseline="moving", baseline_decay=decay))
        expected = copy.deepcopy(state[-1])
        expected.fold_in(G, batch["timesteps"], decay)
        assert len(twin[-1].averages) == max(LENGTHS) > len(state[-1].averages)
        assert_close(twin[-1].averages, expected.averages, rtol=1e-12)


def test_every_hyperparameter_of_the_loss_reaches_update():
    state, batch = reinforce_state(SPACES["discrete"])
    changes = {"gamma": 0.5, "baseline": "mean", "value_iters": 1, "max_grad_norm": 0.01}
    assert_each_hyperparameter_changes_the_update(
        state, lambda s, args: reinforce.update(*s, batch, args), WIRING_ARGS, changes
    )
    mean_args = dataclasses.replace(WIRING_ARGS, baseline="mean")  # and none, moving against mean
    assert_each_hyperparameter_changes_the_update(
        state, lambda s, args: reinforce.update(*s, batch, args), mean_args, {"baseline": "none"}
    )
    assert_each_hyperparameter_changes_the_update(
        state, lambda s, args: reinforce.update(*s, batch, args), mean_args, {"baseline": "moving"}
    )
    # the decay acts on the next update's baseline: two updates in a row
    moving_args = dataclasses.replace(WIRING_ARGS, baseline="moving")
    later = wiring_batch(4, SPACES["discrete"])
    assert_each_hyperparameter_changes_the_update(
        state,
        lambda s, args: [reinforce.update(*s, b, args) for b in (batch, later)],
        moving_args,
        {"baseline_decay": 0.1},
    )


# ----------------------------------------------------------------------------------------------
# Every network that should learn does: the optimisers train() itself builds
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["value", "moving"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # Discrete; a Gaussian policy with its log-std
def test_train_steps_every_parameter_of_the_networks_it_builds(env_id, baseline, tmp_path, monkeypatch):
    """The networks train() builds, through its first update(): the policy's optimiser holds exactly the policy's
    parameters (its log-std included), the value optimiser exactly the value network's (--baseline value; none
    otherwise), and the update moves every one of them."""
    args = reinforce.Args(env_id=env_id, baseline=baseline, total_timesteps=1, episodes_per_batch=2, hidden_size=8,
                          run_dir=str(tmp_path / "run"))  # fmt: skip
    first = first_update_of_train(reinforce, args, monkeypatch)
    policy, value_net, optimizer, value_optimizer = first.calls["update"][:4]
    assert_optimisers_hold_each_parameter_once([optimizer], policy)
    if baseline == "value":
        assert_optimisers_hold_each_parameter_once([value_optimizer], value_net)
    else:
        assert value_net is None and value_optimizer is None
    learners = [policy] + ([value_net] if value_net is not None else [])
    assert all(first.moved(*learners).values()), first.moved(*learners)
