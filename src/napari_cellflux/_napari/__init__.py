"""Everything that imports Qt or napari: the dock widget, sample data, the writer, canvas tiling."""

from napari_cellflux.process import prepare_openmp

prepare_openmp()  # before any worker imports torch: OpenMP reads its wait policy once, when torch loads it
