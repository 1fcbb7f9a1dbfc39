"""GRPO: Group Relative Policy Optimization, on a tiny language model with a verifiable reward.

The idea. PPO needs a critic to tell a good action from a lucky one. GRPO (Shao et al. 2024, DeepSeekMath, eq. 3), for
a language model that answers a prompt q with a completion o and gets one reward r(q, o) at its end, drops the critic:
it samples a *group* of G completions of the same prompt and scores each one against the others, every token of a
completion by the same amount. A KL penalty keeps the policy near a frozen reference (the initial model), and PPO's
clip takes away any gain from moving a token's ratio past 1 +- clip_eps (it does not bound the move).

Objective and gradient, with the names used in the code (B prompts, G completions each, o_i of |o_i| tokens counted up
to and including its end-of-sequence token):
    J(theta) = E_q E_{o ~ pi_theta(.|q)}[ r(q, o) ]                    the expected reward
    A_i      = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + adv_eps)      group_advantages(); std divides by G - 1
    rho_i,t  = pi_theta(o_i,t | q, o_i,<t) / pi_old(o_i,t | q, o_i,<t) the ratio, per token, to the sampler
    s_i,t    = min(rho_i,t A_i, clip(rho_i,t, 1 - clip_eps, 1 + clip_eps) A_i)       clipped_surrogate()
    k_i,t    = k3: pi_ref/pi_theta - log(pi_ref/pi_theta) - 1,  k2: 1/2 (log pi_theta - log pi_ref)^2   kl_penalty()
    L(theta) = -1/B sum_b 1/G sum_i 1/|o_i| sum_t ( s_i,t - beta k_i,t )    grpo_loss() via aggregate()
What the gradient of L is, exactly (tests/test_grpo.py proves each statement by enumeration): at theta = theta_old and
beta = 0, E[-grad L] = 1/B sum_b sum_o pi(o|q_b) a(r(o))/|o| grad log pi(o|q_b), a(r) = E[A_i | r_i = r]. That is NOT
parallel to grad J = 1/B sum_b grad p_b (p_b the success rate of prompt b): the std weighs each prompt by a function
w(p) = a(1) - a(0) of its success rate (for binary rewards and G >= 4, prompts solved almost always or almost never
count more; E[-grad L] = 1/B sum_b w(p_b)/T grad p_b if every completion has T tokens), and 1/|o| makes a long wrong
answer cost less per token than a short one, so wrong answers can drift longer (Liu et al. 2025). beta k3 used as a
loss has the expected gradient beta grad KL(pi_ref || pi_theta), the forward KL, although E[k3] is the reverse KL
(k2: grad KL(pi_theta || pi_ref)), only at the first of the --num-iterations passes, whose tokens come from pi_theta
itself (weighting each token's penalty by rho would restore it; DeepSeekMath and TRL do not), and at each prefix
only up to the 1/|o_i| weights, which depend on the tokens that follow it.
What changed since ppo.py: no critic (the group is the baseline); one advantage per completion, normalised within its
group; a KL penalty to a frozen reference, in the loss (ppo.py has none; RLHF's PPO, as in Ouyang et al. 2022,
subtracts it from the reward instead); the policy is a causal language model that samples token by token until
end-of-sequence. What dr_grpo.py changes (and nothing else): group_advantages() drops the division by the std,
aggregate() divides each token sum by a constant instead of |o_i|; beta defaults to 0.
The task (--task, a laptop CPU learns it in a minute or two): a prompt "4 7 2 =" gets reward 1 if its completion
starts with the answer digit (max: 7; sum mod 10: 3), else 0, whatever follows up to the end-of-sequence token: how
long right and wrong completions get is up to the policy, which is where GRPO's length bias can show.
References: Shao et al. 2024 (DeepSeekMath, GRPO); Schulman et al. 2017 (PPO); Ouyang et al. 2022 (InstructGPT);
Schulman 2020 ("Approximating KL divergence", k1/k2/k3); Liu et al. 2025 ("Understanding R1-Zero-like training").
Run:  python grpo.py --help
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import operator
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


# ---- Hyperparameters -------------------------------------------------------------------------------------------------
def arg(default, help: str, choices=None, above=None, at_least=None, below=None, at_most=None):
    """A hyperparameter: its default, a one-line help for --help, and the values it accepts."""
    bounds = {"above": above, "at_least": at_least, "below": below, "at_most": at_most}
    return field(default=default, metadata={"help": help, "choices": choices, **bounds})


MAX_COMPLETION_LEN = 64  # the tasks need 2 tokens; the rest is room for the lengths to move
MAX_WORK = 2**29  # tokens x layers x width^2 of one update: a backward pass of seconds, which Ctrl-C waits for


@dataclass
class Args:
    task: str = arg("max", "built-in task: max (the largest digit) | sum (digit sum mod 10: not learned in minutes)",
                    choices=("max", "sum"))  # fmt: skip
    seed: int = arg(1, "seeds torch and the sampler")
    total_updates: int = arg(300, "training budget: policy updates (each samples B x G completions)", at_least=1)
    learning_rate: float = arg(3e-3, "Adam step size, the same for every update (no schedule)", above=0)
    prompts_per_update: int = arg(32, "B: prompts per update", at_least=1)
    group_size: int = arg(8, "G: completions sampled per prompt (a group of one has no baseline)", at_least=2)
    max_completion_len: int = arg(8, "T: tokens per completion at most, end-of-sequence included", at_least=1,
                                  at_most=MAX_COMPLETION_LEN)  # fmt: skip
    num_iterations: int = arg(2, "mu: gradient steps on each sampled batch (the clip matters when > 1)", at_least=1)
    clip_eps: float = arg(0.2, "the ratio is clipped to [1 - clip_eps, 1 + clip_eps]", above=0)
    beta: float = arg(0.04, "weight of the KL penalty to the reference policy", at_least=0)
    kl_estimator: str = arg("k3", "per-token KL estimate in the loss", choices=("k3", "k2"))
    adv_eps: float = arg(1e-4, "eps in (r - mean) / (std + eps): keeps all-equal groups finite", above=0)
    d_model: int = arg(64, "transformer width", at_least=1)
    n_layers: int = arg(2, "transformer blocks", at_least=1)
    n_heads: int = arg(4, "attention heads (must divide d_model)", at_least=1)
    max_grad_norm: float = arg(1.0, "clip the gradient's global norm (0 = off)", at_least=0)
    torch_threads: int = arg(1, "CPU threads for torch; a model this small runs fastest on one", at_least=1)
    device: str = arg("auto", "auto picks CUDA when available", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv, groups.csv and model.pt go (default: a new dir in runs/)")
    overwrite: bool = arg(False, "replace the run that --run-dir already holds")
    log_interval: int = arg(10, "print a progress line and save the checkpoint every this many updates", at_least=1)
    eval: str = arg("", "path of a model.pt: report its greedy accuracy on the held-out prompts and exit")

    def problems(self) -> list[str]:
        """The heads split the width, the prompts the processes; an update's work is bounded: Ctrl-C acts in seconds."""
        tokens = self.prompts_per_update * self.group_size * (NUM_DIGITS + 1 + self.max_completion_len)
        work, world = tokens * self.n_layers * max(self.d_model, 64) ** 2, share()[1]
        checks = [(self.d_model % self.n_heads == 0, f"--n-heads {self.n_heads} must divide --d-model {self.d_model}"),
                  (self.prompts_per_update % world == 0,
                   f"--prompts-per-update {self.prompts_per_update} must split evenly over {world} processes"),
                  (work <= MAX_WORK, f"--prompts-per-update x --group-size x (4 + --max-completion-len) x --n-layers x "
                                     f"max(--d-model, 64)^2 must be <= {MAX_WORK} (got {work})")]  # fmt: skip
        return [message for ok, message in checks if not ok]


# ---- Network: a tiny causal transformer language model --------------------------------------------------------------
class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal multi-head self-attention, then a 4x MLP."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(N, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # token t sees tokens <= t
        x = x + self.proj(attn.transpose(1, 2).reshape(N, L, D))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """pi_theta(token | tokens before it): [N, L] long -> logits [N, L, vocab_size]."""

    def __init__(self, vocab_size: int, max_len: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def make_policy(args: Args) -> TinyLM:
    return TinyLM(len(VOCAB), NUM_DIGITS + 1 + args.max_completion_len, args.d_model, args.n_layers, args.n_heads)


# ---- The estimator: pure functions on tensors (copy these into an LLM trainer unchanged) -----------------------------
def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each group, std with Bessel's correction (as torch.std, TRL, verl,
    oat); an all-equal group gets A = 0, not NaN. rewards: [B, G] float, int or bool (detached: advantages are
    constants) -> [B, G] float. A flat [B*G] layout, a prompt's G completions adjacent (as sample() and TRL lay
    them out), goes in as rewards.view(-1, G) and comes back with .view(-1)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [B, G] with G >= 2 (got shape {list(rewards.shape)}); "
                         "reshape a flat [B*G] layout with rewards.view(-1, G)")  # fmt: skip
    rewards = rewards.detach()
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + eps)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float) -> torch.Tensor:  # fmt: skip
    """s_t = min(rho_t A, clip(rho_t, 1 - clip_eps, 1 + clip_eps) A), rho_t = exp(logp - old_logp), per token, no
    mask. logp: [B, G, T] with grad; old_logp: [B, G, T] and advantages: [B, G], constants (detached) -> [B, G, T]."""
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach().unsqueeze(-1)  # the same advantage for every token of a completion
    return torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL estimate from a token the policy sampled: k3 = pi_ref/pi - log(pi_ref/pi) - 1 >= 0 or
    k2 = 1/2 (log pi - log pi_ref)^2 (their expected gradients: the module docstring). logp: [B, G, T] with grad;
    ref_logp: [B, G, T], a constant (detached) -> [B, G, T], no mask."""
    log_ratio = ref_logp.detach() - logp
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    if estimator == "k2":
        return 0.5 * log_ratio**2
    raise ValueError(f"unknown KL estimator '{estimator}'; accepted: k3, k2")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1/B sum_b 1/G sum_i 1/|o_i| sum_t per_token[b, i, t] over each completion's own tokens. per_token: [B, G, T];
    mask: [B, G, T] float or bool -> scalar. Masked positions are selected out (torch.where): whatever they hold
    (-inf, NaN, values that depend on theta) changes neither the value nor the gradient, if that is finite."""
    keep = mask.bool()
    return (torch.where(keep, per_token, 0.0).sum(-1) / keep.sum(-1).clamp(min=1)).mean()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04,
              kl_estimator: str = "k3") -> torch.Tensor:  # fmt: skip
    """L = -1/B sum_b 1/G sum_i 1/|o_i| sum_t (s_i,t - beta k_i,t), DeepSeekMath's eq. 3 negated to be minimised.
    logp, old_logp, ref_logp, mask: [B, G, T]; advantages: [B, G] -> scalar. Padding may hold anything (-inf, -1e4,
    log-probabilities that depend on theta): set to 0 before exp(), it changes neither the loss nor its gradient."""
    keep = mask.bool()
    logp, old_logp, ref_logp = (torch.where(keep, x, 0.0) for x in (logp, old_logp, ref_logp))
    per_token = clipped_surrogate(logp, old_logp, advantages, clip_eps)
    if beta:
        per_token = per_token - beta * kl_penalty(logp, ref_logp, kl_estimator)
    return -aggregate(per_token, keep)


def clip_fraction(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_eps: float) -> torch.Tensor:  # fmt: skip
    """The share of the completions' tokens whose surrogate gradient the clip zeroes, as TRL counts them: the ratio
    above 1 + clip_eps with A > 0, or below 1 - clip_eps with A < 0 (outside the other way, min() keeps the unclipped
    term and its gradient). ppo.py's clip_fraction counts every |ratio - 1| > clip_coef instead. -> scalar."""
    keep = mask.bool()
    ratio = torch.exp(torch.where(keep, logp - old_logp, 0.0)).detach()
    adv = advantages.detach().unsqueeze(-1)
    zeroed = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
    return (zeroed & keep).sum() / keep.sum().clamp(min=1)


# ---- Rollout: the task, and G completions for each of B prompts, token by token, until end-of-sequence -------------
DIGITS, NUM_DIGITS = 10, 3  # a prompt is NUM_DIGITS digits and '='
EQUALS, FILLER, EOS = 10, 11, 12  # token ids after the ten digits
VOCAB = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "=", ".", "<eos>"]
TASKS = {"max": lambda digits: digits.max(-1).values, "sum": lambda digits: digits.sum(-1) % DIGITS}  # the answers


class Task:
    """Every prompt, split once (whatever --seed) into training prompts, drawn with every answer equally likely (else
    answers 0 and 1 of --task max get almost no signal), and a held-out fifth. prompts [N, P] long, answers [N] long."""

    def __init__(self, name: str, device: torch.device):
        digits = torch.cartesian_prod(*[torch.arange(DIGITS)] * NUM_DIGITS)
        prompts = torch.cat([digits, torch.full((len(digits), 1), EQUALS)], dim=1)
        answers = TASKS[name](digits)
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0))
        n_eval = len(prompts) // 5
        self.eval_prompts, self.eval_answers = prompts[order[:n_eval]].to(device), answers[order[:n_eval]].to(device)
        self.train_prompts, self.train_answers = prompts[order[n_eval:]].to(device), answers[order[n_eval:]].to(device)
        count = torch.bincount(self.train_answers, minlength=DIGITS)
        self.train_weights = 1.0 / count[self.train_answers].float()  # every answer equally likely

    def training_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n training prompts [n, P] and their answers [n], drawn with replacement, answers balanced."""
        idx = torch.multinomial(self.train_weights, n, replacement=True, generator=generator)
        return self.train_prompts[idx], self.train_answers[idx]

    @staticmethod
    def reward(answers: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """1 when the completion's first token is the answer, else 0, whatever follows. [B], [B, G, T] -> [B, G]."""
        return (completions[..., 0] == answers[:, None]).float()

    @torch.no_grad()
    def accuracy(self, policy: nn.Module) -> float:
        """Greedy accuracy on the held-out prompts: the share whose most likely first token is the answer."""
        return (policy(self.eval_prompts)[:, -1].argmax(-1) == self.eval_answers).float().mean().item()


def completion_mask(completions: torch.Tensor, eos: int) -> torch.Tensor:
    """1 for every token up to and including the first eos, 0 after it. [..., T] long -> [..., T] float."""
    is_eos = (completions == eos).long()
    return ((is_eos.cumsum(-1) - is_eos) == 0).float()  # no eos strictly before t


@torch.no_grad()
def sample(policy: nn.Module, prompts: torch.Tensor, group_size: int, max_len: int, eos: int,
           generator: torch.Generator | None, greedy: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """G completions (or one greedy) of each of B prompts [B, P], each until its first eos or max_len tokens:
    completions [B, G, T] long (eos after the first eos), the sampler's logp, mask (1 up to the first eos), entropy."""
    B, P = prompts.shape
    seqs = prompts.repeat_interleave(group_size, dim=0)  # [B*G, P]: the G copies of a prompt are adjacent
    done = torch.zeros(B * group_size, dtype=torch.bool, device=prompts.device)
    tokens, logps, entropies = [], [], []
    for _ in range(max_len):
        log_probs = policy(seqs)[:, -1].log_softmax(-1)  # [B*G, V]
        token = log_probs.argmax(-1) if greedy else torch.multinomial(log_probs.exp(), 1, generator=generator)[:, 0]
        token = torch.where(done, torch.full_like(token, eos), token)
        tokens.append(token)
        logps.append(log_probs.gather(-1, token[:, None]).squeeze(-1))
        entropies.append(-(log_probs.exp() * log_probs).sum(-1))
        done = done | (token == eos)
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        if done.all():
            break
    pad = max_len - len(tokens)  # every completion ended early: pad to T with eos
    completions = F.pad(torch.stack(tokens, -1), (0, pad), value=eos)
    logps, entropies = (F.pad(torch.stack(x, -1), (0, pad)) for x in (logps, entropies))
    shape = (B, group_size, max_len)
    return {"completions": completions.view(shape), "logp": logps.view(shape),
            "mask": completion_mask(completions, eos).view(shape), "entropy": entropies.view(shape)}  # fmt: skip


def token_logprobs(policy: nn.Module, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
    """log pi(o_t | q, o_<t) of every completion token, in one forward pass. [B, P], [B, G, T] long -> [B, G, T]."""
    B, G, T = completions.shape
    seqs = torch.cat([prompts.repeat_interleave(G, dim=0), completions.reshape(B * G, T)], dim=1)
    logits = policy(seqs[:, :-1])[:, prompts.shape[1] - 1 :]  # the logits that predict o_1 .. o_T
    return logits.log_softmax(-1).gather(-1, completions.reshape(B * G, T, 1)).view(B, G, T)


def rollout(policy: nn.Module, reference: nn.Module, task: Task, args: Args, generator: torch.Generator) -> dict:
    """This process's B training prompts [B, P], G completions of each from the policy (pi_old: sample()'s batch), their
    rewards and advantages [B, G], the frozen reference's ref_logp [B, G, T], p_right = pi_old(answer | prompt) [B]."""
    prompts, answers = task.training_batch(args.prompts_per_update // share()[1], generator)
    batch = sample(policy, prompts, args.group_size, args.max_completion_len, EOS, generator)
    rewards = Task.reward(answers, batch["completions"])
    with torch.no_grad():
        batch["ref_logp"] = token_logprobs(reference, prompts, batch["completions"])
        p_right = token_logprobs(policy, prompts, answers.view(-1, 1, 1)).exp().view(-1)
    advantages = group_advantages(rewards, args.adv_eps)
    return {**batch, "prompts": prompts, "rewards": rewards, "advantages": advantages, "p_right": p_right}


# ---- Update ---------------------------------------------------------------------------------------------------------
def all_mean(tensors: list[torch.Tensor]) -> None:
    """Average each tensor in place over torchrun's processes, whose batches together are the one batch of one process
    (in one all_reduce: the tensors travel as one flat vector); without torchrun, leave them as they are."""
    if dist.is_initialized():
        flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
        dist.all_reduce(flat)
        for tensor, part in zip(tensors, flat.split([tensor.numel() for tensor in tensors]), strict=True):
            tensor.copy_(part.view_as(tensor) / dist.get_world_size())


def update(policy: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, args: Args) -> dict[str, float]:
    """num_iterations gradient steps on one batch of groups; pi_old is the sampler, fixed throughout. Under torchrun
    each of R processes holds B/R whole groups: its loss is the mean over its B/R prompts, so the mean of the R
    gradients is that of the loss over all B, and the statistics are means over every process's tokens."""
    mask, sums, tokens = batch["mask"], 0.0, batch["mask"].sum()
    for _ in range(args.num_iterations):
        logp = token_logprobs(policy, batch["prompts"], batch["completions"])
        loss = grpo_loss(logp, batch["logp"], batch["ref_logp"], batch["advantages"], mask,
                         args.clip_eps, args.beta, args.kl_estimator)  # fmt: skip
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss")
        optimizer.zero_grad()
        loss.backward()
        all_mean([p.grad for p in policy.parameters()])  # under torchrun: the gradient of the loss over all B groups
        if args.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
        optimizer.step()
        with torch.no_grad():
            kl = torch.where(mask.bool(), kl_penalty(logp, batch["ref_logp"], "k3"), 0.0).sum()  # as the loss masks
            clipped = clip_fraction(logp, batch["logp"], batch["advantages"], mask, args.clip_eps) * tokens
            sums = sums + torch.stack([loss.detach(), kl, clipped, tokens]) / args.num_iterations
    all_mean([sums])  # under torchrun: the loss over all B groups, the sums and the token count over every process
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise FloatingPointError("non-finite parameters")
    return {"loss": sums[0].item(), "kl": (sums[1] / sums[3]).item(), "clip_fraction": (sums[2] / sums[3]).item()}


# ---- Training loop --------------------------------------------------------------------------------------------------
def train(args: Args) -> dict[str, float]:
    """The RL loop: sample a group of completions for each of B prompts, take num_iterations steps on the loss, log."""
    device = setup(args)  # seeds, torch threads, the device; under torchrun, the process group
    task = Task(args.task, device)
    policy = make_policy(args).to(device)
    reference = copy.deepcopy(policy).requires_grad_(False)  # pi_ref: the frozen initial policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    generator = torch.Generator(device=device).manual_seed(args.seed + share()[0])  # each process its own groups
    with Run(args, lambda: {"policy": policy.state_dict()}) as run:
        while run.global_step < args.total_updates:
            batch = rollout(policy, reference, task, args, generator)
            stats = update(policy, optimizer, batch, args)
            run.log(batch, {**stats, "eval_accuracy": task.accuracy(policy)})
    return run.row


# ---- everything below is plumbing, not reinforcement learning -------------------------------------------------------
# Seeds and device (under torchrun, the process group), the run's files and its end (Ctrl-C, SIGTERM, a non-finite
# number), --eval and the command line. Every error a user can cause is a ValueError: one line and exit status 2.
ALGO = "grpo"


def setup(args: Args) -> torch.device:
    torch.manual_seed(args.seed)  # alike on every process: the networks start identical (nothing draws from numpy's)
    torch.set_num_threads(args.torch_threads)
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if share()[1] > 1 and not dist.is_initialized():  # under torchrun: gloo on CPU, NCCL with a GPU for each process
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        # torch.optim imports torch._dynamo on first use; imported after the group exists, it keeps references to the
        # group, which destroy_process_group() then cannot free, and gloo's leftover threads can abort the exit.
        importlib.import_module("torch._dynamo")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        sys.stdout = sys.stdout if share()[0] == 0 else open(os.devnull, "w")  # rank 0 alone prints progress
    return device


def share() -> tuple[int, int]:
    """(rank, number of processes), as torchrun sets them; (0, 1) for a plain `python script.py`."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every process's x [b, ...], concatenated in rank order under torchrun (the B prompts of one batch); else x."""
    if not dist.is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class Run:
    """`with Run(args, checkpoint) as run:` around the training loop. run.log(batch, stats) after each update: a row of
    metrics.csv, one of groups.csv per group, and every --log-interval updates and at the end a progress line and
    model.pt, one dict of checkpoint()'s state dicts, the args, the vocabulary and the step (updates). Ctrl-C and
    SIGTERM save it and exit 130 and 143; a FloatingPointError exits 1 and keeps the last one."""

    def __init__(self, args: Args, checkpoint):
        name = f"{ALGO}__{args.task}__{args.seed}__{int(time.time())}_{os.getpid()}"  # never shared
        self.dir, self.rank, self.world = args.run_dir or os.path.join("runs", name), *share()  # rank 0 alone writes
        devnull = [open(os.devnull, "w")] * 2
        self.metrics, self.groups = open_run_dir(self.dir, args.overwrite) if self.rank == 0 else devnull
        print("global_step,p_right,n_right,advantage_right,advantage_wrong", file=self.groups, flush=True)
        print(f"{ALGO} on task {args.task} | run dir {self.dir}")
        self.args, self.checkpoint, self.global_step, self.saved = args, checkpoint, 0, False
        self.start = self.last = time.time()

    def __enter__(self) -> Run:
        self.sigterm = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM: stop as Ctrl-C does
        return self

    def log(self, batch: dict[str, torch.Tensor], stats: dict[str, float]) -> None:
        now, self.global_step = time.time(), self.global_step + 1
        batch = {k: gather(batch[k]) for k in ("mask", "rewards", "advantages", "entropy", "p_right")}  # all B prompts
        mask, right, advantages = batch["mask"], batch["rewards"] > 0, batch["advantages"]
        lengths, n_right = mask.sum(-1), right.sum(-1)
        self.row = {"global_step": self.global_step, "wall_time": round(now - self.start, 3),
                    "tokens_per_second": round(mask.sum().item() / max(now - self.last, 1e-9)),
                    "mean_reward": batch["rewards"].mean().item(), "length_correct": lengths[right].mean().item(),
                    "length_incorrect": lengths[~right].mean().item(),
                    "entropy": ((batch["entropy"] * mask).sum() / mask.sum()).item(), **stats}  # fmt: skip
        if self.global_step == 1:
            print(*self.row, sep=",", file=self.metrics)  # the header
        print(*self.row.values(), sep=",", file=self.metrics, flush=True)
        columns = (batch["p_right"], n_right, (advantages * right).sum(-1) / n_right,  # nan: no right completion
                   (advantages * ~right).sum(-1) / (right.shape[-1] - n_right))  # fmt: skip
        for group in zip(*(c.tolist() for c in columns), strict=True):
            print(self.global_step, *group, sep=",", file=self.groups, flush=True)
        self.last = now
        if self.global_step % self.args.log_interval == 0 or self.global_step >= self.args.total_updates:
            self.save()
            numbers = " | ".join(f"{k} {v:.4g}" for k, v in self.row.items() if k != "global_step")
            print(f"update {self.global_step:>5} | {numbers}")

    def save(self) -> None:  # to a temporary file, then renamed: model.pt is never a partial file
        if self.rank > 0:
            return
        state = {"algo": ALGO, "args": asdict(self.args), "vocab": VOCAB, "global_step": self.global_step}
        torch.save({**state, **self.checkpoint()}, os.path.join(self.dir, f"model.pt.{os.getpid()}"))
        os.replace(os.path.join(self.dir, f"model.pt.{os.getpid()}"), os.path.join(self.dir, "model.pt"))
        self.saved = True

    def __exit__(self, kind, error, traceback) -> None:
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C or SIGTERM waits for this save
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            self.save()
            if self.rank == 0:
                print(f"\ninterrupted at update {self.global_step}; saved in {self.dir}", file=sys.stderr)
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, self.sigterm)
        self.metrics.close()
        self.groups.close()
        if isinstance(error, FloatingPointError):
            kept = f"the last good checkpoint is {self.dir}/model.pt" if self.saved else "no checkpoint was saved"
            print(f"stopped: {error.args[0]} at update {self.global_step + 1}; {kept}", file=sys.stderr)
            raise SystemExit(1) from None
        if error is None:
            print(f"done: {self.global_step} updates in {time.time() - self.start:.1f} s; greedy accuracy on the "
                  f"held-out prompts {self.row['eval_accuracy']:.3f}; files in {self.dir}")  # fmt: skip


def open_run_dir(run_dir: str, overwrite: bool) -> tuple:
    """metrics.csv and groups.csv in run_dir, opened for writing; metrics.csv must be new unless overwrite (mode "x":
    of two runs started at once in one directory, one gets it). Else a ValueError, before anything is written."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        metrics = open(os.path.join(run_dir, "metrics.csv"), "w" if overwrite else "x")
        return metrics, open(os.path.join(run_dir, "groups.csv"), "w")
    except FileExistsError:
        raise ValueError(f"--run-dir {run_dir} already holds a run; add --overwrite to replace it") from None
    except OSError as e:
        raise ValueError(f"--run-dir {run_dir} cannot be created or written: {e.strerror}") from None


def evaluate(args: Args) -> None:
    """Print the greedy accuracy of the policy in args.eval on its task's held-out prompts, with an example."""
    try:  # weights_only: loading runs no code
        state = torch.load(args.eval, map_location="cpu", weights_only=True)
        trained = Args(**{**state["args"], "device": args.device})
        device = setup(trained)
        task, policy = Task(trained.task, device), make_policy(trained).to(device)
        policy.load_state_dict(state["policy"])
    except Exception as e:  # no such file, not one torch reads without running code, or not a policy of these args
        raise ValueError(f"cannot load {args.eval} as a checkpoint of this {ALGO}.py ({type(e).__name__})") from None
    if state["algo"] != ALGO or not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise ValueError(f"{args.eval} holds a {state['algo']}.py policy, not a {ALGO}.py one with finite weights")
    greedy = sample(policy, task.eval_prompts[:1], 1, trained.max_completion_len, EOS, None, greedy=True)
    example = " ".join(VOCAB[t] for t in torch.cat([task.eval_prompts[0], greedy["completions"][0, 0]]).tolist())
    print(f"eval {args.eval}: greedy accuracy {task.accuracy(policy):.3f} on {len(task.eval_prompts)} held-out "
          f"prompts (e.g. {example})")  # fmt: skip


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
    args = Args(**vars(parser.parse_args(argv)))  # argparse's own error for an unknown flag or a malformed value
    try:
        validate(args)
        if args.eval:
            evaluate(args)
        else:
            train(args)
    except ValueError as e:
        print(f"{ALGO}.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a training run is saved already
        return 130
    finally:
        if dist.is_initialized():  # torchrun's processes leave the group before they exit (else gloo can abort)
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
