"""What a mutation run of the scipy-port refusals, ``zo.retrying``'s Retry-After and max_delay, the
resumed-run rewrite warning, old checkpoints, the ONNX checks and the escaping warnings found their
tests did not pin: each test here is a behaviour a user sees."""

from __future__ import annotations

import numpy as np
import pytest

import zoracle as zo


class _BatchesOnly:
    """An oracle answering only through bind(batch): not callable itself."""

    def bind(self, batch):
        return lambda x: float(np.sum(x)) * batch


@pytest.mark.parametrize("name, fix", [
    ("learning_rate", "belongs to the optimizer: optimizer=zo.sgd(lr)"),
    ("n_jobs", "executor=zoracle.executors.JoblibExecutor(n_jobs)"),
    ("num_workers", "executor=zoracle.executors.JoblibExecutor(n_jobs)"),
    ("n_trials", "a query budget is `max_queries`"),
])
def test_other_libraries_keywords_name_zoracles_way_not_the_nearest_name(name, fix):
    """PyTorch's learning_rate, joblib's n_jobs and Optuna's n_trials get their hint (not "the nearest
    name it takes is ...")."""
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(lambda x: 0.0, np.zeros(2), progress=False, **{name: 1})
    assert fix in str(info.value)
    assert "nearest name" not in str(info.value)


def test_an_unknown_keyword_alone_does_not_complain_of_positional_arguments():
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(lambda x: 0.0, np.zeros(2), progress=False, callback=print)
    assert "by position" not in str(info.value)
    assert str(info.value).startswith("`train` has no argument `callback`")


def test_a_batch_oracle_is_not_told_to_swap_its_arguments():
    """An oracle with bind() only is not callable, yet first as it should be: a callable as params is
    refused as params, not as scipy approx_fprime's (xk, f) order."""
    with pytest.raises(zo.ArgumentError) as info:
        zo.train(_BatchesOnly(), lambda: 0, batches=[1.0, 2.0], progress=False)
    assert "swap them" not in str(info.value) and "`params`" in str(info.value)


@pytest.mark.parametrize("fn", [zo.train, zo.estimate_gradient])
def test_help_shows_no_catch_all_arguments(fn):
    """The refusals gather unknown arguments in ``*extra``/``**unknown``: help() and IDEs must not
    offer them as arguments to pass."""
    import inspect
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    assert not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}


# --- zo.retrying: Retry-After and max_delay --------------------------------------------------

import datetime  # noqa: E402
import email.message  # noqa: E402
import email.utils  # noqa: E402
import logging  # noqa: E402
import urllib.error  # noqa: E402

import zoracle._retrying as _retrying  # noqa: E402


@pytest.fixture
def waits(monkeypatch):
    got = []
    monkeypatch.setattr(_retrying.time, "sleep", got.append)
    return got


def _fails_once(error):
    left = [error]

    def oracle(x):
        if left:
            raise left.pop(0)
        return 1.0

    return oracle


def _is_http(exc):
    return isinstance(exc, (urllib.error.HTTPError, ConnectionError))


def _http_error(value):
    message = email.message.Message()
    message["Retry-After"] = value
    return urllib.error.HTTPError("http://127.0.0.1/", 503, "Service Unavailable", message, None)


class _Busy(ConnectionError):
    def __init__(self, retry_after):
        super().__init__("busy")
        self.retry_after = retry_after


@pytest.mark.parametrize("when, wait", [
    (datetime.datetime(2000, 1, 1), 0.0),   # passed
    (datetime.datetime(2999, 1, 1), 60.0),  # far ahead: cut to max_delay
])
def test_a_retry_after_in_the_asctime_form_http_allows_is_a_date(waits, when, wait):
    """RFC 9110 lets a server send the obsolete asctime form ("Sun Nov  6 08:49:37 1994"), which
    carries no zone (GMT, as every HTTP date)."""
    zo.retrying(_fails_once(_http_error(when.strftime("%a %b %d %H:%M:%S %Y"))), on=_is_http)(np.zeros(2))
    assert waits == ([wait] if wait else [])


def test_an_infinite_retry_after_is_no_hint(waits):
    zo.retrying(_fails_once(_Busy(float("inf"))))(np.zeros(2))
    assert waits == [0.5]  # the backoff, as for any value that is not a time


def test_max_delay_zero_asks_again_at_once(waits):
    """max_delay >= 0 (the docs): 0 is a valid limit, every wait cut to nothing."""
    zo.retrying(_fails_once(TimeoutError("slow")), max_delay=0)(np.zeros(2))
    zo.retrying(_fails_once(_Busy(30)), max_delay=0)(np.zeros(2))
    assert waits == []


def test_max_delay_true_is_refused():
    with pytest.raises(zo.ArgumentError, match="`max_delay` must be a number of seconds >= 0"):
        zo.retrying(lambda x: 0.0, max_delay=True)


def test_a_retry_after_of_max_delay_is_not_logged_as_cut(waits, caplog):
    with caplog.at_level(logging.INFO, logger="zoracle"):
        zo.retrying(_fails_once(_Busy(5)), max_delay=5)(np.zeros(2))
    assert waits == [5.0]
    assert caplog.records[-1].getMessage().endswith("asking again in 5 s (its Retry-After: 5 s)")


def test_retrying_takes_its_settings_by_keyword_only():
    """retrying(oracle, 5) does not read 5 as `tries` silently: the settings are keyword-only."""
    with pytest.raises(TypeError):
        zo.retrying(lambda x: 0.0, 5)


def test_a_retry_after_date_with_a_zone_is_read_in_that_zone(waits):
    """A date 40 s ahead written at UTC-5 waits those 40 s (less the test's own time), not 5 hours
    more (cut to max_delay)."""
    zone = datetime.timezone(datetime.timedelta(hours=-5))
    when = datetime.datetime.now(zone) + datetime.timedelta(seconds=40)
    zo.retrying(_fails_once(_http_error(email.utils.format_datetime(when))), on=_is_http)(np.zeros(2))
    assert len(waits) == 1 and 10 < waits[0] <= 40


def test_an_unbound_retrying_oracle_keeps_max_delay_and_jitter():
    """An executor ships a bound oracle as its parent and batch (``unbind``): the parent it gets back
    from a retrying oracle retries with the same waits."""
    class Data:
        def __call__(self, x):
            return 0.0

        def bind(self, batch):
            return Bound(self, batch)

    class Bound:
        def __init__(self, parent, batch):
            self.parent, self.batch = parent, batch

        def __call__(self, x):
            return float(self.batch)

        def unbind(self):
            return self.parent, self.batch

    data = Data()
    parent, batch = zo.retrying(Bound(data, 2.0), tries=4, max_delay=3, jitter=0.25).unbind()
    assert parent.oracle is data and batch == 2.0
    assert (parent.tries, parent.max_delay, parent.jitter) == (4, 3.0, 0.25)
    assert parent.bind(5.0)(np.zeros(2)) == 5.0


# --- the rewrite warning of a resumed run ---------------------------------------------------

def test_a_resume_between_saves_counts_the_saves_after_it_whole():
    """Resumed at step 150 with a save every 100 steps of 1,000, the saves left are those at steps
    200 .. 1,000, the j-th rewriting j * 100 steps (not a fraction of the save at 100)."""
    from zoracle._cadence import RECORD_BYTES, SaveCadence, rewrite_bytes
    left = rewrite_bytes(SaveCadence(steps=100), 1_000, 1, start=150)
    assert left == pytest.approx(RECORD_BYTES * 2 * sum(100 * j for j in range(2, 11)))


# --- old checkpoints --------------------------------------------------------------------------

def test_a_history_mixing_records_with_and_without_total_nfev_gets_every_total(tmp_path):
    """An older run resumed by the releases between step records gaining total_nfev and this fix
    wrote records without it, then with it: each record reads with its total, and the run resumes
    as the uninterrupted one."""
    import shutil

    from test_upgrade_checkpoints import DATA, _records, old

    from conftest import edit_checkpoint_header

    path = tmp_path / "run.npz"
    shutil.copy(DATA / "f48a224_grasp.npz", path)

    def mix(header):
        for r, total in zip(header["history"]["steps"][2:], (22, 26)):
            r["total_nfev"] = total

    edit_checkpoint_header(path, mix)
    assert [r["total_nfev"] for r in zo.History.from_checkpoint(path).steps] == [14, 18, 22, 26]
    resumed = zo.train(old.loss, old.PARAMS, epochs=4, checkpoint=path, resume=True, progress=False,
                       **old.RUNS["grasp"])
    whole = zo.train(old.loss, old.PARAMS, epochs=4, progress=False, **old.RUNS["grasp"])
    assert resumed.params.tobytes() == whole.params.tobytes()
    assert _records(resumed.history.steps) == _records(whole.history.steps)


def _slope(x):
    return float(x.sum())


def test_a_checkpoint_whose_running_totals_disagree_is_refused(tmp_path):
    from conftest import edit_checkpoint_header

    path = tmp_path / "run.npz"
    zo.train(_slope, np.ones(2), optimizer=zo.sgd(1e-3), epochs=3, progress=False, rng=0, checkpoint=path)

    def off(header):
        header["history"]["steps"][1]["total_nfev"] += 1

    edit_checkpoint_header(path, off)
    with pytest.raises(zo.CheckpointError, match=r"history\.steps\[1\]\.total_nfev"):
        zo.train(_slope, np.ones(2), optimizer=zo.sgd(1e-3), epochs=5, progress=False, rng=0, checkpoint=path,
                 resume=True)


class _Data:
    def __call__(self, x):
        return float(x.sum())

    def bind(self, batch):
        return lambda x: float(x.sum()) * batch


def test_a_checkpoint_from_before_batches_were_recorded_is_warned_of(tmp_path):
    from conftest import edit_checkpoint_header

    path = tmp_path / "run.npz"
    run = dict(optimizer=zo.sgd(1e-3), progress=False, rng=0, checkpoint=path, batches=[1.0, 2.0])
    zo.train(_Data(), np.ones(2), epochs=1, **run)
    edit_checkpoint_header(path, lambda h: h["config"].pop("batches"))
    with pytest.warns(UserWarning, match="written before checkpoints recorded the batches") as got:
        zo.train(_Data(), np.ones(2), epochs=2, resume=True, **run)
    assert [w.filename for w in got] == [__file__]  # the user's train call, not a line of zoracle


# --- OnnxClassifier's checks ------------------------------------------------------------------

def _dynamic_quantized(names=("",), domain=""):
    """x (N, 4) through one DynamicQuantizeLinear (and back) per name in ``names`` (""; unnamed, as
    some exporters write nodes)."""
    from onnx import TensorProto, helper

    nodes, last = [], "x"
    for i, name in enumerate(names):
        q, s, z, out = f"q{i}", f"s{i}", f"zp{i}", f"deq{i}"
        nodes += [helper.make_node("DynamicQuantizeLinear", [last], [q, s, z], name=name, domain=domain),
                  helper.make_node("DequantizeLinear", [q, s, z], [out])]
        last = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_an_unnamed_per_call_quantizer_is_named_by_its_output():
    pytest.importorskip("onnxruntime")
    from zoracle.adapters.onnx import OnnxClassifier

    with pytest.raises(zo.ArgumentError, match=r"\(DynamicQuantizeLinear node 'q0', .*; 1 such node\)"):
        OnnxClassifier(_dynamic_quantized())
    with pytest.raises(zo.ArgumentError, match=r"\(DynamicQuantizeLinear node 'first', .*; 2 such nodes\)"):
        OnnxClassifier(_dynamic_quantized(("first", "second")))
    x = np.random.default_rng(0).uniform(0, 1, (3, 4)).astype(np.float32)
    assert OnnxClassifier(_dynamic_quantized(), batch_size=1)(x).shape == (3, 4)  # one sample a call: runs


def test_a_checkpoint_path_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    zo.train(_slope, np.ones(2), optimizer=zo.sgd(1e-3), epochs=2, progress=False, rng=0, checkpoint="~/run.npz")
    assert (tmp_path / "run.npz").exists() and not (tmp_path / "~").exists()


# --- warnings on streams that cannot encode a name ------------------------------------------

def test_a_stream_that_already_replaces_is_left_as_it_was():
    """A stderr the user opened with errors="replace" writes a warning's \u2211 as "?", and stays
    "replace" after it (put back "strict", the user's next write of such a name would fail)."""
    import io

    from zoracle._errors import escaping

    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="replace", write_through=True)
    with escaping(stream):
        stream.write("checkpoint '\u2211.npz' is old")
    assert raw.getvalue() == b"checkpoint '?.npz' is old"
    assert stream.errors == "replace"
    stream.write("\u2211")
    assert raw.getvalue().endswith(b"?")


class _DictData:
    def __call__(self, x):
        return float(x.sum())

    def bind(self, batch):
        return lambda x: float(x.sum()) * float(batch["x"].sum())


def test_a_checkpoint_from_before_dict_batch_rows_were_recorded_is_warned_of(tmp_path):
    from conftest import edit_checkpoint_header

    from zoracle._epochs import _batches_print

    batches = [{"x": np.ones((3, 2))}, {"x": np.full((3, 2), 2.0)}]
    path = tmp_path / "run.npz"
    run = dict(optimizer=zo.sgd(1e-3), progress=False, rng=0, checkpoint=path, batches=batches)
    zo.train(_DictData(), np.ones(2), epochs=1, **run)
    edit_checkpoint_header(path, lambda h: h["config"].update(batches=_batches_print(batches, 2, dict_rows=False)))
    with pytest.warns(UserWarning, match=r"recorded the rows of dict batches: only their number \(2\)") as got:
        zo.train(_DictData(), np.ones(2), epochs=2, resume=True, **run)
    assert [w.filename for w in got] == [__file__]


def test_both_streams_of_a_block_are_put_back_strict():
    """The command line escapes stdout and stderr together: after it, each writes strictly again
    (a script printing a name its encoding lacks still learns of it)."""
    import io

    from zoracle._errors import escaping

    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="ascii", write_through=True) for _ in range(2))
    with escaping(out, err):
        out.write("\u2211")
        err.write("\u2211")
    assert (out.errors, err.errors) == ("strict", "strict")
    for stream in (out, err):
        with pytest.raises(UnicodeEncodeError):
            stream.write("\u2211")


def _matmul_model():
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_an_added_initializer_is_refused_with_how_far_a_copys_scores_are():
    import pickle

    ort = pytest.importorskip("onnxruntime")
    from zoracle.adapters.onnx import OnnxClassifier

    options = ort.SessionOptions()
    weights = ort.OrtValue.ortvalue_from_numpy(np.zeros((4, 3), np.float32))
    options.add_initializer("W", weights)
    clf = OnnxClassifier(_matmul_model(), session_options=options)
    with pytest.raises(zo.ArgumentError, match=r"gave output 'z' up to [0-9.]+ apart on a probe input"):
        pickle.dumps(clf)


def test_an_input_declared_a_scalar_is_called_one():
    """An input declared with shape [] (rank 0) is a scalar: refused as such, not as undeclared."""
    pytest.importorskip("onnxruntime")
    from zoracle.adapters.onnx import OnnxClassifier

    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(zo.ArgumentError, match=r"input 'x' is a scalar; a classifier needs a batch axis"):
        OnnxClassifier(model)


def test_a_model_the_probe_cannot_run_still_pickles_with_its_options():
    """The check of a copy runs a probe with 1 for each free dimension: a model that needs more
    (here a reshape of rows of 4 into rows of 8 and back) is not judged, and pickles as before."""
    import pickle

    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from zoracle.adapters.onnx import OnnxClassifier

    graph = helper.make_graph([helper.make_node("Reshape", ["x", "eight"], ["pairs"]),
                               helper.make_node("Reshape", ["pairs", "four"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(np.array([-1, 8], np.int64), "eight"),
                               numpy_helper.from_array(np.array([-1, 4], np.int64), "four")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    clf = OnnxClassifier(model, session_options=options)
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf))(x), clf(x))
