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


# (the rewording leaves no oracle's code or word behind: a told coroutine's hint read
# "`def loss(x): tell asyncio.run(aloss(x))`"; a boolean among told numbers was read as 0 or 1)

async def _aloss():
    return 1.0


@pytest.mark.parametrize("whole", [False, True])
def test_a_told_coroutine_is_answered_in_the_callers_terms(asked, whole):
    told = [_aloss() for _ in range(4)]
    try:
        with pytest.raises(zo.OracleError) as info:
            asked.tell(told[0] if whole else told)
    finally:
        for c in told:
            c.close()
    msg = str(info.value)
    assert msg.startswith("tell() got <coroutine") and "await it" in msg and "tell the number it gives" in msg
    assert "oracle" not in msg and "def loss" not in msg and "tell asyncio" not in msg


@pytest.mark.parametrize("told, says", [
    ([(1.0, 0.9)] * 4, "tell the 4 losses alone, a list or a (4,) array, one number per point, in its rows' order"),
    (np.ones((1, 4)), "tell them as a (4,) array, one loss per point, in its rows' order"),
])
def test_a_shape_fix_speaks_of_points(asked, told, says):
    with pytest.raises(zo.OracleError) as info:
        asked.tell(told)
    assert says in str(info.value) and "query in their order" not in str(info.value)


def test_a_boolean_among_told_numbers_is_refused(asked):
    with pytest.raises(zo.OracleError, match=r"^tell\(\) got True at query 1 of the last ask\(\) .*a boolean"):
        asked.tell([1.0, True, 2.0, 3.0])
    asked.tell([1.0, 1.0, 2.0, 3.0])  # the points stay asked


def test_a_boolean_among_a_batchs_numbers_is_refused():
    class Flagged:
        def __call__(self, x):
            return float(x.sum())

        def batch(self, xs):
            return [float(x.sum()) for x in xs[:-1]] + [True]

    with pytest.raises(zo.OracleError, match=r"`batch` returned True at .*a boolean .* is no loss"):
        zo.train(Flagged(), np.zeros(3), epochs=1, progress=False)
