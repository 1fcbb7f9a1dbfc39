"""The one shape of the six scripts: the algorithm first (update() and train() above one banner), then the plumbing,
which is the same text in the four Gymnasium scripts and the same text in the two GRPO scripts, so that a reader learns
it once and `diff actor_critic.py ppo.py` shows the algorithm alone."""

import difflib
from pathlib import Path

import pytest
from runs import ROOT

BANNER = "# ---- everything below is plumbing, not reinforcement learning"
GROUPS = {"gymnasium": ["actor_critic", "reinforce", "trpo", "ppo"], "grpo": ["grpo", "dr_grpo"]}
OWN_LINES = {  # what a script's plumbing may say differently (indentation aside): ppo.py's --eval uses its normaliser
    "ppo": {
        "-except RuntimeError:",
        "+normalizer = Normalizer(env.observation_space.shape, 1, args.gamma, args.norm_obs, args.norm_reward)",
        '+normalizer.load_state_dict(state["normalizer"])',
        "+except (RuntimeError, KeyError):",
        "+obs = normalizer.obs(obs[None], update=False)[0]",
        "-action = policy.act(torch.as_tensor(obs[None], dtype=torch.float32, device=device), greedy=True)",
        "+action, _ = policy.act(torch.as_tensor(obs[None], dtype=torch.float32, device=device), greedy=True)",
    }
}


def source(script: str) -> str:
    return Path(ROOT, f"{script}.py").read_text()


def plumbing(script: str) -> list[str]:
    text = source(script)
    return text[text.index(BANNER) :].replace(f'ALGO = "{script}"', 'ALGO = "<script>"').splitlines()


@pytest.mark.parametrize("group", GROUPS)
def test_the_plumbing_is_one_text(group):
    first, *others = GROUPS[group]
    for script in others:
        diff = difflib.unified_diff(plumbing(first), plumbing(script), lineterm="", n=0)
        changed = [line[0] + line[1:].strip() for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
        assert set(changed) <= OWN_LINES.get(script, set()), f"{script}.py's plumbing differs from {first}.py's"


@pytest.mark.parametrize("script", [s for group in GROUPS.values() for s in group])
def test_the_algorithm_comes_first(script):
    text = source(script)
    assert text.count(BANNER) == 1
    banner = text.index(BANNER)
    for definition in ("\ndef update(", "\ndef train("):
        assert 0 < text.index(definition) < banner, f"{script}.py: {definition.strip()} below the plumbing banner"
    assert text.index('if __name__ == "__main__":') > banner
