"""actor_critic.py: GAE against its definition, then proved exactly on a small MDP with the true and with a
wrong critic; time limits through the script's own vector-env rollout; then its command line, run for real.

The gradient tests use the recipe of tests/exact.py: grad J by finite differences of the exactly
enumerated objective, against the exact expectation of the gradient of actor_critic.py's own
policy_loss, with advantages built by its own gae().
"""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from exact import (
    F64,
    MDP,
    THETA,
    assert_close,
    discounted_visits,
    expected_grad,
    fd_grad,
    trajectory_log_probs,
    true_grad,
)
from runs import eval_mean_return, read_csv
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

TERMINAL_VALUE = 7.0  # what a critic network says at a terminal observation: anything; the estimator must ignore it


# ----------------------------------------------------------------------------------------------
# a. gae() is the definition A_t = sum_l (gamma*lambda)^l delta_{t+l}
# ----------------------------------------------------------------------------------------------
def gae_by_definition(rewards, values, next_values, terminated, truncated, gamma, lam):
    """The sum written out, step by step, for each env: stop after an episode's last step or the rollout's."""
    T, N = rewards.shape
    A = torch.zeros(T, N, dtype=F64)
    for i in range(N):
        for t in range(T):
            for l in range(T - t):
                k = t + l
                delta = rewards[k, i] + gamma * (1 - terminated[k, i]) * next_values[k, i] - values[k, i]
                A[t, i] += (gamma * lam) ** l * delta
                if terminated[k, i] or truncated[k, i]:
                    break
    return A


def random_rollout(seed, T=9, N=4):
    g = torch.Generator().manual_seed(seed)
    rewards, values, next_values = (torch.randn(T, N, generator=g, dtype=F64) for _ in range(3))
    terminated = (torch.rand(T, N, generator=g, dtype=F64) < 0.2).to(F64)
    truncated = (torch.rand(T, N, generator=g, dtype=F64) < 0.2).to(F64)  # sometimes both, as Gymnasium allows
    assert terminated.sum() > 0 and truncated.sum() > 0 and ((terminated + truncated) == 0).sum() > 0
    return rewards, values, next_values, terminated, truncated


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.5), (1.0, 0.7)])
def test_gae_is_its_definition(seed, gamma, lam):
    inputs = random_rollout(seed)
    assert_close(ac.gae(*inputs, gamma, lam), gae_by_definition(*inputs, gamma, lam), rtol=1e-12)


def test_gae_lambda_1_is_discounted_return_minus_value_and_lambda_0_is_td_error():
    rewards, values, next_values, terminated, truncated = random_rollout(seed=4)
    # as in a real rollout, s'_t is s_{t+1} unless step t ended its episode: V(s'_t) = V(s_{t+1}) there
    within = (terminated[:-1] + truncated[:-1]) == 0
    next_values[:-1][within] = values[1:][within]
    inputs = rewards, values, next_values, terminated, truncated
    gamma = 0.9
    T, N = rewards.shape
    expected = torch.zeros(T, N, dtype=F64)
    for i in range(N):
        for t in range(T):
            G, k = 0.0, t
            while True:  # rewards to the episode's end, or the rollout's end where the critic takes over
                G += gamma ** (k - t) * rewards[k, i]
                if terminated[k, i] or truncated[k, i] or k == T - 1:
                    G += gamma ** (k - t + 1) * (1 - terminated[k, i]) * next_values[k, i]
                    break
                k += 1
            expected[t, i] = G - values[t, i]
    assert_close(ac.gae(*inputs, gamma, 1.0), expected, rtol=1e-12)
    td_error = rewards + gamma * (1 - terminated) * next_values - values
    assert_close(ac.gae(*inputs, gamma, 0.0), td_error, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# b, c. The expected actor gradient on a small MDP, with the true critic and with a wrong one
# ----------------------------------------------------------------------------------------------
def gae_of_trajectory(tau, critic, gamma, lam):
    """The script's gae() on one whole episode laid out as [T, 1]; critic [S + 1] gives V at every state, the
    terminal state's entry standing for the critic's output at the final observation."""
    T = len(tau)
    next_states = list(tau.states[1:]) + [MDP.terminal]
    terminated = torch.zeros(T, 1, dtype=F64)
    terminated[-1] = 1.0
    rewards = torch.tensor(tau.rewards, dtype=F64)[:, None]
    values, next_values = critic[list(tau.states)][:, None], critic[next_states][:, None]
    return ac.gae(rewards, values, next_values, terminated, torch.zeros_like(terminated), gamma, lam)[:, 0]


def expected_actor_gradient(critic, gamma, lam):
    """E[g] for a batch of one episode, enumerating every trajectory: -E[T * grad policy_loss], since the
    script's loss is a mean over its batch's T steps, with each A_t weighted by gamma^t (exact for any gamma)."""
    theta = THETA.clone().requires_grad_(True)

    def loss(tau):
        A = gae_of_trajectory(tau, critic, gamma, lam) * gamma ** torch.arange(len(tau), dtype=F64)
        return len(tau) * ac.policy_loss(trajectory_log_probs(tau, theta), A)

    return -expected_grad(theta, MDP.trajectories(torch.softmax(theta, -1)), loss)


def true_critic(gamma):
    V, _ = MDP.values(torch.softmax(THETA, -1), gamma)
    V = V.clone()
    V[MDP.terminal] = TERMINAL_VALUE
    return V


@pytest.mark.parametrize("gamma", [1.0, 0.8])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
def test_gae_with_the_true_value_function_is_unbiased_for_every_lambda(gamma, lam):
    assert_close(expected_actor_gradient(true_critic(gamma), gamma, lam), true_grad(MDP, THETA, gamma))


def gae_bias_by_dynamic_programming(error, gamma, lam):
    """The exact bias of GAE with critic V^pi + error (error [S], 0 past the end), from the closed form
    A'_t = A_t - e(s_t) + (1 - lam) sum_{l>=1} gamma^l lam^(l-1) e(s_{t+l}):
    U(s) = e(s) + gamma lam E[U(s')], W(s, a) = gamma E[U(s') | s, a], and for the softmax table
    bias[s, b] = (1 - lam) d_gamma(s) pi(b|s) (W(s, b) - sum_a pi(a|s) W(s, a))."""
    pi = torch.softmax(THETA, -1)
    U = torch.zeros(MDP.S + 1, dtype=F64)
    W = torch.zeros(MDP.S, MDP.A, dtype=F64)
    for s in reversed(range(MDP.S)):
        W[s] = gamma * (MDP.P[s] * U).sum(-1)
        U[s] = error[s] + lam * (pi[s] * W[s]).sum()
    d = discounted_visits(MDP, pi, gamma)
    return (1 - lam) * d[:, None] * pi * (W - (pi * W).sum(-1, keepdim=True))


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_wrong_critic_biases_gae_below_lambda_1_by_exactly_the_predicted_amount(gamma):
    error = torch.tensor([0.7, -1.3, 0.4, 2.0, -0.9], dtype=F64)
    wrong = true_critic(gamma) + torch.cat([error, torch.zeros(1, dtype=F64)])
    exact = true_grad(MDP, THETA, gamma)
    for lam in (0.0, 0.5, 0.9):
        bias = expected_actor_gradient(wrong, gamma, lam) - exact
        predicted = gae_bias_by_dynamic_programming(error, gamma, lam)
        assert_close(bias, predicted, rtol=1e-6)
        assert predicted.norm() > 0.02 * exact.norm(), (lam, predicted.norm(), exact.norm())
    assert_close(expected_actor_gradient(wrong, gamma, 1.0), exact)  # Monte Carlo: the critic is only a baseline


# ----------------------------------------------------------------------------------------------
# d. Time limits and automatic resets, through the script's own vector env and rollout
# ----------------------------------------------------------------------------------------------
class Countdown(gym.Env):
    """obs = [episode number, step in episode]; reward 1 + action. Even-numbered episodes terminate after
    2 steps; odd ones never terminate, and the TimeLimit of the registration cuts them after LIMIT steps.
    It records every action it really executes."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self):
        self.episode, self.t, self.executed = -1, 0, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action):
        self.executed.append(int(action))
        self.t += 1
        terminated = self.episode % 2 == 0 and self.t == 2
        return np.array([self.episode, self.t], np.float32), 1.0 + int(action), terminated, False, {}


LIMIT = 4
gym.register("Countdown-v0", entry_point=Countdown, max_episode_steps=LIMIT)


def critic_stub(obs):
    """A different value for every (episode, step): V = 10 * episode + step + 0.5."""
    return 10 * obs[..., 0] + obs[..., 1] + 0.5


def test_rollout_bootstraps_on_time_limits_never_on_terminations_and_never_trains_on_a_reset():
    T, N, gamma = 6, 2, 0.9
    envs = ac.make_envs("Countdown-v0", N)
    obs, _ = envs.reset(seed=0)
    carry = {"obs": obs, "episode_return": np.zeros(N), "episode_length": np.zeros(N, int)}
    policy = ac.Policy(2, envs.single_action_space, 8)
    ended = []
    batches = [
        ac.rollout(envs, policy, carry, T, torch.device("cpu"), lambda *e: ended.append(e)) for _ in range(2)
    ]  # two rollouts: the second continues where the first stopped
    batch = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}

    for i in range(N):
        executed = envs.envs[i].unwrapped.executed
        # one row per action the env really executed, in order: no reset step, no ignored action
        assert executed == batch["actions"][:, i].tolist()
        assert torch.equal(batch["rewards"][:, i], 1.0 + batch["actions"][:, i].float())
        # episodes: 0 (2 steps, terminated), 1 (4 steps, truncated), 2 (2, terminated), 3 (4, truncated)
        expected_obs = [[e, s] for e, n in ((0, 2), (1, LIMIT), (2, 2), (3, LIMIT)) for s in range(n)]
        assert batch["obs"][:, i].tolist() == expected_obs
        # every next_obs is the true successor: same episode, one step on (the final obs at an end)
        assert torch.equal(batch["next_obs"][:, i], batch["obs"][:, i] + torch.tensor([0.0, 1.0]))
        assert batch["terminated"][:, i].tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        assert batch["truncated"][:, i].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    # each episode's end is reported with its return, its length and the steps of all envs so far in the rollout
    expected = [
        (float(b["rewards"][start:stop, i].sum()), stop - start, stop * N)
        for b in batches
        for start, stop in ((0, 2), (2, 2 + LIMIT))
        for i in range(N)
    ]
    assert ended == expected

    # lambda = 0: A_t = delta_t; at the truncated step it bootstraps from V(final obs), at the terminal one not
    first = batches[0]
    A, targets, values = ac.advantages_and_targets(critic_stub, first, gamma, 0.0)
    for i in range(N):
        r = first["rewards"][:, i]
        assert A[1, i] == pytest.approx(r[1] - critic_stub(torch.tensor([0.0, 1.0])))  # terminated at step 2
        final = torch.tensor([1.0, float(LIMIT)])  # episode 1's final observation, never the reset [2, 0]
        assert A[5, i] == pytest.approx(r[5] + gamma * critic_stub(final) - critic_stub(torch.tensor([1.0, 3.0])))
    assert_close(targets, A + values, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# e. The critic's loss, and the explained variance the script reports
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("network", ["separate", "shared"])
def test_critic_loss_gradient_matches_finite_differences(network):
    """Autograd's gradient of value_loss is that of 1/2 mean_t (V_phi(s_t) - G_t)^2 with the targets held fixed
    (a semi-gradient), although the lambda-returns are built from the critic itself. Shared: the critic's loss
    also reaches the policy's hidden layers, and only through the parameters the two networks share."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    policy = ac.Policy(3, gym.spaces.Discrete(2), 5).double()
    value_net = ac.ValueNet(3, 5, shared_with=policy if network == "shared" else None).double()
    assert (value_net.net[0].weight is policy.net[0].weight) == (network == "shared")
    obs = torch.randn(6, 3, generator=g, dtype=F64)
    targets = value_net(obs) + torch.randn(6, generator=g, dtype=F64)  # depends on the critic, like G^lam
    params = dict(value_net.named_parameters())
    grads = torch.autograd.grad(ac.value_loss(value_net(obs), targets), list(params.values()))
    for (name, p), grad in zip(params.items(), grads, strict=True):

        def loss_at(x, name=name):
            fixed = {n: q.detach() for n, q in params.items()}
            values = torch.func.functional_call(value_net, {**fixed, name: x}, (obs,))
            return 0.5 * ((values - targets.detach()) ** 2).mean()  # the definition, targets as numbers

        assert_close(grad, fd_grad(loss_at, p.detach()))


def test_explained_variance_on_constructed_examples():
    G = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)  # Var[G] = 1.25
    assert ac.explained_variance(G, G) == 1.0  # perfect critic
    assert ac.explained_variance(torch.full_like(G, 7.0), G) == 0.0  # a constant explains nothing
    assert ac.explained_variance(G + torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64), G) == pytest.approx(1 - 1 / 1.25)
    assert ac.explained_variance(-G, G) == pytest.approx(1 - 4 * 1.25 / 1.25)  # Var[2G] = 4 Var[G]: worse than none
    assert math.isnan(ac.explained_variance(G, torch.ones(4, dtype=F64)))  # undefined for constant returns


def test_update_reports_explained_variance_of_the_critic_it_used_against_the_lambda_returns():
    T, N, obs_dim = 5, 3, 4
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    batch = {
        "obs": torch.randn(T, N, obs_dim, generator=g),
        "actions": torch.randint(0, 2, (T, N), generator=g),
        "rewards": torch.randn(T, N, generator=g),
        "terminated": (torch.rand(T, N, generator=g) < 0.2).float(),
        "truncated": (torch.rand(T, N, generator=g) < 0.2).float(),
        "next_obs": torch.randn(T, N, obs_dim, generator=g),
    }
    args = ac.Args(gamma=0.9, gae_lambda=0.8, learning_rate=0.1)
    policy, value_net = ac.Policy(obs_dim, gym.spaces.Discrete(2), 8), ac.ValueNet(obs_dim, 8)
    with torch.no_grad():
        V, V_next = value_net(batch["obs"]).double(), value_net(batch["next_obs"]).double()
    inputs = [batch[k].double() for k in ("rewards", "terminated", "truncated")]
    G = gae_by_definition(inputs[0], V, V_next, *inputs[1:], args.gamma, args.gae_lambda) + V  # lambda-returns
    expected = 1 - float((G - V).var(unbiased=False) / G.var(unbiased=False))
    params = [*policy.parameters(), *value_net.parameters()]
    stats = ac.update(policy, value_net, torch.optim.Adam(params, lr=args.learning_rate), batch, args)
    assert stats["explained_variance"] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# e2. Wiring: update() is one step on the joint loss, with advantages from the critic before the update
# ----------------------------------------------------------------------------------------------
WIRING_ARGS = ac.Args(gamma=0.9, gae_lambda=0.8, ent_coef=0.05, vf_coef=0.7, max_grad_norm=0.5, hidden_size=8)


def actor_critic_state(network: str):
    """(policy, critic, Adam) in float64, as train() builds them, Adam warmed up by two updates on other batches."""
    torch.manual_seed(0)
    policy = ac.Policy(4, gym.spaces.Discrete(2), 8).to(F64)
    value_net = ac.ValueNet(4, 8, shared_with=policy if network == "shared" else None).to(F64)
    params = list({id(p): p for net in (policy, value_net) for p in net.parameters()}.values())
    state = (policy, value_net, torch.optim.Adam(params, lr=0.01))
    for seed in (1, 2):
        ac.update(*state, rollout_batch(seed), WIRING_ARGS)
    return state, rollout_batch(3)


@pytest.mark.parametrize("network", ["separate", "shared"])
def test_update_is_one_step_on_the_joint_loss_with_the_critic_before_the_update(network):
    state, batch = actor_critic_state(network)
    args = WIRING_ARGS

    def by_hand(state):
        policy, value_net, optimizer = state
        with torch.no_grad():  # the critic as it is before this update: its values are constants of the loss
            values, next_values = value_net(batch["obs"]), value_net(batch["next_obs"])
        advantages = ac.gae(batch["rewards"], values, next_values, batch["terminated"], batch["truncated"],
                            args.gamma, args.gae_lambda)  # fmt: skip
        targets = advantages + values
        log_probs, entropy = policy.log_prob_entropy(batch["obs"].reshape(-1, 4), batch["actions"].reshape(-1))
        loss = (
            ac.policy_loss(log_probs, advantages.reshape(-1))
            + args.vf_coef * ac.value_loss(value_net(batch["obs"].reshape(-1, 4)), targets.reshape(-1))
            - args.ent_coef * entropy.mean()
        )
        optimiser_step(optimizer, loss, args.max_grad_norm)

    assert_update_is_hand_built_steps(state, lambda s: ac.update(*s, batch, args), by_hand)


@pytest.mark.parametrize("network", ["separate", "shared"])
def test_every_hyperparameter_of_the_loss_reaches_update(network):
    state, batch = actor_critic_state(network)
    changes = {"gamma": 0.5, "gae_lambda": 0.3, "ent_coef": 0.5, "vf_coef": 0.1, "max_grad_norm": 0.01}
    assert_each_hyperparameter_changes_the_update(
        state, lambda s, args: ac.update(*s, batch, args), WIRING_ARGS, changes
    )


def test_every_update_steps_once_at_the_constant_learning_rate(tmp_path, monkeypatch):
    """The documented schedule: one Adam step per update on every parameter of actor and critic, at --learning-rate
    throughout. Read from the optimiser each update() is given, as it steps."""
    calls = record_learning_rates(ac, monkeypatch)
    argv = ["--total-timesteps", "256", "--num-envs", "2", "--num-steps", "32", "--learning-rate", "0.0025"]
    assert ac.main([*argv, "--run-dir", str(tmp_path / "run")]) == 0
    assert len(calls) == 4
    for (policy, value_net, *_), [(params, steps)] in calls:
        assert params == ids(policy, value_net) and steps == [[0.0025]]


# ----------------------------------------------------------------------------------------------
# f. Short runs, the files they write, and --eval
# ----------------------------------------------------------------------------------------------
def test_cartpole_learns_writes_files_and_reloads(tmp_path, capsys):
    run = tmp_path / "run"
    assert ac.main(["--total-timesteps", "20000", "--seed", "1", "--run-dir", str(run)]) == 0
    episodes = read_csv(run / "episodes.csv")
    returns = [float(e["return"]) for e in episodes]
    first, last = np.mean(returns[:20]), np.mean(returns[-20:])
    assert last > 4 * first and last > 100, (first, last)
    # global_step at each episode's end counts the steps of all envs: a multiple of num_envs, never decreasing
    steps = [int(e["global_step"]) for e in episodes]
    assert all(s % ac.Args.num_envs == 0 for s in steps) and steps == sorted(steps)
    rows = read_csv(run / "metrics.csv")
    assert steps[-1] <= int(rows[-1]["global_step"]) and sum(int(e["length"]) for e in episodes) <= steps[-1]
    assert eval_mean_return(ac, run / "model.pt", capsys) > 100


def test_pendulum_gaussian_path_runs_and_every_episode_is_truncated(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--env-id", "Pendulum-v1", "--total-timesteps", "1600", "--num-envs", "4", "--num-steps", "16"]
    assert ac.main([*argv, "--run-dir", str(run)]) == 0
    episodes = read_csv(run / "episodes.csv")
    assert [int(e["length"]) for e in episodes] == [200] * 8  # each env's two episodes, both cut by the time limit
    assert [int(e["global_step"]) for e in episodes] == [800] * 4 + [1600] * 4
    assert len(read_csv(run / "metrics.csv")) == 1600 // 64 and (run / "model.pt").exists()
    eval_mean_return(ac, run / "model.pt", capsys)


@pytest.mark.parametrize("network", ["separate", "shared"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # Discrete; a Gaussian policy with its log-std
def test_train_steps_every_parameter_of_the_networks_it_builds(env_id, network, tmp_path, monkeypatch):
    """The networks train() builds, through its first update(): its optimiser holds exactly the actor's and the
    critic's parameters, the hidden layers they share (--network shared) once, and the update moves every one."""
    args = ac.Args(env_id=env_id, network=network, total_timesteps=1, num_envs=2, num_steps=8, hidden_size=8,
                   run_dir=str(tmp_path / "run"))  # fmt: skip
    first = first_update_of_train(ac, args, monkeypatch)
    policy, value_net, optimizer = first.calls["update"][:3]
    assert_optimisers_hold_each_parameter_once([optimizer], policy, value_net)
    assert (ids(policy) & ids(value_net) != set()) == (network == "shared")
    assert all(first.moved(policy, value_net).values()), first.moved(policy, value_net)
