"""Using a retrained network outside Ray: loading a retrain run (`run`; `save_run` writes one), predicting masks,
overlays and a legend for images of any size (`predict`), scoring it on a split of its dataset single- and
multi-scale, and the Cityscapes test-server files (`evaluate`), and exporting to ONNX or TorchScript, checked
against PyTorch (`export`). The commands are ``adl predict``, ``adl evaluate`` and ``adl export``
(`orchestrator.commands`). Imports no Ray.
"""

from orchestrator.inference.run import InferenceError, LoadedRun, dataset_classes, find_run_dir, load_run, save_run

__all__ = ["InferenceError", "LoadedRun", "dataset_classes", "find_run_dir", "load_run", "save_run"]
