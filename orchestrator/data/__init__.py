"""The data layer: the embedded synthetic task and the Cityscapes, VOC 2012, ADE20K and plain-folder formats,
their transforms, the search's two training halves, and loaders that work under Ray Train.

Entry points: `load_dataset`, `search_splits`, `make_loader`, `InfiniteLoader`. Every bad input raises
`DataError` (a ValueError) naming the path or option and what was expected.
"""

from orchestrator.data.common import IGNORE_INDEX, DataError
from orchestrator.data.dataset import DATASETS, FileSegmentation, load_dataset
from orchestrator.data.loaders import (
    InfiniteLoader,
    SearchSplit,
    make_loader,
    search_splits,
    seed_sampler,
    seed_worker,
    set_pass,
)
from orchestrator.data.roles import ROLES, describe, role_dataset
from orchestrator.data.synthetic_dataset import SyntheticSegmentation
from orchestrator.data.transforms import EvalTransform, TrainTransform, denormalize

__all__ = [
    "DATASETS", "IGNORE_INDEX", "DataError", "EvalTransform", "FileSegmentation", "InfiniteLoader", "SearchSplit",
    "ROLES", "SyntheticSegmentation", "TrainTransform", "denormalize", "describe", "load_dataset", "make_loader",
    "role_dataset", "search_splits", "seed_sampler", "seed_worker", "set_pass",
]
