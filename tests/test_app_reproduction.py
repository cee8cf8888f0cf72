"""The two applications as a researcher reproduces them: what ``--help`` tells before a run."""

from __future__ import annotations

import re

import pytest

from zoracle import cli


def _help(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "300")  # one line per flag
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_sol_help_names_the_default_and_quick_size_of_every_size_flag(capsys, monkeypatch):
    """``zoracle sol --help`` said which flags set the size but not the default run's values (60 ZO
    steps, unroll 4, Re 150/300/600 -> 200/450, ...) nor --quick's: only docs/sol.md told them."""
    from zoracle.apps.sol import Config

    text = _help(capsys, monkeypatch, "sol")
    full, quick = Config(), Config.quick()
    for flag, field in (("--fine-nx", "fine_nx"), ("--warmup", "warmup"), ("--steps", "steps"),
                        ("--unroll", "unroll"), ("--zo-steps", "zo_steps"), ("--fo-steps", "fo_steps")):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(flag + " "))
        assert re.search(rf"default {getattr(full, field)}, quick {getattr(quick, field)}\)", line), line
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("--train-re "))
    assert "default 150,300,600, quick 150,600" in line
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("--test-re "))
    assert "default 200,450, quick 300" in line
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("--factor "))
    assert "(default 4)" in line  # --quick keeps it: said once


def test_a_test_reynolds_number_seen_in_training_is_said_in_the_log():
    """docs/sol.md calls the test Reynolds numbers unseen; `--test-re` repeating a `--train-re` value
    trained and tested on the same flow without a word."""
    sol = pytest.importorskip("zoracle.apps.sol")
    import dataclasses

    cfg = sol.Config()
    assert sol.seen_test_note(cfg) is None  # the defaults: 200 and 450 are unseen
    note = sol.seen_test_note(dataclasses.replace(cfg, test_re=(300.0, 450.0)))
    assert note is not None and "test Re 300 also in --train-re" in note and "450" not in note
