"""The Auto-DeepLab search space (Liu et al., CVPR 2019): ops, cell, trellis, decoding, discrete networks."""

from search_space.cell_edges import num_edges
from search_space.decoding import decode_cell, decode_path
from search_space.discrete import DiscreteCell, DiscreteNet, autodeeplab
from search_space.genotypes import AUTODEEPLAB, RATES, VARIANTS, Genotype, GenotypeError
from search_space.operations import OP_FAMILIES, OPS, PARAMETER_FREE, PRIMITIVES
from search_space.sampling import (
    CELL_OPS,
    count_cells,
    count_paths,
    legal_cells,
    legal_paths,
    sample_cell,
    sample_genotype,
    sample_genotypes,
    sample_path,
    sample_tilted_cell,
    sample_tilted_genotypes,
    sample_tilted_path,
    space_size,
)
from search_space.supernet import SuperNet
from search_space.trellis import beta_mask, reachable_levels, transition_probs

__all__ = [
    "AUTODEEPLAB", "OPS", "OP_FAMILIES", "PRIMITIVES", "RATES", "VARIANTS", "DiscreteCell", "DiscreteNet",
    "Genotype", "GenotypeError", "SuperNet", "autodeeplab", "beta_mask", "decode_cell", "decode_path", "num_edges",
    "reachable_levels", "transition_probs",
    "CELL_OPS", "PARAMETER_FREE", "count_cells", "count_paths", "legal_cells", "legal_paths", "sample_cell",
    "sample_genotype", "sample_genotypes", "sample_path", "sample_tilted_cell", "sample_tilted_genotypes",
    "sample_tilted_path", "space_size",
]
