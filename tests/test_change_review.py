"""Review of the session's changes (h291): the advice of the new refusals works when followed,
and a fix made in one copy of a check reaches the other."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo
from zoracle import cli


@pytest.mark.parametrize("argv, name, example", [(["plot", "None", "out.png"], "CHECKPOINT", "run.npz"),
                                                  (["plot", "run.npz", "true"], "FIGURE", "run.png"),
                                                  (["plot", "run.npz", "null"], "FIGURE", "run.png")])
def test_zoracle_plot_given_a_config_word_says_a_fix_that_works(tmp_path, monkeypatch, capsys, argv, name, example):
    """A positional path of `zoracle plot` cannot be left out: the refusal of 'None' told the user to
    "leave `CHECKPOINT` out (None)", and FIGURE's example was a checkpoint's name ('run.npz')."""
    pytest.importorskip("matplotlib")  # (`zoracle plot` is refused first without it)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:  # a usage error: argparse's exit 2, one line
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"`{name}` is the text" in err
    assert "leave `" not in err and f"pass a file path such as {example!r}" in err
    assert not (tmp_path / "out.png").exists()


def test_train_keyword_paths_still_say_leave_it_out():
    with pytest.raises(zo.ArgumentError, match=r"`checkpoint` is the text 'None'.*leave `checkpoint` out \(None\)"):
        zo.train(lambda p: float(np.sum(p ** 2)), np.ones(2), checkpoint="None", progress=False)


@pytest.mark.parametrize("digits, shown", [(400, r"1000+\.\.\."), (5000, r"<int of about 5001 digits>")])
def test_a_schedule_value_too_large_for_a_float_is_named(digits, shown):
    """eval_fn's 10**400 was named (h280); the same check of a schedule's value, a copy of it,
    let OverflowError through bare ("int too large to convert to float"), naming no argument."""
    value = 10**digits
    with pytest.raises(zo.ArgumentError, match=rf"`lr`.* is {shown}; it must be a finite number"):
        zo.train(lambda p: float(np.sum(p ** 2)), np.ones(2), optimizer=zo.sgd(lambda t: value),
                 epochs=1, steps_per_epoch=1, progress=False)


@pytest.mark.parametrize("make, name, number", [
    (lambda: zo.sgd("-1e-3"), "lr", "-0.001"),
    (lambda: zo.CGE(mu="0"), "mu", "0.0"),
    (lambda: zo.adam(1e-3, b1="1.5"), "b1", "1.5"),
    (lambda: zo.train(lambda p: float(np.sum(p ** 2)), np.ones(2), steps_per_epoch="0", progress=False),
     "steps_per_epoch", "0"),
    (lambda: zo.Minibatches((np.ones((4, 2)),), batch_size="0"), "batch_size", "0"),
])
def test_a_config_text_hint_does_not_advise_a_value_refused_too(make, name, number):
    """The hint for text said "pass lr=-0.001": followed, that was refused in turn (lr >= 0)."""
    with pytest.raises(zo.ArgumentError) as info:
        make()
    msg = str(info.value)
    assert f"pass {name}=" not in msg and f"as a number, {number}, it would be refused too" in msg


def test_a_whole_float_out_of_range_is_not_advised_as_a_count():
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(lambda p: float(np.sum(p ** 2)), np.ones(2), steps_per_epoch=0.0, progress=False)
    assert "pass steps_per_epoch=0" not in str(info.value)


@pytest.mark.parametrize("make, fix", [(lambda: zo.sgd("1e-3"), "pass lr=0.001"),
                                       (lambda: zo.adam(1e-3, b1="0.5"), "pass b1=0.5"),
                                       (lambda: zo.train(lambda p: float(np.sum(p ** 2)), np.ones(2),
                                                         steps_per_epoch=2.0, progress=False), "pass steps_per_epoch=2")])
def test_a_config_text_hint_in_range_still_says_the_value(make, fix):
    with pytest.raises(zo.ArgumentError, match=fix):
        make()
