"""Using a retrained network outside Ray: loading a retrain run (`run`), predicting masks, overlays and a
legend for images of any size (`predict`), and exporting to ONNX or TorchScript, checked against PyTorch
(`export`). The entry points are ``experiments/predict.py`` and ``experiments/export.py``. Imports no Ray.
"""

from orchestrator.inference.run import InferenceError, LoadedRun, dataset_classes, find_run_dir, load_run

__all__ = ["InferenceError", "LoadedRun", "dataset_classes", "find_run_dir", "load_run"]
