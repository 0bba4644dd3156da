"""Everything that imports Qt or napari: the dock widget, sample data, the writer, canvas tiling."""

from napari_cellflux.process import prepare_openmp

# Before any worker imports torch (OpenMP reads its wait policy once, when it loads): the workers
# share the cores with napari's GUI, where spinning threads cost ~2.2x (docs/speed.md).
prepare_openmp()
