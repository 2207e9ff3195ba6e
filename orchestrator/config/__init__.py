"""The experiment config: typed dataclasses, loaded from YAML, validated before anything runs.

Every default carries a comment saying why; where the paper (Liu et al., CVPR 2019; docs/notes/paper.md) gives a
value, the default is the paper's. A YAML file only needs the keys it changes. Unknown keys are refused with
the file, the dotted key and the closest valid key named; wrong types and out-of-range values are refused with
a `ConfigError` naming file, key, value and what was expected.

    cfg = load_config("experiments/configs/smoke.yaml", overrides=["search.arch_lr=1e-3"])
    config_to_dict(cfg)        # plain dict: what Ray serializes into the workers, and what is saved
    save_config(cfg, path)     # atomic YAML write, the resolved config beside every run
    config_hash(cfg)           # short stable hash for derived run names (never timestamps)

`schema` holds the sections, each field with its default, why and range rule; `rules` the rule helpers and the
walk that applies them; `loading` reading, overrides, saving, hashing and derived names.
"""

from orchestrator.config.loading import (
    apply_overrides,
    config_from_dict,
    config_hash,
    config_to_dict,
    derive_name,
    load_config,
    parse_override,
    save_config,
    search_space_of,
    with_overrides,
)
from orchestrator.config.rules import ConfigError
from orchestrator.config.schema import (
    CANDIDATE_SOURCES,
    PATH_SELECTIONS,
    SEARCH_SPACE_KEY_DEFAULTS,
    SEARCH_SPACE_KEYS,
    SELECTION_METRICS,
    TUNE_DISTRIBUTIONS,
    DataConfig,
    ExperimentConfig,
    RetrainConfig,
    RuntimeConfig,
    ScalingConfig,
    SearchConfig,
    SearchSpaceConfig,
    SelectionConfig,
    TuneConfig,
    ValidationConfig,
    valid_keys,
    validate,
)

__all__ = [
    "CANDIDATE_SOURCES", "PATH_SELECTIONS", "SEARCH_SPACE_KEYS", "SEARCH_SPACE_KEY_DEFAULTS", "SELECTION_METRICS",
    "TUNE_DISTRIBUTIONS",
    "ConfigError", "DataConfig", "ExperimentConfig", "RetrainConfig", "RuntimeConfig", "ScalingConfig",
    "SearchConfig", "SearchSpaceConfig", "SelectionConfig", "TuneConfig", "ValidationConfig",
    "apply_overrides", "config_from_dict", "config_hash", "config_to_dict", "derive_name", "load_config",
    "parse_override", "save_config", "search_space_of", "valid_keys", "validate", "with_overrides",
]
