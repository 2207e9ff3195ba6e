"""Genotypes: the decoded result of a search, as immutable, printable, JSON-serialisable data.

A `Genotype` holds the cell (Liu et al. 2019, Sec. 3.1) and the network path (Sec. 3.2):

- ``cell``: one entry per block, each a pair of ``(op_name, input_index)``; input 0 is H^{l-2}
  ("prev_prev"), input 1 is H^{l-1} ("prev"), input ``2 + j`` is the output of block ``j`` (0-based).
- ``path``: the level (0..3 for downsample rates 4, 8, 16, 32) of each of the L layers. The path starts
  from level 0 (the stem, rate 4) and moves at most one level per layer.

`AUTODEEPLAB` is the published architecture, taken from the authors' code (research/deeplab/core/
nas_network.py and nas_cell.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from search_space.operations import PRIMITIVES

RATES: tuple[int, ...] = (4, 8, 16, 32)
"""Downsample rate of each level of the trellis."""

Block = tuple[tuple[str, int], tuple[str, int]]


class GenotypeError(ValueError):
    """A genotype that is not a legal architecture; the message says what is wrong and where."""


def _check_cell(cell: tuple) -> None:
    if len(cell) == 0:
        raise GenotypeError("genotype cell is empty: expected at least one block of two (op, input) pairs")
    for b, block in enumerate(cell):
        if len(block) != 2:
            raise GenotypeError(f"genotype cell block {b} has {len(block)} inputs: expected exactly 2 (op, input)")
        for op, inp in block:
            if op not in PRIMITIVES or op == "none":
                valid = ", ".join(p for p in PRIMITIVES if p != "none")
                raise GenotypeError(f"genotype cell block {b}: unknown op {op!r}: expected one of {valid}")
            if not isinstance(inp, int) or isinstance(inp, bool) or not 0 <= inp < b + 2:
                raise GenotypeError(
                    f"genotype cell block {b}: input {inp!r} is out of range: block {b} may take inputs "
                    f"0..{b + 1} (0 = H^(l-2), 1 = H^(l-1), 2.. = earlier blocks)"
                )


def _check_path(path: tuple, layers: int | None) -> None:
    if len(path) == 0:
        raise GenotypeError("genotype path is empty: expected one level (0..3) per layer")
    if layers is not None and len(path) != layers:
        raise GenotypeError(f"genotype path has {len(path)} layers: expected {layers}")
    prev = 0  # the stem ends at level 0 (rate 4)
    for layer, level in enumerate(path, start=1):
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level < len(RATES):
            raise GenotypeError(f"genotype path layer {layer}: level {level!r} is not one of 0, 1, 2, 3 "
                             f"(rates {RATES})")
        if abs(level - prev) > 1:
            raise GenotypeError(
                f"genotype path layer {layer}: illegal transition from rate {RATES[prev]} to rate "
                f"{RATES[level]}: a layer may only keep, halve or double the rate"
            )
        prev = level


@dataclass(frozen=True)
class Genotype:
    """A decoded architecture: the cell shared by all layers and the path through the trellis.

    Validated on construction; raises GenotypeError (a ValueError) naming what is wrong.
    """

    cell: tuple[Block, ...]
    path: tuple[int, ...]

    def __post_init__(self) -> None:
        cell = tuple(tuple((str(op), inp) for op, inp in block) for block in self.cell)
        object.__setattr__(self, "cell", cell)
        object.__setattr__(self, "path", tuple(self.path))
        _check_cell(cell)
        _check_path(self.path, None)

    @property
    def blocks(self) -> int:
        return len(self.cell)

    @property
    def layers(self) -> int:
        return len(self.path)

    @property
    def rates(self) -> tuple[int, ...]:
        """Downsample rate of each layer along the path."""
        return tuple(RATES[level] for level in self.path)

    def to_dict(self) -> dict:
        return {"cell": [[list(pair) for pair in block] for block in self.cell], "path": list(self.path)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict, source: str = "genotype") -> Genotype:
        """Build from ``{"cell": [[[op, input], [op, input]], ...], "path": [level, ...]}``."""
        if not isinstance(data, dict) or set(data) != {"cell", "path"}:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise GenotypeError(f"{source}: expected an object with keys 'cell' and 'path', got {keys}")
        try:
            cell = tuple(tuple((op, inp) for op, inp in block) for block in data["cell"])
        except (TypeError, ValueError) as err:
            raise GenotypeError(f"{source}: 'cell' must be a list of blocks, each two [op, input] pairs") from err
        try:
            return cls(cell=cell, path=tuple(data["path"]))
        except GenotypeError as err:
            raise GenotypeError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"{source}: not valid JSON ({err})") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str) -> Genotype:
        """Read a genotype JSON file; errors name the file."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise GenotypeError(f"cannot read genotype file {path}: {err.strerror}") from None
        return cls.from_json(text, source=str(path))


AUTODEEPLAB = Genotype(
    cell=(
        (("dil_conv_5x5", 0), ("sep_conv_3x3", 1)),  # B1 = atrous5x5(prev_prev) + sep3x3(prev)
        (("sep_conv_3x3", 0), ("dil_conv_3x3", 1)),  # B2 = sep3x3(prev_prev) + atrous3x3(prev)
        (("sep_conv_3x3", 3), ("sep_conv_3x3", 0)),  # B3 = sep3x3(B2) + sep3x3(prev_prev)
        (("sep_conv_5x5", 4), ("sep_conv_5x5", 2)),  # B4 = sep5x5(B3) + sep5x5(B1)
        (("sep_conv_5x5", 3), ("dil_conv_5x5", 5)),  # B5 = sep5x5(B2) + atrous5x5(B4)
    ),
    path=(0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
)
"""The published Auto-DeepLab architecture (paper Fig. 3; authors' nas_network.py)."""

VARIANTS: dict[str, int] = {"S": 20, "M": 32, "L": 48}
"""Filter multiplier F of Auto-DeepLab-S/M/L."""
