"""Data layer: screens on disk -> cell tables -> batch-matched training pairs; plus synthetic
screens and cell extraction from whole fields. No Qt, no napari.

Modules (imported one by one, so ``import napari_cellflux.data`` stays cheap):
cells (CellTable, load_cell), impa (published IMPA format), plain (TIFF crops + CSV),
screens (which of the two a folder holds), dataset (CellPairDataset, same-batch controls),
synthetic / drawing (synthetic screen and fields), extract / intensity (nuclei, crops, uint8 scaling).
"""
