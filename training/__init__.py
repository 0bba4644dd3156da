"""Training and evaluation of CellFlux models (imports napari_cellflux, never the reverse)."""
