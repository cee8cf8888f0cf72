"""Checks of :class:`~zoracle.adapters.onnx.OnnxClassifier`: on the model parsed with onnx, and on what
its pickled copies compute."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

#: operators that quantize their input with the range of the whole tensor, computed on each call
#: (onnxruntime.quantization.quantize_dynamic writes the first; onnxruntime fuses it into the second)
_PER_CALL_QUANTIZERS = {("", "DynamicQuantizeLinear"), ("ai.onnx", "DynamicQuantizeLinear"),
                        ("com.microsoft", "DynamicQuantizeMatMul")}


def per_call_quantizers(proto) -> list:
    """``(node name, op)`` for the nodes of ``proto`` (the main graph; None: no model parsed) that
    quantize activations with the range of every sample in the call, so that a sample's scores
    depend on the other samples of a call."""
    if proto is None:
        return []
    return [(n.name or n.output[0], n.op_type) for n in proto.graph.node
            if (n.domain, n.op_type) in _PER_CALL_QUANTIZERS]


def per_call_refusal(proto, source: str, fixed, batch_size) -> str:
    """Why a model with :func:`per_call_quantizers` cannot run calls of several samples (a fixed batch
    axis of ``fixed`` samples, else calls of ``batch_size``, None: all of a call's); "" where it can."""
    found = per_call_quantizers(proto)
    if not found or (fixed if fixed is not None else batch_size) == 1:
        return ""
    (name, op), n = found[0], len(found)
    return (f"`model` {source} quantizes its activations per call ({op} node {name!r}, as onnxruntime.quantization."
            f"quantize_dynamic writes; {n} such node{'s' if n > 1 else ''}): the int8 scale is the range of every "
            "sample in a call, so a sample's scores would depend on the other samples of a call"
            + (f" and on the padding of its fixed batch of {fixed}: re-export the model with a dynamic batch axis "
               "and pass batch_size=1" if fixed is not None else ": pass batch_size=1 (one sample per onnxruntime "
               "call)") + ", or quantize it with quantize_static (scales fixed at calibration)")


def one_sample_note(proto, source: str, input_name: str, output_name: str, fixed) -> str:
    """Why a call of several samples runs one onnxruntime call per sample (a fixed batch axis of
    ``fixed`` = 1 samples; on a small CNN, 256 samples took 30 times as long as one call with a dynamic
    batch axis); "" where it does not, or where a dynamic axis would not help (:func:`per_call_quantizers`
    need one sample a call)."""
    if fixed != 1 or per_call_quantizers(proto):
        return ""
    return (f"OnnxClassifier: `model` {source} declares a fixed batch of 1 on input {input_name!r}, so a call of N "
            "samples runs N onnxruntime calls, one per sample: the same results, at many times the time of one "
            "call; re-export the model with a dynamic batch axis (torch.onnx.export(..., dynamic_axes="
            f"{{{input_name!r}: {{0: 'batch'}}, {output_name!r}: {{0: 'batch'}}}}))")


def copy_disagreement(clf, rebuilt) -> str:
    """Why ``clf``'s pickled copies, whose session is built with the SessionOptions ``rebuilt`` from its
    options' settings, would compute other outputs than ``clf`` on a probe input; "" where they agree or
    the probe does not run (a dimension of 1 too small for the model). Nothing reads back what the options
    hold besides their settings: the initializers ``add_initializer`` added, for one. An output whose own two
    runs differ (one that draws noise) is not judged; the model's other outputs are."""
    probe = np.random.default_rng(0).uniform(0, 1, [d or 1 for d in clf.input_shape]).astype(clf.input_dtype)
    names = [o.name for o in clf.session.get_outputs() if o.type.startswith("tensor(") and o.type != "tensor(string)"]

    def differ(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)

    try:
        copy = ort.InferenceSession(clf._model, sess_options=rebuilt, providers=clf.providers_requested)
        runs = [s.run(names, {clf.input_name: probe}) for s in (clf.session, clf.session, copy)]
    except Exception:
        return ""
    for name, a, again, b in zip(names, runs[0], runs[1], runs[2]):
        if not differ(a, again) and differ(a, b):  # an output that draws noise (RandomNormalLike): not compared
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            return ("`session_options` change what the model computes in a way its pickled copies cannot rebuild: a "
                    f"copy (process and cluster executors ship one) gave output {name!r} "
                    + (f"up to {float(np.nanmax(np.abs(a - b))):.3g} apart" if a.shape == b.shape else "another shape")
                    + " on a probe input; copies rebuild the options' settings (threads, optimization level, ...), not "
                    "initializers added with add_initializer or add_external_initializers, free-dimension overrides "
                    "or config entries: write such weights into the model (onnx.numpy_helper.from_array into "
                    "model.graph.initializer) or run in threads (JoblibExecutor(n, backend='threading'))")
    return ""


def undeclared_shape(proto, name: str, type_name: str) -> str:
    """Why input ``name`` (``type_name`` as onnxruntime writes it: ``tensor(float)``), which onnxruntime
    shows with shape [], is refused where ``proto`` declares no shape for it (rank unknown, not a
    scalar); "" otherwise."""
    inputs = [i.name for i in proto.graph.input] if proto is not None else []
    if name not in inputs or proto.graph.input[inputs.index(name)].type.tensor_type.HasField("shape"):
        return ""
    return (f"input {name!r} declares no shape (its rank is unknown): OnnxClassifier takes the batch axis and the "
            f"sample's shape from it; declare it, model.graph.input[{inputs.index(name)}].CopyFrom(onnx.helper."
            f"make_tensor_value_info({name!r}, onnx.TensorProto.{type_name[7:-1].upper()}, ['N', ...])) with the "
            "sample's dimensions for ..., or re-export the model with its shape")


#: a step between two calls' inputs of fewer spacings of the model's float dtype than this: a float16 CNN's
#: central CGE (cast=True) differed from its float32 export's by 18% of the gradient at 10 spacings (mu =
#: 5e-3), 7.8% at 20, 3.9% at 41, 1.6% at 102 (its own truncation error at mu = 5e-2 was 6.3%)
_FEW_SPACINGS = 32
#: the changed elements whose median step :func:`coarse_cast_note` reads, at most
_MEDIAN_OF = 4096


def coarse_cast_note(last, raw, dtype, source: str, input_name: str) -> str:
    """Why the step from the previous call's input ``last`` (float64, None: none) to ``raw``, which
    ``cast=True`` rounds to the model's narrower float ``dtype``, is too small for it: the changed
    elements moved by a median of fewer than :data:`_FEW_SPACINGS` spacings of ``dtype`` (a zeroth-order
    estimate's steps over mu); "" where the shapes differ, nothing changed or the steps are wider."""
    if last is None or last.shape != raw.shape:
        return ""
    # (on every call of a cast=True model: O(n) passes only; an argsort over a (32, 3, 224, 224) batch's
    # elements took 0.5 s a call, against 3 ms for the cast; the median is read from at most _MEDIAN_OF
    # of the changed elements, evenly spaced)
    moved = (np.asarray(raw) != last).reshape(-1)  # (one pass, a bool array: the steps only where read)
    n = int(np.count_nonzero(moved))
    if not n:
        return ""
    # every changed element where few changed (a coordinate's query); else those of an even stride
    stride = max(1, moved.size // _MEDIAN_OF) if n > _MEDIAN_OF else 1
    idx = np.flatnonzero(moved[::stride]) * stride
    if not idx.size:  # (the stride missed every changed element)
        idx = np.flatnonzero(moved)[:: -(-n // _MEDIAN_OF)]
    values = np.asarray(raw).reshape(-1)[idx]
    step = np.abs(values.astype(np.float64) - last.reshape(-1)[idx])
    spacing = np.spacing(np.abs(values).astype(dtype)).astype(np.float64)
    ratio = step / spacing
    i = int(np.argpartition(ratio, ratio.size // 2)[ratio.size // 2])  # the median (not the largest: near-zero
    if ratio[i] >= _FEW_SPACINGS:  # elements' tiny spacing)
        return ""
    step, spacing = float(step[i]), float(spacing[i])
    return (f"OnnxClassifier: `model` {source} computes in {dtype.name} (input {input_name!r}), and the elements two "
            f"successive calls' inputs differ in moved by {step:.3g} (median), {step / spacing:.3g} times "
            f"{dtype.name}'s spacing {spacing:.3g} at those values, as the steps over mu of a zeroth-order estimate "
            f"do: cast=True rounds each step to the "
            f"{dtype.name} grid and the model's {dtype.name} scores are as coarse, so differences over such steps (a "
            f"gradient estimate) are off by percents (a float16 CNN's: 18% at 10 spacings, 4% at 40); raise mu to "
            f"{_FEW_SPACINGS * spacing:.2g} or more, or export the model in "
            + ("float32" if dtype.itemsize < 4 else "float64"))
