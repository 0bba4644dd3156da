"""napari-cellflux: simulate how cells change under a perturbation with CellFlux flow matching.

Importing this package is cheap (no torch): napari loads it at start-up. The headless API
lives in :mod:`napari_cellflux.api`.
"""

__version__ = "0.1.0"
