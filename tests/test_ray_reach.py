"""RayExecutor with a cluster address nothing answers at: Ray 2.60 tried a refused address 20
times, about 41 s each, for more than 10 minutes (its log warning every few seconds), before its
ConnectionError. The executor now tries a TCP connection first and names the address at once.
ray.init is replaced in each test by one that notes its calls: no Ray session is started."""

from __future__ import annotations

import socket
import threading

import pytest

ray = pytest.importorskip("ray")

import zoracle._executors_ray as ray_executor  # noqa: E402
from zoracle.executors import RayExecutor  # noqa: E402
from zoracle._executors_ray import ClusterUnreachable, _host_port  # noqa: E402
from zoracle import ZoracleError  # noqa: E402


class Reached(Exception):
    """What the stand-in ray.init raises: the executor got as far as Ray's connect."""


@pytest.fixture
def inits(monkeypatch):
    monkeypatch.setattr(ray_executor, "_REACH_S", 1.0)  # (30 s: a refused address is tried that long)
    calls = []

    def init(*args, **kwargs):
        calls.append(kwargs.get("address"))
        raise Reached(kwargs.get("address"))

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return calls


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("address, want", [
    ("auto", None),
    ("127.0.0.1:6379", ("127.0.0.1", 6379)),
    ("ray://head.example:10001", ("head.example", 10001)),
    ("ray://user:secret@head:10001/path", ("head", 10001)),
    ("[::1]:6379", ("::1", 6379)),
    ("http://head:8265", None),  # another scheme (a dashboard's): Ray's own parse decides
    ("ray://head", None),
    ("head:0", None),
    ("head:70000", None),
    ("head:port", None),
])
def test_the_host_and_port_a_ray_address_names(address, want):
    assert _host_port(address) == want


def test_a_refused_address_is_named_before_ray_is_called(inits):
    port = closed_port()
    ex = RayExecutor(f"ray://user:secret@127.0.0.1:{port}")
    with pytest.raises(ClusterUnreachable) as info:
        ex.start()
    assert inits == []  # Ray's own ten-minute wait never began
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, ZoracleError)
    msg = str(info.value)
    assert f"`address` 'ray://***@127.0.0.1:{port}'" in msg and "secret" not in msg
    assert "within 1 s" in msg and "refused" in msg.lower() and "ray start --head" in msg


def test_a_cluster_still_starting_is_waited_for(inits, monkeypatch):
    # a driver started beside its cluster (`dask scheduler &`'s way): the address refuses at first,
    # as Ray's and Dask's own connects wait for it, so must this check
    monkeypatch.setattr(ray_executor, "_REACH_S", 60.0)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    listen = threading.Timer(1.0, s.listen, args=(8,))
    listen.start()
    try:
        with pytest.raises(Reached):
            RayExecutor(f"127.0.0.1:{port}").start()
    finally:
        listen.cancel()
        s.close()
    assert inits == [f"127.0.0.1:{port}"]


def test_a_host_that_does_not_resolve_is_named_without_the_wait(inits, monkeypatch):
    # a typo in the host name is no cluster still starting: no 30 s of tries
    monkeypatch.setattr(ray_executor, "_REACH_S", 600.0)
    with pytest.raises(ClusterUnreachable) as info:
        RayExecutor("no-such-host.invalid:6379").start()
    msg = str(info.value)
    assert "`address` 'no-such-host.invalid:6379' (" in msg and "within" not in msg, msg
    assert inits == []


def test_an_address_that_accepts_goes_on_to_ray(inits, listening):
    with pytest.raises(Reached):
        RayExecutor(f"127.0.0.1:{listening}").start()
    assert inits == [f"127.0.0.1:{listening}"]


def test_auto_is_left_to_ray(inits):
    with pytest.raises(Reached):
        RayExecutor("auto").start()
    assert inits == ["auto"]


def test_a_loopback_address_is_tried_at_the_node_address_too(inits, listening, monkeypatch):
    # Ray connects to a loopback address at the node's own IP: a cluster listening there and not
    # on the loopback address given is reached by Ray, so it must not be refused here. 127.0.0.2
    # is refused (the server listens on 127.0.0.1 alone); the node address stands in as 127.0.0.1.
    import ray.util

    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    with pytest.raises(Reached):
        RayExecutor(f"127.0.0.2:{listening}").start()
    assert inits == [f"127.0.0.2:{listening}"]
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.3")
    with pytest.raises(ClusterUnreachable):
        RayExecutor(f"127.0.0.2:{listening}").start()
    assert len(inits) == 1


def test_zoracle_demo_names_the_flag_in_one_line(inits, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from zoracle.cli import main

    port = closed_port()
    assert main(["demo", "--quick", "--methods", "deepzero", "--ray", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"zoracle demo: error: --ray 127.0.0.1:{port}: could not start or reach the cluster "
                          f"(ClusterUnreachable: RayExecutor: nothing accepted a connection at `address`"), err
    assert inits == []
