"""Every classification rule learns the digits well above chance (10%) in a short run."""

import pytest

from helpers import classification_rules, train_digits


@pytest.mark.parametrize("name", classification_rules())
def test_rule_learns_digits(name):
    _, error = train_digits(name, epochs=8)
    assert error < 0.25, f"{name} reached {error:.1%} test error on digits"
