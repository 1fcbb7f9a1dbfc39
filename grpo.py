"""GRPO: Group Relative Policy Optimization, on a tiny language model with a verifiable reward.

The idea. PPO needs a critic to tell a good action from a lucky one. For a language model that
answers a prompt q with a whole completion o and gets one reward r(q, o) at the end (right or wrong),
GRPO (Shao et al. 2024, DeepSeekMath, eq. 3) drops the critic: it samples a *group* of G completions
for the same prompt and scores each one against the others. A completion better than its group's
average is pushed up, a worse one down, every token of it by the same amount. A KL penalty keeps the
policy near a frozen reference (the model we started from), and PPO's clip keeps each update small.

Objective and gradient, with the names used in the code (B prompts, G completions each, o_i of
|o_i| tokens, the tokens of o_i counted up to and including its end-of-sequence token):
    J(theta)     = E_q E_{o ~ pi_theta(.|q)}[ r(q, o) ]                the expected reward
    A_i          = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)      group_advantages(), the same for every token
                   std with Bessel's correction (divides by G - 1, as torch.std, TRL, verl, oat), eps = 1e-4
    rho_i,t      = pi_theta(o_i,t | q, o_i,<t) / pi_old(o_i,t | q, o_i,<t)   ratio: per token, to the sampler
    s_i,t        = min(rho_i,t A_i, clip(rho_i,t, 1 - clip_eps, 1 + clip_eps) A_i)      clipped_surrogate()
    k3_i,t       = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (per token)  kl_penalty(), --kl-estimator k3
    k2_i,t       = 1/2 (log pi_theta - log pi_ref)^2                       kl_penalty(), --kl-estimator k2
    L(theta)     = -1/B sum_b 1/G sum_i 1/|o_i| sum_t ( s_i,t - beta k_i,t )   grpo_loss() via aggregate()
What the gradient of L is, exactly (tests/test_grpo.py proves each line by enumeration):
  * at theta = theta_old and beta = 0, -grad L = 1/B sum_b 1/G sum_i A_i/|o_i| grad log pi(o_i|q_b), whose
    expectation is 1/B sum_b sum_o pi(o|q_b) a(r(o))/|o| grad log pi(o|q_b), with a(r) = E[A_i | r_i = r]
    (the other G - 1 rewards of the group averaged out). It is NOT parallel to grad J, for two reasons:
    dividing by the group's std weighs each prompt by a function of its success rate p (for binary
    rewards and G >= 4, prompts solved almost always or almost never count more); and 1/|o| inside the
    expectation makes a long wrong answer cost less per token than a short one, so wrong answers can
    drift longer (Liu et al. 2025). With binary rewards and completions of one length T:
    E[-grad L] = 1/B sum_b w(p_b)/T grad p_b, w(p) = a(1) - a(0), while grad J = 1/B sum_b grad p_b.
  * beta * k3 used as a loss, at a prefix, for a token sampled from pi_theta itself: its expected gradient
    is beta * grad KL(pi_ref || pi_theta), the forward KL, although E[k3] is the reverse KL(pi_theta || pi_ref);
    k2 gives grad KL(pi_theta || pi_ref). That holds at the first of the --num-iterations passes only: from
    the second on, the tokens were sampled from pi_old != pi_theta and the expected gradient is neither
    (weighting each token's penalty by rho would restore it; DeepSeekMath and TRL do not). Summed with the
    1/|o_i| weights it is not exactly a positive multiple of grad KL at each prefix even at the first pass:
    |o_i| depends on the tokens that follow, so 1/|o_i| reweights them.
What changed since ppo.py: no critic (the group is the baseline); the advantage is one number per
completion, normalised within its group; a KL penalty to a frozen reference enters the loss instead of
the reward; the policy is a causal language model that samples token by token until end-of-sequence.
What dr_grpo.py changes (and nothing else): group_advantages() drops the division by the std, and
aggregate() divides each completion's token sum by a constant (the maximum length) instead of |o_i|;
beta defaults to 0.

The task (--task) is built in and checked by a program, so it runs on a laptop CPU in a minute or two:
the prompt is three digits and '=', e.g. "4 7 2 =", and the completion must start with the answer
digit (max, the default: 7; sum: (4 + 7 + 2) mod 10 = 3, much harder to learn), followed by anything
(filler tokens '.') and an end-of-sequence token. The reward is 1 when the first token is the answer,
else 0, whatever the length: how long the policy makes its right and its wrong completions is up to
it, which is where GRPO's length bias can show. A fixed fifth of the 1000 prompts is held out to
measure greedy accuracy; training prompts are drawn with every answer equally likely (see Task).
References: Shao et al. 2024 (DeepSeekMath, GRPO); Schulman et al. 2017 (PPO); Schulman 2020
("Approximating KL divergence", k1/k2/k3); Liu et al. 2025 ("Understanding R1-Zero-like training", Dr. GRPO).
Run:  python grpo.py --help
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Hyperparameters
# ----------------------------------------------------------------------------------------------
def arg(default, help: str, choices: tuple | None = None):
    """A hyperparameter: its default, a one-line help for --help, and the values it accepts."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Args:
    task: str = arg("max", "built-in task: max (the largest digit) | sum (digit sum mod 10: not learned in minutes)")
    seed: int = arg(1, "seeds Python, numpy, torch and the sampler")
    total_updates: int = arg(300, "training budget: policy updates (each samples B x G completions)")
    learning_rate: float = arg(3e-3, "Adam step size, the same for every update (no schedule)")
    prompts_per_update: int = arg(32, "B: prompts per update")
    group_size: int = arg(8, "G: completions sampled per prompt (>= 2)")
    max_completion_len: int = arg(8, "T: tokens per completion at most, end-of-sequence included")
    num_iterations: int = arg(2, "mu: gradient steps on each sampled batch (the clip matters when > 1)")
    clip_eps: float = arg(0.2, "the ratio is clipped to [1 - clip_eps, 1 + clip_eps]")
    beta: float = arg(0.04, "weight of the KL penalty to the reference policy (>= 0)")
    kl_estimator: str = arg("k3", "per-token KL estimate in the loss: k3 | k2", choices=("k3", "k2"))
    adv_eps: float = arg(1e-4, "eps in (r - mean) / (std + eps) (> 0, keeps all-equal groups finite)")
    d_model: int = arg(64, "transformer width")
    n_layers: int = arg(2, "transformer blocks")
    n_heads: int = arg(4, "attention heads (must divide d_model)")
    max_grad_norm: float = arg(1.0, "clip the gradient's global norm (0 = off)")
    torch_threads: int = arg(1, "CPU threads for torch; a model this small runs fastest on one")
    device: str = arg("auto", "auto | cpu | cuda (auto picks CUDA when available)", choices=("auto", "cpu", "cuda"))
    run_dir: str = arg("", "where metrics.csv and model.pt go (default runs/grpo__<task>__<seed>__<time>)")
    log_interval: int = arg(10, "print a progress line (and save the checkpoint) every this many updates")
    eval: str = arg("", "path of a model.pt: report its greedy accuracy on the held-out prompts and exit")


def validate(args: Args) -> None:
    """Raise ValueError with what is wrong and what is accepted."""
    checks = [
        (args.task in TASKS, f"unknown --task '{args.task}'; accepted: {', '.join(TASKS)}"),
        (args.total_updates > 0, f"--total-updates must be > 0 (got {args.total_updates})"),
        (args.learning_rate > 0, f"--learning-rate must be > 0 (got {args.learning_rate})"),
        (args.prompts_per_update >= 1, f"--prompts-per-update must be >= 1 (got {args.prompts_per_update})"),
        (args.group_size >= 2, f"--group-size must be >= 2: a group of one has no std (got {args.group_size})"),
        (args.max_completion_len >= 1, f"--max-completion-len must be >= 1 (got {args.max_completion_len})"),
        (args.num_iterations >= 1, f"--num-iterations must be >= 1 (got {args.num_iterations})"),
        (args.clip_eps > 0, f"--clip-eps must be > 0 (got {args.clip_eps})"),
        (args.beta >= 0, f"--beta must be >= 0 (got {args.beta})"),
        (args.adv_eps > 0, f"--adv-eps must be > 0 (got {args.adv_eps})"),
        (min(args.d_model, args.n_layers, args.n_heads) >= 1, "--d-model, --n-layers and --n-heads must be >= 1"),
        (args.d_model % max(args.n_heads, 1) == 0, f"--n-heads {args.n_heads} must divide --d-model {args.d_model}"),
        (args.max_grad_norm >= 0, f"--max-grad-norm must be >= 0 (got {args.max_grad_norm})"),
        (args.torch_threads >= 1, f"--torch-threads must be >= 1 (got {args.torch_threads})"),
        (args.log_interval >= 1, f"--log-interval must be >= 1 (got {args.log_interval})"),
        (
            args.device != "cuda" or torch.cuda.is_available(),
            "--device cuda was asked for but CUDA is not available; use cpu or auto",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


# ----------------------------------------------------------------------------------------------
# The task: digits in, one answer digit out, a verifiable reward
# ----------------------------------------------------------------------------------------------
DIGITS = 10
EQUALS, FILLER, EOS = 10, 11, 12  # token ids after the ten digits
VOCAB = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "=", ".", "<eos>"]
NUM_DIGITS = 3  # digits per prompt; a prompt is d_1 .. d_n '='
TASKS = {  # the answer digit of each prompt: [N, NUM_DIGITS] -> [N]
    "max": lambda digits: digits.max(-1).values,
    "sum": lambda digits: digits.sum(-1) % DIGITS,
}


class Task:
    """Every prompt of NUM_DIGITS digits, split once (independently of --seed) into training prompts
    and a held-out fifth for evaluation. prompts: [N, NUM_DIGITS + 1] long; answers: [N] long.
    Training batches are drawn with every answer equally likely; evaluation weighs every held-out prompt once.
    With --task max that is a deliberate trade: an answer shared by few prompts is as frequent as any other,
    so a tenth of every batch is "0 0 0" (the one prompt whose max is 0, a training prompt: no held-out
    prompt has answer 0) and another tenth the 5 training prompts whose max is 1. Drawn uniformly, they
    would come up once in 800 and once in 160 prompts, and answers 0 and 1 would get almost no signal. A
    prompt that is learned costs samples, not bias: once its group is all right, its advantages are 0."""

    def __init__(self, name: str, device: torch.device):
        digits = torch.tensor(list(itertools.product(range(DIGITS), repeat=NUM_DIGITS)))
        prompts = torch.cat([digits, torch.full((len(digits), 1), EQUALS)], dim=1)
        answers = TASKS[name](digits)
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0))
        n_eval = len(prompts) // 5
        self.eval_prompts, self.eval_answers = prompts[order[:n_eval]].to(device), answers[order[:n_eval]].to(device)
        self.train_prompts, self.train_answers = prompts[order[n_eval:]].to(device), answers[order[n_eval:]].to(device)
        # training prompts are drawn so that every answer is equally likely (max(d) = 1 is rare otherwise)
        count = torch.bincount(self.train_answers, minlength=DIGITS)
        self.train_weights = 1.0 / count[self.train_answers].float()

    def training_batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n training prompts [n, P] and their answers [n], drawn with replacement, answers balanced."""
        idx = torch.multinomial(self.train_weights, n, replacement=True, generator=generator)
        return self.train_prompts[idx], self.train_answers[idx]

    @staticmethod
    def reward(answers: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
        """1 when the completion's first token is the answer digit, else 0; length does not matter.
        answers: [B], completions: [B, G, T] -> rewards [B, G] (float)."""
        return (completions[..., 0] == answers[:, None]).float()


def decode(tokens) -> str:
    return " ".join(VOCAB[int(t)] for t in tokens)


# ----------------------------------------------------------------------------------------------
# Network: a tiny causal transformer language model
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Sampling: G completions per prompt, token by token, until end-of-sequence
# ----------------------------------------------------------------------------------------------
def completion_mask(completions: torch.Tensor, eos: int) -> torch.Tensor:
    """1 for every token up to and including the first eos, 0 after it. [..., T] long -> [..., T] float."""
    is_eos = (completions == eos).long()
    before_or_at_first_eos = (is_eos.cumsum(-1) - is_eos) == 0  # no eos strictly before t
    return before_or_at_first_eos.float()


@torch.no_grad()
def sample(policy: nn.Module, prompts: torch.Tensor, group_size: int, max_len: int, eos: int,
           generator: torch.Generator | None, greedy: bool = False) -> dict[str, torch.Tensor]:  # fmt: skip
    """Sample G completions for each of B prompts at once (or one greedy completion per prompt), each until
    its first end-of-sequence token `eos` or max_len tokens.

    prompts: [B, P] long. Returns completions [B, G, T] long (positions after the first EOS hold EOS),
    logp [B, G, T] (log pi(o_t | q, o_<t) of each sampled token, as the sampler computed it),
    mask [B, G, T] float (1 up to and including the first EOS), entropy [B, G, T] (of pi(. | q, o_<t)).
    """
    B, P = prompts.shape
    seqs = prompts.repeat_interleave(group_size, dim=0)  # [B*G, P]: the G copies of a prompt are adjacent
    done = torch.zeros(B * group_size, dtype=torch.bool, device=prompts.device)
    tokens, logps, entropies = [], [], []
    for _ in range(max_len):
        log_probs = policy(seqs)[:, -1].log_softmax(-1)  # [B*G, V]
        if greedy:
            token = log_probs.argmax(-1)
        else:
            token = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, eos), token)
        tokens.append(token)
        logps.append(log_probs.gather(-1, token[:, None]).squeeze(-1))
        entropies.append(-(log_probs.exp() * log_probs).sum(-1))
        done = done | (token == eos)
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        if done.all():
            break
    completions = torch.stack(tokens, -1)
    if completions.shape[1] < max_len:  # every completion ended early: pad to T with EOS
        pad = max_len - completions.shape[1]
        completions = F.pad(completions, (0, pad), value=eos)
        logps.extend([torch.zeros_like(logps[0])] * pad)
        entropies.extend([torch.zeros_like(entropies[0])] * pad)
    shape = (B, group_size, max_len)
    return {
        "completions": completions.view(shape),
        "logp": torch.stack(logps, -1).view(shape),
        "mask": completion_mask(completions, eos).view(shape),
        "entropy": torch.stack(entropies, -1).view(shape),
    }


def token_logprobs(policy: nn.Module, prompts: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
    """log pi(o_t | q, o_<t) for every completion token, in one forward pass (teacher forcing).
    prompts: [B, P] long, completions: [B, G, T] long -> [B, G, T]."""
    B, G, T = completions.shape
    seqs = torch.cat([prompts.repeat_interleave(G, dim=0), completions.reshape(B * G, T)], dim=1)
    logits = policy(seqs[:, :-1])[:, prompts.shape[1] - 1 :]  # the logits that predict o_1 .. o_T
    return logits.log_softmax(-1).gather(-1, completions.reshape(B * G, T, 1)).view(B, G, T)


# ----------------------------------------------------------------------------------------------
# The estimator: pure functions on tensors (copy these into an LLM trainer unchanged)
# ----------------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - mean(r)) / (std(r) + eps) within each group; std with Bessel's correction (G - 1).
    A group whose rewards are all equal gets A = 0 (0 / eps), not NaN. rewards: [B, G] (float, int or bool;
    detached here: advantages are constants) -> [B, G] float. A flat [B*G] layout whose G completions of a
    prompt are adjacent (as sample() and TRL lay them out) goes in as rewards.view(-1, G) and comes back
    with .view(-1)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [B, G] with G >= 2 (got shape {list(rewards.shape)}); "
                         "reshape a flat [B*G] layout with rewards.view(-1, G)")  # fmt: skip
    rewards = rewards.detach()
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)  # unbiased, as torch.std, TRL, verl and oat
    return (rewards - mean) / (std + eps)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float) -> torch.Tensor:  # fmt: skip
    """s_t = min(rho_t A, clip(rho_t, 1 - clip_eps, 1 + clip_eps) A), rho_t = exp(logp - old_logp), per token.
    logp: [B, G, T] with grad; old_logp: [B, G, T] from the sampler; advantages: [B, G] -> [B, G, T].
    old_logp and advantages are constants, detached here. Per token, no mask: grpo_loss() masks."""
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages.detach().unsqueeze(-1)  # the same advantage for every token of a completion
    return torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of the KL between pi_theta and pi_ref from a token sampled by the policy.
    k3 = pi_ref/pi - log(pi_ref/pi) - 1 (>= 0; its expected gradient is that of KL(pi_ref || pi) when the
    token was sampled from pi_theta itself, not from an older pi_old); k2 = 1/2 (log pi - log pi_ref)^2 (its
    expected gradient is that of KL(pi || pi_ref), under the same condition).
    logp: [B, G, T] with grad; ref_logp: [B, G, T] (a constant, detached here) -> [B, G, T]. No mask."""
    log_ratio = ref_logp.detach() - logp
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1
    if estimator == "k2":
        return 0.5 * log_ratio**2
    raise ValueError(f"unknown KL estimator '{estimator}'; accepted: k3, k2")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1/B sum_b 1/G sum_i 1/|o_i| sum_t per_token[b, i, t] over each completion's own tokens.
    per_token: [B, G, T]; mask: [B, G, T] float or bool -> scalar. (Dr. GRPO divides by a constant instead
    of |o_i|.) Masked positions are replaced by 0 with torch.where, so whatever they hold (-inf, NaN, values
    that depend on theta) changes neither the value nor the gradient, as long as that gradient is finite."""
    keep = mask.bool()
    per_completion = torch.where(keep, per_token, 0.0).sum(-1) / keep.sum(-1).clamp(min=1)
    return per_completion.mean()


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    kl_estimator: str = "k3",
) -> torch.Tensor:
    """L = -1/B sum_b 1/G sum_i 1/|o_i| sum_t (s_i,t - beta k_i,t)  (DeepSeekMath eq. 3, negated to minimise).
    logp, old_logp, ref_logp, mask: [B, G, T]; advantages: [B, G] -> scalar. Padding may hold anything
    (-inf, -1e4, log-probabilities that depend on theta): it is set to 0 before exp(), so it changes
    neither the loss nor its gradient and cannot make either NaN."""
    keep = mask.bool()
    logp, old_logp, ref_logp = (torch.where(keep, x, 0.0) for x in (logp, old_logp, ref_logp))
    per_token = clipped_surrogate(logp, old_logp, advantages, clip_eps)
    if beta:
        per_token = per_token - beta * kl_penalty(logp, ref_logp, kl_estimator)
    return -aggregate(per_token, keep)


def clip_fraction(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_eps: float) -> torch.Tensor:  # fmt: skip
    """The share of the completions' tokens whose surrogate gradient the clip zeroes, as TRL counts them: the
    ratio above 1 + clip_eps with A > 0, or below 1 - clip_eps with A < 0. A ratio outside the range the other
    way is not counted: min() keeps its unclipped term, whose gradient is not zero. (ppo.py's clip_fraction
    counts every sample with |ratio - 1| > clip_coef, either way.) Shapes as clipped_surrogate() -> scalar."""
    keep = mask.bool()
    ratio = torch.exp(torch.where(keep, logp - old_logp, 0.0)).detach()
    adv = advantages.detach().unsqueeze(-1)
    zeroed = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
    return (zeroed & keep).sum() / keep.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------
# Update
# ----------------------------------------------------------------------------------------------
def update(policy, optimizer, batch: dict[str, torch.Tensor], args: Args) -> dict[str, float]:
    """num_iterations gradient steps on one batch of groups; pi_old is the sampler, fixed throughout."""
    mask = batch["mask"]
    stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
    for _ in range(args.num_iterations):
        logp = token_logprobs(policy, batch["prompts"], batch["completions"])
        loss = grpo_loss(logp, batch["logp"], batch["ref_logp"], batch["advantages"], mask,
                         args.clip_eps, args.beta, args.kl_estimator)  # fmt: skip
        if not torch.isfinite(loss):
            raise FloatingPointError("loss")
        optimizer.zero_grad()
        loss.backward()
        if args.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
        optimizer.step()
        with torch.no_grad():
            kl = kl_penalty(logp, batch["ref_logp"], "k3")
            clipped = clip_fraction(logp, batch["logp"], batch["advantages"], mask, args.clip_eps)
            stats["loss"] += loss.item() / args.num_iterations
            stats["kl"] += ((kl * mask).sum() / mask.sum()).item() / args.num_iterations
            stats["clip_fraction"] += clipped.item() / args.num_iterations
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        raise FloatingPointError("parameters")
    return stats


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def save_checkpoint(path: str, policy: TinyLM, args: Args, update_idx: int) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = {
        "algo": "grpo",
        "args": asdict(args),
        "vocab": VOCAB,
        "num_digits": NUM_DIGITS,
        "update": update_idx,
        "policy": policy.state_dict(),
    }
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Raise ValueError when the file is missing, unreadable or not a grpo.py checkpoint."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(state, dict) or state.get("algo") != "grpo":
        raise ValueError(f"{path} is not a grpo.py checkpoint")
    if state.get("vocab") != VOCAB or state.get("num_digits") != NUM_DIGITS:
        raise ValueError(f"{path} was trained with another vocabulary or prompt length than this grpo.py")
    return state


# ----------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mean_or_nan(x: torch.Tensor) -> float:
    return x.mean().item() if x.numel() else float("nan")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `timeout`, `docker stop`), raised wherever training is, and handled like Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated


def train(args: Args) -> dict[str, float]:
    """Train, writing metrics.csv (a row per update) and model.pt."""
    start = time.time()
    seed_everything(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = resolve_device(args.device)
    task = Task(args.task, device)
    policy = make_policy(args).to(device)
    reference = copy.deepcopy(policy).requires_grad_(False)  # pi_ref: the frozen initial policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.learning_rate)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    run_dir = args.run_dir or f"runs/grpo__{args.task}__{args.seed}__{int(start)}"
    model_path = os.path.join(run_dir, "model.pt")
    columns = ["global_step", "wall_time", "tokens_per_second", "mean_reward", "eval_accuracy",
               "length_correct", "length_incorrect", "kl", "clip_fraction", "entropy", "loss"]  # fmt: skip
    try:  # a run directory that cannot be created or written is bad input, found before training starts
        os.makedirs(run_dir, exist_ok=True)
        metrics_file = open(os.path.join(run_dir, "metrics.csv"), "w", newline="")
        groups_file = open(os.path.join(run_dir, "groups.csv"), "w", newline="")  # a row per group: who the loss weighs
    except OSError as e:
        raise ValueError(f"--run-dir {run_dir} cannot be created or written: {e.strerror or e}") from None
    metrics = csv.writer(metrics_file)
    metrics.writerow(columns)
    groups = csv.writer(groups_file)
    groups.writerow(["global_step", "p_right", "n_right", "advantage_right", "advantage_wrong"])
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"grpo on task {args.task} | device {device} | {n_params} parameters | run dir {run_dir}")

    update_idx, accuracy, saved = 0, evaluate(policy, task), False
    previous_sigterm = signal.signal(signal.SIGTERM, raise_terminated)  # restored when train() returns
    try:
        while update_idx < args.total_updates:
            t0 = time.time()
            prompts, answers = task.training_batch(args.prompts_per_update, generator)
            batch = sample(policy, prompts, args.group_size, args.max_completion_len, EOS, generator)
            n_sampled = batch["mask"].sum().item()
            tokens_per_second = n_sampled / (time.time() - t0)
            rewards = Task.reward(answers, batch["completions"])
            with torch.no_grad():
                batch["ref_logp"] = token_logprobs(reference, prompts, batch["completions"])
                p_right = token_logprobs(policy, prompts, answers.view(-1, 1, 1)).exp().view(-1)  # pi_old(answer | q)
            batch.update(prompts=prompts, advantages=group_advantages(rewards, args.adv_eps))
            update_idx += 1
            try:
                stats = update(policy, optimizer, batch, args)
            except FloatingPointError as e:  # keep the last checkpoint, which was saved with finite weights
                kept = f"the last good checkpoint is {model_path}" if saved else "no checkpoint was saved before it"
                print(f"stopped: non-finite {e} at update {update_idx}; {kept}", file=sys.stderr)
                raise SystemExit(1) from None
            accuracy = evaluate(policy, task)
            lengths = batch["mask"].sum(-1)
            correct = rewards > 0
            row = {
                "global_step": update_idx,
                "wall_time": round(time.time() - start, 3),
                "tokens_per_second": round(tokens_per_second),
                "mean_reward": rewards.mean().item(),
                "eval_accuracy": accuracy,
                "length_correct": mean_or_nan(lengths[correct]),
                "length_incorrect": mean_or_nan(lengths[~correct]),
                "entropy": ((batch["entropy"] * batch["mask"]).sum() / n_sampled).item(),
                **stats,
            }
            metrics.writerow([row[c] for c in columns])
            metrics_file.flush()
            n_right, adv = correct.sum(-1), batch["advantages"]
            adv_right = (adv * correct).sum(-1) / n_right  # nan where no completion of the group is right
            adv_wrong = (adv * ~correct).sum(-1) / (args.group_size - n_right)
            columns_g = [[update_idx] * len(n_right), p_right.tolist(), n_right.tolist(), adv_right.tolist()]
            groups.writerows(zip(*columns_g, adv_wrong.tolist(), strict=True))
            groups_file.flush()
            if update_idx % args.log_interval == 0 or update_idx >= args.total_updates:
                save_checkpoint(model_path, policy, args, update_idx)
                saved = True
                print(
                    f"update {update_idx:>5} | reward {row['mean_reward']:.3f} | eval acc {accuracy:.3f} | "
                    f"len right {row['length_correct']:4.2f} wrong {row['length_incorrect']:4.2f} | "
                    f"kl {row['kl']:.4f} | clip {row['clip_fraction']:.3f} | entropy {row['entropy']:.3f} | "
                    f"{row['tokens_per_second']:>6} tok/s | {row['wall_time']:6.1f} s"
                )
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as Terminated
        save_checkpoint(model_path, policy, args, update_idx)
        print(f"\ninterrupted at update {update_idx}; checkpoint and metrics saved in {run_dir}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        metrics_file.close()
        groups_file.close()

    summary = {"updates": update_idx, "eval_accuracy": accuracy, "seconds": time.time() - start}
    print(
        f"done: {update_idx} updates in {summary['seconds']:.1f} s; greedy accuracy on "
        f"{len(task.eval_prompts)} held-out prompts {accuracy:.3f}; files in {run_dir}"
    )
    return summary


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(policy: TinyLM, task: Task) -> float:
    """Greedy accuracy on the held-out prompts: the share whose most likely first token is the answer."""
    logits = policy(task.eval_prompts)[:, -1]
    return (logits.argmax(-1) == task.eval_answers).float().mean().item()


def evaluate_checkpoint(path: str, device_name: str = "auto") -> tuple[float, int, str]:
    """Load a model.pt and return (greedy accuracy on its task's held-out prompts, their number, an example)."""
    state = load_checkpoint(path)
    saved = Args(**{f.name: state["args"][f.name] for f in fields(Args) if f.name in state["args"]})
    if saved.task not in TASKS:
        raise ValueError(f"{path}: unknown task '{saved.task}'; accepted: {', '.join(TASKS)}")
    device = resolve_device(device_name)
    policy = make_policy(saved).to(device)
    try:
        policy.load_state_dict(state["policy"])
    except RuntimeError:
        raise ValueError(f"{path}: the weights do not fit the network its args describe") from None
    task = Task(saved.task, device)
    greedy = sample(policy, task.eval_prompts[:1], 1, saved.max_completion_len, EOS, None, greedy=True)
    example = f"{decode(task.eval_prompts[0])} {decode(greedy['completions'][0, 0])}"
    return evaluate(policy, task), len(task.eval_prompts), example


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, not argparse's usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None) -> Args:
    parser = Parser(
        prog="grpo.py", description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in fields(Args):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                            choices=f.metadata["choices"], help=f.metadata["help"])  # fmt: skip
    return Args(**vars(parser.parse_args(argv)))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        validate(args)
        if args.eval:
            accuracy, n, example = evaluate_checkpoint(args.eval, args.device)
            print(f"eval {args.eval}: greedy accuracy {accuracy:.3f} on {n} held-out prompts (e.g. {example})")
        else:
            train(args)
    except ValueError as e:
        print(f"grpo.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # the checkpoint and metrics are saved already
        return 143 if isinstance(e, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
