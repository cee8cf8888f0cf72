"""What an OracleError shows of the value an oracle returned: one line, at most 200 characters."""

from __future__ import annotations

import math

import numpy as np
import pytest

import zoracle as zo


@pytest.mark.parametrize("value", [np.arange(1000.0).tolist(), "x" * 5000, np.full((40, 40), np.nan), 10**400,
                                   10**5000], ids=["1000-list", "long str", "2-D NaN array", "10**400", "10**5000"])
def test_an_oracle_errors_message_shows_the_value_on_one_bounded_line(value):
    # a 1000-entry list (OnnxClassifier.predict's scores row) made a 19,000-character message, a 2-D
    # array one of many lines, and an int of 5000 digits a ValueError in place of the OracleError
    err = zo.OracleError("coordinate 3 (step +0.005)", value, detail="expected a finite loss")
    msg = str(err)
    assert "\n" not in msg and len(msg) < 300
    assert msg.startswith("oracle returned ") and msg.endswith(" at coordinate 3 (step +0.005): expected a finite loss")
    assert err.value is value  # the field keeps what was passed


def test_an_oracle_errors_message_still_shows_short_values_whole():
    # (a NumPy scalar as its repr shows it: np.float32(nan) from NumPy 2, nan before)
    for value, shown in ((float("nan"), "nan"), (np.float32("nan"), repr(np.float32("nan"))), ("abc", "'abc'"),
                         (None, "None"), (np.full((2, 2), np.inf), "array([[inf, inf], [inf, inf]])")):
        assert str(zo.OracleError("q", value)) == f"oracle returned {shown} at q"
    assert math.isnan(zo.OracleError("q", float("nan")).value)


def test_a_long_string_loss_is_reported_shortened():
    with pytest.raises(zo.OracleError, match=r"oracle returned 'xxx+\.\.\. at ") as info:
        zo.estimate_gradient(lambda p: "x" * 10_000, np.ones(2))
    assert len(str(info.value)) < 400
