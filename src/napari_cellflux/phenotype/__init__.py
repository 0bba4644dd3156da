"""Phenotype readouts: CellProfiler measurements of single-cell crops (cp-measure), the effect of a
perturbation against its controls, and profiles of whole screens (docs/phenotype.md). Headless:
no Qt, no torch."""

# The cp-measure feature groups (phenotype.features); here so the CLI's parser names them without
# importing numpy, pandas or cp-measure.
FEATURE_GROUPS = ("shape", "zernike", "intensity", "texture", "granularity", "radial", "correlation")
