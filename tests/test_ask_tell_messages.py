"""AskTell's refusals of told losses read as values the caller told, not as a function zoracle called:
they said "oracle returned None ...; does every path of it end in `return loss`?" and "return 4
losses" to a caller who has no oracle and returns nothing."""

import numpy as np
import pytest

import zoracle as zo


@pytest.fixture
def asked():
    opt = zo.AskTell(np.zeros(3), epochs=2, progress=False)
    opt.ask()  # 4 points: forward CGE at d = 3
    yield opt
    opt.close()


@pytest.mark.parametrize("told, says", [
    ([1.0, 1.0, 1.0], "tell 4 losses, one per point of the last ask()"),
    ([1.0, None, 2.0, 3.0], "no loss was told for it"),
    (["a"] * 4, "parse it before telling it"),
    (5.0, "tell one loss per point"),
])
def test_a_refused_tell_speaks_of_what_was_told(asked, told, says):
    with pytest.raises(zo.OracleError) as info:
        asked.tell(told)
    msg = str(info.value)
    assert msg.startswith("tell() got ") and says in msg
    assert "oracle returned" not in msg and "return loss" not in msg and ": return " not in msg
    asked.tell([1.0, 2.0, 3.0, 4.0])  # the points stay asked: telling again works
    assert not np.array_equal(asked.params, np.zeros(3))


def test_an_oracle_is_still_spoken_of_as_an_oracle():
    """The rewording is AskTell's alone: train's own refusal of a function's None is unchanged."""
    with pytest.raises(zo.OracleError, match=r"^oracle returned None .*`return loss`"):
        zo.train(lambda x: None, np.zeros(3), epochs=1, progress=False)
