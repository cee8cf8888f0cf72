"""The suite's own set-up under pytest-xdist (pyproject's ``addopts`` runs one test process a
CPU): each worker's temporary directory lies beside the controller's, never inside it, so the
Unix socket paths Ray makes under it stay within the kernel's 107 bytes."""

from __future__ import annotations

import os

import conftest


def test_the_session_directory_is_not_inside_another_session_directory():
    parent = os.environ["ZORACLE_TEST_TMP_PARENT"]
    assert os.path.dirname(conftest._SESSION_TMP) == parent
    assert not os.path.basename(parent).startswith("zt-"), parent  # a worker's inside the controller's
    assert os.environ["TMPDIR"] == conftest._SESSION_TMP


def test_ray_socket_paths_under_the_session_directory_fit_a_unix_socket():
    # the longest path Ray made in a test (tests/test_executors_cluster.py: a cluster's own
    # temporary folder under RAY_DIR, then Ray's session folder; its pid up to 7 digits)
    path = os.path.join(conftest.RAY_DIR, "sro4p7pbe", "r",
                        "session_2026-12-07_14-33-49_727930_3022000", "sockets", "plasma_store")
    assert len(path) <= 107, (len(path), path)
