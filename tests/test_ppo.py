"""ppo.py: the clipped surrogate proved exactly where it is the policy gradient (theta = theta_old) and checked
where it is not (the clip's zero gradients, by finite differences); the k3 KL diagnostic's expectation; the
Gaussian path's log-probabilities; the normaliser's documented start and its statistics through a checkpoint and
--eval; one epoch of one minibatch as the actor-critic step; update() as the hand-built steps, with every
hyperparameter reaching it, and on two processes as one on their union; gae() on Gymnasium's bool flags and the
refused minibatch of one; then short runs, and what train() feeds update(): the learning rate of the schedule, and
the scaled rewards of --norm-reward.

The exact tests use the recipe of tests/exact.py (grad J by finite differences of the exactly enumerated
objective, against the exact expectation of the gradient of ppo.py's own policy_loss).
"""

import copy
import dataclasses
import importlib.util

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
from processes import on_two_processes
from runs import eval_mean_return, short_run_improves
from wiring import (
    assert_each_hyperparameter_changes_the_update,
    assert_optimisers_hold_each_parameter_once,
    assert_update_is_hand_built_steps,
    first_update_of_train,
    flat_parameters,
    optimiser_step,
    record_learning_rates,
    rollout_batch,
)

import actor_critic as ac
import ppo


# ----------------------------------------------------------------------------------------------
# a. At theta = theta_old the clipped surrogate's gradient is the policy gradient
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1.0, 0.8])
@pytest.mark.parametrize("clip_coef", [0.2, 0.05])
def test_clipped_surrogate_at_theta_old_has_the_policy_gradient(gamma, clip_coef):
    """E[-T grad policy_loss] over every trajectory, with the exact advantages Q^pi - V^pi weighted by gamma^t,
    is grad J. old_log_probs is passed *with* its graph: policy_loss must detach it (else the ratio is 1)."""
    theta = THETA.clone().requires_grad_(True)
    V, Q = MDP.values(torch.softmax(THETA, -1), gamma)

    def loss(tau):
        states, actions = list(tau.states), list(tau.actions)
        A = (Q[states, actions] - V[states]) * gamma ** torch.arange(len(tau), dtype=F64)
        log_probs = trajectory_log_probs(tau, theta)
        return len(tau) * ppo.policy_loss(log_probs, log_probs, A, clip_coef)

    g = -expected_grad(theta, MDP.trajectories(torch.softmax(theta, -1)), loss)
    assert_close(g, true_grad(MDP, THETA, gamma))


# ----------------------------------------------------------------------------------------------
# b. Away from theta_old: the clip's gradient, sample by sample
# ----------------------------------------------------------------------------------------------
def test_clipped_surrogate_gradient_away_from_theta_old_is_zero_exactly_where_the_clip_binds():
    """Eight samples, each in its own state of a softmax table, so that row i of the gradient is sample i's.
    theta moves each sample's ratio to a chosen value away from the kinks at 1 +- eps; autograd matches
    central differences of the clipped objective itself, and a row is zero exactly when the ratio has left
    [1 - eps, 1 + eps] on the side its advantage pushes towards (A > 0 and r > 1 + eps, A < 0 and r < 1 - eps)."""
    eps = 0.2
    ratios = torch.tensor([0.5, 0.9, 1.1, 1.6, 0.5, 0.9, 1.1, 1.6], dtype=F64)
    advantages = torch.tensor([1.3, 0.7, 0.4, 2.0, -1.1, -0.6, -0.9, -1.5], dtype=F64)
    zero = torch.tensor([False, False, False, True, True, False, False, False])
    g = torch.Generator().manual_seed(5)
    theta_old = 0.3 * torch.randn(8, 3, generator=g, dtype=F64)
    actions = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    rows = torch.arange(8)
    p_old = torch.softmax(theta_old, -1)[rows, actions]
    theta = theta_old.clone()  # raise the action's logit by c: pi = p e^c / (p e^c + 1 - p) = r p
    theta[rows, actions] += torch.log(ratios * (1 - p_old) / (1 - ratios * p_old))
    old_log_probs = torch.log(p_old)

    def objective(t):
        return ppo.policy_loss(torch.log_softmax(t, -1)[rows, actions], old_log_probs, advantages, eps)

    t = theta.clone().requires_grad_(True)
    assert_close(torch.exp(torch.log_softmax(t, -1)[rows, actions] - old_log_probs), ratios, rtol=1e-12)
    grad = torch.autograd.grad(objective(t), t)[0]
    assert_close(grad, fd_grad(objective, theta), rtol=1e-7)
    assert torch.all(grad[zero] == 0)
    assert torch.all(grad[~zero].norm(dim=-1) > 1e-3)  # including A > 0, r < 1 - eps: min keeps the worse, unclipped


def test_clip_fraction_counts_the_ratios_outside_the_clip_range():
    old = torch.zeros(5, dtype=F64)
    log_probs = torch.log(torch.tensor([0.5, 0.85, 1.0, 1.15, 1.3], dtype=F64))
    assert ppo.clip_fraction(log_probs, old, 0.2) == pytest.approx(2 / 5)
    assert ppo.clip_fraction(log_probs, old, 0.1) == pytest.approx(4 / 5)


def test_clipped_value_loss_is_the_larger_of_the_two_squared_errors_and_still_where_the_clip_binds():
    """eps = 0.2, V_old = 0: (0) V moved past the clip towards G: the clipped error, larger, is kept, and is
    constant in V; (1) V moved past the clip away from G: the unclipped error is larger; (2) inside the clip
    the two agree; (3) as (0), below V_old and G."""
    values = torch.tensor([0.5, 0.5, 0.1, -0.5], dtype=F64, requires_grad=True)
    returns = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64)
    old = torch.zeros(4, dtype=F64)
    loss = ppo.value_loss(values, returns, old, 0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 2.25 + 0.81 + 0.64) / 4, rel=1e-12)
    (grad,) = torch.autograd.grad(loss, values)
    assert_close(grad, torch.tensor([0.0, 1.5, -0.9, 0.0], dtype=F64) / 4, rtol=1e-12)
    assert ppo.value_loss(values, returns).item() == pytest.approx(0.5 * (0.25 + 2.25 + 0.81 + 0.25) / 4, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# c. The approximate KL: exact expectation, and never negative
# ----------------------------------------------------------------------------------------------
def test_k3_approx_kl_is_unbiased_for_the_kl_and_never_negative_unlike_minus_log_ratio():
    """Over every trajectory of pi_old, E[sum_t k3_t] = sum_s d_old(s) KL(pi_old(.|s) || pi(.|s)), d_old the
    expected visits (gamma = 1). -log r has the same expectation but is negative for some samples; k3 never is."""
    pi_old = torch.softmax(THETA, -1)
    theta = THETA + torch.randn(THETA.shape, generator=torch.Generator().manual_seed(8), dtype=F64)
    log_pi, log_pi_old = torch.log_softmax(theta, -1), torch.log(pi_old)
    kl_per_state = (pi_old * (log_pi_old - log_pi)).sum(-1)
    exact = (discounted_visits(MDP, pi_old, 1.0) * kl_per_state).sum()
    k3 = naive = 0.0
    for tau, p in MDP.trajectories(pi_old):
        s, a = list(tau.states), list(tau.actions)
        k3 = k3 + p * len(tau) * ppo.approx_kl(log_pi[s, a], log_pi_old[s, a])  # approx_kl is a mean over steps
        naive = naive + p * (log_pi_old[s, a] - log_pi[s, a]).sum()
    assert exact > 0.05
    assert_close(k3, exact, rtol=1e-10)
    assert_close(naive, exact, rtol=1e-10)
    every = [(s, a) for s in range(MDP.S) for a in range(MDP.A)]
    per_sample = torch.stack([ppo.approx_kl(log_pi[s, a].reshape(1), log_pi_old[s, a].reshape(1)) for s, a in every])
    assert (per_sample >= 0).all()
    assert ((log_pi_old - log_pi) < 0).any()


# ----------------------------------------------------------------------------------------------
# d. Box actions: the unclipped sample's log-probability; normalisation statistics through save and --eval
# ----------------------------------------------------------------------------------------------
class Bounded(gym.Env):
    """Actions in [-1, 1]^2, observations random, reward 0, episodes of 5 steps; records every action it gets."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self):
        self.executed = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.normal(size=3).astype(np.float32), {}

    def step(self, action):
        self.executed.append(np.array(action, np.float32))
        return self.np_random.normal(size=3).astype(np.float32), 0.0, False, False, {}


gym.register("Bounded-v0", entry_point=Bounded, max_episode_steps=5)


def test_box_rollout_stores_the_unclipped_sample_and_its_log_prob_while_the_env_gets_the_clipped_action():
    torch.manual_seed(0)
    envs = ppo.make_envs("Bounded-v0", 2)
    obs, _ = envs.reset(seed=0)
    carry = {"obs": obs, "episode_return": np.zeros(2), "episode_length": np.zeros(2, int)}
    policy = ppo.Policy(3, envs.single_action_space, 8)
    with torch.no_grad():
        policy.log_std.fill_(np.log(2.0))  # wide: most samples fall outside the bounds
    normalizer = ppo.Normalizer((3,), 2, 0.99, norm_obs=False, norm_reward=False)
    batch = ppo.rollout(envs, policy, carry, 6, torch.device("cpu"), lambda *e: None, normalizer)
    actions = batch["actions"]
    outside = (actions.abs() > 1).any(-1)
    assert outside.sum() >= 4 and (~outside).sum() >= 1
    for i in range(2):  # the env received the clipped action
        assert np.array_equal(np.stack(envs.envs[i].unwrapped.executed), actions[:, i].clamp(-1, 1).numpy())
    with torch.no_grad():
        unclipped = policy.log_prob_entropy(batch["obs"].reshape(-1, 3), actions.reshape(-1, 2))[0].reshape(6, 2)
        clipped = policy.log_prob_entropy(batch["obs"].reshape(-1, 3), actions.clamp(-1, 1).reshape(-1, 2))[0]
        clipped = clipped.reshape(6, 2)
    assert torch.allclose(batch["log_probs"], unclipped, atol=1e-5)
    assert ((batch["log_probs"] - clipped).abs()[outside] > 1e-3).all()  # float32 rounding is ~1e-6


def test_update_mean_var_merges_batches_into_the_pooled_mean_and_variance():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 3, 12)]
    mean, var, count = np.zeros(4), np.ones(4), 0.0
    for b in batches:
        mean, var, count = ppo.update_mean_var(mean, var, count, b)
    everything = np.concatenate(batches)
    assert count == len(everything)
    np.testing.assert_allclose(mean, everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, everything.var(0), rtol=1e-12)


def pooled_with_prior(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, population variance and count of samples [n, ...] pooled with the Normalizer's documented start, a
    prior worth 1e-4 samples of mean 0 and variance 1 (Stable-Baselines3's RunningMeanStd), computed in one go."""
    count = len(samples) + 1e-4
    mean = samples.sum(0) / count
    var = (1e-4 * (1.0 + mean**2) + ((samples - mean) ** 2).sum(0)) / count
    return mean, var, count


def test_the_normaliser_starts_from_mean_0_variance_1_count_1e_4_so_the_first_reward_is_not_blown_up():
    """One env, the first steps: scaled r_t = clip(r_t / sqrt(var_t + 1e-8), -10, 10), var_t that of every
    discounted return so far (R <- gamma R + r, reset after a done) pooled with the prior; the first reward,
    0.05, scales to about 5 (a count-0 start has var_1 = 0 and clips it to 10). Observations likewise."""
    gamma = 0.9
    rewards, dones = [0.05, -0.02, 0.03, -0.04], [False, True, False, False]
    normalizer = ppo.Normalizer((3,), 1, gamma, norm_obs=True, norm_reward=True)
    running, returns, scaled = 0.0, [], []
    for r, done in zip(rewards, dones, strict=True):
        running = gamma * running + r
        returns.append(running)
        _, var, _ = pooled_with_prior(np.array(returns))
        scaled.append(normalizer.reward(np.array([r]), np.array([done]))[0])
        assert scaled[-1] == pytest.approx(np.clip(r / np.sqrt(var + 1e-8), -10, 10), rel=1e-9)
        running = 0.0 if done else running
    assert 4 < scaled[0] < 6
    observations = np.random.default_rng(3).normal(size=(3, 1, 3))
    for k, o in enumerate(observations):
        mean, var, _ = pooled_with_prior(observations[: k + 1].reshape(-1, 3))
        np.testing.assert_allclose(normalizer.obs(o), (o - mean) / np.sqrt(var + 1e-8), rtol=1e-9)


def test_normalisation_statistics_are_those_of_training_and_survive_a_checkpoint_and_eval(
    tmp_path, monkeypatch, capsys
):
    """A short Pendulum-v1 run with --norm-obs --norm-reward: the checkpoint holds the pooled mean and variance
    of every raw observation and every discounted return that training fed in, with the documented prior;
    --eval normalises with exactly those, frozen: the first observation its policy sees is
    (reset obs - mean) / sqrt(var + 1e-8)."""
    fed = {"obs": [], "returns": []}
    real_update = ppo.update_mean_var

    def recording(mean, var, count, batch):
        fed["obs" if batch.ndim == 2 else "returns"].append(np.array(batch, dtype=np.float64))
        return real_update(mean, var, count, batch)

    monkeypatch.setattr(ppo, "update_mean_var", recording)
    run = tmp_path / "run"
    argv = ["--env-id", "Pendulum-v1", "--total-timesteps", "512", "--num-envs", "2", "--num-steps", "64"]
    assert ppo.main([*argv, "--norm-obs", "--norm-reward", "--run-dir", str(run)]) == 0
    monkeypatch.setattr(ppo, "update_mean_var", real_update)
    stats = torch.load(run / "model.pt", weights_only=True)["normalizer"]
    for name in ("obs", "return"):
        seen = np.concatenate(fed[name if name == "obs" else "returns"])
        mean, var, count = pooled_with_prior(seen)
        assert stats[f"{name}_count"] == pytest.approx(count, rel=1e-12) and len(seen) > 500
        np.testing.assert_allclose(stats[f"{name}_mean"].numpy(), mean, rtol=1e-6)
        np.testing.assert_allclose(stats[f"{name}_var"].numpy(), var, rtol=1e-6)

    seen_by_policy = []
    real_act = ppo.Policy.act

    def recording_act(self, obs, greedy=False):
        seen_by_policy.append(obs.clone())
        return real_act(self, obs, greedy)

    monkeypatch.setattr(ppo.Policy, "act", recording_act)
    assert ppo.main(["--eval", str(run / "model.pt"), "--eval-episodes", "2", "--seed", "5"]) == 0
    assert "mean return" in capsys.readouterr().out
    raw, _ = gym.make("Pendulum-v1").reset(seed=5)
    expected = (raw - stats["obs_mean"].numpy()) / np.sqrt(stats["obs_var"].numpy() + 1e-8)
    assert np.abs(expected).max() > 0.1 and not np.allclose(expected, raw, atol=0.05)
    np.testing.assert_allclose(seen_by_policy[0][0].numpy(), expected, rtol=1e-5)
    assert len(seen_by_policy) == 400  # two episodes of 200 steps, all through the same frozen statistics


# ----------------------------------------------------------------------------------------------
# e, f. update(): one epoch of one minibatch is the actor-critic step; in general, the hand-built steps
# ----------------------------------------------------------------------------------------------
def fixed_batch(policy, T=8, N=2, obs_dim=3, seed=1):
    """wiring.rollout_batch, with actions and their log-probabilities sampled from the policy (theta_old)."""
    batch = rollout_batch(seed, T, N, obs_dim)
    torch.manual_seed(seed)
    actions, log_probs = policy.act(batch["obs"].reshape(T * N, obs_dim))
    batch["actions"], batch["log_probs"] = actions.reshape(T, N, *actions.shape[1:]), log_probs.reshape(T, N)
    return batch


def networks(space, obs_dim=3, hidden=8, seed=0):
    torch.manual_seed(seed)
    return ppo.Policy(obs_dim, space, hidden).double(), ppo.ValueNet(obs_dim, hidden).double()


SPACES = {"discrete": gym.spaces.Discrete(3), "box": gym.spaces.Box(-1.0, 1.0, (2,))}


@pytest.mark.parametrize("space", SPACES)
def test_one_epoch_of_one_minibatch_is_the_actor_critic_step(space):
    """With one epoch, one minibatch, no advantage normalisation and no value clipping, ratio = 1 and the
    clip is inactive: update() takes the step of actor_critic.py's loss on the same batch (its gae,
    policy_loss and value_loss), to rounding."""
    policy, value_net = networks(SPACES[space])
    batch = fixed_batch(policy)
    args = ppo.Args(update_epochs=1, num_minibatches=1, norm_adv=False, clip_vloss=False, max_grad_norm=0.0,
                    ent_coef=0.03, vf_coef=0.7, gamma=0.9, gae_lambda=0.8)  # fmt: skip
    params = [*policy.parameters(), *value_net.parameters()]
    before = [p.detach().clone() for p in params]
    lr = 1e-3
    ppo.update(policy, value_net, torch.optim.SGD(params, lr), batch, args)
    change = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(params, before, strict=True)])

    for p, b in zip(params, before, strict=True):
        p.data.copy_(b)
    A, targets, _ = ac.advantages_and_targets(value_net, batch, args.gamma, args.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    log_probs, entropy = policy.log_prob_entropy(flat(batch["obs"]), flat(batch["actions"]))
    loss = (
        ac.policy_loss(log_probs, flat(A))
        + args.vf_coef * ac.value_loss(value_net(flat(batch["obs"])), flat(targets))
        - args.ent_coef * entropy.mean()
    )
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert_close(change, -lr * grad, rtol=1e-9)


WIRING_ARGS = ppo.Args(num_envs=2, num_steps=8, update_epochs=3, num_minibatches=4, learning_rate=0.02,
                       clip_coef=0.1, ent_coef=0.02, vf_coef=0.7, gamma=0.9, gae_lambda=0.8, max_grad_norm=0.3,
                       norm_adv=True, clip_vloss=True, target_kl=0.0)  # fmt: skip


def warmed_state(space):
    """(policy, value_net, torch.optim.Adam with the script's eps), Adam a few steps away from empty moments."""
    policy, value_net = networks(SPACES[space])
    params = [*policy.parameters(), *value_net.parameters()]
    optimizer = torch.optim.Adam(params, lr=WIRING_ARGS.learning_rate, eps=1e-5)
    warm = ppo.Args(**{**WIRING_ARGS.__dict__, "update_epochs": 1})
    ppo.update(policy, value_net, optimizer, fixed_batch(policy, seed=9), warm)
    return policy, value_net, optimizer


def run_update(state, args=WIRING_ARGS, seed=4):
    policy, value_net, optimizer = state
    for group in optimizer.param_groups:
        group["lr"] = args.learning_rate
    return ppo.update(policy, value_net, optimizer, fixed_batch(policy), args, torch.Generator().manual_seed(seed))


def hand_built_steps(args):
    """The update, from the pure functions: advantages and lambda-returns from the critic before any step,
    then for each epoch a fresh permutation (the same generator), one torch.optim.Adam step per minibatch on
    policy_loss + vf_coef value_loss - ent_coef entropy, stopping before a step (not the first) where approx_kl >
    target_kl."""

    def steps(state, seed=4):
        policy, value_net, optimizer = state
        batch = {k: v.reshape(-1, *v.shape[2:]) for k, v in fixed_batch(policy).items()}
        with torch.no_grad():
            values, next_values = value_net(batch["obs"]), value_net(batch["next_obs"])
        columns = (batch["rewards"], values, next_values, batch["terminated"], batch["truncated"])
        T_by_N = [x.reshape(args.num_steps, args.num_envs) for x in columns]
        A = ppo.gae(*T_by_N, args.gamma, args.gae_lambda).reshape(-1)
        targets = A + values
        generator = torch.Generator().manual_seed(seed)
        for epoch in range(args.update_epochs):
            for k, idx in enumerate(ppo.minibatches(len(A), args.num_minibatches, generator)):
                log_probs, entropy = policy.log_prob_entropy(batch["obs"][idx], batch["actions"][idx])
                kl = ppo.approx_kl(log_probs, batch["log_probs"][idx])
                if args.target_kl > 0 and epoch + k > 0 and kl > args.target_kl:
                    return
                a = ppo.normalize(A[idx]) if args.norm_adv else A[idx]
                old_values = values[idx] if args.clip_vloss else None
                loss = (
                    ppo.policy_loss(log_probs, batch["log_probs"][idx], a, args.clip_coef)
                    + args.vf_coef
                    * ppo.value_loss(value_net(batch["obs"][idx]), targets[idx], old_values, args.clip_coef)
                    - args.ent_coef * entropy.mean()
                )
                optimiser_step(optimizer, loss, args.max_grad_norm)

    return steps


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize(
    "changes",
    [{}, {"norm_adv": False, "clip_vloss": False, "max_grad_norm": 0.0}, {"target_kl": 0.003}],
    ids=["clips-on", "clips-off", "target-kl"],
)
def test_update_is_the_hand_built_steps(space, changes):
    args = ppo.Args(**{**WIRING_ARGS.__dict__, **changes})
    state = warmed_state(space)
    if changes.get("target_kl"):  # the early stop must really happen, and not before the first step
        stats = run_update(copy.deepcopy(state), args)
        assert 0 < stats["epochs"] < args.update_epochs
    assert_update_is_hand_built_steps(state, lambda s: run_update(s, args), hand_built_steps(args))


@pytest.mark.parametrize("space", SPACES)
def test_every_hyperparameter_of_the_loss_reaches_update(space):
    changes = {"clip_coef": 0.3, "ent_coef": 0.1, "vf_coef": 0.3, "gamma": 0.99, "gae_lambda": 0.95,
               "norm_adv": False, "clip_vloss": False, "max_grad_norm": 2.0, "target_kl": 0.003,
               "update_epochs": 2, "num_minibatches": 2, "learning_rate": 0.01}  # fmt: skip
    assert_each_hyperparameter_changes_the_update(warmed_state(space), run_update, WIRING_ARGS, changes)


def test_gae_takes_the_bool_arrays_gymnasium_returns_for_terminated_and_truncated():
    batch = rollout_batch(2, T=6, N=3)
    rewards, terminated, truncated = batch["rewards"], batch["terminated"], batch["truncated"]
    values, next_values = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = ppo.gae(rewards, values, next_values, terminated, truncated, 0.9, 0.8)
    assert terminated.any() and truncated.any()
    for flags in ((terminated.bool(), truncated.bool()), (terminated.bool().numpy(), truncated.bool().numpy())):
        assert torch.equal(ppo.gae(rewards, values, next_values, *flags, 0.9, 0.8), expected)


def test_normalize_refuses_fewer_than_two_advantages_and_matches_its_formula():
    """Copied alone, normalize() of one advantage raises (its unbiased std is undefined) instead of returning NaN;
    of two or more it is (A - mean) / (unbiased std + eps)."""
    with pytest.raises(ValueError, match="2 advantages"):
        ppo.normalize(torch.tensor([1.5]))
    a = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert_close(ppo.normalize(a), (a - a.mean()) / (a.std() + 1e-8), rtol=1e-12)


def test_a_minibatch_of_one_step_is_refused_when_advantages_are_normalised(tmp_path, capsys):
    """normalize() of one advantage is 0 / 0: with --norm-adv, minibatches of one step are bad input (exit 2, one
    line naming --num-minibatches); with --no-norm-adv the same split trains."""
    argv = ["--num-envs", "1", "--num-steps", "8", "--num-minibatches", "8", "--total-timesteps", "16"]
    assert ppo.main([*argv, "--run-dir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ppo.py: error: --num-minibatches"), err
    assert not (tmp_path / "refused").exists()
    assert ppo.main([*argv, "--no-norm-adv", "--run-dir", str(tmp_path / "trains")]) == 0


TWO_PROCESS_ARGS = dataclasses.replace(WIRING_ARGS, num_envs=4, num_minibatches=1)  # a minibatch: the union
STOPS_IN_EPOCH_3 = {"discrete": 0.001, "box": 0.003}  # a --target-kl the union's KL passes before the 3rd epoch


def update_on_a_share(rank: int, state: tuple, args: ppo.Args) -> tuple[torch.Tensor, dict]:
    """On process `rank` of 2: update() of state (warmed up on one process) on this process's 2 of the 4 envs."""
    state = copy.deepcopy(state)  # the processes received the tensors in shared memory: step a private copy
    batch = {k: v[:, 2 * rank : 2 * rank + 2] for k, v in fixed_batch(state[0], N=4).items()}
    stats = ppo.update(*state, batch, args, torch.Generator().manual_seed(4))
    return flat_parameters(state), stats


def normalise_a_share(rank: int | None) -> dict:
    """On process `rank` of 2 (or of 1 if rank is None): a Normalizer fed its envs' part of 6 steps of 4 envs."""
    envs = slice(None) if rank is None else slice(2 * rank, 2 * rank + 2)
    normalizer = ppo.Normalizer((3,), 4 if rank is None else 2, 0.9, norm_obs=True, norm_reward=True)
    rng = np.random.default_rng(0)
    for _ in range(6):
        obs, rewards, done = rng.normal(size=(4, 3)), rng.normal(size=4), rng.random(4) < 0.3
        normalizer.obs(obs[envs])
        normalizer.reward(rewards[envs], done[envs])
    return normalizer.state_dict()


def on_a_share(rank: int, states: dict, args: dict) -> dict:
    """On process `rank` of 2: update_on_a_share for each action space, and normalise_a_share (one spawn for all:
    a spawn costs seconds)."""
    return {"normaliser": normalise_a_share(rank), **{k: update_on_a_share(rank, states[k], args[k]) for k in states}}


def test_update_on_two_processes_is_the_update_of_one_on_their_union():
    """torchrun's split: each process has 2 of the 4 envs, and with one minibatch per epoch a minibatch is the
    union of the processes' halves: the same parameters (averaged gradients, advantages normalised over the union)
    and the same logged statistics as one process on all 4 envs (but the explained variance: rank 0's share's, as
    in actor_critic.py). --target-kl stops every process after the epoch at which one process stops. The running
    observation and reward statistics of 2 processes are those of one process that steps all 4 envs."""
    states = {space: warmed_state(space) for space in SPACES}
    args = {space: dataclasses.replace(TWO_PROCESS_ARGS, target_kl=STOPS_IN_EPOCH_3[space]) for space in SPACES}
    two = on_two_processes(on_a_share, states, args)
    for space in SPACES:
        state = states[space]
        stats = ppo.update(*state, fixed_batch(state[0], N=4), args[space], torch.Generator().manual_seed(4))
        assert stats["epochs"] == 2
        for process in two:
            parameters, stats_of_share = process[space]
            assert_close(parameters, flat_parameters(state), rtol=1e-12)
            del stats_of_share["explained_variance"]
            expected = {k: v for k, v in stats.items() if k != "explained_variance"}
            assert stats_of_share == pytest.approx(expected, rel=1e-9), space
    one = normalise_a_share(None)
    for process in two:
        for k in one:
            assert_close(process["normaliser"][k], one[k], rtol=1e-12)


def test_the_minibatches_of_an_epoch_are_a_permutation_of_the_batch():
    parts = ppo.minibatches(12, 3, torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [4, 4, 4] and sorted(torch.cat(parts).tolist()) == list(range(12))


# ----------------------------------------------------------------------------------------------
# g. Short runs, the files they write, and --eval
# ----------------------------------------------------------------------------------------------
def test_cartpole_learns_writes_files_and_reloads(tmp_path, capsys):
    rows = short_run_improves(ppo, tmp_path / "run", "--total-timesteps", "8000")
    for column in ("approx_kl", "clip_fraction", "explained_variance", "entropy", "policy_loss", "value_loss"):
        assert all(np.isfinite(float(r[column])) for r in rows), column
    assert max(float(r["clip_fraction"]) for r in rows) > 0 and min(float(r["approx_kl"]) for r in rows) >= 0
    assert eval_mean_return(ppo, tmp_path / "run" / "model.pt", capsys) > 100


# ----------------------------------------------------------------------------------------------
# h. What train() feeds update(): the learning rate each update applies, and the rewards it learns from
# ----------------------------------------------------------------------------------------------
def applied_learning_rates(monkeypatch, tmp_path, *argv: str) -> list[list[float]]:
    """Train with argv; for each update, the learning rate that each of its optimiser steps applied, read from the
    optimiser that update() was given at the moment it stepped."""
    calls = record_learning_rates(ppo, monkeypatch)
    short = ["--total-timesteps", "256", "--num-envs", "2", "--num-steps", "16", "--update-epochs", "2"]
    assert ppo.main([*short, "--num-minibatches", "2", "--run-dir", str(tmp_path / "run"), *argv]) == 0
    return [[lrs[0] for lrs in steps] for _, [(_, steps)] in calls]


@pytest.mark.parametrize("anneal", [True, False], ids=["anneal-lr", "no-anneal-lr"])
def test_each_update_applies_the_documented_learning_rate(anneal, monkeypatch, tmp_path):
    """256 steps in batches of 2 x 16: 8 updates of 2 epochs x 2 minibatches. Update k (from 0) steps with
    learning_rate * (1 - k / 8), from learning_rate down to learning_rate / 8; --no-anneal-lr: learning_rate."""
    lr, updates = 0.003, 8
    rates = applied_learning_rates(
        monkeypatch, tmp_path, "--learning-rate", str(lr), "--anneal-lr" if anneal else "--no-anneal-lr"
    )
    expected = [lr * (1 - k / updates) if anneal else lr for k in range(updates)]
    assert [len(r) for r in rates] == [4] * updates
    for k, (applied, want) in enumerate(zip(rates, expected, strict=True)):
        assert applied == pytest.approx([want] * 4, rel=1e-12), f"update {k}"


def test_with_norm_reward_the_advantages_are_computed_from_the_scaled_rewards(monkeypatch, tmp_path):
    """Pendulum-v1 (rewards in [-16.3, 0]) with --norm-reward: the rewards that gae() receives at each update are
    the normaliser's outputs for that rollout's steps, in order, and far from the raw rewards."""
    raw, scaled, given_to_gae = [], [], []
    real_reward, real_gae = ppo.Normalizer.reward, ppo.gae

    def recording_reward(self, rewards, *rest):
        out = real_reward(self, rewards, *rest)
        raw.append(np.array(rewards, dtype=np.float64))
        scaled.append(np.array(out, dtype=np.float64))
        return out

    def recording_gae(rewards, *rest):
        given_to_gae.append(rewards.detach().double().cpu())
        return real_gae(rewards, *rest)

    monkeypatch.setattr(ppo.Normalizer, "reward", recording_reward)
    monkeypatch.setattr(ppo, "gae", recording_gae)
    argv = ["--env-id", "Pendulum-v1", "--total-timesteps", "384", "--num-envs", "2", "--num-steps", "64"]
    assert ppo.main([*argv, "--norm-reward", "--update-epochs", "1", "--run-dir", str(tmp_path / "run")]) == 0
    T = 64
    assert len(given_to_gae) == 3 and len(scaled) == 3 * T
    for k, rewards in enumerate(given_to_gae):
        steps = slice(k * T, (k + 1) * T)
        expected, unscaled = torch.tensor(np.stack(scaled[steps])), torch.tensor(np.stack(raw[steps]))
        assert_close(rewards, expected, rtol=1e-6)
        assert (rewards - unscaled).abs().max() > 1.0


@pytest.mark.parametrize("network", ["separate", "shared"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # Discrete; a Gaussian policy with its log-std
def test_train_steps_every_parameter_of_the_networks_it_builds(env_id, network, tmp_path, monkeypatch):
    """The networks train() builds, through its first update(): its optimiser holds exactly the actor's and the
    critic's parameters, the hidden layers they share (--network shared) once; the update moves every one of them
    and leaves the observation and reward normaliser's statistics as the rollout left them."""
    args = ppo.Args(
        env_id=env_id,
        network=network,
        total_timesteps=1,
        num_envs=2,
        num_steps=8,
        num_minibatches=2,
        update_epochs=2,
        hidden_size=8,
        norm_obs=True,
        norm_reward=True,
        run_dir=str(tmp_path / "run"),
    )
    statistics, real_update = [], ppo.update

    def update_between_two_looks_at_the_normaliser(*a, **k):
        statistics.append({k: v.clone() for k, v in normalizer[0].state_dict().items()})
        out = real_update(*a, **k)
        statistics.append({k: v.clone() for k, v in normalizer[0].state_dict().items()})
        return out

    normalizer, real_normalizer = [], ppo.Normalizer
    monkeypatch.setattr(ppo, "Normalizer", lambda *a: normalizer.append(real_normalizer(*a)) or normalizer[-1])
    monkeypatch.setattr(ppo, "update", update_between_two_looks_at_the_normaliser)
    first = first_update_of_train(ppo, args, monkeypatch)
    policy, value_net, optimizer = first.calls["update"][:3]
    assert_optimisers_hold_each_parameter_once([optimizer], policy, value_net)
    assert all(first.moved(policy, value_net).values()), first.moved(policy, value_net)
    assert normalizer[0].obs_count > 1 and all(torch.equal(statistics[0][k], statistics[1][k]) for k in statistics[0])


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="MuJoCo is not installed: it comes with "
                    "benchmarks/requirements.txt (gymnasium[mujoco])")  # fmt: skip
def test_a_mujoco_checkpoint_evaluates_with_its_saved_normaliser(tmp_path, capsys):
    """ppo.py on Hopper-v5 for 2 rollouts of benchmarks/mujoco_benchmark.py's setting; --eval prints the mean return
    of the greedy episodes that the saved policy, with the saved observation statistics, plays (seeds 1, 2, 3)."""
    run = tmp_path / "run"
    setting = ["--num-envs", "1", "--num-steps", "2048", "--num-minibatches", "32", "--norm-obs", "--norm-reward"]
    assert ppo.main(["--env-id", "Hopper-v5", "--total-timesteps", "4096", *setting, "--run-dir", str(run)]) == 0
    printed = eval_mean_return(ppo, run / "model.pt", capsys)
    state = torch.load(run / "model.pt", weights_only=True)
    env = gym.make("Hopper-v5")
    policy = ppo.Policy(env.observation_space.shape[0], env.action_space, 64)
    policy.load_state_dict(state["policy"])
    normalizer = ppo.Normalizer(env.observation_space.shape, 1, 0.99, True, True)
    normalizer.load_state_dict(state["normalizer"])
    assert normalizer.obs_count > 4000  # the statistics of training, not the initial ones
    returns = []
    for seed in (1, 2, 3):
        (obs, _), done, total = env.reset(seed=seed), False, 0.0
        while not done:
            action, _ = policy.act(
                torch.as_tensor(normalizer.obs(obs[None], update=False), dtype=torch.float32), greedy=True
            )
            obs, reward, terminated, truncated, _ = env.step(np.clip(action[0].numpy(), -1.0, 1.0))
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    assert printed == pytest.approx(np.mean(returns), abs=0.006)  # printed with 2 decimals
