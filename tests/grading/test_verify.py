"""Verification: an equivalence table of answers math-verify (plus our fixes) must accept or reject."""

from __future__ import annotations

import math_verify
import pytest
from math_verify import parse

from openrs_pl.grading import Verdict, grade, grade_batch, verify
from openrs_pl.grading.verify import answer_tail, wrap_gold


def boxed(answer: str) -> str:
    return f"The final answer is $\\boxed{{{answer}}}$."


# (completion, gold, verdict under pred_mode="openrs", verdict under pred_mode="lighteval"); gold_mode="latex".
EQUIVALENCES = [
    # fractions, decimals, \dfrac
    (boxed(r"\frac{1}{2}"), "0.5", True, True),
    (boxed("0.5"), r"\frac{1}{2}", True, True),
    (boxed(r"\dfrac{3}{4}"), r"\frac34", True, True),
    (boxed(r"\tfrac{3}{4}"), "0.75", True, True),
    (boxed("0.33"), r"\frac{1}{3}", False, False),
    (boxed("0.333333"), r"\frac{1}{3}", True, True),  # equal after rounding to 6 decimals
    (boxed(r"-\frac{1}{2}"), "-0.5", True, True),
    (boxed(r"\frac{-1}{2}"), r"-\frac12", True, True),
    (boxed(r"4\frac{2}{3}"), r"\frac{14}{3}", True, True),  # mixed number
    (boxed(r"\frac{1}{2}"), "1/2", True, True),
    # the recipe turns malformed-operator repair off for predictions; lighteval's default repairs them
    (boxed(r"\frac43"), r"\frac{4}{3}", False, True),
    (boxed(r"\sqrt2/2"), r"\frac{\sqrt{2}}{2}", False, True),
    # degrees
    (boxed(r"90^\circ"), "90", True, True),
    (boxed("90"), r"90^\circ", True, True),
    (boxed(r"\frac{\pi}{2}"), r"90^\circ", False, False),  # no degree-to-radian conversion
    # intervals, tuples, sets
    (boxed("(1,2)"), "(1,2)", True, True),
    (boxed("[1, 2)"), "[1,2)", True, True),
    (boxed("(1, 2]"), "[1,2)", False, False),
    (boxed(r"(-\infty, 3)"), r"(-\infty,3)", True, True),
    (boxed(r"(-\infty, 3]"), r"(-\infty,3)", False, False),
    (boxed(r"\{1,2,3\}"), r"\{3,2,1\}", True, True),
    (boxed(r"\{1,2\}"), r"\{1,2,3\}", False, False),
    (boxed("3, 5"), "5, 3", True, True),
    (boxed(r"x \in [2, 5]"), "[2,5]", True, True),
    # verify is asymmetric; the recipe passes the answer first (openrs), lighteval the gold first
    (boxed("x>3"), r"(3,\infty)", True, False),
    (boxed(r"(3,\infty)"), "x>3", False, True),
    # equations vs values
    (boxed("x=3"), "3", True, True),
    (boxed("3"), "x=3", True, True),
    (boxed("y=3"), "x=3", False, False),
    # percentages
    (boxed(r"50\%"), "50", True, True),
    (boxed("50"), r"50\%", True, True),
    (boxed("0.5"), r"50\%", True, True),
    # matrices
    (boxed(r"\begin{pmatrix}1&2\\3&4\end{pmatrix}"), r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", True, True),
    (boxed(r"\begin{pmatrix}1&3\\2&4\end{pmatrix}"), r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", False, False),
    # text answers
    (boxed(r"\text{Evelyn}"), r"\text{Evelyn}", True, True),
    (boxed("Evelyn"), r"\text{Evelyn}", True, True),
    (boxed(r"\text{(C)}"), r"\text{(C)}", True, True),
    (boxed(r"\text{Bob}"), r"\text{Evelyn}", False, False),
    # wrong answers that look similar
    (boxed("12"), "21", False, False),
    (boxed("-3"), "3", False, False),
    (boxed(r"\frac{2}{3}"), r"\frac{3}{2}", False, False),
    (boxed(r"3\sqrt{2}"), r"2\sqrt{3}", False, False),
    (boxed("0.5"), "5", False, False),
    (boxed("1000"), "100", False, False),
    (boxed("7.49"), "7.5", False, False),
    (boxed("3.14"), r"\pi", False, False),
    (boxed("x^2+1"), "x^2-1", False, False),
    # the same value written differently
    (boxed(r"\sqrt{8}"), r"2\sqrt{2}", True, True),
    (boxed("2^{10}"), "1024", True, True),
    (boxed("1,024"), "1024", True, True),
    (boxed(r"1.5\times10^{3}"), "1500", True, True),
    (boxed("x^2+2x+1"), "(x+1)^2", True, True),
    (boxed("2n-2"), "2(n-1)", True, True),
    (boxed(r"\pi"), r"\pi", True, True),
    (boxed("1+i"), "1+i", True, True),
    (boxed("6"), r"2\cdot 3", True, True),
    (boxed("7.5"), "7.50", True, True),
    # units and currency are stripped
    (boxed(r"5 \text{ cm}"), "5", True, True),
    (boxed(r"\$18.90"), "18.90", True, True),
    # which answer is extracted
    ("First \\boxed{5}. " + "Then we check the other case carefully. " * 3 + "So \\boxed{7}.", "7", True, True),
    ("First \\boxed{5}. " + "Then we check the other case carefully. " * 3 + "So \\boxed{7}.", "5", False, False),
    (r"First \boxed{5}, finally \boxed{7}", "7", False, False),  # boxes this close read as the list {5, 7}
    ("The answer is 7", "7", False, True),  # the recipe needs LaTeX or a box; lighteval also reads plain numbers
    ("The answer is $7$", "7", True, True),
    (boxed(""), "0", False, False),
    # e-notation golds (lm-eval style, Minerva): "e" is not Euler's number; numbers must agree to ~5 digits
    (boxed("0.001"), "1e-3", True, True),
    (boxed("0.01"), "1e-3", False, False),
    (boxed("10^{-3}"), "1e-3", True, True),
    (boxed(r"8.7 \times 10^{8}"), "8.7e8", True, True),
    (boxed("870000000"), "8.7e8", True, True),
    (boxed(r"8.6 \times 10^{8}"), "8.7e8", False, False),
    (boxed("8.7e8"), "8.7e8", True, True),
    (boxed("8.7e7"), "8.7e8", False, False),
    (boxed(r"x = 1.24 \times 10^{-8}\text{ m}"), "$1.24e-8$", True, True),
    (boxed(r"2.0 \times 10^{-8}"), "1.24e-8", False, False),
    (boxed("0.00000002"), "1.24e-8", False, False),  # math-verify's 5-decimal rounding alone would accept this
    (boxed("1.2400001e-8"), "1.24e-8", True, True),
    (boxed("-2.5e3"), "-2500", True, True),
    (boxed("e^{-3}"), "1e-3", False, False),
    # the remaining fixes are evaluation-only; the training reward keeps the recipe's parse
    # ordinal superscripts
    (boxed(r"12^{\mathrm{th}} \text{ grade}"), "12", False, True),
    (boxed(r"11^{\mathrm{th}} \text{ grade}"), "12", False, False),
    (boxed("3^{rd}"), "3", False, True),
    (boxed(r"21^\text{st}"), "21", False, True),
    (boxed("2^{2}"), "4", True, True),
    # X% equals X (math-verify has it for integers only) and X/100, and nothing else
    (boxed(r"17.5\%"), "17.5", False, True),
    (boxed("17.5"), r"17.5\%", False, True),
    (boxed("0.175"), r"17.5\%", True, True),
    (boxed(r"1.75\%"), "17.5", False, False),
    (boxed("1.75"), r"17.5\%", False, False),
    (boxed(r"17\%"), "17.5", False, False),
    # a bare multiple-choice gold matches the choice's letter followed by its text
    (boxed(r"\text{(C) Plane}"), "(C)", False, True),
    (boxed(r"\text{(D) Plane}"), "(C)", False, False),
    (boxed(r"\text{Plane (C)}"), "(C)", False, False),
    (boxed(r"\textbf{(B)}"), "B", True, True),
    # string fallbacks ignore whitespace
    (boxed("E_{1}, E_{2}"), "E_{1},E_{2}", False, True),
    (boxed("E_{1}, E_{3}"), "E_{1},E_{2}", False, False),
    (boxed(r"E_1,\, E_2"), "E_{1},E_{2}", False, True),
    (boxed("E_{12}, E_{2}"), "E_{1},E_{2}", False, False),
    # hyperbolic functions equal their exponential form (Minerva's differential equations)
    (boxed(r"\frac{\sinh(at)}{a}"), r"\frac{1}{2a}(e^{at}-e^{-at})", False, True),
    (boxed(r"x(t) = \frac{\sinh(at)}{a}"), r"\frac{1}{2a}(e^{at}-e^{-at})", False, True),
    (boxed(r"\frac{1}{2a}(e^{at}-e^{-at})"), r"\sinh(at)/a", False, True),
    (boxed(r"\frac{\cosh(at)}{a}"), r"\frac{1}{2a}(e^{at}-e^{-at})", False, False),
    (boxed(r"\sinh(at)"), r"\frac{1}{2a}(e^{at}-e^{-at})", False, False),
    # a one-letter variable is not a unit: 6m (m the grid width), t/m (t the time), 37m/4 (m the mass)
    (boxed("6m"), "$6m$", True, True),
    (boxed("6"), "$6m$", True, False),
    (boxed(r"\frac{37m}{4}"), r"\frac{37}{4} m", False, True),
    (boxed(r"\frac{37}{4}"), r"\frac{37}{4} m", True, False),
    (boxed(r"\frac{t}{m}"), r"\frac{1}{m} t", False, True),
    (boxed(r"\frac{1}{m}"), r"\frac{1}{m} t", True, False),
    (boxed("5.4"), r"5.4 \text{ cents}", True, True),  # a unit spelled as a word is still dropped
    (boxed("15"), r"15\mbox{ cm}^2", True, True),
    # unboxed prose: a label's number ("Subproblem 1") is not the answer
    ("So the quantity is 3 bushels.\n\n**Final answer for Subproblem 1:** 3 bushels", "3", False, True),
    ("So the quantity is 3 bushels.\n\n**Final answer for Subproblem 1:** 3 bushels", "1", False, False),
    ("Final answer to part (b): 7", "7", False, True),
]


@pytest.mark.parametrize(("completion", "gold", "openrs", "lighteval"), EQUIVALENCES)
def test_equivalence_table(completion: str, gold: str, openrs: bool, lighteval: bool) -> None:
    assert grade(completion, gold, "latex", "openrs").correct is openrs
    assert grade(completion, gold, "latex", "lighteval").correct is lighteval


def test_gold_modes() -> None:
    solution = r"We find $x = 2$ first. Then the total is $\boxed{\frac{3}{4}}$."
    assert grade(boxed("0.75"), solution, "solution").correct
    assert not grade(boxed("2"), solution, "solution").correct
    lighteval_style = "Therefore, the final answer is: $\\boxed{204}$. I hope it is correct"
    assert grade(lighteval_style, "204", "expr", "lighteval").correct
    assert grade(boxed("2n-2"), "$2n-2$", "latex").correct  # OlympiadBench wraps answers in $..$
    assert grade(boxed("69, 84"), "$69$,$84$", "latex").correct


def test_unparsable_gold_is_reported() -> None:
    verdict = grade(boxed("3"), "no math here at all", "solution")
    assert verdict == Verdict(correct=False, pred="", gold_ok=False, timed_out=False, error=None)
    # lighteval compares against the raw gold string instead
    assert grade(boxed("3"), "", "latex", "lighteval").correct is False


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        grade_batch(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unknown gold_mode 'boxed'"):
        grade("a", "a", "boxed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown pred_mode"):
        grade("a", "a", "latex", "trl")  # type: ignore[arg-type]


def test_wrap_gold_keeps_escaped_dollars() -> None:
    assert wrap_gold(r"\$5") == r"\boxed{\$5}"
    assert wrap_gold("  $x$ ") == r"\boxed{x}"


def test_answer_tail_matches_full_parse_when_boxed() -> None:
    """Cutting the text before the last box changes nothing for completions that end in a box."""
    filler = "We compute $a_k = k^2$ for $k = 1, \\dots, 10$ and check $\\frac{a}{b} < 1$. " * 1500  # ~110 kB
    for tail in [boxed("42"), "so \\[ x = \\boxed{42} \\]", "$$\\boxed{6}\\cdot 7 = \\boxed{42}$$"]:
        text = filler + tail
        assert len(answer_tail(text)) < 5000
        untrimmed = parse(text, verify._configs()["openrs"], extraction_mode="first_match", parsing_timeout=None)
        assert [str(x) for x in verify.parse_pred(text, "openrs")] == [str(x) for x in untrimmed]


def test_verify_exception_scores_zero_and_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real_verify = math_verify.verify

    def flaky_verify(gold: object, target: object, **kwargs: object) -> bool:
        if isinstance(gold, str) or isinstance(target, str):
            raise RuntimeError("boom")
        return real_verify(gold, target, **kwargs)

    monkeypatch.setattr(math_verify, "verify", flaky_verify)
    # the sympy pair still matches: an exception in another pair does not hide it
    assert verify.grade_local(boxed("2"), "2") == Verdict(True, "2", True, False, None)
    # no pair matches and one raised: wrong, with the exception reported
    assert verify.grade_local(boxed("3"), "2") == Verdict(False, "3", True, False, "RuntimeError: boom")
