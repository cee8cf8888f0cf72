"""The ids in tests/conftest.py's ``SLOW_VARIANTS`` (the parametrized variants of 1.5 s or more that the
default run leaves out) each name a collected test: a renamed test or variant would otherwise go back to the
default run, and its time with it, unseen."""

from __future__ import annotations

import pytest

import conftest
from conftest import COLLECTED, SLOW_VARIANTS, unmatched_slow_variants


def test_every_slow_variant_names_a_collected_test(pytestconfig):
    ids, named_by_id = pytestconfig.stash.get(COLLECTED, ([], set()))
    files = {v.split("::")[0] for v in SLOW_VARIANTS}
    missing = sorted(files - {i.split("::")[0] for i in ids} | (files & set(named_by_id)))
    if missing:
        pytest.skip(f"the files of SLOW_VARIANTS were not all collected in full ({', '.join(missing)}): "
                    f"run this with the whole suite, python -m pytest")
    unmatched = unmatched_slow_variants(ids, named_by_id)
    assert not unmatched, (
        f"tests/conftest.py: SLOW_VARIANTS names test ids that no collected test has (renamed?): "
        f"{', '.join(unmatched)}; give each the id `python -m pytest --collect-only -q -m ''` prints, or "
        f"take it out")


def test_a_renamed_variant_is_found_and_a_file_named_by_id_is_not_judged(monkeypatch):
    have = sorted(SLOW_VARIANTS)
    gone = have[0]
    ids = [v for v in have if v != gone] + [gone.replace("[", "[renamed-", 1), "tests/test_other.py::test_x"]
    assert unmatched_slow_variants(have) == []
    assert unmatched_slow_variants(ids) == [gone]
    assert unmatched_slow_variants(ids, {gone.split("::")[0]}) == []  # (collected in part)
    assert unmatched_slow_variants([i for i in ids if i.split("::")[0] != gone.split("::")[0]]) == []
    monkeypatch.setattr(conftest, "SLOW_VARIANTS", frozenset({"tests/test_other.py::test_y"}))
    assert unmatched_slow_variants(ids) == ["tests/test_other.py::test_y"]
