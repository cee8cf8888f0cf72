"""Checkpoints: atomic npz + JSON, resume (also after a real SIGKILL), clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple

import numpy as np
import pytest

import zoracle as zo

P = namedtuple("P", "name slice shape kind")

# one training setup shared by the in-process runs and the killed subprocess
SETUP = textwrap.dedent(
    """
    import numpy as np, zoracle as zo
    from collections import namedtuple
    P = namedtuple("P", "name slice shape kind")

    class LinReg:
        def bind(self, batch):
            X, y = batch
            return lambda w: float(np.mean((X @ w[:-1] + w[-1] - y) ** 2))

    r = np.random.default_rng(0)
    X = r.standard_normal((96, 30)); y = X @ r.standard_normal(30) + 0.3
    BLOCKS = [P("a", slice(0, 10), (10,), "linear"), P("b", slice(10, 30), (20,), "conv"),
              P("bias", slice(30, 31), (1,), "bias")]

    def run(checkpoint=None, resume=None, callbacks=(), checkpoint_every=1, epochs=6):
        return zo.train(LinReg(), np.full(31, 0.05), batches=zo.Minibatches((X, y), 16, seed=2), epochs=epochs,
                        estimator=zo.CGE(mu=1e-3), sparsity=0.6, blocks=BLOCKS, ratios="zo_grasp",
                        grasp_directions=24, mask_shuffle_interval=2,
                        optimizer=zo.sgd(zo.cosine_schedule(0.05, total_steps=36, warmup_steps=6), momentum=0.9,
                                         nesterov=True, weight_decay=5e-4),
                        eval_fn=lambda p: float(np.mean((X @ p[:-1] + p[-1] - y) ** 2)),
                        checkpoint=checkpoint, resume=resume,
                        checkpoint_every=checkpoint_every if checkpoint is not None else "epoch",
                        callbacks=callbacks, rng=11, progress=False)
    """
)


@pytest.fixture(scope="module")
def setup():
    ns = {}
    exec(SETUP, ns)
    return ns


@pytest.fixture(scope="module")
def reference(setup):
    return setup["run"]()


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, reference):
    ckpt = tmp_path / "run.npz"
    script = tmp_path / "child.py"
    script.write_text(SETUP + textwrap.dedent(
        f"""
        import os, signal, sys
        def die(event, rec, params):
            # killed for real, mid-epoch (step 15 of 36: epoch 2, batch 3 of 6), after step 14's checkpoint
            if event == "step" and rec["step"] == 15 and sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        res = run(checkpoint={str(ckpt)!r}, resume=True, callbacks=[die])
        np.save({str(tmp_path / 'final.npy')!r}, res.params)
        """
    ))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.run([sys.executable, str(script), "kill"], env=env, capture_output=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stderr.decode()
    arrays, meta = zo.load_checkpoint(ckpt)
    assert (meta["epoch"], meta["pos"], meta["step"]) == (2, 3, 15)  # mid-epoch
    assert not (tmp_path / "final.npy").exists()
    second = subprocess.run([sys.executable, str(script), "resume"], env=env, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr.decode()
    final = np.load(tmp_path / "final.npy")
    assert final.tobytes() == reference.params.tobytes()  # bit for bit
    _, meta = zo.load_checkpoint(ckpt)
    assert meta["step"] == 36 and len(meta["history"]["steps"]) == 36 and len(meta["history"]["epochs"]) == 6


def test_resume_restores_history_masks_and_counts(tmp_path, setup, reference):
    ckpt = tmp_path / "c.npz"

    class Crash(Exception):
        pass

    def crash(event, rec, params):
        if event == "step" and rec["step"] == 20:
            raise Crash

    with pytest.raises(Crash):
        setup["run"](checkpoint=ckpt, checkpoint_every=4, callbacks=[crash])
    arrays, meta = zo.load_checkpoint(ckpt)
    # the step whose callback raised is saved (21 steps run), not only the scheduled one (20)
    assert meta["step"] == 21 and set(arrays) >= {"params", "opt/momentum", "ratios", "coordinates"}
    res = setup["run"](checkpoint=ckpt, resume=ckpt)
    assert res.params.tobytes() == reference.params.tobytes()
    assert res.nfev == reference.nfev
    np.testing.assert_array_equal(res.ratios, reference.ratios)
    np.testing.assert_array_equal(res.coordinates, reference.coordinates)
    assert [e["epoch"] for e in res.history.epochs] == list(range(6))
    assert res.history.column("eval", "epoch")[-1] == reference.history.column("eval", "epoch")[-1]


@pytest.mark.parametrize("every", ["epoch", 6, 4])
def test_a_step_callback_raising_on_a_save_step_loses_no_step(tmp_path, setup, reference, every):
    """The step callbacks ran before that step's save: one raising on an epoch's last step (or on
    a checkpoint_every step) left no file at all in the first epoch (all its steps lost), or the
    step before. The step is saved first now, and the resumed run is the uninterrupted one."""
    ckpt = tmp_path / "c.npz"

    def crash(event, rec, params):
        if event == "step" and rec["step"] == 5:  # the sixth step: the first epoch's last
            raise ConnectionError("the dashboard went away")

    with pytest.raises(ConnectionError):
        setup["run"](checkpoint=ckpt, checkpoint_every=every, callbacks=[crash])
    assert zo.load_checkpoint(ckpt)[1]["step"] == 6
    res = setup["run"](checkpoint=ckpt, checkpoint_every=every, resume=ckpt)
    assert res.params.tobytes() == reference.params.tobytes()
    np.testing.assert_array_equal(res.history.column("eval", "epoch"), reference.history.column("eval", "epoch"))


def test_a_relative_checkpoint_and_plot_path_stay_where_they_were_checked(tmp_path, setup, monkeypatch):
    """An eval_fn that changes the working folder moved the relative checkpoint with it: the
    run's saves were split over two folders, and one replaced a file zoracle did not write (the
    check before the first query had looked in the first folder); the plot went there too."""
    pytest.importorskip("matplotlib")
    (tmp_path / "runs").mkdir()
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "run.npz", x=np.arange(3))  # the user's own file
    monkeypatch.chdir(tmp_path / "runs")
    X, y, LinReg = setup["X"], setup["y"], setup["LinReg"]

    def evaluate(p):
        os.chdir(tmp_path / "data")
        return float(np.mean((X @ p[:-1] + p[-1] - y) ** 2))

    zo.train(LinReg(), np.full(31, 0.05), batches=zo.Minibatches((X, y), 16, seed=2), epochs=3,
             estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.01), eval_fn=evaluate, checkpoint="run.npz",
             plot="fig.png", rng=1, progress=False)
    assert set(np.load(tmp_path / "data" / "run.npz")) == {"x"}
    assert zo.load_checkpoint(tmp_path / "runs" / "run.npz")[1]["step"] == 18
    assert (tmp_path / "runs" / "fig.png").exists() and not (tmp_path / "data" / "fig.png").exists()


def test_resume_can_extend_a_finished_run(tmp_path, setup):
    ckpt = tmp_path / "c.npz"
    setup["run"](checkpoint=ckpt, epochs=2)
    res = setup["run"](checkpoint=ckpt, resume=ckpt, epochs=3)
    assert res.epochs == 3 and res.steps == 18


def test_corrupt_truncated_and_foreign_files_raise(tmp_path, setup):
    ckpt = tmp_path / "c.npz"
    setup["run"](checkpoint=ckpt, epochs=1)
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(zo.CheckpointError, match="corrupt or truncated"):
        setup["run"](checkpoint=ckpt, resume=ckpt)
    ckpt.write_bytes(b"not a zip at all")
    # (the messages hold the path, and tmp_path this test's name: match past it)
    with pytest.raises(zo.CheckpointError, match=r"is not a zoracle checkpoint \(not a zip archive") as info:
        setup["run"](resume=ckpt)
    assert "delete" not in str(info.value)  # a file zoracle did not write is the user's
    np.savez(tmp_path / "other.npz", params=np.zeros(31))
    with pytest.raises(zo.CheckpointError, match="not a zoracle checkpoint") as info:
        setup["run"](resume=tmp_path / "other.npz")
    assert "delete" not in str(info.value)
    with pytest.raises(zo.CheckpointError, match="does not exist"):
        setup["run"](resume=tmp_path / "missing.npz")


def test_train_never_overwrites_a_foreign_file_and_warns_before_replacing_a_run(tmp_path, setup):
    calls = []

    def f(x):
        calls.append(1)
        return float(x @ x)

    for name, write in (("notes.txt", lambda p: p.write_text("precious")),
                        ("data.npz", lambda p: np.savez(p, a=np.arange(3))),
                        ("array.npy", lambda p: np.save(p, np.arange(3)))):
        path = tmp_path / name
        write(path)
        before = path.read_bytes()
        with pytest.raises(zo.ArgumentError, match="`checkpoint` .* is a file zoracle did not write"):
            zo.train(f, np.ones(3), epochs=1, checkpoint=path, progress=False, rng=0)
        # resume=True finds the file, then refuses it as the checkpoint it resumes from (training.md:
        # a foreign file raises CheckpointError; it raised the ArgumentError of a new run's path)
        with pytest.raises(zo.CheckpointError, match="not a zoracle checkpoint"):
            zo.train(f, np.ones(3), epochs=1, checkpoint=path, resume=True, progress=False, rng=0)
        assert path.read_bytes() == before and not calls  # refused before the first query
    ckpt = tmp_path / "run.npz"
    setup["run"](checkpoint=ckpt, epochs=1)
    with pytest.warns(UserWarning, match="holds an earlier run, which this run does not resume from"):
        setup["run"](checkpoint=ckpt, epochs=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = setup["run"](checkpoint=ckpt, resume=True, epochs=2)  # continuing it: no warning
    assert res.epochs == 2


def test_mismatched_settings_raise_and_name_the_setting(tmp_path, setup):
    ckpt = tmp_path / "c.npz"
    setup["run"](checkpoint=ckpt, epochs=1)
    with pytest.raises(zo.CheckpointError, match="optimizer"):
        zo.train(setup["LinReg"](), np.full(31, 0.05), batches=[(setup["X"], setup["y"])], sparsity=0.6,
                 blocks=setup["BLOCKS"], optimizer=zo.sgd(0.01), rng=11, resume=ckpt, progress=False)
    with pytest.raises(zo.CheckpointError, match="d: checkpoint has 31, this run has 5"):
        zo.train(lambda x: float(x @ x), np.ones(5), resume=ckpt, progress=False)


def test_save_is_atomic_and_pickle_free(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    zo.save_checkpoint(path, {"a": np.arange(3)}, {"k": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", boom)  # (each array's write into the archive)
    with pytest.raises(OSError):
        zo.save_checkpoint(path, {"a": np.arange(5)}, {"k": 2})
    monkeypatch.undo()
    arrays, meta = zo.load_checkpoint(path)  # the old checkpoint survived intact
    assert arrays["a"].tolist() == [0, 1, 2] and meta["k"] == 1
    assert sorted(os.listdir(tmp_path)) == ["x.npz"]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(z["__meta__"].tobytes())
    assert header["format"] == "zoracle-checkpoint"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_a_save_keeps_the_mode_of_the_checkpoint_it_replaces(tmp_path, mode):
    """A checkpoint its user made private (chmod 600) or shared with a group stays so when a
    resumed run saves over it (the rename put a new file there with the umask's mode, 644)."""
    path = tmp_path / "run.npz"
    kw = dict(estimator=zo.CGE(mu=1e-3), optimizer=zo.sgd(0.05), rng=0, progress=False, checkpoint=path)
    old = os.umask(0o022)
    try:
        zo.train(lambda x: float(np.sum((x - 1.0) ** 2)), np.zeros(4), epochs=2, **kw)
        assert os.stat(path).st_mode & 0o777 == 0o644  # a new file: the umask's mode
        os.chmod(path, mode)
        r = zo.train(lambda x: float(np.sum((x - 1.0) ** 2)), np.zeros(4), epochs=4, resume=True, **kw)
    finally:
        os.umask(old)
    assert zo.load_checkpoint(path)[1]["step"] == 4 and r.nfev > 0  # the resumed run saved over it
    assert oct(os.stat(path).st_mode & 0o777) == oct(mode)


def test_a_save_whose_mode_copy_is_refused_still_saves(tmp_path, monkeypatch):
    """Copying the replaced checkpoint's mode is best effort: where chmod is refused (EPERM on a
    file system without POSIX modes, or a file another user owns) the save still happens and
    holds what was saved."""
    path = str(tmp_path / "run.npz")
    zo.save_checkpoint(path, {"params": np.arange(3.0)}, {"step": 1})

    def refuse(target, mode, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(target))

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "supports_fd", os.supports_fd | {refuse})
    zo.save_checkpoint(path, {"params": np.arange(3.0) + 1.0}, {"step": 2})
    monkeypatch.undo()
    arrays, meta = zo.load_checkpoint(path)
    assert meta["step"] == 2
    np.testing.assert_array_equal(arrays["params"], [1.0, 2.0, 3.0])
    assert [f for f in os.listdir(tmp_path) if f != "run.npz"] == []  # no temporary left behind


def test_oracle_state_outside_params_is_saved_and_restored(tmp_path):
    class Stateful:
        """A loss whose running mean (like BatchNorm statistics) changes on every plain call."""

        def __init__(self):
            self.running = np.zeros(2)

        def __call__(self, x):
            self.running = 0.9 * self.running + 0.1 * x[:2]
            return float(((x - 1) ** 2).sum())

        def state_arrays(self):
            return {"running": self.running.copy()}

        def load_state_arrays(self, arrays):
            self.running = arrays["running"].copy()

    ref = Stateful()
    zo.train(ref, np.zeros(3), epochs=6, progress=False)

    class Crash(Exception):
        pass

    def crash(event, rec, params):
        if event == "epoch" and rec["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        zo.train(Stateful(), np.zeros(3), epochs=6, checkpoint=tmp_path / "c.npz", callbacks=[crash], progress=False)
    fresh = Stateful()
    zo.train(fresh, np.zeros(3), epochs=6, resume=tmp_path / "c.npz", progress=False)
    np.testing.assert_array_equal(fresh.running, ref.running)


def test_save_checkpoint_refuses_what_load_would_refuse(tmp_path):
    """Object, text and complex arrays were saved (objects pickled) and then refused on load; a
    NumPy number in the header raised a raw TypeError, a reserved name a plain ValueError."""
    p = tmp_path / "c.npz"
    for bad in (np.array([{"a": 1}], dtype=object), np.array(["text"]), np.ones(2, dtype=complex)):
        with pytest.raises(zo.ArgumentError, match="a checkpoint holds numeric arrays only"):
            zo.save_checkpoint(p, {"params": np.ones(3), "extra": bad}, {"step": 1})
        assert not p.exists()
    with pytest.raises(zo.ArgumentError, match="`meta` must be a dict"):
        zo.save_checkpoint(p, {"params": np.ones(3)}, [1, 2])
    with pytest.raises(zo.ArgumentError, match="reserved"):
        zo.save_checkpoint(p, {"__meta__": np.ones(3)}, {})
    with pytest.raises(zo.ArgumentError, match="`meta` must hold JSON values"):
        zo.save_checkpoint(p, {"params": np.ones(3)}, {"when": object()})
    zo.save_checkpoint(p, {"params": np.ones(3), "mask": np.array([True, False])}, {"step": np.int64(7), "lr": np.float32(0.5)})
    arrays, meta = zo.load_checkpoint(p)
    assert (meta["step"], meta["lr"], arrays["mask"].tolist()) == (7, 0.5, [True, False])


def test_save_checkpoint_takes_a_longdouble_in_the_header(tmp_path):
    """np.longdouble(0.1).item() is a np.longdouble again: json's default hook was called on it
    without end (RecursionError) where np.float32 and np.float64 were saved as numbers."""
    p = tmp_path / "c.npz"
    zo.save_checkpoint(p, {"params": np.ones(3)}, {"lr": np.longdouble(0.1), "mu": np.float64(1e-3)})
    meta = zo.load_checkpoint(p)[1]
    assert (meta["lr"], meta["mu"]) == (0.1, 1e-3)  # the reference: float() of each, as JSON holds it
    assert type(meta["lr"]) is float


def test_an_oracle_state_with_inf_or_bfloat16_buffers_checkpoints_and_resumes(tmp_path):
    """A buffer holding -inf (an additive attention mask) made every checkpoint of the run refuse to
    resume, advising to delete it; a bfloat16 buffer failed the first save with a bare TypeError,
    after an epoch of queries."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)
            self.register_buffer("mask", torch.tensor([0.0, 0.0, float("-inf")]))
            self.register_buffer("scale", torch.ones(3, dtype=torch.bfloat16))

        def forward(self, x):
            return (self.lin(x) + self.mask) * self.scale.float()

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 2, 32)
    ckpt = tmp_path / "c.npz"

    def run(epochs, resume=None):
        torch.manual_seed(0)
        o = TorchOracle(Net(), torch.nn.CrossEntropyLoss(reduction="none"))
        return zo.train(o, o.initial_params(), batches=zo.Minibatches((x, y), 8, seed=0), epochs=epochs, rng=0,
                        progress=False, checkpoint=ckpt, resume=resume)

    full = run(3)
    ckpt.unlink()
    run(1)
    resumed = run(3, resume=True)
    assert np.array_equal(resumed.params, full.params)


def test_metrics_named_like_step_fields_are_kept_and_a_plot_cannot_take_the_checkpoints_path(tmp_path):
    """Metrics named 'mu' or 'step' were kept under their names and left out of every plot; two keys
    reading the same as text collapsed into one; plot=checkpoint's path replaced the checkpoint."""
    pytest.importorskip("matplotlib")
    f = lambda p: float(p @ p)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="stored as 'eval_mu'"):
        res = zo.train(f, np.ones(3), epochs=1, progress=False, eval_fn=lambda p: {"mu": 1.0, "dist": 2.0})
    assert res.history.epochs[0]["eval_mu"] == 1.0 and "mu" not in res.history.epochs[0]  # a panel of its own
    with pytest.warns(UserWarning, match="two metrics whose names read the same"):
        zo.train(f, np.ones(3), epochs=1, progress=False, eval_fn=lambda p: {1: 2.0, "1": 3.0})
    same = tmp_path / "same.png"
    with pytest.raises(zo.ArgumentError, match="`plot` and `checkpoint` are the same file"):
        zo.train(f, np.ones(3), epochs=1, progress=False, checkpoint=same, plot=same)
    assert not same.exists()


def test_a_checkpoint_replaced_while_it_is_read_is_read_whole(tmp_path, monkeypatch):
    """load_checkpoint took the file's size, then opened the path again for the archive: a run
    saving its next checkpoint in between (os.replace) paired the old size with the new header,
    and a reader (History.from_checkpoint, `zoracle plot`) was told the healthy file was corrupt
    ("declares 12552 bytes, more than the 7290 it may hold ... delete it"): 6-62 of every ~10,000
    reads against a running training. One open file now serves both."""
    import shutil
    import zipfile

    loss = lambda x: float(x @ x)  # noqa: E731
    kw = dict(steps_per_epoch=40, optimizer=zo.sgd(1e-4), rng=0, progress=False)
    zo.train(loss, np.ones(2), epochs=1, checkpoint=tmp_path / "old.npz", **kw)
    zo.train(loss, np.ones(2), epochs=2, checkpoint=tmp_path / "new.npz", **kw)  # its header is larger
    shutil.copy(tmp_path / "old.npz", tmp_path / "run.npz")
    opened = zipfile.ZipFile.__init__

    def saved_meanwhile(self, file, *args, **kwargs):  # the run's next save lands now
        if (tmp_path / "new.npz").exists():
            os.replace(tmp_path / "new.npz", tmp_path / "run.npz")
        return opened(self, file, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "__init__", saved_meanwhile)
    assert len(zo.History.from_checkpoint(tmp_path / "run.npz").steps) == 40  # the file as it was opened
    assert not (tmp_path / "new.npz").exists()
    monkeypatch.undo()
    assert len(zo.History.from_checkpoint(tmp_path / "run.npz").steps) == 80


def test_a_resume_refuses_an_oracle_that_lays_its_parameters_out_otherwise(tmp_path):
    """The flat vector of a checkpoint loaded into an oracle whose parameters come in another
    order (another model; a TorchOracle built in other train/eval modes) went on silently."""
    Info = namedtuple("Info", "name slice shape kind")

    class Named:
        def __init__(self, names):
            self.param_info = [Info(n, slice(2 * i, 2 * i + 2), (2,), "linear") for i, n in enumerate(names)]

        def __call__(self, x):
            return float(((x - np.arange(4)) ** 2).sum())

    path = tmp_path / "c.npz"
    zo.train(Named(["a", "b"]), np.zeros(4), epochs=2, checkpoint=path, progress=False)
    with pytest.raises(zo.CheckpointError, match="laid its parameters out otherwise"):
        zo.train(Named(["b", "a"]), np.zeros(4), epochs=3, resume=path, progress=False)
    assert zo.train(Named(["a", "b"]), np.zeros(4), epochs=3, resume=path, progress=False).history.epochs[-1]["epoch"] == 2
    # a checkpoint written before layouts were saved still resumes
    arrays, meta = zo.load_checkpoint(path)
    del meta["config"]["layout"]
    zo.save_checkpoint(path, arrays, meta)
    assert len(zo.train(Named(["b", "a"]), np.zeros(4), epochs=4, resume=path, progress=False).history.epochs) == 4
    # ... unless the oracle has parameters its forward does not read: a TorchOracle orders those
    # last since layouts were saved, and kept the model's order before
    unread = Named(["a", "b"])
    unread._unread_moved = ("b",)  # what a TorchOracle reports (tests/test_torch_graph.py)
    with pytest.raises(zo.CheckpointError, match=r"before checkpoints recorded the oracle's layout.*\('b'\) last"):
        zo.train(unread, np.zeros(4), epochs=5, resume=path, progress=False)


def test_save_checkpoint_names_a_directory_and_history_readers_get_a_readers_advice(tmp_path):
    """save_checkpoint(<a directory>) raised a bare IsADirectoryError naming an internal temp
    file; reading the history of a file train did not write (zoracle plot) advised "delete it to
    start over", which a reader never does."""
    with pytest.raises(zo.ArgumentError, match="`path` .* is a directory; pass a file path such as"):
        zo.save_checkpoint(str(tmp_path), {"a": np.zeros(2)}, {})
    mine = str(tmp_path / "mine.npz")
    zo.save_checkpoint(mine, {"a": np.zeros(2)}, {"x": 1})
    with pytest.raises(zo.CheckpointError, match="it is not a checkpoint zo.train wrote, or it is damaged") as info:
        zo.History.from_checkpoint(mine)
    assert "delete it" not in str(info.value)


def test_a_checkpoint_that_cannot_be_written_names_its_file_step_and_the_last_good_one(tmp_path, monkeypatch):
    """A full disk raised a bare OSError naming neither the checkpoint nor the step, and at the
    final save the run's result was lost with it."""
    import zoracle._run_save as tr

    real, calls = tr.save_checkpoint, []

    def full_after(n):
        def save(path, arrays, meta):
            calls.append(meta["step"])
            if len(calls) > n:
                raise OSError(28, "No space left on device")
            return real(path, arrays, meta)
        return save

    loss = lambda x: float(((x - 1) ** 2).sum())
    ck = str(tmp_path / "run.npz")
    kw = dict(epochs=4, steps_per_epoch=3, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=ck)
    monkeypatch.setattr(tr, "save_checkpoint", full_after(2))
    with pytest.raises(zo.CheckpointError, match=r"could not be written at step 9 \(OSError: \[Errno 28\] No space "
                                                 r"left on device\); the checkpoint there still holds step 6"):
        zo.train(loss, np.zeros(3), **kw)
    assert zo.History.from_checkpoint(ck).steps[-1]["step"] == 5  # the last good file, readable
    # the final save fails (after the last epoch's, or the last epoch's own): warned once, the result returned
    for n, name in ((4, "b.npz"), (3, "c.npz")):
        calls.clear()
        monkeypatch.setattr(tr, "save_checkpoint", full_after(n))
        with pytest.warns(UserWarning, match="could not be written at step 12.*the result is returned") as record:
            result = zo.train(loss, np.zeros(3), **dict(kw, checkpoint=str(tmp_path / name)))
        assert result.steps == 12 and len([w for w in record if "could not be written" in str(w.message)]) == 1
    # a budget that stops the run at an epoch's end makes that save the last: warned, the result returned
    calls.clear()
    monkeypatch.setattr(tr, "save_checkpoint", full_after(1))
    with pytest.warns(UserWarning, match="could not be written at step 6.*the result is returned"):
        result = zo.train(loss, np.zeros(3), **dict(kw, checkpoint=str(tmp_path / "d.npz"), max_queries=24))
    assert result.steps == 6 and result.stopped
    # resumed from the file it saves to: the failure names the step that file holds
    monkeypatch.setattr(tr, "save_checkpoint", real)
    ck2 = str(tmp_path / "e.npz")
    zo.train(loss, np.zeros(3), **dict(kw, checkpoint=ck2, epochs=2))
    monkeypatch.setattr(tr, "save_checkpoint", full_after(0))
    with pytest.raises(zo.CheckpointError, match="could not be written at step 9.*the checkpoint there still holds step 6"):
        zo.train(loss, np.zeros(3), **dict(kw, checkpoint=ck2, resume=True))


def test_a_torch_run_resumed_in_other_train_eval_modes_is_warned_about(tmp_path):
    """A BatchNorm model trained in train mode and resumed in eval mode was taken silently: the
    run's losses changed (0.921 against 0.851 at step 8) with nothing said."""
    torch = pytest.importorskip("torch")
    from zoracle.adapters.torch import TorchOracle

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 8)).astype(np.float32)
    Y = (X @ rng.standard_normal((8, 3))).argmax(1)

    def make(train_mode=True):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 3))  # (no bias before the BatchNorm: train warns of one on a CPU
        # whose rounding leaves its estimates exactly 0, as the BatchNorm's mean subtraction cancels it)
        return TorchOracle(m.train(train_mode), torch.nn.CrossEntropyLoss(reduction="none"))

    kw = dict(batches=zo.Minibatches((X, Y), batch_size=16, seed=0), epochs=3, optimizer=zo.sgd(0.1), rng=0,
              progress=False)
    path = str(tmp_path / "run.npz")
    o = make()
    zo.train(o, o.initial_params(), checkpoint=path, callbacks=[lambda e, r, p: e == "epoch" and r["epoch"] == 0], **kw)
    o = make(train_mode=False)
    with pytest.warns(UserWarning, match="other train/eval modes \\(or update_stats\\) than in the run that wrote"):
        zo.train(o, o.initial_params(), resume=path, **kw)
    o = make()  # the same modes: resumed without a word (the suite's filters make a warning an error)
    zo.train(o, o.initial_params(), resume=path, **kw)
    o = make()  # update_stats changes what a plain call writes: warned too
    o.update_stats = False
    with pytest.warns(UserWarning, match="other train/eval modes \\(or update_stats\\)"):
        zo.train(o, o.initial_params(), resume=path, **kw)
    arrays, meta = zo.load_checkpoint(path)  # written before checkpoints held the modes: nothing to compare
    meta.pop("modes")
    for k in ("format", "version"):
        meta.pop(k, None)
    old = str(tmp_path / "old.npz")
    zo.save_checkpoint(old, arrays, meta)
    o = make(train_mode=False)
    zo.train(o, o.initial_params(), resume=old, **kw)


@pytest.mark.parametrize("expected, prefixes", [
    (["params"], ()),  # names as a list: a raw TypeError from inside the read
    ({"params": (4,)}, ()),  # a shape without dtypes: "corrupt or truncated ...; delete it"
    ({"params": ((4,), "float64")}, ()),  # one dtype as a string: NumPy's "data type 'o' not understood"
    (None, "opt/"),  # one prefix as a string: read every member starting with 'o', 'p', 't' or '/'
])
def test_load_checkpoint_refuses_a_malformed_expected_without_blaming_the_file(tmp_path, expected, prefixes):
    path = zo.save_checkpoint(tmp_path / "run.npz", {"params": np.arange(4.0)}, {"note": "ok"})
    with pytest.raises(zo.ArgumentError, match="`expected` must be|`prefixes` must be") as info:
        zo.load_checkpoint(path, expected=expected, prefixes=prefixes)
    assert "corrupt" not in str(info.value) and "delete" not in str(info.value)
    arrays, _ = zo.load_checkpoint(path, expected={"params": ((4,), ("float64",))})  # the documented form
    np.testing.assert_array_equal(arrays["params"], np.arange(4.0))
    assert zo.load_checkpoint(path, expected={"params": (None, None)})[0].keys() == {"params"}


def test_a_runs_history_is_encoded_once_and_reads_back_as_whole_lists(tmp_path):
    """A checkpoint's history was encoded whole at every save (0.34 s a save at 100,000 steps, a
    run saving each step quadratic in its steps); each record is encoded at its first save now,
    and the header's bytes are the ones json.dumps gives the lists."""
    from zoracle._checkpoint import Records

    steps = [{"step": i, "loss": float(i) / 3, "lr": np.float32(0.1), "nan": "nan"} for i in range(5)]
    seen = []

    def default(v):  # counts what is encoded: the numpy scalar in each record
        seen.append(1)
        return v.item()

    r = Records(steps)
    assert r.text(default) == json.dumps(steps, sort_keys=True, allow_nan=True, default=default)
    seen.clear()
    steps.append({"step": 5, "loss": 1e300, "lr": np.float32(0.2), "nan": "inf"})
    assert r.text(default) == json.dumps(steps, sort_keys=True, default=default)[:] and len(seen) == 1 + 6
    a = zo.save_checkpoint(tmp_path / "a.npz", {"p": np.zeros(2)}, {"history": {"steps": Records(steps), "epochs": Records([])},
                                                                     "step": 6, "note": "\x00zoracle-records-0\x00"})
    b = zo.save_checkpoint(tmp_path / "b.npz", {"p": np.zeros(2)}, {"history": {"steps": steps, "epochs": []},
                                                                     "step": 6, "note": "\x00zoracle-records-0\x00"})
    with np.load(a) as fa, np.load(b) as fb:
        assert bytes(fa["__meta__"]) == bytes(fb["__meta__"])
    meta = zo.load_checkpoint(a)[1]
    assert meta["history"]["steps"][5] == {"step": 5, "loss": 1e300, "lr": float(np.float32(0.2)), "nan": "inf"}
    assert meta["note"] == "\x00zoracle-records-0\x00"


def test_load_checkpoint_reads_every_member_a_generator_of_prefixes_names(tmp_path):
    """``prefixes`` given as a generator: the check before the read consumed it, so no
    member it names was read (['params'] only; one of two before that check)."""
    path = tmp_path / "c.npz"
    zo.save_checkpoint(path, {"params": np.zeros(3), "opt/m": np.ones(3), "opt/v": np.ones(3)}, {"a": 1})
    want = {"params": ((3,), ("float64",))}
    arrays, _ = zo.load_checkpoint(path, expected=want, prefixes=(p for p in ["opt/"]))
    assert sorted(arrays) == ["opt/m", "opt/v", "params"]
    assert sorted(zo.load_checkpoint(path, expected=want, prefixes=("opt/",))[0]) == sorted(arrays)


def test_a_meta_value_spelling_a_records_token_before_the_history_keeps_both(tmp_path):
    """A header value that spells a Records token and sorts before the history ("a" < "history"):
    the first occurrence of the token in the text is that value, not the history's place."""
    from zoracle._checkpoint import Records

    steps = [{"step": 0, "loss": 1.5}, {"step": 1, "loss": 0.25}]
    token = "\x00zoracle-records-0\x00"
    path = zo.save_checkpoint(tmp_path / "t.npz", {"p": np.zeros(2)},
                              {"a": token, "history": {"steps": Records(steps), "epochs": Records([])}})
    meta = zo.load_checkpoint(path)[1]
    assert meta["a"] == token  # reference: the values saved, as json reads them back
    assert meta["history"] == {"steps": steps, "epochs": []}


@pytest.mark.parametrize("expected", [
    {"params": ((True, 2), ("float64",))},  # a bool is no dimension (it read as 1)
    {"params": ((4,), ())},  # no dtype at all: every dtype refused, the file blamed
    {"params": ((4,), ("float64", "no such dtype"))},  # NumPy's TypeError, raw
])
def test_load_checkpoint_refuses_bools_in_a_shape_and_empty_dtypes(tmp_path, expected):
    path = zo.save_checkpoint(tmp_path / "run.npz", {"params": np.arange(4.0)}, {"note": "ok"})
    with pytest.raises(zo.ArgumentError, match="`expected` must be"):
        zo.load_checkpoint(path, expected=expected)


def test_load_checkpoint_takes_an_expected_empty_array(tmp_path):
    path = zo.save_checkpoint(tmp_path / "run.npz", {"params": np.zeros((0, 3))}, {"note": "ok"})
    arrays, _ = zo.load_checkpoint(path, expected={"params": ((0, 3), ("float64",))})
    assert arrays["params"].shape == (0, 3)  # reference: the array saved


@pytest.mark.parametrize("prefixes", [(b"opt/",), ["opt/", 1]])
def test_load_checkpoint_refuses_prefixes_that_are_not_strings(tmp_path, prefixes):
    path = zo.save_checkpoint(tmp_path / "run.npz", {"params": np.arange(4.0), "opt/m": np.ones(4)}, {"note": "ok"})
    with pytest.raises(zo.ArgumentError, match="`prefixes` must be"):
        zo.load_checkpoint(path, expected={"params": ((4,), ("float64",))}, prefixes=prefixes)


@pytest.mark.parametrize("kw, names", [
    ({"prefixes": None}, "`prefixes` must be"),  # raw "'NoneType' object is not iterable"
    ({"prefixes": 5}, "`prefixes` must be"),  # raw "'int' object is not iterable"
    ({"check": 5}, "`check` must be"),  # raw "'int' object is not callable", after the file was opened
    ({"check": "params"}, "`check` must be"),
])
def test_load_checkpoint_names_a_keyword_of_the_wrong_type(tmp_path, kw, names):
    path = zo.save_checkpoint(tmp_path / "run.npz", {"params": np.arange(4.0)}, {"note": "ok"})
    with pytest.raises(zo.ArgumentError, match=names) as info:
        zo.load_checkpoint(path, **kw)
    assert "corrupt" not in str(info.value) and "delete" not in str(info.value)
    np.testing.assert_array_equal(zo.load_checkpoint(path, prefixes=(), check=None)[0]["params"], np.arange(4.0))


def test_a_checkpoint_folder_on_a_full_disk_is_refused_without_leaving_a_file(tmp_path, monkeypatch):
    """On a full disk the writability check before the first query created its probe file, could
    not write it, raised, and left the empty ``.run.npz.tmp-...`` file in the folder."""
    import builtins

    import zoracle._checkpoint as ckmod

    class Full:  # the file opens (an inode is free), its write fails (no block is)
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckmod, "open", lambda p, mode="r", *a, **k: Full(builtins.open(p, mode, *a, **k)),
                        raising=False)
    calls = []
    loss = lambda x: calls.append(1) or float(((x - 1) ** 2).sum())  # noqa: E731
    with pytest.raises(zo.ArgumentError, match="cannot be written .*No space left on device"):
        zo.train(loss, np.zeros(3), epochs=2, progress=False, checkpoint=str(tmp_path / "run.npz"))
    assert calls == [] and os.listdir(tmp_path) == []


def test_a_second_run_writing_the_same_checkpoint_is_not_overwritten_silently(tmp_path):
    """Two runs given the same checkpoint path (a job launched twice, both started before either
    saved) overwrote each other's saves without a word, and a killed run's resume=True went on
    from the other run's parameters."""
    import shutil

    ck, other = str(tmp_path / "run.npz"), str(tmp_path / "other.npz")
    kw = dict(epochs=4, steps_per_epoch=3, optimizer=zo.sgd(0.1), progress=False, checkpoint_every=1)
    theirs = zo.train(lambda x: float(((x + 1) ** 2).sum()), np.zeros(3), checkpoint=other, **kw)

    def meanwhile(event, record, params):  # the other run's save lands in the same path
        if event == "step" and record["step"] == 4:
            shutil.copy(other, ck + ".new")
            os.replace(ck + ".new", ck)

    with pytest.raises(zo.CheckpointError, match="rewritten by another writer since this run saved"):
        zo.train(lambda x: float(((x - 1) ** 2).sum()), np.zeros(3), checkpoint=ck, callbacks=[meanwhile], **kw)
    arrays, meta = zo.load_checkpoint(ck)  # the other run's save, left as it is
    assert np.array_equal(arrays["params"], theirs.params) and meta["step"] == 12


def test_a_checkpoint_another_run_wrote_before_this_runs_first_save_is_not_overwritten(tmp_path):
    """Two runs given one path, neither file there when this run started: the other run wrote (and
    finished) its checkpoint before this run's first save, which replaced it without a word."""
    ck = str(tmp_path / "run.npz")
    kw = dict(epochs=2, steps_per_epoch=3, optimizer=zo.sgd(0.1), progress=False)
    theirs = []

    def meanwhile(event, record, params):  # the other run, whole, during this run's first step
        if event == "step" and record["step"] == 0:
            theirs.append(zo.train(lambda x: float(((x + 1) ** 2).sum()), np.zeros(3), checkpoint=ck, **kw))

    with pytest.raises(zo.CheckpointError, match="rewritten by another writer since this run started"):
        zo.train(lambda x: float(((x - 1) ** 2).sum()), np.zeros(3), checkpoint=ck, callbacks=[meanwhile], **kw)
    arrays, meta = zo.load_checkpoint(ck)  # the other run's checkpoint, left as it is
    assert np.array_equal(arrays["params"], theirs[0].params) and meta["step"] == 6


def test_a_state_tuple_of_arrays_resumes_as_a_tuple_of_arrays(tmp_path):
    """An own optimizer keeping its last two gradients as a tuple of arrays: a resume gave the tuple
    back as lists of floats (0.3 * list: TypeError); the resumed run must equal the uninterrupted one."""
    from typing import Any, NamedTuple

    class Lags(NamedTuple):
        count: int
        lags: Any

    def update(g, s, p, lr=None):
        step = 0.5 * g + 0.3 * s.lags[0] + 0.2 * s.lags[1]  # (a textbook two-lag average)
        return p - lr * step, Lags(s.count + 1, (g.copy(), s.lags[0].copy()))

    opt = zo.Optimizer(lambda p: Lags(0, (np.zeros_like(p), np.zeros_like(p))), update, 0.05, "lags", "lags()")
    A = np.arange(1.0, 6.0)
    f = lambda x: float(np.sum(A * (x - 1) ** 2))  # noqa: E731
    full = zo.train(f, np.zeros(5), epochs=4, optimizer=opt, rng=0, progress=False)
    ck = str(tmp_path / "run.npz")
    zo.train(f, np.zeros(5), epochs=2, optimizer=opt, rng=0, progress=False, checkpoint=ck)
    resumed = zo.train(f, np.zeros(5), epochs=4, optimizer=opt, rng=0, progress=False, checkpoint=ck, resume=True)
    assert np.array_equal(resumed.params, full.params), (resumed.params, full.params)


def test_a_rewrite_after_resuming_from_the_same_file_is_named(tmp_path):
    """A run resumed from its own checkpoint path knows that file as its own: another writer's save
    landing there before the resumed run's first save is named too, not overwritten silently."""
    import shutil

    ck, other = str(tmp_path / "run.npz"), str(tmp_path / "other.npz")
    kw = dict(steps_per_epoch=3, optimizer=zo.sgd(0.1), progress=False, checkpoint_every=1)
    zo.train(lambda x: float(((x + 1) ** 2).sum()), np.zeros(3), epochs=4, checkpoint=other, **kw)
    f = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    zo.train(f, np.zeros(3), epochs=2, checkpoint=ck, **kw)  # step 6 saved

    def meanwhile(event, record, params):  # before the resumed run's first save
        if event == "step" and record["step"] == 6:
            shutil.copy(other, ck + ".new")
            os.replace(ck + ".new", ck)

    with pytest.raises(zo.CheckpointError, match="rewritten by another writer since this run saved"):
        zo.train(f, np.zeros(3), epochs=4, checkpoint=ck, resume=True, callbacks=[meanwhile], **kw)
    assert zo.load_checkpoint(ck)[1]["step"] == 12  # the other run's save, left as it is


def test_a_rewrite_before_the_final_save_warns_and_returns_the_result(tmp_path):
    """At the run's final save a rewrite by another writer is warned about and the result returned
    (the run is done: raising would lose it), as a failed final save is."""
    import shutil

    ck, other = str(tmp_path / "run.npz"), str(tmp_path / "other.npz")
    kw = dict(epochs=1, steps_per_epoch=5, optimizer=zo.sgd(0.1), progress=False)
    zo.train(lambda x: float(((x + 1) ** 2).sum()), np.zeros(3), checkpoint=other, **kw)
    f = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    want = zo.train(f, np.zeros(3), **kw)

    def meanwhile(event, record, params):  # after the save at step 4, before the final one
        if event == "step" and record["step"] == 4:
            shutil.copy(other, ck + ".new")
            os.replace(ck + ".new", ck)

    with pytest.warns(UserWarning, match="rewritten by another writer.*the result is returned") as rec:
        res = zo.train(f, np.zeros(3), checkpoint=ck, checkpoint_every=2, callbacks=[meanwhile], **kw)
    assert len([w for w in rec if "rewritten" in str(w.message)]) == 1  # warned once, not again at the end
    np.testing.assert_array_equal(res.params, want.params)
    assert zo.load_checkpoint(ck)[1]["step"] == 5 and np.array_equal(zo.load_checkpoint(ck)[0]["params"],
                                                                      zo.load_checkpoint(other)[0]["params"])


@pytest.mark.slow
def test_two_runs_saving_at_once_do_not_both_pass_the_other_writer_check(tmp_path, monkeypatch):
    """Two runs given one path whose saves overlap (twin jobs ending together): the check before a
    save and the save itself are one step for other writers, so the run that saves second names the
    other writer (at its final save: a warning) instead of both runs ending silently with one run's
    checkpoint lost. Run A is held inside its save (after its file is written, before the rename);
    run B saves meanwhile."""
    import threading
    import warnings

    ck = str(tmp_path / "run.npz")
    kw = dict(epochs=1, steps_per_epoch=3, progress=False, rng=0)
    f = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    in_save, go = threading.Event(), threading.Event()
    real_fsync, runner = os.fsync, {}

    def held_fsync(fd):  # run A's first fsync: its temporary file, before os.replace
        if threading.current_thread() is runner.get("a") and not in_save.is_set():
            in_save.set()
            go.wait(1.5)  # B saves meanwhile (or, held by A's save, waits for it)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    out = {}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        a = threading.Thread(target=lambda: out.setdefault("a", zo.train(f, np.zeros(3), checkpoint=ck,
                                                                         optimizer=zo.sgd(0.1), **kw)))
        runner["a"] = a
        a.start()
        assert in_save.wait(30)
        out["b"] = zo.train(f, np.zeros(3), checkpoint=ck, optimizer=zo.sgd(0.05), **kw)
        go.set()
        a.join(30)
    named = [w for w in rec if "rewritten by another writer" in str(w.message)]
    assert len(named) == 1, [str(w.message) for w in rec]  # not both runs silent
    held = zo.load_checkpoint(ck)[0]["params"]  # the file left is one run's, whole
    assert any(np.array_equal(held, out[k].params) for k in "ab")


def test_a_checkpoint_deleted_during_the_run_is_written_again(tmp_path):
    """No file at the path (deleted, or cleaned up by the user) is no other writer's save: the next
    save writes it again, and the run ends as one without the deletion."""
    ck = str(tmp_path / "run.npz")
    kw = dict(epochs=2, steps_per_epoch=3, optimizer=zo.sgd(0.1), progress=False, rng=0)
    f = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
    want = zo.train(f, np.zeros(3), **kw)

    def cleanup(event, record, params):
        if event == "step" and record["step"] == 4 and os.path.exists(ck):
            os.remove(ck)

    res = zo.train(f, np.zeros(3), checkpoint=ck, checkpoint_every=1, callbacks=[cleanup], **kw)
    np.testing.assert_array_equal(res.params, want.params)
    arrays, meta = zo.load_checkpoint(ck)
    assert meta["step"] == 6 and np.array_equal(arrays["params"], want.params)


def test_a_state_tuple_of_mixed_types_resumes_with_each_elements_type(tmp_path):
    """A tuple is saved as one array of its elements' common type: an own optimizer's
    ``(int, float)`` and ``(float32 array, int64 array)`` came back as ``(float, float)`` and two
    float64 arrays, so the resumed float32 run's params differed from the uninterrupted run's by
    1.2e-7. Each element now gets init's type back."""
    from typing import Any, NamedTuple

    class S(NamedTuple):
        count: int
        best: Any
        pair: Any

    types = []

    def init(p):
        return S(0, (0, float("inf")), (np.zeros_like(p), np.zeros(p.shape, np.int64)))

    def update(g, s, p, lr=None):
        types.append((type(s.best[0]), s.pair[0].dtype, s.pair[1].dtype))
        m = (0.9 * s.pair[0] + g).astype(p.dtype)
        return (p - lr * m).astype(p.dtype), S(s.count + 1, (s.count, float(np.sum(g * g))), (m, s.pair[1] + (g != 0)))

    opt = zo.Optimizer(init, update, 0.05, "mom", "mom(lr=0.05)")
    A = np.arange(1.0, 6.0, dtype=np.float32)
    f = lambda x: float(np.sum(A * (x - 1) ** 2))  # noqa: E731
    x0 = np.zeros(5, np.float32)
    full = zo.train(f, x0, epochs=4, optimizer=opt, rng=0, progress=False)
    ck = str(tmp_path / "run.npz")
    zo.train(f, x0, epochs=2, optimizer=opt, rng=0, progress=False, checkpoint=ck)
    types.clear()
    resumed = zo.train(f, x0, epochs=4, optimizer=opt, rng=0, progress=False, checkpoint=ck, resume=True)
    assert set(types) == {(int, np.dtype(np.float32), np.dtype(np.int64))}, set(types)
    assert np.array_equal(resumed.params, full.params), (resumed.params - full.params)


def test_load_checkpoint_passes_on_what_check_raises_without_calling_the_file_corrupt(tmp_path):
    """``check(meta)`` is the caller's verdict on a readable file: a ValueError or KeyError of its
    own was reported as "corrupt or truncated ...; delete it to start over" (a valid checkpoint)."""
    path = str(tmp_path / "run.npz")
    zo.save_checkpoint(path, {"params": np.arange(3.0)}, {"step": 7})

    def needs_step_10(meta):
        if meta["step"] < 10:
            raise ValueError("this run needs a checkpoint of step >= 10")

    with pytest.raises(ValueError, match="step >= 10") as info:
        zo.load_checkpoint(path, check=needs_step_10)
    assert not isinstance(info.value, zo.CheckpointError)
    with pytest.raises(KeyError, match="epoch"):
        zo.load_checkpoint(path, check=lambda meta: meta["epoch"])
    with pytest.raises(zo.CheckpointError, match="refused here"):
        zo.load_checkpoint(path, check=lambda meta: (_ for _ in ()).throw(zo.CheckpointError("refused here")))
    assert zo.load_checkpoint(path)[1]["step"] == 7


def test_what_check_raises_comes_back_without_an_internal_second_error(tmp_path):
    """A resume refused for changed settings (check's CheckpointError) printed its message twice:
    first as zoracle._checkpoint._CheckRaised, then "During handling of the above exception, another
    exception occurred" and the CheckpointError; the check's own error, chained as it was, is all."""
    import traceback

    path = str(tmp_path / "run.npz")
    f = lambda x: float(x @ x)  # noqa: E731
    zo.train(f, np.ones(4), steps_per_epoch=2, checkpoint=path, progress=False, rng=0)
    with pytest.raises(zo.CheckpointError, match="different settings") as info:
        zo.train(f, np.ones(4), steps_per_epoch=2, epochs=2, checkpoint=path, resume=True, progress=False, rng=1)
    text = "".join(traceback.format_exception(info.value))
    assert "_CheckRaised" not in text and "another exception occurred" not in text, text
    assert text.count("different settings") == 1

    def check(meta):
        try:
            meta["no such key"]
        except KeyError:
            raise ValueError("needs an epoch") from None

    with pytest.raises(ValueError, match="needs an epoch") as info:
        zo.load_checkpoint(path, check=check)
    assert info.value.__context__ is None or isinstance(info.value.__context__, KeyError)


def test_an_own_state_that_changes_dtype_after_init_is_named_at_the_save(tmp_path):
    """An own optimizer's state field started as the int 0 (a float from the first update on), or an
    oracle's state_arrays() entry started so, ran and wrote checkpoints that no resume could read:
    "array 'opt/best' has shape () dtype float64, this run expects shape () dtype int64; resume with the
    same settings or delete it". The save now names the field and the fix; started as 0.0, the resumed
    run is the uninterrupted one."""
    from typing import Any, NamedTuple

    class St(NamedTuple):
        count: int
        best: Any

    def loss(x):
        return float(np.sum((x - 1.0) ** 2))

    def make(start):
        return zo.Optimizer(lambda p: St(0, start), lambda g, s, p, lr=None: (p - lr * g, St(s.count + 1, float(np.abs(g).max()))),
                            0.1, "trk", "trk(0.1)")

    stop = [lambda e, r, p: e == "epoch" and r["epoch"] == 1]
    kw = dict(epochs=4, rng=0, progress=False)
    with pytest.raises(zo.ArgumentError, match=r"`optimizer` 'trk': its state's field 'best' is float64 of shape \(\) "
                                               r"at step 1, where the run started it as int64"):
        zo.train(loss, np.zeros(3), optimizer=make(0), checkpoint=tmp_path / "a.npz", **kw)
    zo.train(loss, np.zeros(3), optimizer=make(0.0), checkpoint=tmp_path / "b.npz", callbacks=stop, **kw)
    resumed = zo.train(loss, np.zeros(3), optimizer=make(0.0), checkpoint=tmp_path / "b.npz", resume=True, **kw)
    assert np.array_equal(resumed.params, zo.train(loss, np.zeros(3), optimizer=make(0.0), **kw).params)

    class Centered:  # the oracle's own state: a running mean of the targets, updated at each bind
        def __init__(self, start):
            self.rm = start

        def bind(self, batch):
            x, y = batch
            self.rm = 0.9 * self.rm + 0.1 * float(y.mean())
            rm = self.rm
            return lambda w: float(np.mean((x @ w - (y - rm)) ** 2))

        def state_arrays(self):
            return {"rm": self.rm}

        def load_state_arrays(self, d):
            self.rm = float(d["rm"])

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    batches = [(X[i:i + 15], X[i:i + 15] @ np.array([1.0, -2.0, 0.5]) + 3) for i in range(0, 60, 15)]
    kw = dict(batches=batches, epochs=4, optimizer=zo.sgd(0.05), rng=0, progress=False)
    with pytest.raises(zo.ArgumentError, match=r"the oracle's state_arrays\(\) entry 'rm' is float64 of shape \(\) at "
                                               r"step 4, where the run started it as int64"):
        zo.train(Centered(0), np.zeros(3), checkpoint=tmp_path / "c.npz", **kw)
    zo.train(Centered(0.0), np.zeros(3), checkpoint=tmp_path / "d.npz", callbacks=stop, **kw)
    o = Centered(0.0)
    resumed = zo.train(o, np.zeros(3), checkpoint=tmp_path / "d.npz", resume=True, **kw)
    u = Centered(0.0)
    assert np.array_equal(resumed.params, zo.train(u, np.zeros(3), **kw).params) and o.rm == u.rm


def test_a_failed_save_does_not_claim_a_deleted_checkpoint_still_holds_the_run(tmp_path, monkeypatch):
    """The disk filled after the checkpoint was deleted (to free space): the error said "the checkpoint
    there still holds step 3 (resume=True continues from it)", and resume=True then started over."""
    import zoracle._run_save as tr

    real, calls = tr.save_checkpoint, [0]
    ck = str(tmp_path / "run.npz")

    def save(path, arrays, meta):
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(28, "No space left on device")
        return real(path, arrays, meta)

    def freed(event, rec, params):
        if event == "epoch" and rec["epoch"] == 2:
            os.remove(ck)

    monkeypatch.setattr(tr, "save_checkpoint", save)
    loss = lambda x: float(((x - 1) ** 2).sum())
    with pytest.raises(zo.CheckpointError) as info:
        zo.train(loss, np.zeros(3), epochs=6, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=ck,
                 callbacks=[freed])
    assert not os.path.exists(ck)
    assert "could not be written at step 4" in str(info.value)
    assert "still holds" not in str(info.value) and "no longer there" in str(info.value)


def test_a_checkpoint_this_process_may_not_read_is_not_called_corrupt(tmp_path, monkeypatch):
    """A healthy checkpoint of mode 000 (another account's, umask 077) was reported as "corrupt or
    truncated (PermissionError ...); delete it to start over": advice that destroys a good run."""
    import builtins

    import zoracle._checkpoint as ck

    loss = lambda x: float(((x - 1) ** 2).sum())
    path = str(tmp_path / "run.npz")
    zo.train(loss, np.zeros(3), epochs=2, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=path)

    def denied(file, *args, **kwargs):  # as open() of a file of mode 000 for a user other than root
        if os.fspath(file) == path:
            raise PermissionError(13, "Permission denied", path)
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(ck, "open", denied, raising=False)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda f, mode, *a, **k: False if os.fspath(f) == path else real_access(f, mode, *a, **k))
    with pytest.raises(zo.CheckpointError, match=r"cannot be read \(PermissionError: Permission denied\); check its "
                                                 r"permissions") as info:
        zo.train(loss, np.zeros(3), epochs=4, optimizer=zo.sgd(0.1), rng=0, progress=False, resume=path)
    assert "delete it" not in str(info.value) and "corrupt" not in str(info.value)
    # not overwritten by a run that does not resume from it, as before
    # (nor called a file zoracle likely did not write: it said "corrupt ... likely not one of them")
    with pytest.raises(zo.ArgumentError, match="cannot be read as a checkpoint \\(this process may not read it: check "
                                               "its permissions") as info:
        zo.train(loss, np.zeros(3), epochs=4, optimizer=zo.sgd(0.1), rng=0, progress=False, checkpoint=path)
    assert "corrupt" not in str(info.value)
    monkeypatch.undo()
    assert zo.train(loss, np.zeros(3), epochs=4, optimizer=zo.sgd(0.1), rng=0, progress=False, resume=path).steps == 4


def test_a_folder_locked_by_another_program_does_not_hang_the_save(tmp_path):
    """`flock . python script.py` (a job kept alone in its folder) holds a lock on the folder for the
    whole job: train's save, which locked the checkpoint's folder against another run's save, waited
    for it forever (h279). The lock is a private file of zoracle's now; the run saves at once."""
    import threading

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               f"fd = os.open({str(tmp_path)!r}, os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    out = {}
    try:
        assert holder.stdout.readline().strip() == b"held"
        ck = str(tmp_path / "run.npz")
        f = lambda x: float(((x - 1) ** 2).sum())  # noqa: E731
        run = threading.Thread(target=lambda: out.setdefault("r", zo.train(
            f, np.zeros(3), epochs=1, steps_per_epoch=2, progress=False, rng=0, optimizer=zo.sgd(0.1),
            checkpoint=ck)), daemon=True)
        run.start()
        run.join(20)
        assert not run.is_alive(), "the save still waits for a lock held by another program"
    finally:
        holder.kill()
        holder.wait()
    np.testing.assert_array_equal(zo.load_checkpoint(ck)[0]["params"], out["r"].params)
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]  # no lock file beside the user's


@pytest.mark.slow
def test_a_save_waits_for_another_saver_of_the_same_checkpoint_a_bounded_time(tmp_path, monkeypatch, ctrl_c):
    """The lock is per checkpoint (its real path, through a symlinked folder too), waited for at most
    LOCK_WAIT_S (a holder stopped with Ctrl-Z must not hang every later save), and a Ctrl-C while
    waiting leaves no descriptor open (h279: one more each time, in a notebook's long-lived kernel)."""
    import threading

    from zoracle import _checkpoint
    from zoracle._checkpoint import writer_lock

    ck = str(tmp_path / "run.npz")
    os.symlink(tmp_path, tmp_path / "link")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                               "from zoracle._checkpoint import _lock_file; "
                               f"fd = os.open(_lock_file({ck!r}), os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        monkeypatch.setattr(_checkpoint, "LOCK_WAIT_S", 1.0)
        t = time.monotonic()
        with writer_lock(str(tmp_path / "link" / "run.npz")):  # the same file: waited for, then gone on
            waited = time.monotonic() - t
        assert waited >= 1.0
        with writer_lock(str(tmp_path / "other.npz")):  # another checkpoint in the folder: not waited for
            pass
        monkeypatch.setattr(_checkpoint, "LOCK_WAIT_S", 30.0)
        before = sorted(os.listdir("/proc/self/fd"))
        timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            with writer_lock(ck):
                time.sleep(30)  # (never reached while the lock is held elsewhere)
        timer.join()
        assert sorted(os.listdir("/proc/self/fd")) == before
    finally:
        holder.kill()
        holder.wait()
