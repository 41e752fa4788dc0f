"""Reward functions against hand computations, RewardSet weighting/stats, spec validation and user rewards."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from openrs_pl.grading import Verdict
from openrs_pl.rewards import REWARD_REGISTRY, RewardSet, RewardSpec, correctness, validate_reward_specs
from openrs_pl.rewards.completion_text import as_messages
from openrs_pl.rewards.correctness import accuracy_reward, length_reward
from openrs_pl.rewards.cosine import cosine_reward
from openrs_pl.rewards.counters import collecting
from openrs_pl.rewards.formatting import format_reward, format_strict_reward, tag_count_reward
from openrs_pl.rewards.overlong import overlong_reward
from openrs_pl.rewards.repetition import repetition_reward

REPO = Path(__file__).resolve().parents[2]
BOX = "\\boxed{2}"
WRONG = "\\boxed{3}"
SOLUTION = "We add one and one, so the total is $\\boxed{2}$."


def padded(box: str, length: int) -> str:
    """A completion of exactly ``length`` characters that ends in ``box``."""
    return "x" * (length - len(box)) + box


# --- format rewards ---------------------------------------------------------------------------------------------


def test_format_reward_counts_closing_tag_once() -> None:
    completions = [
        "I think.\n</think>\nThe answer is 2.",
        "<think>\nI think.\n</think>\n2",  # an extra opening tag is not checked
        "I think.</think>2",  # no newlines around the tag
        "a\n</think>\nb\n</think>\n",
        "",
    ]
    assert format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert format_reward(as_messages(completions)) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_tag_count_and_strict_format() -> None:
    assert tag_count_reward(["<think>\na\n</think>\nb", "a\n</think>\n", "<think>\n<think>\n", "x"]) == [
        1.0,
        0.5,
        0.0,
        0.0,
    ]
    body = "a\n</think>\n<answer>\n2\n</answer>"
    assert format_strict_reward(["<think>\n" + body, body, "<think>\n" + body + " trailing"]) == [1.0, 0.0, 0.0]
    assert format_strict_reward([body], prefix="<think>\n") == [1.0]


# --- repetition ---------------------------------------------------------------------------------------------------


def test_repetition_penalty_by_hand() -> None:
    # "a b c d a b c d": 6 trigrams (abc bcd cda dab abc bcd), 4 unique -> 1 - 4/6 = 1/3
    rewards = repetition_reward(["a b c d a b c d", "A B C a b c", "one two", ""], max_penalty=-1.0)
    assert rewards[0] == pytest.approx(-1 / 3)
    assert rewards[1] == pytest.approx(-0.25)  # lower-cased: abc bca cab abc
    assert rewards[2:] == [0.0, 0.0]
    assert repetition_reward(["a b a b a b"], ngram_size=2, max_penalty=-0.5) == [pytest.approx(-0.5 * (1 - 2 / 5))]
    with pytest.raises(ValueError, match="should not be positive"):
        repetition_reward(["a"], max_penalty=0.5)


# --- accuracy -----------------------------------------------------------------------------------------------------


def test_accuracy_gold_fields_and_unparsable_golds() -> None:
    completions = [f"so {BOX}.", "so \\boxed{3}.", f"so {BOX}."]
    solutions = [SOLUTION, SOLUTION, "a solution with no math in it"]
    with collecting() as counts:
        assert accuracy_reward(completions, solution=solutions) == [1.0, 0.0, 1.0]  # the recipe rewards 1.0
    assert dict(counts) == {"gold_unparsed": 1, "timeouts": 0, "errors": 0, "grader_crashes": 0}
    assert accuracy_reward(completions, solution=solutions, on_unparsable_gold="skip") == [1.0, 0.0, None]
    answers = ["2", "2", None]  # open_rs has a row with answer=None
    assert accuracy_reward(completions, gold_field="answer", answer=answers, on_unparsable_gold="skip") == [
        1.0,
        0.0,
        None,
    ]
    with pytest.raises(ValueError, match="need a 'solution' column"):
        accuracy_reward(completions, answer=answers)
    with pytest.raises(ValueError, match="on_unparsable_gold must be"):
        accuracy_reward(completions, solution=solutions, on_unparsable_gold="zero")


def test_accuracy_counts_timeouts() -> None:
    bomb = "$\\boxed{" + "\\frac{1}{" * 12_500 + "1" + "}" * 12_500 + "}$"
    with collecting() as counts:
        assert accuracy_reward([bomb, BOX], solution=[SOLUTION] * 2, timeout_s=1.0) == [0.0, 1.0]
    assert counts["timeouts"] == 1


# --- cosine -------------------------------------------------------------------------------------------------------

EXP3 = {"max_len": 3584}  # the recipe's script defaults for the four bounds


def cosine_by_hand(correct: bool, length: int, max_len: int, bounds: tuple[float, float, float, float]) -> float:
    min_wrong, max_wrong, min_correct, max_correct = bounds
    lo, hi = (min_correct, max_correct) if correct else (max_wrong, min_wrong)
    return lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * length / max_len))


@pytest.mark.parametrize(
    ("length", "correct_value", "wrong_value"),
    [
        (9, 1.0, 0.0),  # the shortest boxed answer: almost the top of both curves
        (896, 0.75 + 0.25 * math.sqrt(0.5), -0.25 + 0.25 * math.sqrt(0.5)),  # a quarter: cos(pi/4)
        (1792, 0.75, -0.25),  # the middle: cos(pi/2) = 0
        (3584, 0.5, -0.5),  # max_len: cos(pi) = -1
        (5376, 0.75, -0.25),  # unclipped: past max_len the curve comes back up
        (7168, 1.0, 0.0),  # two max_lens: a full period, the same as an empty completion
    ],
)
def test_cosine_exp3_by_hand(length: int, correct_value: float, wrong_value: float) -> None:
    correct, wrong = padded(BOX, length), padded("\\boxed{3}", length)
    rewards = cosine_reward([correct, wrong], solution=[SOLUTION] * 2, **EXP3)
    tolerance = 1e-5 if length > 9 else 2e-5  # 9 characters are not quite 0: 1 - cos(pi * 9/3584) ~ 3e-5
    assert rewards[0] == pytest.approx(correct_value, abs=tolerance)
    assert rewards[1] == pytest.approx(wrong_value, abs=tolerance)
    assert rewards[0] == pytest.approx(cosine_by_hand(True, length, 3584, (0.0, -0.5, 0.5, 1.0)))


def test_cosine_recipe_defaults_penalise_long_wrong_answers_more() -> None:
    wrong = [padded("\\boxed{3}", n) for n in (100, 1000, 3000)]
    recipe = cosine_reward(wrong, solution=[SOLUTION] * 3, **EXP3)
    assert recipe[0] > recipe[1] > recipe[2]  # the recipe: shorter wrong answers score higher
    intent = cosine_reward(wrong, solution=[SOLUTION] * 3, min_value_wrong=-1.0, **EXP3)
    assert intent[0] < intent[1] < intent[2]  # the cosine reward's intent: think longer when wrong
    assert intent[2] == pytest.approx(cosine_by_hand(False, 3000, 3584, (-1.0, -0.5, 0.5, 1.0)))


def test_cosine_options_tokens_clip_and_unparsable_gold() -> None:
    text = padded(BOX, 7168)
    assert cosine_reward([text], solution=[SOLUTION], clip=True, **EXP3) == [pytest.approx(0.5)]
    # tokens: 1792 token ids put the completion at the middle, whatever its character length
    ids = [[7] * 1792]
    assert cosine_reward([BOX], solution=[SOLUTION], length_unit="tokens", completion_ids=ids, **EXP3) == [
        pytest.approx(0.75)
    ]
    with pytest.raises(ValueError, match="needs completion_ids"):
        cosine_reward([BOX], solution=[SOLUTION], length_unit="tokens")
    assert cosine_reward([text], solution=["no math"], **EXP3) == [1.0]  # unscaled, as the recipe
    assert cosine_reward([text], solution=["no math"], on_unparsable_gold="skip", **EXP3) == [None]


# --- length (Kimi 1.5) --------------------------------------------------------------------------------------------


def test_length_reward_by_hand() -> None:
    # lengths 9, 19, 29 -> lam = 0.5, 0.0, -0.5
    completions = [padded(BOX, 9), padded("\\boxed{3}", 19), padded(BOX, 29)]
    assert length_reward(completions, solution=[SOLUTION] * 3) == [0.5, 0.0, -0.5]
    wrong_short = [padded("\\boxed{3}", 9), padded(BOX, 29)]
    assert length_reward(wrong_short, solution=[SOLUTION] * 2) == [0.0, -0.5]  # wrong: min(0, lam)
    assert length_reward([BOX, BOX], solution=[SOLUTION] * 2) == [0.0, 0.0]
    assert length_reward(
        [BOX, BOX], solution=[SOLUTION] * 2, length_unit="tokens", completion_ids=[[1], [1, 2, 3]]
    ) == [
        0.5,
        -0.5,
    ]


# --- RewardSet ----------------------------------------------------------------------------------------------------


def test_reward_set_weights_and_stats_by_hand() -> None:
    rs = RewardSet([RewardSpec("format", 1.0), RewardSpec("accuracy", 2.0, {"on_unparsable_gold": "skip"})])
    completions = [f"a\n</think>\n{BOX}", "a\n</think>\n\\boxed{3}", f"no tag {BOX}", f"a\n</think>\n{BOX}"]
    columns = {"solution": [SOLUTION, SOLUTION, SOLUTION, "no math"], "problem": ["p"] * 4}
    out = rs(completions, prompts=["p"] * 4, columns=columns)
    fmt, acc = [1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, math.nan]
    assert out.names == ("format", "accuracy")
    assert torch.equal(rs.weights, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(out.per_func, torch.tensor([fmt, acc]).T, equal_nan=True)
    total = [1.0 * f + (2.0 * a if not math.isnan(a) else 0.0) for f, a in zip(fmt, acc, strict=True)]
    assert out.total.tolist() == total == [3.0, 1.0, 2.0, 1.0]
    assert out.stats["rewards/format/mean"] == pytest.approx(0.75)
    assert out.stats["rewards/format/std"] == pytest.approx(torch.tensor(fmt).std().item())
    assert out.stats["rewards/accuracy/mean"] == pytest.approx(2 / 3)  # over the three applicable values
    assert out.stats["rewards/accuracy/std"] == pytest.approx(torch.tensor([1.0, 0.0, 1.0]).std().item())
    assert out.stats["reward/mean"] == pytest.approx(7 / 4)
    assert out.stats["reward/std"] == pytest.approx(torch.tensor(total).std().item())
    assert out.stats["rewards/accuracy/gold_unparsed"] == 1.0
    assert out.stats["rewards/accuracy/timeouts"] == 0.0 and out.stats["rewards/accuracy/errors"] == 0.0


def test_reward_set_rejects_misaligned_inputs() -> None:
    rs = RewardSet([RewardSpec("format")])
    with pytest.raises(ValueError, match="'solution' has 1 entries for 2 completions"):
        rs(["a", "b"], prompts=["p", "p"], columns={"solution": ["s"]})


def test_registry_names() -> None:
    assert set(REWARD_REGISTRY) == {
        "accuracy",
        "format",
        "format_strict",
        "tag_count",
        "cosine",
        "repetition",
        "length",
        "overlong",
    }


# --- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RewardSpec("acuracy"), "unknown reward 'acuracy'; known: accuracy, format"),
        (RewardSpec("no_such_module_xyz:f"), "cannot load reward function 'no_such_module_xyz:f'"),
        (RewardSpec("math:no_such_function"), "cannot load reward function 'math:no_such_function'"),
        (RewardSpec("math:pi"), "reward 'math:pi' is not callable"),
        (RewardSpec("cosine", 2.0, {"max_lenn": 3584}), "reward 'cosine' does not accept kwarg 'max_lenn'"),
        (RewardSpec("format", 1.0, {"completions": []}), "kwarg 'completions' is supplied by the trainer"),
        (RewardSpec("format", math.nan), "non-finite weight"),
    ],
)
def test_validate_reward_specs_errors(spec: RewardSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_reward_specs([spec])


def test_validate_accepts_recipe_specs() -> None:
    validate_reward_specs([RewardSpec("format", 1.0), RewardSpec("cosine", 2.0, {"max_len": 3584, "clip": True})])
    with pytest.raises(ValueError, match="no reward functions"):
        validate_reward_specs([])


def _find_rewards(node: Any) -> list[dict] | None:
    if isinstance(node, dict):
        if isinstance(node.get("rewards"), list):
            return node["rewards"]
        return next((found for v in node.values() if (found := _find_rewards(v)) is not None), None)
    return None


def test_exp3_config_reproduces_the_recipe() -> None:
    config = yaml.safe_load((REPO / "configs" / "openrs_exp3.yaml").read_text())
    rewards = _find_rewards(config)
    assert rewards is not None, "configs/openrs_exp3.yaml has no rewards list"
    specs = [RewardSpec(r["name"], r.get("weight", 1.0), r.get("kwargs", {})) for r in rewards]
    validate_reward_specs(specs)
    assert [(s.name, s.weight) for s in specs] == [("format", 1.0), ("cosine", 2.0)]
    rs = RewardSet(specs)
    completions = [f"a\n</think>\n{padded(BOX, 1792)}", f"a\n</think>\n{padded(WRONG, 3584)}"]
    out = rs(completions, prompts=["p"] * 2, columns={"solution": [SOLUTION] * 2})
    lengths = [len(c) for c in completions]  # characters, the whole completion
    expected = [
        1.0 + 2.0 * cosine_by_hand(ok, n, 3584, (0.0, -0.5, 0.5, 1.0))
        for ok, n in zip((True, False), lengths, strict=True)
    ]
    assert out.total.tolist() == pytest.approx(expected, abs=1e-6)  # float32 totals


# --- user rewards (module:function) -------------------------------------------------------------------------------

USER_MODULE = '''
from math_verify import LatexExtractionConfig, parse, verify


def openr1_accuracy(completions, solution, **kwargs):
    """An open-r1 style reward: chat-message completions, the gold from the `solution` column."""
    contents = [completion[0]["content"] for completion in completions]
    rewards = []
    for content, sol in zip(contents, solution):
        gold = parse(sol, extraction_mode="first_match", extraction_config=[LatexExtractionConfig()])
        rewards.append(float(verify(parse(content), gold)) if gold else None)
    return rewards


def length_bonus(completions, scale=1.0, **kwargs):
    """Strings in, one float per completion; reads the prompts and completion_ids TRL also passes."""
    assert len(kwargs["prompts"]) == len(completions) == len(kwargs["completion_ids"])
    return [scale * len(ids) for ids in kwargs["completion_ids"]]
'''


def test_user_reward_functions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    specs = [RewardSpec("my_rewards:openr1_accuracy", 2.0), RewardSpec("format", 1.0)]
    rs = RewardSet(specs, completion_format="messages")
    completions = [f"a\n</think>\n{BOX}", "a\n</think>\n\\boxed{5}", "no tag"]
    out = rs(completions, prompts=["p"] * 3, columns={"solution": [SOLUTION, SOLUTION, "no math"]})
    assert out.names == ("openr1_accuracy", "format")
    torch.testing.assert_close(out.per_func, torch.tensor([[1.0, 1.0], [0.0, 1.0], [math.nan, 0.0]]), equal_nan=True)
    assert out.total.tolist() == [3.0, 1.0, 0.0]

    bonus = RewardSet([RewardSpec("my_rewards:length_bonus", 1.0, {"scale": 0.5})])
    out = bonus(["a", "b"], prompts=["p", "q"], columns={}, completion_ids=[[1, 2], [3]])
    assert out.total.tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="does not accept kwarg 'scal'"):
        validate_reward_specs([RewardSpec("my_rewards:length_bonus", 1.0, {"scal": 0.5})])


def test_grading_errors_and_timeouts_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    verdicts = [
        Verdict(True, "2", True, False, None),
        Verdict(False, "", True, False, "RuntimeError: boom"),
        Verdict(False, "", True, True, None),
    ]
    monkeypatch.setattr(correctness, "grade_batch", lambda *args, **kwargs: verdicts)
    rs = RewardSet([RewardSpec("accuracy", 2.0)])
    out = rs([BOX] * 3, prompts=["p"] * 3, columns={"solution": [SOLUTION] * 3})
    assert out.per_func[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert out.stats["rewards/accuracy/errors"] == 1.0
    assert out.stats["rewards/accuracy/timeouts"] == 1.0
    assert out.stats["rewards/accuracy/gold_unparsed"] == 0.0


def test_overlong_punishment_by_hand() -> None:
    """DAPO eq. 13 with L_max = 20, L_cache = 8: free up to 12 tokens, linear to -1 at 20, -1 beyond."""
    lengths = [0, 12, 13, 16, 20, 21]
    # 12 -> 0; 13 -> (12 - 13)/8 = -0.125; 16 -> -4/8 = -0.5; 20 -> -8/8 = -1; 21 -> -1 (over the limit).
    expected = [0.0, 0.0, -0.125, -0.5, -1.0, -1.0]
    ids = [[7] * n for n in lengths]
    assert overlong_reward([""] * 6, ids, max_completion_length=20, overlong_buffer=8) == expected
    with pytest.raises(ValueError, match="overlong_buffer must be in"):
        overlong_reward([""], [[1]], max_completion_length=20, overlong_buffer=0)
    # Through a RewardSet, with the token ids the rollout passes and the buffer bound in the spec.
    rs = RewardSet([RewardSpec("overlong", 1.0, {"max_completion_length": 20, "overlong_buffer": 8})])
    out = rs(["a", "b"], prompts=["p", "p"], columns={}, completion_ids=[[1] * 16, [1] * 3])
    assert out.total.tolist() == [-0.5, 0.0]
