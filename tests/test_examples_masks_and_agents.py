"""examples/action_masks.py and examples/multi_agent.py run and do what their docstrings say (as tests/test_examples.py
does for the other examples: imported as the package ``examples`` from the repository root, one shared Ray session,
small budgets)."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import action_masks, multi_agent  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny networks in this process: one torch thread (see tests/test_examples.py). Restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_action_masks_muzero_never_plays_an_illegal_action(ray_session):
    summary = action_masks.main(["--iterations", "2"])
    assert summary["num_grad_updates"] > 0  # it learned, not only acted
    assert summary["steps_checked"] == 4 * 10  # one fresh sample: 4 envs x fragment length 10, every step checked
    assert summary["illegal_actions_played"] == 0
    assert summary["illegal_visit_share"] == 0.0  # policy targets cover legal actions only
    assert summary["network_observation_shape"] == [3]  # the network sees `observations`, not the mask
    # An illegal action would end the episode at -10: every episode, exploring and greedy, lasts all 20 steps.
    assert summary["episode_return_mean"] == action_masks.EPISODE_LENGTH
    assert summary["greedy_returns"] == [float(action_masks.EPISODE_LENGTH)] * 3


def test_action_masks_env_punishes_what_the_mask_forbids():
    """The control: the env itself does not stop an illegal action; only MuZero's masking does."""
    env = action_masks.HalfLegalEnv()
    obs, _ = env.reset(seed=0)
    illegal = int(next(a for a in range(4) if obs["action_mask"][a] == 0))
    _, reward, terminated, _, info = env.step(illegal)
    assert (reward, terminated, info["illegal"]) == (action_masks.ILLEGAL_REWARD, True, True)


def test_multi_agent_two_independent_policies_each_learn_from_their_own_replay(ray_session):
    summary = multi_agent.main(["--iterations", "3"])
    assert summary["learner_results_for"] == ["p0", "p1"]
    for pid in ("p0", "p1"):
        assert summary[pid]["replay_size"] > 0
        assert summary[pid]["num_grad_updates"] > 0
        assert summary[pid]["weights_changed"]
    # Each agent's steps went to its own policy's replay: together they hold every env step (2 agents per step).
    assert summary["p0"]["replay_size"] + summary["p1"]["replay_size"] <= 2 * summary["env_steps"]
    assert not summary["policies_share_weights"]


def test_multi_agent_a_policy_left_out_of_policies_to_train_acts_but_does_not_learn(ray_session):
    summary = multi_agent.main(["--iterations", "2", "--train", "p0"])
    assert summary["learner_results_for"] == ["p0"]
    assert summary["p0"]["num_grad_updates"] > 0 and summary["p0"]["weights_changed"]
    assert summary["p1"]["replay_size"] > 0  # p1 acted
    assert summary["p1"]["num_grad_updates"] == 0 and not summary["p1"]["weights_changed"]
