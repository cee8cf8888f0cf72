"""Framework adapters, imported as ``zoracle.adapters.<name>``.

Each adapter imports its framework at its top: importing it is how a user opts in.
Available: ``torch`` (TorchOracle, blackbox), ``onnx`` (OnnxClassifier), ``phiflow``
(wake-flow solver). Install the matching extra, e.g. ``pip install -e '.[torch]'``.
"""
