"""The one shape of the six scripts: the algorithm first (update() and train() above one banner), then the plumbing,
which is one text in the three scripts that run on one process, that text plus its torchrun and normaliser lines in
ppo.py, and one text in the two GRPO scripts, so that a reader learns it once and `diff actor_critic.py trpo.py` shows
the algorithm alone."""

import difflib
from pathlib import Path

import pytest
from runs import ROOT

BANNER = "# ---- everything below is plumbing, not reinforcement learning"
GROUPS = {"one process": ["reinforce", "actor_critic", "trpo"], "grpo": ["grpo", "dr_grpo"]}
PPO_OWN_LINES = {  # the start of each line ppo.py's plumbing changes in the one-process text: torchrun, normaliser
    "+",
    '+"""(rank, number of processes), as torchrun sets them; (0, 1) f',
    "+# group, which destroy_process_group() then cannot free, and gl",
    "+# torch.optim imports torch._dynamo on first use; imported afte",
    "+action, _ = policy.act(torch.as_tensor(obs[None], dtype=torch.f",
    "+def share() -> tuple[int, int]:",
    '+device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))',
    '+device = torch.device(args.device if args.device != "auto" else',
    '+devnull = [open(os.devnull, "w")] * 2',
    "+dist.destroy_process_group()",
    '+dist.init_process_group("nccl" if device.type == "cuda" else "g',
    "+finally:",
    '+if device.type == "cuda":',
    "+if dist.is_initialized():  # torchrun's processes leave the gro",
    "+if self.rank == 0:",
    "+if self.rank > 0:",
    "+if share()[1] > 1 and not dist.is_initialized():  # under torch",
    '+importlib.import_module("torch._dynamo")',
    "+normalizer = Normalizer(env.observation_space.shape, 1, trained",
    '+normalizer.load_state_dict(state["normalizer"])',
    "+obs = normalizer.obs(obs[None], update=False)[0]",
    '+print(f"\\ninterrupted at global step {self.global_step}; saved ',
    "+return",
    "+return device",
    '+return int(os.environ.get("RANK", 0)), int(os.environ.get("WORL',
    "+self.metrics, self.episodes = open_run_dir(self.dir, args.overw",
    "+self.rank, self.world = share()  # under torchrun, rank 0 alone",
    "+step, now = self.global_step + steps_so_far * self.world, round",
    "+steps *= self.world  # this process's steps, and as many of eve",
    "+sys.stdout = sys.stdout if share()[0] == 0 else open(os.devnull",
    "+torch.cuda.set_device(device)",
    "-action = policy.act(torch.as_tensor(obs[None], dtype=torch.floa",
    '-if int(os.environ.get("WORLD_SIZE", 1)) > 1:  # torchrun\'s proc',
    '-print(f"\\ninterrupted at global step {self.global_step}; saved ',
    '-raise ValueError("runs on one process; of the six scripts, ppo.',
    '-return torch.device(args.device if args.device != "auto" else "',
    "-self.metrics, self.episodes = open_run_dir(self.dir, args.overw",
    "-step, now = self.global_step + steps_so_far, round(time.time() ",
}


def source(script: str) -> str:
    return Path(ROOT, f"{script}.py").read_text()


def plumbing(script: str) -> list[str]:
    text = source(script)
    return text[text.index(BANNER) :].replace(f'ALGO = "{script}"', 'ALGO = "<script>"').splitlines()


def changed_lines(a: str, b: str) -> set[str]:
    """The lines that b's plumbing removes from a's (-) and adds to it (+), indentation aside, to 64 characters."""
    diff = difflib.unified_diff(plumbing(a), plumbing(b), lineterm="", n=0)
    return {(line[0] + line[1:].strip())[:64] for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")}


@pytest.mark.parametrize("group", GROUPS)
def test_the_plumbing_is_one_text(group):
    first, *others = GROUPS[group]
    for script in others:
        assert changed_lines(first, script) == set(), f"{script}.py's plumbing differs from {first}.py's"


def test_ppos_plumbing_is_the_one_process_text_with_its_torchrun_and_normaliser_lines():
    assert changed_lines("actor_critic", "ppo") <= PPO_OWN_LINES


@pytest.mark.parametrize("script", [s for group in GROUPS.values() for s in group] + ["ppo"])
def test_the_algorithm_comes_first(script):
    text = source(script)
    assert text.count(BANNER) == 1
    banner = text.index(BANNER)
    for definition in ("\ndef update(", "\ndef train("):
        assert 0 < text.index(definition) < banner, f"{script}.py: {definition.strip()} below the plumbing banner"
    assert text.index('if __name__ == "__main__":') > banner
