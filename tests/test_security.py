"""What zoracle reads from a file someone else sent, and the files it shares through the temp folder.

A checkpoint is never unpickled (tests/test_hardening.py); here: one whose many deflated members each
stay under the file's size, but together make arrays many times it; a header seed that ``str.isdigit``
accepts and ``int`` does not; and the ONNX query counter's file in the temp folder, whose name another
user may take once the original classifier removed it.
"""

from __future__ import annotations

import gc
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest

import zoracle as zo


def _loss(x):
    return float(((x - 1) ** 2).sum())


def _run(path, epochs=1, resume=None):
    return zo.train(_loss, np.zeros(4), epochs=epochs, steps_per_epoch=2, optimizer=zo.sgd(0.1, momentum=0.9),
                    checkpoint=path, resume=resume, rng=0, progress=False)


def _add_deflated(path, prefix, n=200, nbytes=2**13):
    """``n`` members of ``nbytes`` zeros each, deflated (about 40 bytes each on disk)."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for i in range(n):
            with z.open(f"{prefix}{i}.npy", "w") as f:
                np.lib.format.write_array(f, np.zeros(nbytes // 8))
    return os.path.getsize(path)


def test_deflated_members_cannot_make_a_checkpoint_load_many_times_its_size(tmp_path):
    """Each member was held to the file's size, not all of them together: a 390 KB checkpoint of 800
    deflated "oracle/*" members made a resume with a plain function allocate 228 MiB (each member read,
    then "holds oracle state but the oracle has no load_state_arrays()"); a 100 MB one, about 60 GB."""
    ckpt = tmp_path / "sent.npz"
    zo.save_checkpoint(ckpt, {"params": np.arange(2048.0)}, {"step": 1})  # 16 KiB: a member may be as large
    size = _add_deflated(ckpt, "x")
    assert 2**13 < size < 200 * 2**13 // 4
    tracemalloc.start()
    try:
        with pytest.raises(zo.CheckpointError, match=r"members declare \d+ bytes in all .*more than the file's"):
            zo.load_checkpoint(ckpt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**13 // 4
    arrays, meta = zo.load_checkpoint(ckpt, expected={"params": ((2048,), ("float64",))})  # the run's own: read
    assert arrays["params"][-1] == 2047.0 and meta["step"] == 1

    run = tmp_path / "run.npz"
    _run(run)
    _add_deflated(run, "oracle/x")  # read by a resume whose oracle keeps no state: every "oracle/" member
    with pytest.raises(zo.CheckpointError, match=r"members declare \d+ bytes in all"):
        _run(tmp_path / "next.npz", epochs=2, resume=run)


def test_a_checkpoint_of_many_arrays_that_fill_its_file_still_loads(tmp_path):
    """What zoracle writes (uncompressed) stays within the budget however many members it has."""
    ckpt = tmp_path / "many.npz"
    zo.save_checkpoint(ckpt, {f"a{i}": np.full(i + 1, float(i)) for i in range(300)}, {"k": 1})
    arrays, _ = zo.load_checkpoint(ckpt)
    assert len(arrays) == 300 and arrays["a299"].sum() == 300 * 299.0


@pytest.mark.parametrize("root", ["\u00b2", "1" * 5000], ids=["superscript-two", "5000-digits"])
def test_a_header_seed_that_int_cannot_read_is_a_checkpoint_error(tmp_path, root):
    """``"²".isdigit()`` is True and ``int("²")`` a ValueError, as is ``int()`` of 5,000 digits: the
    resume raised that ValueError, not a CheckpointError naming the field."""
    run = tmp_path / "run.npz"
    _run(run)
    arrays, meta = zo.load_checkpoint(run)
    meta["root"] = root
    for k in ("format", "version", "zoracle_version"):
        meta.pop(k)
    edited = tmp_path / "edited.npz"
    zo.save_checkpoint(edited, arrays, meta)
    with pytest.raises(zo.CheckpointError, match="header field 'root' is .*expected a decimal seed string"):
        _run(tmp_path / "next.npz", epochs=2, resume=edited)


def _identity_model() -> bytes:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["scores"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _orphaned_copy():
    """A pickled copy of an OnnxClassifier whose original is collected, and the path of the query
    counter the original shared with it (removed with the original, its name still known)."""
    pytest.importorskip("onnxruntime")
    from zoracle.adapters.onnx import OnnxClassifier

    clf = OnnxClassifier(_identity_model())
    copy = pickle.loads(pickle.dumps(clf))
    ledger = clf._ledger.path
    del clf
    gc.collect()
    return copy, ledger


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name != "posix", reason="POSIX symlinks")
def test_a_copy_never_writes_through_a_symlink_planted_at_the_removed_query_counter(tmp_path):
    """The counter file shared by pickled copies lives in the temp folder under a name ``ls`` shows;
    the original removes it when collected. A symlink planted at that name then made each copy's
    query truncate and overwrite the file it points to with "N M" (where the file held a number or
    nothing; other text made every query of the copy fail with a ValueError)."""
    copy, ledger = _orphaned_copy()
    assert not os.path.exists(ledger)
    victim = tmp_path / "notes.txt"
    victim.write_text("41\n")  # (a file of one number, e.g. a pid or a timestamp)
    os.symlink(victim, ledger)
    try:
        x = np.ones((2, 3), np.float32)
        np.testing.assert_array_equal(copy(x), x)
        assert copy.queries == 2  # counted by the copy itself, as after the original's removal
    finally:
        os.unlink(ledger)
    assert victim.read_text() == "41\n"


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="gives a file to another user (root only)")
def test_a_copy_never_uses_another_users_file_at_the_removed_query_counter(tmp_path):
    """Another user's regular file at the counter's name (made after the original removed it, mode
    0666) was read and rewritten by every copy: its owner set the copies' count, and their budget."""
    copy, ledger = _orphaned_copy()
    with open(ledger, "w") as fh:
        fh.write("1000 7")
    os.chown(ledger, 12345, 12345)
    os.chmod(ledger, 0o666)
    try:
        x = np.ones((2, 3), np.float32)
        copy(x)
        assert copy.queries == 2 and copy.calls == 1  # its own count, not the planted file's
        with open(ledger) as fh:
            assert fh.read() == "1000 7"
        with pytest.raises(zo.ZoracleError, match="no longer the file this classifier made"):
            copy._ledger.update(lambda used: used)  # (had the name been taken between the check and the open)
    finally:
        os.unlink(ledger)
