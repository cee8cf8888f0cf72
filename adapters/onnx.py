"""ONNX models served by onnxruntime as query-only (black-box) classifiers.

``OnnxClassifier(path_or_bytes)`` reads the model's declared input (name, shape, dtype) and
checks every query against it, so a wrong shape, dtype or a non-finite input fails with a
message naming what was expected and what was given, before onnxruntime sees it. It counts
queries (one per input sample) and can enforce a query budget. The CUDA execution provider
is used when onnxruntime offers it and a CUDA device answers (``pip install -e
'.[onnx-gpu]'``), the CPU one otherwise (``pip install -e '.[onnx]'``).

Budget and copies
    A call is charged for all its samples before it runs, so a call that fails partway is
    still counted. Copies made by pickling (executors ship the classifier to worker
    processes) share one counter: pickling a classifier moves its count into a small
    ledger file (mode 0600, in the temporary directory, removed when the original is
    garbage collected) that every copy on the same machine updates under a file lock. A
    copy with a budget refuses to run where the ledger cannot be reached (another machine,
    or after the original was collected), so copies together never exceed the budget.

Importing this module imports onnxruntime: that is how a user opts in.
"""

from __future__ import annotations

import ctypes
import numbers
import os
import socket
import stat
import tempfile
import weakref

import numpy as np

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "zoracle.adapters.onnx needs onnxruntime: pip install -e '.[onnx]' (or '.[onnx-gpu]' for CUDA)"
    ) from exc

from zoracle._errors import (ArgumentError, OracleError, ZoracleError, check_flag, travelling_state, user_stacklevel,
                              warn)
from zoracle._forked import ForkSafeLock

from ._onnx_checks import coarse_cast_note, copy_disagreement, one_sample_note, per_call_refusal, undeclared_shape

__all__ = ["OnnxClassifier", "QueryBudgetExceeded", "default_providers"]

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class QueryBudgetExceeded(ZoracleError, RuntimeError):
    """A query would take an :class:`OnnxClassifier` past its query budget.

    Attributes
    ----------
    requested : int
        Samples the refused call asked for.
    used, budget : int
        Samples already evaluated, and the budget.
    """

    def __init__(self, requested: int, used: int, budget: int):
        self.requested, self.used, self.budget = requested, used, budget
        super().__init__(
            f"query budget exceeded: this call needs {requested} queries but only {budget - used} of "
            f"{budget} are left; raise `budget` or call reset_queries()"
        )

    def __reduce__(self):
        return (self.__class__, (self.requested, self.used, self.budget),
                travelling_state(self, ("requested", "used", "budget")))


#: largest input one call of a fixed-batch model may need (padding included)
MAX_FIXED_BATCH_BYTES = 256 << 20


def _cuda_device_present() -> bool:
    """Whether a CUDA driver is installed and reports at least one device."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False
    try:
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except Exception:  # a driver stub without the symbols
        return False


def default_providers() -> list:
    """``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when onnxruntime offers CUDA and a
    CUDA device answers, else ``["CPUExecutionProvider"]``.

    onnxruntime-gpu lists CUDA as available even without a GPU or driver, and then prints
    errors on every session before falling back: the device is checked here instead.
    """
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and _cuda_device_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _Ledger:
    """Query and call counters in a file shared by pickled copies on one machine (flock'ed)."""

    def __init__(self, path: str, host: str):
        self.path, self.host = path, host

    @classmethod
    def create(cls, count: int, calls: int = 0) -> "_Ledger":
        fd, path = tempfile.mkstemp(prefix="zoracle-onnx-queries-")  # mode 0600
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{int(count)} {int(calls)}")
        return cls(path, socket.gethostname())

    def reachable(self) -> bool:
        """On this machine, and the file this user made (once the original removed it, its name in the
        temp folder, which every user may write, can be anyone's file or a symlink to one)."""
        try:
            return self.host == socket.gethostname() and _own_file(os.lstat(self.path))
        except OSError:
            return False

    def update(self, fn, reset_calls: bool = False) -> int:
        """``fn(count) -> new count`` under an exclusive lock (the call counter set to 0 with
        ``reset_calls``); returns the new count."""
        return self._update(fn, 0, reset_calls)[0]

    def calls(self, add: int = 0) -> int:
        """The shared call counter after adding ``add``."""
        return self._update(lambda used: used, add)[1]

    def _update(self, fn, add_calls: int, reset_calls: bool = False) -> tuple:
        fd = os.open(self.path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))  # (a symlink planted meanwhile: ELOOP)
        try:
            if not _own_file(os.fstat(fd)):
                raise ZoracleError(f"the shared query counter {self.path} is no longer the file this classifier made "
                                   "(another user's file took its name); keep the original classifier alive while "
                                   "its copies run")
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # no flock (Windows): copies in one process only are safe
                pass
            raw = os.pread(fd, 64, 0) if hasattr(os, "pread") else os.read(fd, 64)
            fields = (raw.split() + [b"0", b"0"])[:2]
            new, calls = int(fn(int(fields[0]))), (0 if reset_calls else int(fields[1])) + int(add_calls)
            data = f"{new} {calls}".encode()
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)
            return new, calls
        finally:
            os.close(fd)  # releases the lock


_ONE_COLUMN = ("output {name!r} has one score column (a binary model's single logit or probability): the argmax "
               "over one column is always class 0; re-export it with two columns (torch.cat([-z, z], 1) for a "
               "logit z, [1 - p, p] for a probability p), or choose a label output with `output=`")


def _is_labels(node) -> bool:
    """An integer output of labels (N,), or a label column (N, 1) as some exporters write it."""
    return node.type in ("tensor(int64)", "tensor(int32)") and (
        len(node.shape) == 1 or (len(node.shape) == 2 and node.shape[1] == 1))


def _own_file(st) -> bool:
    """Whether ``st`` (an ``os.stat_result``) is a regular file of this user (any regular file where
    there are no user ids)."""
    return stat.S_ISREG(st.st_mode) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _shape_str(shape) -> str:
    return "(" + ", ".join("N" if i == 0 and d is None else ("?" if d is None else str(d))
                           for i, d in enumerate(shape)) + ("," if len(shape) == 1 else "") + ")"


def _dims(shape) -> tuple:
    """Declared dims with every symbolic / unknown dimension as None."""
    return tuple(d if isinstance(d, numbers.Integral) and d > 0 else None for d in shape)


def _read_model(model) -> tuple[bytes | str, str]:
    """The model as onnxruntime takes it (bytes, which pickled copies carry; or the absolute path
    of a file too large for bytes) and how messages name it."""
    if hasattr(model, "SerializeToString"):  # an onnx.ModelProto, e.g. from skl2onnx
        try:
            return model.SerializeToString(), f"{type(model).__name__} object"
        except Exception as exc:  # protobuf serializes at most 2 GiB
            raise ArgumentError(
                f"`model`: the {type(model).__name__} cannot be serialized ({type(exc).__name__}: {exc}); a model "
                "over 2 GiB must keep its weights in external data: onnx.save_model(model, 'model.onnx', "
                "save_as_external_data=True) and pass the path 'model.onnx'") from None
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), f"{len(model)} bytes"
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise ArgumentError(f"`model`: no such ONNX file {path!r}; check the path (export it first?)")
        if os.path.isdir(path):
            raise ArgumentError(f"`model`: {path!r} is a directory, expected an .onnx file")
        with open(path, "rb") as fh:
            data = fh.read()
        return _with_external_data(data, path), repr(path)
    raise ArgumentError(
        f"`model` must be a path, bytes or an onnx.ModelProto, got {type(model).__name__}"
    )


def _external_tensors(proto) -> list:
    """The tensors of ``proto`` (subgraphs included) kept in external data files."""
    from onnx.external_data_helper import uses_external_data

    graphs, tensors = [proto.graph], []
    while graphs:
        g = graphs.pop()
        tensors.extend(g.initializer)
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    tensors.append(a.t)
                tensors.extend(a.tensors)
                if a.HasField("g"):
                    graphs.append(a.g)
                graphs.extend(a.graphs)
    return [t for t in tensors if uses_external_data(t)]


#: protobuf serializes messages under 2 GiB
_PROTO_LIMIT = 2**31 - 1


def _with_external_data(data: bytes, path: str) -> bytes | str:
    """``data`` (the file at ``path``) with the tensors it keeps in external data files (a large
    export's ``model.onnx.data``) read in: onnxruntime looks for those files next to a path, and
    zoracle hands it bytes (which pickled copies carry). A model of 2 GiB or more cannot be
    bytes: its absolute path is returned (copies then need the files at that path). A file with
    no external data, or one onnx cannot parse (the session's own error then names the problem),
    is returned as it is."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is in the onnx extra
        return data
    try:
        proto = onnx.load_model_from_string(data)
    except Exception:
        return data
    external = _external_tensors(proto)
    if not external:
        return data
    folder = os.path.dirname(os.path.abspath(path))
    files = {e.value for t in external for e in t.external_data if e.key == "location"}
    try:
        size = len(data) + sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    except OSError:
        size = 0  # a missing file: the load below names it
    if size >= _PROTO_LIMIT:
        return os.path.abspath(path)
    try:
        onnx.load_external_data_for_model(proto, folder)
        return proto.SerializeToString()
    except Exception as exc:
        raise ArgumentError(f"`model` {path!r} keeps its weights in external data files, and they could not be "
                            f"read next to it: {type(exc).__name__}: {str(exc).strip()[:300]}; keep the .data file "
                            "beside the .onnx file, as it was exported") from None


def _parsed(model):
    """The model parsed with onnx (without its external data) for the construction-time checks
    below, or None where the onnx package is missing or cannot parse it. Parsed once for both: a
    parse of a 50 MB model takes about 45 ms."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is in the onnx extra
        return None
    try:
        return (onnx.load_model_from_string(model) if isinstance(model, bytes)
                else onnx.load_model(model, load_external_data=False))
    except Exception:
        return None


def _training_mode_nodes(model, proto=False) -> list:
    """``(node name, op, what it does)`` for the nodes of a model exported in training mode (torch.onnx.export
    of a model left in train mode with training=TrainingMode.PRESERVE or TRAINING): BatchNormalization with
    ``training_mode=1`` (opset 14+) or with its training outputs (opset 9-13), which normalizes every call by
    the batch's own statistics, and Dropout with a constant ``training_mode`` of True, which drops at random.
    Empty when the onnx package is missing or cannot parse the model. ``proto``: the model as
    :func:`_parsed` gives it, where the caller has it."""
    proto = _parsed(model) if proto is False else proto
    if proto is None:
        return []
    from onnx import numpy_helper

    graph = proto.graph
    consts = {t.name: t for t in graph.initializer}
    consts.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                   for a in n.attribute if a.name == "value"})
    found = []
    for n in graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        if n.op_type == "BatchNormalization" and (
                len(n.output) > 1 or any(a.name == "training_mode" and a.i for a in n.attribute)):
            found.append((n.name or n.output[0], n.op_type, "normalizes each call by its own batch statistics"))
        elif n.op_type == "Dropout" and len(n.input) > 2 and n.input[2] in consts:
            try:
                on = bool(numpy_helper.to_array(consts[n.input[2]]).any())
            except Exception:
                on = False
            if on:
                found.append((n.name or n.output[0], n.op_type, "drops activations at random"))
    return found


def _svm_label_check(model, score_output: str, proto=False):
    """``(label output, class labels, node name)`` when ``score_output`` is the score output of an
    ``ai.onnx.ml`` SVMClassifier (through Cast / Identity / ZipMap, as skl2onnx writes SVC and NuSVC) and the
    model also outputs that node's labels, and the node has no probability calibration (``prob_a``); else
    None. onnxruntime writes a binary SVM's two score columns in the opposite order of its labels when it
    has no calibration (sklearn-onnx issue 990): the first calls compare the columns' argmax with the labels
    (``OnnxClassifier._run``). ``proto``: as :func:`_training_mode_nodes`'."""
    proto = _parsed(model) if proto is False else proto
    if proto is None:
        return None
    import onnx

    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}

    def source(name):  # the SVMClassifier output that ``name`` passes on unchanged, if any
        for _ in range(len(graph.node) + 1):
            n = producer.get(name)
            if n is None or not n.input:
                return None, None
            if n.op_type == "SVMClassifier" and n.domain == "ai.onnx.ml":
                return n, list(n.output).index(name)
            if n.op_type not in ("Cast", "Identity", "ZipMap"):
                return None, None
            name = n.input[0]
        return None, None

    svm, index = source(score_output)
    if svm is None or index != 1:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in svm.attribute}
    if attrs.get("prob_a"):  # calibrated probabilities (SVC(probability=True)) may differ from the labels
        return None
    classes = attrs.get("classlabels_ints") or [c.decode() for c in attrs.get("classlabels_strings") or []]
    for out in graph.output:
        n, i = source(out.name)
        if n is svm and i == 0 and classes:
            return out.name, np.asarray(classes), svm.name or svm.output[0]
    return None


def _have_onnx() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def _refers_to_external_data(data) -> bool:
    """Whether model bytes name external data files (which bytes do not carry)."""
    try:
        import onnx

        return isinstance(data, bytes) and bool(_external_tensors(onnx.load_model_from_string(data)))
    except Exception:
        return False


#: the SessionOptions settings a pickled copy carries (optimized_model_filepath stays with the
#: original: copies would all write that one file)
_OPTION_SETTINGS = ("enable_cpu_mem_arena", "enable_mem_pattern", "enable_mem_reuse", "enable_profiling",
                    "execution_mode", "execution_order", "graph_optimization_level", "inter_op_num_threads",
                    "intra_op_num_threads", "log_severity_level", "log_verbosity_level", "logid",
                    "profile_file_prefix", "use_deterministic_compute", "use_per_session_threads")


def _options_settings(options):
    if options is None:
        return None
    return {a: getattr(options, a) for a in _OPTION_SETTINGS if hasattr(options, a)}


def _options_from(settings: dict):
    options = ort.SessionOptions()
    for a, v in settings.items():
        try:
            setattr(options, a, v)
        except (AttributeError, TypeError):  # read-only in this onnxruntime
            pass
    return options


def _too_new(message: str) -> str:
    """What to say of a model onnxruntime refused for its opset or IR version (a model exported by a
    newer torch or onnx than this onnxruntime knows), else "". Its message names the versions only
    after a C++ signature that a 300-character excerpt cuts off."""
    import re

    m = re.search(r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)", message, re.S)
    if m:
        return (f"is stamped with {m.group(2)} opset {m.group(1)}, newer than onnxruntime {ort.__version__} runs (up "
                f"to opset {m.group(3)}): upgrade onnxruntime, or export the model at opset {m.group(3)} or older "
                f"(torch.onnx.export(..., opset_version={m.group(3)}))")
    m = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", message)
    if m:
        return (f"has ONNX IR version {m.group(1)}, newer than onnxruntime {ort.__version__} reads (up to "
                f"{m.group(2)}): upgrade onnxruntime, or save the model with an onnx package that writes IR "
                f"version {m.group(2)}")
    return ""


class OnnxClassifier:
    """An ONNX classifier as a query-only black box.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model. A missing, empty, truncated or non-ONNX file raises
        :class:`~zoracle.ArgumentError` here, at construction. Samples go along the input's
        first axis and the output's rows: a symbolic batch axis declared at a later input axis
        (input ``(4, 'N')``) or at the output's second axis (class-major ``(C, 'N')``) is
        refused here too; re-export with the batch axis first.
    providers : list, optional
        onnxruntime execution providers; default :func:`default_providers` (CUDA when
        available, else CPU). Names not offered by this onnxruntime build are rejected.
    output : str or int, optional
        Which model output to return. Default: the floating-point output of rank 2 (class
        scores: logits or probabilities; a model with several, features and logits, is refused
        until one is named); else a scikit-learn ZipMap probability output (list of dicts,
        converted to an array); else the first output. An integer
        rank-1 output (e.g. skl2onnx's ``label``) makes ``__call__`` return labels.
    budget : int, optional
        Most samples this classifier may evaluate in all; a call that would exceed it raises
        :class:`QueryBudgetExceeded` without running.
    input : str, optional
        The name of the model's input, checked against it. The model must have exactly one
        input (the samples); export other inputs as constants.
    cast : bool
        Cast floating inputs of another float dtype to the declared one instead of raising. A cast
        to a narrower float (float64 to a float16 model) of successive calls that move the inputs by
        a few of its spacings (a zeroth-order estimate's steps over mu) warns once.
    batch_size : int, optional
        Most samples per onnxruntime call (dynamic batch axis); a fixed batch axis always
        uses its declared size, padding the last chunk (a fixed batch of 1: one onnxruntime call
        per sample, which a RuntimeWarning says once, naming the export with a dynamic batch axis).
        A model quantized per call
        (``quantize_dynamic``: a sample's scores depend on its batch mates) needs 1.
    session_options : onnxruntime.SessionOptions, optional
        Pickled copies (process and cluster executors) rebuild it from its settings (threads,
        graph optimization level, execution mode, ...); session config entries
        (``add_session_config_entry``) and registered custom-op libraries do not travel.
        Nor do ``add_initializer``'s weights: where a copy would compute other outputs (on an
        uncounted probe input), the first pickling raises :class:`~zoracle.ArgumentError`. Keep the
        ``OrtValue`` you add alive: onnxruntime holds no reference to it, nor can OnnxClassifier
        reach it (collected, it crashes the process or the scores read freed memory).

    Attributes
    ----------
    input_name, input_shape, input_dtype
        The declared input; ``input_shape[0]`` is None for a dynamic batch axis.
    output_name : str
    output_kind : str
        ``"scores"`` or ``"labels"``.
    num_classes : int or None
        From the output's declared shape, or learned on the first call.
    queries : int
        Samples evaluated so far (padding excluded), by this classifier and its pickled copies;
        a call is counted before it runs, so one that fails partway counts too.
    calls : int
        onnxruntime ``run`` calls so far, by this classifier and its pickled copies (counted
        as ``queries`` is).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skl2onnx import to_onnx
    >>> from zoracle.adapters.onnx import OnnxClassifier
    >>> X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32); y = (X[:, 0] > 0).astype(int)
    >>> clf = OnnxClassifier(to_onnx(LogisticRegression().fit(X, y), X[:1]), budget=100)
    >>> clf(X[:5]).shape, clf.output_kind, clf.queries
    ((5, 2), 'scores', 5)
    """

    def __init__(self, model, providers=None, *, output=None, budget: int | None = None,
                 input: str | None = None, cast: bool = False, batch_size: int | None = None,
                 session_options=None):
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0):
            raise ArgumentError(f"`budget` must be a non-negative integer or None, got {budget!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                       or batch_size < 1):
            raise ArgumentError(f"`batch_size` must be a positive integer or None, got {batch_size!r}")
        self._model, self._source = _read_model(model)
        if not self._model:
            raise ArgumentError(f"`model` {self._source} is empty; re-export the ONNX file")
        self.providers_requested = self._check_providers(providers)
        if session_options is not None and not isinstance(session_options, ort.SessionOptions):
            raise ArgumentError(f"`session_options` must be an onnxruntime.SessionOptions or None, got "
                                f"{type(session_options).__name__} (build one: o = onnxruntime.SessionOptions(); "
                                "o.intra_op_num_threads = 1)")
        self._session_options = session_options
        self.budget = None if budget is None else int(budget)
        self.cast = check_flag("cast", cast)
        self.batch_size = None if batch_size is None else int(batch_size)
        self._input_choice, self._output_choice = input, output
        self._queries = 0
        self._count_lock = ForkSafeLock()  # threads of one process share the local counter
        self._ledger = None  # the counter shared with pickled copies, created on first pickling
        self._calls = 0
        self._open()
        if not _have_onnx():  # onnxruntime alone: the checks that read the graph cannot run
            warn(
                f"OnnxClassifier: the onnx package is not installed, so {self._source} was not checked for "
                "training-mode nodes (BatchNormalization on batch statistics, Dropout on), activations quantized "
                "per call or a binary SVM's swapped score columns; install it: pip install -e '.[onnx]'",
                RuntimeWarning, stacklevel=user_stacklevel())

    # construction ------------------------------------------------------------------------
    @staticmethod
    def _check_providers(providers) -> list:
        if providers is None:
            return default_providers()
        if isinstance(providers, str):
            providers = [providers]
        if not isinstance(providers, (list, tuple)):  # a number: a bare TypeError from iterating it
            raise ArgumentError(f"`providers` must be a list of execution provider names such as "
                                f"['CPUExecutionProvider'], got {type(providers).__name__} {providers!r}")
        available = ort.get_available_providers()
        for p in providers:
            if isinstance(p, tuple) and not (len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict)):
                # onnxruntime prints "EP Error" and falls back to its CPU provider instead
                raise ArgumentError(f"`providers`: {p!r} must be a name or a (name, options dict) pair such as "
                                    "('CUDAExecutionProvider', {'device_id': 0})")
            name = p[0] if isinstance(p, tuple) else p
            if name not in available:
                raise ArgumentError(
                    f"`providers`: {name!r} is not available in this onnxruntime build; available: {available}"
                    + (" (CUDA needs onnxruntime-gpu in place of onnxruntime, never next to it: "
                       "pip uninstall -y onnxruntime && pip install -e '.[onnx-gpu]'; the 'onnx', 'apps' and "
                       "'all' extras install the CPU onnxruntime again)"
                       if name == "CUDAExecutionProvider" else "")
                )
        return list(providers)

    def _open(self) -> None:
        try:
            self.session = ort.InferenceSession(self._model, sess_options=self._session_options,
                                                providers=self.providers_requested)
        except Exception as exc:
            kind = type(exc).__name__
            if kind in ("NotImplemented", "NotImplementedError"):  # a valid model with an op no provider runs
                what = (f"uses an operator that onnxruntime's providers {self.providers_requested} cannot run "
                        "(float64 convolutions on the CPU, for one): export it in float32, or use a provider "
                        "that implements it")
            elif isinstance(self._model, str):  # a model too large for bytes, read from its path (a copy's too)
                what = (f"could not be opened from {self._model!r}, where a model of 2 GiB or more is read (by every "
                        "pickled copy too): keep the .onnx file and its .data files at that path")
            elif (any(w in str(exc).lower() for w in ("external data", "getfilelength", "cannot get file size"))
                  and not _have_onnx()):  # (onnxruntime 1.16 and 1.19 name only the file: "GetFileLength for
                # ./m.onnx.data failed", "filesystem error: cannot get file size: ... [m.onnx.data]")
                what = ("keeps its weights in external data files, which zoracle reads in with the onnx package "
                        "(onnxruntime alone looks for them in the working directory): install it, pip install -e "
                        "'.[onnx]'")
            elif _refers_to_external_data(self._model):
                what = ("keeps its weights in external data files, which bytes and a ModelProto do not carry: pass "
                        "the .onnx file's path (its .data file beside it), or onnx.load(path) with its external data")
            elif _too_new(str(exc)):  # valid, but newer than this onnxruntime: not "corrupted"
                what = _too_new(str(exc))
            elif "Type Error" in str(exc) and "ZipMap" in str(exc) and "tensor(double)" in str(exc):
                # skl2onnx's default for a float64 model: a ZipMap onnxruntime only runs on float32
                what = ("ends in a ZipMap of float64 probabilities, which onnxruntime cannot run (its ZipMap takes "
                        "float32; skl2onnx writes one for a classifier converted with float64 inputs): convert it "
                        "with options={id(clf): {'zipmap': False}} (clf: the scikit-learn classifier), whose "
                        "probabilities tensor (N, C) OnnxClassifier reads, or with float32 inputs")
            elif "INVALID_GRAPH" in str(exc) or "Type Error" in str(exc):  # it parsed: a node's input type is
                # one its operator does not take
                what = ("is an ONNX graph that onnxruntime refuses (onnx.checker.check_model(model, full_check=True) "
                        "names the node); fix or re-export the model")
            else:
                what = "is not a loadable ONNX model (truncated, corrupted or not ONNX?)"
            raise ArgumentError(f"`model` {self._source} {what}: {kind}: {str(exc).strip()[:300]}") from None
        self.providers = self.session.get_providers()
        proto = _parsed(self._model)  # once, for both checks
        training = _training_mode_nodes(self._model, proto)
        if training:
            name, op, what = training[0]
            raise ArgumentError(
                f"`model` {self._source} was exported in training mode: {op} node {name!r} {what} ({len(training)} "
                "such nodes), so a sample's scores would depend on the other samples of a call (batch_size, padding) "
                "or change from query to query; re-export it in eval mode (model.eval() before torch.onnx.export, "
                "whose default training=torch.onnx.TrainingMode.EVAL does this)")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            labels = [(i.name, _DTYPES[i.type].__name__, _shape_str(_dims(i.shape)))  # (x, y) -> loss: labels
                      for i in inputs[1:] if _is_labels(i)]  # fed beside the samples
            raise ArgumentError(
                f"`model` {self._source} has {len(inputs)} inputs {[i.name for i in inputs]} to feed; OnnxClassifier "
                "feeds exactly one (the samples): "
                + ("input {!r} ({}, {}) looks like the labels of a loss computed inside the model: export the model "
                   "without its loss (its class scores) and compute the loss on the scores OnnxClassifier "
                   "returns".format(*labels[0]) if labels else
                   "export the model with a single input (fold the others in as constants; weights as inputs come "
                   "from torch.onnx.export(..., export_params=False): re-export with export_params=True, the default)")
            )
        if self._input_choice is None:
            node = inputs[0]
        else:
            match = [i for i in inputs if i.name == self._input_choice]
            if not match:
                names = [i.name for i in inputs]
                raise ArgumentError(f"`input`={self._input_choice!r} is not a model input; inputs: {names}")
            node = match[0]
        if node.type not in _DTYPES:
            raise ArgumentError(f"unsupported input type {node.type} for input {node.name!r}")
        if len(node.shape) == 0:
            raise ArgumentError(undeclared_shape(proto, node.name, node.type)
                                or f"input {node.name!r} is a scalar; a classifier needs a batch axis")
        self.input_name = node.name
        self.input_shape = _dims(node.shape)
        self.input_dtype = np.dtype(_DTYPES[node.type])
        self._check_fixed_batch()
        self._check_batch_axis(self.session.get_outputs(), list(node.shape))
        refusal = per_call_refusal(proto, self._source, self.input_shape[0], self.batch_size)
        if refusal:
            raise ArgumentError(refusal)
        self._pick_output(self.session.get_outputs(), proto, list(node.shape))
        self._one_sample = one_sample_note(proto, self._source, self.input_name, self.output_name,  # said once
                                           self.input_shape[0])

    def _check_batch_axis(self, outputs, raw_shape=()) -> None:
        """A fixed first input axis that no output starts with is no batch axis (a model exported for
        one sample, ``(3, H, W)``): its samples would be cut along the channels. An output that starts
        with the symbolic dimension of a later input axis (input ``(4, "N")``, output ``("N", C)``) has
        its batch axis there, not first: samples fed along axis 0 would be cut along the features."""
        later = {d: k for k, d in enumerate(raw_shape) if k > 0 and isinstance(d, str) and d}
        if raw_shape and isinstance(raw_shape[0], str) and raw_shape[0] and any(
                len(o.shape) and o.shape[0] == raw_shape[0] for o in outputs):
            later = {}  # an output starts with the first input axis: that is the batch axis (another output
            # that starts with a later one, hidden states laid out (T, N, ...), does not move it)
        for o in outputs:
            first = o.shape[0] if len(o.shape) else None
            if isinstance(first, str) and first in later and first != raw_shape[0]:
                raise ArgumentError(
                    f"input {self.input_name!r} of shape {tuple(raw_shape)} has its batch axis {first!r} at axis "
                    f"{later[first]} (output {o.name!r} starts with it); OnnxClassifier feeds samples along axis 0: "
                    "re-export the model with the batch axis first (permute the input inside the model)")
        fixed = self.input_shape[0]
        firsts = [_dims(o.shape)[0] if len(o.shape) else None for o in outputs]
        if fixed is None or not firsts or any(f is None or f == fixed for f in firsts):
            return
        outs = ", ".join(f"{o.name!r} {_shape_str(_dims(o.shape))}" for o in outputs)
        raise ArgumentError(
            f"input {self.input_name!r} of shape {_shape_str(self.input_shape)} has no batch axis: its first axis "
            f"({fixed}) starts no output ({outs}); OnnxClassifier feeds samples along axis 0: re-export the model "
            f"with a batch axis (torch.onnx.export(model, (x[None],), ..., dynamic_axes={{{self.input_name!r}: "
            "{0: 'batch'}, <output>: {0: 'batch'}}))"
        )

    def _check_fixed_batch(self) -> None:
        """A fixed batch axis pads every call to its size: refuse sizes that cannot be padded."""
        fixed, rest = self.input_shape[0], self.input_shape[1:]
        if fixed is None or any(d is None for d in rest):
            return
        need = int(fixed) * int(np.prod(rest, dtype=np.int64)) * self.input_dtype.itemsize
        if need > MAX_FIXED_BATCH_BYTES:
            raise ArgumentError(
                f"input {self.input_name!r} declares a fixed batch axis of {fixed} samples: every call would pad "
                f"its samples to {need / 2**30:.2f} GiB (limit {MAX_FIXED_BATCH_BYTES >> 20} MiB); re-export the "
                "model with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}))"
            )

    def _pick_output(self, outputs, proto=False, raw_shape=()) -> None:
        choice = self._output_choice
        if choice is None:
            scores = [o for o in outputs if o.type in ("tensor(float)", "tensor(double)", "tensor(float16)")
                      and len(o.shape) == 2 and o.shape[1] != 1]  # one column: no classes to take the argmax of
            later = [d for d in raw_shape[1:] if isinstance(d, str) and d]
            batch = _dims(raw_shape[:1])[0] if raw_shape else None
            per_sample = [o for o in scores if not (  # an output led by another axis (a (T, N) state, a constant)
                o.shape[0] in later or (isinstance(o.shape[0], numbers.Integral) and o.shape[0] > 0
                                        and o.shape[0] != batch))]
            if len(per_sample) > 1:  # features and logits, probabilities and logits: which is meant?
                named = ", ".join(f"{o.name!r} {_shape_str(_dims(o.shape))}" for o in per_sample)
                raise ArgumentError(
                    f"`output`: the model has {len(per_sample)} outputs that could be class scores: {named}; choose "
                    "one with `output=` (its name or index), e.g. the logits rather than features or an embedding")
            zipmaps = [o for o in outputs if o.type.startswith("seq(map(")]
            labels = [o for o in outputs if _is_labels(o)]
            node = (per_sample or scores or zipmaps or labels or list(outputs))[0]
        elif isinstance(choice, numbers.Integral) and not isinstance(choice, bool):
            if not 0 <= choice < len(outputs):
                raise ArgumentError(f"`output`={choice} is out of range; the model has {len(outputs)} outputs")
            node = outputs[choice]
        else:
            match = [o for o in outputs if o.name == choice]
            if not match:
                raise ArgumentError(f"`output`={choice!r} is not a model output; outputs: {[o.name for o in outputs]}")
            node = match[0]
        self.output_name = node.name
        self._zipmap = node.type.startswith("seq(map(")
        is_int_vector = _is_labels(node)
        if not (self._zipmap or is_int_vector or (node.type in _DTYPES and len(node.shape) == 2)):
            others = [o.name for o in outputs if o.name != node.name]
            raise ArgumentError(
                f"output {node.name!r} ({node.type}" + (f", shape {node.shape}" if node.type in _DTYPES else "")
                + ") is neither class scores nor labels: OnnxClassifier reads a float tensor of scores (N, C), "
                "integer labels (N,) or a ZipMap's list of {class: probability} maps; "
                + (f"choose another output with `output=` (others: {others})" if others else
                   "the model has no other output: re-export it with one of these")
                + ("; if it is a loss computed inside the model, export the model without its loss (its class "
                   "scores) and compute the loss on the scores OnnxClassifier returns"
                   if node.type in _DTYPES and len(node.shape) <= 1 and _DTYPES[node.type] in (
                       np.float16, np.float32, np.float64) else "")
            )
        if not (self._zipmap or is_int_vector) and node.shape[1] == 1:
            raise ArgumentError(_ONE_COLUMN.format(name=node.name))
        batch_dim = [i.shape[0] for i in self.session.get_inputs() if i.name == self.input_name][0]
        if (not (self._zipmap or is_int_vector) and isinstance(batch_dim, str) and batch_dim
                and node.shape[1] == batch_dim and node.shape[0] != batch_dim):
            raise ArgumentError(
                f"output {node.name!r} of shape {tuple(node.shape)} has the batch axis {batch_dim!r} of input "
                f"{self.input_name!r} second: its rows are classes, not samples; OnnxClassifier reads scores (N, C): "
                "re-export the model with the batch axis first (transpose the output inside the model), or choose "
                "another output with `output=`")
        self.output_kind = "labels" if is_int_vector else "scores"
        self._label_check = _svm_label_check(self._model, node.name, proto) if self.output_kind == "scores" else None
        last = node.shape[-1] if (self.output_kind == "scores" and not self._zipmap) else None
        self.num_classes = int(last) if isinstance(last, numbers.Integral) and last > 0 else None

    # pickling: sessions do not pickle, the model bytes (or a large model's path) do --------------
    def __getstate__(self):
        if self._session_options is not None and not getattr(self, "_options_travel", False):  # checked once
            refusal = copy_disagreement(self, _options_from(_options_settings(self._session_options)))
            if refusal:
                raise ArgumentError(refusal)
            self._options_travel = True
        if self._ledger is None:  # from now on this object and its copies share one counter
            self._ledger = _Ledger.create(self._queries, self._calls)
            weakref.finalize(self, _unlink, self._ledger.path)
        state = self.__dict__.copy()
        del state["session"], state["_count_lock"]
        if state.get("_last_cast") is not False:  # the previous call's input (False: coarse_cast_note said)
            state.pop("_last_cast", None)
        # SessionOptions do not pickle: their settings do, and a copy rebuilds them (threads,
        # graph optimization level, ...: a copy must compute what the original computes)
        state["_session_options"] = _options_settings(self._session_options)
        return state

    def __setstate__(self, state):
        settings = state.get("_session_options")
        if isinstance(settings, dict):
            state = dict(state, _session_options=_options_from(settings))
        self.__dict__.update(state)
        self._count_lock = ForkSafeLock()
        self._open()

    # queries ---------------------------------------------------------------------------
    @property
    def queries(self) -> int:
        """Samples evaluated so far, by this classifier and every pickled copy of it."""
        ledger = self._ledger
        if ledger is not None and ledger.reachable():
            return ledger.update(lambda used: used)
        return self._queries

    @property
    def calls(self) -> int:
        """onnxruntime ``run`` calls so far, by this classifier and every pickled copy of it."""
        ledger = self._ledger
        if ledger is not None and ledger.reachable():
            return ledger.calls()
        return self._calls

    @property
    def remaining(self) -> int | None:
        """Queries left under the budget (None without a budget)."""
        return None if self.budget is None else self.budget - self.queries

    def reset_queries(self) -> None:
        """Set the query and call counters back to zero (the shared one too, for every copy)."""
        self._queries = 0
        self._calls = 0
        if self._ledger is not None and self._ledger.reachable():
            self._ledger.update(lambda used: 0, reset_calls=True)

    def _charge(self, n: int, runs: int = 0) -> None:
        """Count ``n`` samples and the ``runs`` onnxruntime calls they take before they run (one
        ledger transaction for both), or raise QueryBudgetExceeded without counting."""
        budget = self.budget

        def add(used):
            if budget is not None and used + n > budget:
                raise QueryBudgetExceeded(n, used, budget)
            return used + n

        ledger = self._ledger
        if ledger is None:
            with self._count_lock:
                self._queries = add(self._queries)
                self._calls += runs
        elif ledger.reachable():
            self._queries, self._calls = ledger._update(add, runs)
        elif budget is None:
            with self._count_lock:
                self._queries += n  # counting only: this copy counts for itself
                self._calls += runs
        else:
            raise ZoracleError(
                f"this copy of an OnnxClassifier with budget={budget} cannot reach the shared query counter "
                f"{ledger.path} (another machine, or the original object was garbage collected); copies share "
                "one budget only on the machine of the original: keep the original alive, or use budget=None "
                "on remote workers"
            )

    def check_input(self, x) -> np.ndarray:
        """``x`` as the array the model expects, or :class:`~zoracle.ArgumentError` saying why not."""
        if not isinstance(x, np.ndarray):
            module = type(x).__module__.split(".")[0]
            fix = {"torch": "x.detach().cpu().numpy()", "cupy": "x.get()", "pandas": "x.to_numpy()",
                   "jax": "np.asarray(x)", "tensorflow": "x.numpy()"}.get(module)
            if fix is not None:
                raise ArgumentError(f"`x` must be a NumPy array, got {module}.{type(x).__name__}; convert it ({fix})")
            x = np.asarray(x)
        if x.ndim != len(self.input_shape):
            hint = "; add a batch axis (x[None])" if x.ndim == len(self.input_shape) - 1 else ""
            raise ArgumentError(f"`x` for input {self.input_name!r} must have shape {_shape_str(self.input_shape)} "
                                f"(N = batch), got {x.shape}{hint}")  # (formatted on error only: 2 us a call)
        for axis, (want, got) in enumerate(zip(self.input_shape, x.shape)):
            if axis > 0 and want is not None and want != got:
                raise ArgumentError(f"`x` for input {self.input_name!r} must have shape {_shape_str(self.input_shape)} "
                                    f"(N = batch), got {x.shape} (axis {axis} is {got}, expected {want})")
        if x.shape[0] == 0:
            raise ArgumentError(f"`x` holds no samples (shape {x.shape}); pass at least one")
        if x.dtype != self.input_dtype:
            castable = x.dtype.kind == "f" and self.input_dtype.kind == "f"
            if not (self.cast and castable):
                raise ArgumentError(
                    f"`x` for input {self.input_name!r} must have dtype {self.input_dtype}, got {x.dtype}; "
                    + (f"use OnnxClassifier(..., cast=True), or x.astype(np.{self.input_dtype.name})"
                       + (" (not through zoracle.smoothing, which draws its noise in float32 or float64)"
                          if self.input_dtype == np.float16 else "") if castable else
                       f"use x.astype(np.{self.input_dtype.name})")
                )
            if self.input_dtype.kind == "f":
                big = np.abs(x[np.isfinite(x)]).max(initial=0.0) > np.finfo(self.input_dtype).max
                if big:  # the cast would overflow to inf: say so, not "holds NaN or inf"
                    raise ArgumentError(f"`x` holds values beyond the {self.input_dtype} range (|x| up to "
                                        f"{float(np.abs(x[np.isfinite(x)]).max()):.3g}); `cast=True` cannot convert them")
            x = x.astype(self.input_dtype)
        # one pass over the elements, the rows only where one is not finite (all(axis=1) over 4096 rows of 64: 10x)
        if x.dtype.kind == "f" and not (finite := np.isfinite(x)).all():
            finite = finite.reshape(x.shape[0], -1).all(axis=1)
            bad = int(np.flatnonzero(~finite)[0])
            raise ArgumentError(f"`x` must be finite; sample {bad} (of {x.shape[0]}) holds NaN or inf "
                                f"({int((~finite).sum())} such samples)")
        return np.ascontiguousarray(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        check = getattr(self, "_label_check", None)
        names = [self.output_name] + ([check[0]] if check else [])
        out, *labels = self.session.run(names, {self.input_name: x})
        if self._zipmap:
            keys = sorted(out[0])
            out = np.array([[row[k] for k in keys] for row in out], dtype=np.float32)
        out = np.asarray(out)
        # the advice: its label output where OnnxClassifier takes it (integer labels; string ones it refuses)
        use_labels = check and check[1].dtype.kind in "iu"
        if check and (out.ndim != 2 or out.shape[1] != len(check[1])):  # not one score per class
            raise ZoracleError(
                f"output {self.output_name!r} of SVMClassifier node {check[2]!r} holds {out.shape[-1]} scores per "
                f"sample for {len(check[1])} classes: without probability calibration onnxruntime writes a multi-class "
                "SVM's one-vs-one decision values (one per pair of classes), not class scores; "
                + (f"use output={check[0]!r} for its labels, or " if use_labels else "")
                + "export a calibrated SVC for class probabilities (CalibratedClassifierCV(SVC(), ensemble=False); "
                  "SVC(probability=True) before scikit-learn 1.11)"
                + ("" if use_labels else " (its label output holds strings, which OnnxClassifier does not take)"))
        if check:  # the scores' argmax must be the model's own label (untied rows)
            top = np.sort(out, axis=1)
            untied = top[:, -1] > top[:, -2]
            label = np.asarray(labels[0]).reshape(-1)
            wrong = untied & (check[1][out.argmax(axis=1)] != label)
            if wrong.any():
                i = int(np.flatnonzero(wrong)[0])
                raise ZoracleError(
                    f"output {self.output_name!r} of SVMClassifier node {check[2]!r} disagrees with the model's own "
                    f"label output {check[0]!r} on {int(wrong.sum())} of {int(untied.sum())} samples (sample {i}: "
                    f"highest score in column {int(out[i].argmax())}, label {label.tolist()[i]!r}): "
                    + ("onnxruntime writes a binary SVM's score columns swapped without probability calibration "
                       "(sklearn-onnx issue 990)" if len(check[1]) == 2 else "without probability calibration "
                       "onnxruntime writes a multi-class SVM's one-vs-one decision values, not class scores")
                    + (f"; use output={check[0]!r} for its labels" if use_labels else "; export a calibrated SVC for "
                       "class probabilities (CalibratedClassifierCV(SVC(), ensemble=False); SVC(probability=True) "
                       "before scikit-learn 1.11; its label output holds strings, which OnnxClassifier does not take)"))
            if untied.any():
                self._label_check = None  # checked: one call with untied rows is enough
        return out

    def __call__(self, x) -> np.ndarray:
        """Class scores ``(N, C)`` (or labels ``(N,)`` for a label output) for a batch ``x``."""
        raw, x = x, self.check_input(x)
        if (self.cast and getattr(self, "_last_cast", None) is not False and isinstance(raw, np.ndarray)
                and x.dtype.itemsize < raw.dtype.itemsize):  # a float cast to a narrower float
            note = coarse_cast_note(getattr(self, "_last_cast", None), raw, x.dtype, self._source, self.input_name)
            if note:  # said once
                warn(note, RuntimeWarning, stacklevel=user_stacklevel())
            self._last_cast = False if note else raw.astype(np.float64)
        n = x.shape[0]
        fixed = self.input_shape[0]
        step = fixed if fixed is not None else (self.batch_size or n)
        self._charge(n, len(range(0, n, step)))  # counted before running: a call that fails partway still counts
        if n > 1 and getattr(self, "_one_sample", ""):
            note, self._one_sample = self._one_sample, ""
            warn(note, RuntimeWarning, stacklevel=user_stacklevel())
        parts = []
        for lo in range(0, n, step):
            chunk = x[lo:lo + step]
            real = chunk.shape[0]
            if fixed is not None and real < fixed:  # a fixed batch axis: pad, then drop the padding
                pad = np.zeros((fixed - real,) + chunk.shape[1:], dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self._run(chunk)[:real])
        if len({p.shape[1:] for p in parts}) > 1:  # e.g. a class axis that followed the chunk size
            raise ZoracleError(f"output {self.output_name!r} returned shapes {[p.shape for p in parts]} for chunks of "
                               f"{step} samples: its trailing axes change with the batch; expected (n, C)")
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if self.output_kind == "labels" and out.shape == (n, 1):  # a label column
            out = out.reshape(n)
        if self.output_kind == "scores":
            if out.ndim != 2 or out.shape[0] != n:
                raise ZoracleError(f"output {self.output_name!r} returned shape {out.shape}, expected ({n}, C)")
            if out.shape[1] == 1:  # a dynamic class axis that came back with one column
                raise ZoracleError(_ONE_COLUMN.format(name=self.output_name))
            if self.num_classes is None:
                self.num_classes = int(out.shape[1])
        return out

    def predict(self, x) -> np.ndarray:
        """Predicted classes ``(N,)`` (int64): the label output's values, or for a score output the
        column of the highest score (``0 .. C-1``; a scikit-learn model's own class labels are
        ``classes_[predict(x)]``, or pick its label output with ``output=``)."""
        out = self(x)
        if self.output_kind == "labels":
            return out.astype(np.int64)
        bad = np.isnan(out).any(axis=1)
        if bad.any():  # argmax stops at the first NaN: a broken row would become a class, and a vote
            i = int(np.flatnonzero(bad)[0])
            raise OracleError(f"OnnxClassifier.predict, sample {i} of {out.shape[0]}", out[i].tolist(),
                              detail="NaN scores have no highest class")
        # as zoracle.smoothing reads scores: a +inf (an overflow, ties voting for the first) or no
        # score above -inf has no highest class either ([inf, inf] and [-inf, -inf] became class 0)
        bad = np.isposinf(out).any(axis=1) | ~(out.max(axis=1) > -np.inf)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise OracleError(f"OnnxClassifier.predict, sample {i} of {out.shape[0]}", out[i].tolist(),
                              detail="scores must not be +inf and must have one above -inf: no highest class")
        return out.argmax(axis=1).astype(np.int64)

    def __repr__(self) -> str:
        return (f"OnnxClassifier({self._source}, input={self.input_name!r} {_shape_str(self.input_shape)} "
                f"{self.input_dtype}, output={self.output_name!r} ({self.output_kind}), "
                f"providers={self.providers}, queries={self.queries}"
                + (f"/{self.budget}" if self.budget is not None else "") + ")")
