"""``zoracle demo --ray ADDRESS`` when the Ray cluster refuses the driver's authentication."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("torch")
pytest.importorskip("sklearn")  # the demo is in the apps extra

from zoracle.cli import main  # noqa: E402


def test_a_cluster_that_refuses_the_token_is_one_line_naming_the_flag(monkeypatch, capsys):
    """A token-auth cluster reached without its token ended in Ray's AuthenticationError
    traceback (not one of the connection errors the demo turned into its one-line error)."""
    calls = []

    def init(*args, **kwargs):  # what ray.init raises when the cluster wants a token this driver lacks
        calls.append(kwargs.get("address"))
        raise ray.exceptions.AuthenticationError("Token authentication is enabled but no authentication token "
                                                 "was found")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert main(["demo", "--quick", "--methods", "deepzero", "--ray", "auto"]) == 1
    assert calls == ["auto"]
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("zoracle demo: error: --ray auto: the Ray cluster refused this driver's authentication "
                          "(Token authentication is enabled but no authentication token was found); check that "
                          "the cluster's auth token is on this machine (~/.ray/auth_token"), err
    assert "RAY_AUTH_TOKEN_PATH" in err and "RAY_AUTH_MODE=token" in err


def test_other_failures_of_ray_init_are_left_as_they_were(monkeypatch):
    """Only the authentication failure is rewritten: an unexpected error keeps its traceback."""

    def init(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RuntimeError, match="something else"):
        main(["demo", "--quick", "--methods", "deepzero", "--ray", "auto"])
