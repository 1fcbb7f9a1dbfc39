"""Advantage actor-critic (A2C) with GAE(lambda), and time limits told apart from terminations.

REINFORCE weights each action by the whole return that followed it: unbiased, but noisy, and it waits for
every episode to end. An actor-critic learns a critic V_phi(s) and uses it twice: as a baseline, and to
*bootstrap*, standing in for the unseen rest of an episode. So it learns from short slices: step N envs for
T steps, estimate each step's advantage from those rewards and the critic, take one gradient step on actor
and critic together, and carry on where the envs are.

Objective and gradient, with the names used in the code (T = --num-steps steps of N = --num-envs envs):
    J(theta)   = E_tau[ sum_t gamma^t r_t ]
    delta_t    = r_t + gamma * (1 - terminated_t) * V(s'_t) - V(s_t)     TD error; s'_t the true next state
    A_t        = sum_{l>=0} (gamma*lambda)^l delta_{t+l}                 gae(), each sum stopping at the end
               = delta_t + gamma*lambda * (1 - done_t) * A_{t+1}         of its episode or of the rollout
    G^lam_t    = A_t + V(s_t)                                            the lambda-return: the critic's target
    grad J    ~= E[ sum_t grad log pi(a_t|s_t) * A_t ]
    L          = -mean_t log pi(a_t|s_t) A_t                             policy_loss(), a mean over T*N steps
                 + vf_coef * 1/2 mean_t (V_phi(s_t) - G^lam_t)^2         value_loss(), G^lam_t held fixed
                 - ent_coef * mean_t H[pi(.|s_t)]                        the entropy bonus
When "~=" is "=" (tests/test_actor_critic.py proves each by exact enumeration): with the true critic
V = V^pi, E[delta_{t+l} | s_t, a_t] = 0 for l >= 1, so every lambda gives sum_t E[grad log pi (Q^pi - V^pi)],
which is grad J when gamma = 1 and episodes end; for gamma < 1 grad J also weights step t by gamma^t, which
this estimator (as reinforce.py's and the usual implementations) leaves out. With a wrong critic
V = V^pi + e, A_t gains -e(s_t) (a baseline: no bias) and (1 - lambda) sum_{l>=1} gamma^l lambda^(l-1)
e(s_{t+l}), a bias that vanishes at lambda = 1 (REINFORCE with a baseline and a bootstrap; lambda = 0 is delta_t).
Time limits (Pardo et al. 2018): at terminated the MDP has no future, V(s') = 0; at truncated a time limit cut
an episode whose s' had one, so A_t bootstraps from V of the *final* observation, never the reset one.
What changed since reinforce.py: a critic that bootstraps, GAE instead of returns-to-go, T-step rollouts of a
vector env instead of whole episodes (the loss is a mean over T*N steps), one Adam step on a joint actor and
critic loss with an entropy bonus, and optionally shared hidden layers (--network shared).
References: Mnih et al. 2016 (A3C; A2C is its synchronous form); Schulman et al. 2016 (GAE); Sutton & Barto
2018 ch. 12 (lambda-returns); Pardo et al. 2018 ("Time limits in reinforcement learning").
Run:  python actor_critic.py --help
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
    learning_rate: float = arg(4e-3, "Adam step size of the actor and the critic", above=0)
    num_envs: int = arg(4, "N: environments stepped together (a Gymnasium SyncVectorEnv)", at_least=1)
    num_steps: int = arg(16, "T: steps of each env per update (the rollout's length)", at_least=1)
    gamma: float = arg(0.99, "discount factor", at_least=0, at_most=1)
    gae_lambda: float = arg(0.95, "GAE lambda: 0 one-step TD error, 1 Monte Carlo", at_least=0, at_most=1)
    ent_coef: float = arg(0.0, "weight of the entropy bonus in the loss", at_least=0)
    vf_coef: float = arg(0.5, "weight of the critic's loss in the joint loss", above=0)
    network: str = arg("separate", "actor and critic: separate MLPs, or shared hidden layers with two heads",
                       choices=("separate", "shared"))  # fmt: skip
    hidden_size: int = arg(64, "width of the two hidden layers", at_least=1)
    max_grad_norm: float = arg(1.0, "clip the joint gradient's global norm (0 = off)", at_least=0)
    torch_threads: int = arg(1, "CPU threads for torch; networks this small run fastest on one", at_least=1)
    device: str = arg("auto", "auto picks CUDA when available", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv, episodes.csv and model.pt go (default: a new dir in runs/)")
    overwrite: bool = arg(False, "replace the run that --run-dir already holds")
    log_interval: int = arg(100, "print a progress line and save the checkpoint every this many updates", at_least=1)
    eval: str = arg("", "path of a model.pt: evaluate it greedily and exit, no training")
    eval_episodes: int = arg(10, "episodes for --eval", at_least=1)

    def problems(self) -> list[str]:
        """Constraints between hyperparameters that no single range expresses: none here."""
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
    """V_phi(s): [..., obs_dim] -> [...]. Its own MLP, or (shared_with=policy) a linear head on the
    policy's two hidden layers, which the two losses then train together."""

    def __init__(self, obs_dim: int, hidden: int, shared_with: Policy | None = None):
        super().__init__()
        if shared_with is None:
            self.net = mlp(obs_dim, 1, hidden, out_gain=1.0)
        else:
            head = nn.Linear(hidden, 1)
            nn.init.orthogonal_(head.weight, 1.0)
            nn.init.zeros_(head.bias)
            self.net = nn.Sequential(*shared_with.net[:-1], head)  # the same modules: shared parameters

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


def policy_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean_t log pi(a_t|s_t) * A_t over the batch's T*N steps, whose gradient is -g (advantages are
    constants). log_probs: [B] with grad; advantages: [B] (detached here). -> scalar."""
    return -(log_probs * advantages.detach()).mean()


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Mean squared error 1/2 mean_t (V(s_t) - G_t)^2, the target G_t held fixed. [B], [B] -> scalar."""
    return 0.5 * (values - returns.detach()).pow(2).mean()


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var[G - V] / Var[G]: 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var = returns.var(unbiased=False)
    return float("nan") if var == 0 else float(1 - (returns - values).var(unbiased=False) / var)


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


def update(policy, value_net, optimizer, batch, args: Args) -> dict[str, float]:
    """One gradient step on the joint loss of the actor and the critic, from one rollout of T*N steps."""
    advantages, targets, values = advantages_and_targets(value_net, batch, args.gamma, args.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
    log_probs, entropy = policy.log_prob_entropy(flat(batch["obs"]), flat(batch["actions"]))
    pi_loss = policy_loss(log_probs, flat(advantages))
    v_loss = value_loss(value_net(flat(batch["obs"])), flat(targets))
    loss = pi_loss + args.vf_coef * v_loss - args.ent_coef * entropy.mean()
    if not torch.isfinite(loss):
        raise FloatingPointError("non-finite loss")
    optimizer.zero_grad()
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if args.max_grad_norm > 0:
        nn.utils.clip_grad_norm_(params, args.max_grad_norm)
    optimizer.step()
    if not all(torch.isfinite(p).all() for p in params):
        raise FloatingPointError("non-finite parameters")
    return {
        "policy_loss": pi_loss.item(),
        "value_loss": v_loss.item(),
        "entropy": entropy.mean().item(),
        "explained_variance": explained_variance(flat(values), flat(targets)),
    }


# ---- Training loop --------------------------------------------------------------------------------------------------
def train(args: Args) -> dict[str, float]:
    """The RL loop: roll out T steps of N envs, take one step on the joint loss, log; until the budget is spent."""
    device = setup(args)  # seeds, torch threads, the device
    envs = make_envs(args.env_id, args.num_envs)
    obs_dim = envs.single_observation_space.shape[0]
    policy = Policy(obs_dim, envs.single_action_space, args.hidden_size).to(device)
    value_net = ValueNet(obs_dim, args.hidden_size, shared_with=policy if args.network == "shared" else None).to(device)
    params = list({id(p): p for net in (policy, value_net) for p in net.parameters()}.values())  # shared ones once
    optimizer = torch.optim.Adam(params, lr=args.learning_rate)
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
ALGO = "actor_critic"


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
