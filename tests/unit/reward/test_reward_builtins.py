"""Built-in rewards on right and wrong answers."""

import pytest

from rlvr.reward.builtins import exact_match, final_number, format_match, gsm8k_number, last_boxed, math_equal


@pytest.mark.parametrize(("completion", "gold", "expected"), [
    (r"so the answer is \boxed{1/2}", "0.5", 1.0),
    (r"\frac{1}{2}", "0.5", 1.0),
    (r"\boxed{12}", r"12\pi", 0.0),  # a bare gold read as plain text would accept this
    (r"\boxed{12\pi}", r"12\pi", 1.0),
    (r"\boxed{\frac{3}{4}}", "0.75", 1.0),
    (r"\boxed{\frac{3}{5}}", "0.75", 0.0),
    (r"first \boxed{3}, no wait: \boxed{4}", "4", 1.0),  # the last box counts
    (r"first \boxed{3}, no wait: \boxed{4}", "3", 0.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}", 1.0),
    (r"\boxed{0.0000001}", 1e-7, 1.0),  # a float gold is written out, not as 1e-07
    (r"\boxed{7}", 7, 1.0),
    (r"\boxed{7}", r"$\boxed{7}$", 1.0),  # gold already in LaTeX delimiters is used as is
    ("I do not know", "7", 0.0),
])
def test_math(completion, gold, expected):
    assert math_equal("", completion, {"answer": gold}) == expected


def test_math_without_gold_raises():
    with pytest.raises(ValueError, match="no 'answer'"):
        math_equal("", r"\boxed{1}", {"answer": None})


def test_last_boxed_handles_nesting_and_unclosed_boxes():
    assert last_boxed(r"\boxed{\frac{1}{2}} and \boxed{x^{2}}") == "x^{2}"
    assert last_boxed(r"\boxed{5} then \boxed{6") == "5"  # cut off by max_new_tokens
    assert last_boxed("no box") is None


@pytest.mark.parametrize(("completion", "gold", "expected"), [
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "#### 72", 1.0),
    ("The total is 1234.", "#### 1,234", 1.0),
    ("#### 1,234", "1234", 1.0),
    ("#### $1,234.00", 1234, 1.0),
    ("5 apples, then 3 more: 8 in all", "8", 1.0),  # last-number fallback
    ("5 apples, then 3 more: 8 in all", "5", 0.0),
    ("The temperature fell to -7 degrees.", "-7", 1.0),
    ("The temperature fell to 7 degrees.", "-7", 0.0),
    ("It costs 2.5 dollars.", "2.50", 1.0),
    ("It costs 2.51 dollars.", "2.5", 0.0),
    (r"so \boxed{42} and then 7 words", "42", 1.0),  # a box beats the last number
    ("#### 40\nthough 41 may also be", "40", 1.0),  # `####` beats both
    ("no digits here", "3", 0.0),
])
def test_gsm8k(completion, gold, expected):
    assert gsm8k_number("", completion, {"answer": gold}) == expected


def test_gsm8k_gold_without_a_number_raises():
    with pytest.raises(ValueError, match="holds no number"):
        gsm8k_number("", "4", {"answer": "four"})


def test_final_number():
    assert final_number("#### 1,234") == 1234.0
    assert final_number("$-3.5.") == -3.5
    assert final_number("1,2,3") == 3.0  # not a thousands group: the last number


def test_exact():
    assert exact_match("", "  Paris\n", {"answer": "Paris"}) == 1.0
    assert exact_match("", "paris", {"answer": "Paris"}) == 0.0
    assert exact_match("", "paris", {"answer": "Paris"}, ignore_case=True) == 1.0
    assert exact_match("", " Paris", {"answer": "Paris"}, strip=False) == 0.0
    assert exact_match("", "42", {"answer": 42}) == 1.0


def test_format():
    pattern = r"<think>.*</think>\s*<answer>.*</answer>"
    good = "<think>line 1\nline 2</think>\n<answer>4</answer>"
    assert format_match("", good, {}, pattern=pattern) == 1.0  # DOTALL: `.` spans lines
    assert format_match("", good + " trailing", {}, pattern=pattern) == 0.0
    assert format_match("", good + " trailing", {}, pattern=pattern, mode="search") == 1.0
    with pytest.raises(ValueError, match="mode"):
        format_match("", good, {}, pattern=pattern, mode="match")
