"""Wiring tests: does update() apply exactly the loss that the script's pure functions define?

The exact tests (tests/exact.py) prove the pure estimator functions. Between them and a training run
sits the wiring: update() must feed those functions the right tensors (advantages and baselines from the
networks as they were BEFORE the update, the sampler's log-probabilities, the frozen reference, ...) and
every hyperparameter that enters the loss must reach it. Two checks, shared by every script's tests:

    assert_update_is_hand_built_steps(state, run_update, hand_steps)
        run the script's update() on `state`, and on an identical deep copy of it run `hand_steps`, which
        re-derives the loss from the pure functions and takes the optimiser steps with `optimiser_step`.
        Every parameter must move, and move identically (to float64 rounding).
    assert_each_hyperparameter_changes_the_update(state, run_update, args, changes)
        for each (name, value), update() with args.name = value must move the parameters differently from
        update() with args: a hyperparameter that update() ignores fails here.

    rollout_batch(seed, T, N, obs_dim)
        a random float64 batch in the shape of the Gymnasium scripts' rollout(), for their update().
    record_learning_rates(module, monkeypatch)
        wrap module.update to record, at every step of every optimiser it is given, the learning rate applied:
        each script's test that the schedule is the documented one reads it there, not from a log column.

`state` is a tuple of whatever update() takes that carries parameters or optimiser state (networks,
optimisers). copy.deepcopy(state) copies the tuple as one object, so each optimiser in the copy points
at the copied parameters and keeps its own copy of its moments: both runs start from the same optimiser
state. Use float64 networks, and warm an Adam optimiser up (a few steps on another batch) before checking:
Adam's first step from empty moments is lr * sign(grad), blind to any factor that scales a gradient.
Each run starts from torch.manual_seed(0), so an update() that shuffles minibatches with torch's global
generator (PPO) draws the same permutation in both runs: hand_steps then draws it the same way.
Example (grpo.py; tests/test_grpo.py has it in full):

    state = (policy, optimizer)
    def hand_steps(state):
        policy, optimizer = state
        for _ in range(args.num_iterations):
            logp = grpo.token_logprobs(policy, batch["prompts"], batch["completions"])
            optimiser_step(optimizer, grpo.grpo_loss(logp, batch["logp"], ...), args.max_grad_norm)
    assert_update_is_hand_built_steps(state, lambda s: grpo.update(*s, batch, args), hand_steps)
    assert_each_hyperparameter_changes_the_update(state, lambda s, a: grpo.update(*s, batch, a), args,
                                                  {"beta": 0.3, "clip_eps": 0.02, ...})
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn


def rollout_batch(seed: int, T: int = 5, N: int = 3, obs_dim: int = 4) -> dict[str, torch.Tensor]:
    """A random float64 batch shaped as the Gymnasium scripts' rollout() returns it ([T, N, ...]), two discrete
    actions, some steps terminated and some truncated (never both)."""
    g = torch.Generator().manual_seed(seed)
    terminated = (torch.rand(T, N, generator=g) < 0.2).to(torch.float64)
    return {
        "obs": torch.randn(T, N, obs_dim, generator=g, dtype=torch.float64),
        "actions": torch.randint(0, 2, (T, N), generator=g),
        "rewards": torch.randn(T, N, generator=g, dtype=torch.float64),
        "terminated": terminated,
        "truncated": (1 - terminated) * (torch.rand(T, N, generator=g) < 0.2).to(torch.float64),
        "next_obs": torch.randn(T, N, obs_dim, generator=g, dtype=torch.float64),
    }


def parameters(state) -> list[torch.Tensor]:
    """Every distinct parameter of every nn.Module in state, in a fixed order (shared ones once)."""
    seen, out = set(), []
    for obj in state:
        if isinstance(obj, nn.Module):
            for p in obj.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def flat_parameters(state) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in parameters(state)])


def optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, max_grad_norm: float = 0.0) -> None:
    """One step on loss, the way every script takes it: zero the gradients, backward, clip the global norm
    of the optimiser's parameters' gradient to max_grad_norm (0 = no clip), step."""
    optimizer.zero_grad()
    loss.backward()
    if max_grad_norm > 0:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
    optimizer.step()


def parameter_change(state, run_update, *update_args) -> torch.Tensor:
    """The flat change of every parameter that run_update(copy of state, *update_args) makes; state is untouched."""
    twin = copy.deepcopy(state)
    before = flat_parameters(twin)
    torch.manual_seed(0)
    run_update(twin, *update_args)
    return flat_parameters(twin) - before


def assert_update_is_hand_built_steps(state, run_update, hand_steps, rtol: float = 1e-9) -> None:
    """The parameter change of run_update(state) equals that of hand_steps(copy of state), and is not zero."""
    by_update = parameter_change(state, run_update)
    by_hand = parameter_change(state, hand_steps)
    assert by_hand.norm() > 0, "the hand-built steps moved nothing: the check would be vacuous"
    err = (by_update - by_hand).norm() / by_hand.norm()
    assert err <= rtol, f"update() differs from the hand-built steps: relative difference {err:.3e}"


def assert_each_hyperparameter_changes_the_update(state, run_update, args, changes: dict, rtol: float = 1e-6) -> None:
    """For each name: value in changes, run_update(copy, dataclasses.replace(args, name=value)) moves the
    parameters differently (relative difference > rtol) from run_update(copy, args)."""
    base = parameter_change(state, run_update, args)
    assert base.norm() > 0, "update() moved nothing: the check would be vacuous"
    ignored = []
    for name, value in changes.items():
        assert getattr(args, name) != value, f"{name}={value!r} is not a change"
        changed = parameter_change(state, run_update, dataclasses.replace(args, **{name: value}))
        if (changed - base).norm() <= rtol * base.norm():
            ignored.append(f"{name}={value!r}")
    assert not ignored, f"update() ignores {', '.join(ignored)}"


def record_learning_rates(module, monkeypatch) -> list[tuple[tuple, list[tuple[set[int], list[list[float]]]]]]:
    """Wrap module.update so that each call is recorded as (its arguments, [for each torch.optim optimiser among
    them, in order: (the ids of the parameters it holds, for each of its steps the learning rate of each param
    group, read from the optimiser as it steps)]). Returns the list the calls are appended to."""
    calls, original = [], module.update

    def recording_update(*args, **kwargs):
        optimizers = [a for a in args if isinstance(a, torch.optim.Optimizer)]
        record = [({id(p) for g in o.param_groups for p in g["params"]}, []) for o in optimizers]
        hooks = [
            o.register_step_pre_hook(lambda opt, *_, steps=steps: steps.append([g["lr"] for g in opt.param_groups]))
            for o, (_, steps) in zip(optimizers, record, strict=True)
        ]
        calls.append((args, record))
        try:
            return original(*args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    monkeypatch.setattr(module, "update", recording_update)
    return calls


def ids(*modules: nn.Module) -> set[int]:
    """The ids of every parameter of the modules."""
    return {id(p) for m in modules for p in m.parameters()}


@dataclasses.dataclass
class FirstUpdate:
    """What train() built and handed its first update(): the arguments of the first call of each spied function, the
    optimisers among update()'s arguments, and every parameter of every nn.Module among those arguments, by id,
    before and after that update()."""

    calls: dict[str, tuple]
    optimizers: list[torch.optim.Optimizer]
    before: dict[int, torch.Tensor]
    after: dict[int, torch.Tensor]

    def moved(self, *modules: nn.Module) -> dict[str, bool]:
        """For each named parameter of the modules: did update() change it?"""
        return {name: not torch.equal(self.before[id(p)], self.after[id(p)])
                for m in modules for name, p in m.named_parameters()}  # fmt: skip


def first_update_of_train(module, args, monkeypatch, also: tuple[str, ...] = ()) -> FirstUpdate:
    """Run module.train(args), its real code with args' budget of one update, spying on update() and on the module's
    functions named in `also` (their first call's arguments are kept: grpo's rollout() is handed the reference)."""
    calls, snapshots, optimizers = {}, [], []

    def spy(name, real):
        def spied(*a, **k):
            calls.setdefault(name, a)
            modules = [x for c in calls.values() for x in c if isinstance(x, nn.Module)]
            snapshot = lambda: {id(p): p.detach().clone() for m in modules for p in m.parameters()}  # noqa: E731
            if name != "update":
                return real(*a, **k)
            optimizers[:] = [x for x in a if isinstance(x, torch.optim.Optimizer)]
            snapshots.append(snapshot())
            out = real(*a, **k)
            snapshots.append(snapshot())
            return out

        return spied

    for name in ("update", *also):
        monkeypatch.setattr(module, name, spy(name, getattr(module, name)))
    module.train(args)
    assert len(snapshots) == 2, f"train() ran {len(snapshots) // 2} updates, not 1"
    return FirstUpdate(calls, optimizers, *snapshots)


def assert_optimisers_hold_each_parameter_once(optimizers, *modules: nn.Module) -> None:
    """The optimisers hold exactly the parameters of the modules, each once (a layer two networks share, once)."""
    held = [id(p) for o in optimizers for g in o.param_groups for p in g["params"]]
    assert len(held) == len(set(held)), "a parameter is in an optimiser twice"
    assert set(held) == ids(*modules), "the optimisers do not hold exactly the networks' parameters"
