"""The adapters' warnings carrying user text (a model file's path, a module's or a parameter's name)
on a ``sys.stderr`` that cannot encode it (``sys.stderr = open("run.log", "w")`` in ASCII or cp1252):
Python's warnings let the UnicodeEncodeError through, which failed the query or the construction that
warned; the character is written as an escape now (zoracle's ``warn``), at the user's line as before."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

#: the clone's root: the programs below import its zoracle
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, body):
    """Run ``body`` as a script with its stderr a strict ASCII file; (the process, that file's text, the
    script's path, the line of ``body`` marked ``# here``)."""
    program = textwrap.dedent("""
        import sys, warnings
        sys.stderr = open(sys.argv[1], "w", encoding="ascii")
        warnings.simplefilter("always")
    """) + textwrap.dedent(body) + "sys.stderr.flush()\nassert sys.stderr.errors == 'strict'\n"
    script = tmp_path / "prog.py"
    script.write_text(program, encoding="utf-8")
    line = next(i for i, text in enumerate(program.splitlines(), 1) if text.endswith("# here"))
    log = tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    return proc, log.read_text(encoding="ascii") if log.exists() else "", f"{script}:{line}: RuntimeWarning"


def test_an_onnx_file_named_in_another_script_is_warned_about_on_an_ascii_stderr(tmp_path):
    """OnnxClassifier without the onnx package warns naming the model's path: the construction raised
    UnicodeEncodeError instead."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    W = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [W])
    folder = tmp_path / "模型-∑"
    folder.mkdir()
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # (onnx 1.23 writes IR 14, newer than the last onnxruntime for Python 3.10 reads: 1.23.2, 11)
    onnx.save_model(model, str(folder / "m.onnx"))
    proc, err, here = _run(tmp_path, f"""
        sys.modules["onnx"] = None  # onnxruntime alone: the graph's checks cannot run, which is warned about
        from zoracle.adapters.onnx import OnnxClassifier
        clf = OnnxClassifier({str(folder / "m.onnx")!r})  # here
        print(clf.num_classes)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert "the onnx package is not installed" in err and "\\u6a21\\u578b-\\u2211" in err, err
    assert here in err, err


@pytest.mark.slow
def test_a_module_named_in_another_script_is_warned_about_on_an_ascii_stderr(tmp_path):
    """A train-mode spectral norm writes and reads its vectors: the warning naming the module raised
    UnicodeEncodeError from the estimate."""
    pytest.importorskip("torch")
    proc, err, here = _run(tmp_path, """
        from collections import OrderedDict
        import torch
        from torch import nn
        from torch.nn.utils.parametrizations import spectral_norm
        import zoracle as zo
        from zoracle.adapters.torch import TorchOracle, cross_entropy
        torch.manual_seed(0)
        model = nn.Sequential(OrderedDict([("eingang", nn.Linear(6, 16)), ("relu", nn.ReLU()),
                                           ("größe", spectral_norm(nn.Linear(16, 16))), ("tanh", nn.Tanh()),
                                           ("out", nn.Linear(16, 5))])).double().train()
        x, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 5, (32,))
        oracle = TorchOracle(model, cross_entropy, (x, y))
        theta = oracle.initial_params()
        est = zo.estimate_gradient(oracle, theta, zo.CGE(mu=1e-3))  # here
        print(est.grad.shape)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert "write buffers in their train-mode forward" in err and "gr\\xf6\\xdfe" in err, err
    assert here in err, err


@pytest.mark.slow
def test_a_model_class_named_in_another_script_is_warned_about_on_an_ascii_stderr(tmp_path):
    """A forward reading what an in-place activation overwrote: the warning naming the model's class
    raised UnicodeEncodeError from the construction."""
    pytest.importorskip("torch")
    proc, err, here = _run(tmp_path, """
        import torch
        from torch import nn
        from zoracle.adapters.torch import TorchOracle, cross_entropy

        class Modèle(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc, self.act, self.out = nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3)

            def forward(self, x):
                h = self.fc(x)
                return self.out(self.act(h)) + h[:, :3]  # reads h after the in-place ReLU overwrote it

        torch.manual_seed(0)
        x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
        oracle = TorchOracle(Modèle().double(), cross_entropy, (x, y))  # here
        print(oracle.initial_params().shape)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert "with its in-place activations run out of place" in err and "Mod\\xe8le" in err, err
    assert here in err, err


@pytest.mark.slow
def test_a_cache_folder_named_in_another_script_is_warned_about_on_an_ascii_stderr(tmp_path):
    """The fine trajectories' cache write failing (a full disk) is warned about naming the file: the
    warning raised UnicodeEncodeError, and the simulation's result was lost."""
    pytest.importorskip("phi")
    pytest.importorskip("torch")
    folder = tmp_path / "キャッシュ"
    proc, err, here = _run(tmp_path, f"""
        import zoracle.adapters._phiflow_sim as sim
        from zoracle.adapters import phiflow as pf

        def full(fh, **arrays):
            raise OSError(28, "No space left on device")

        sim.np.savez = full
        flow, where = pf.WakeFlow(nx=16, ny=32), {str(folder)!r}
        got = pf.reference_trajectories(flow, [200.0], factor=2, warmup=1, steps=2, cache_dir=where)  # here
        print(got.cached, got.vx.shape)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:] + err[-2000:]
    assert "could not be cached at" in err and "\\u30ad\\u30e3\\u30c3\\u30b7\\u30e5" in err, err
    assert here.replace("RuntimeWarning", "UserWarning") in err, err
