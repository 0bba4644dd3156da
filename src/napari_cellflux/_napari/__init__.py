"""Everything that imports Qt or napari: the dock widget, sample data, the writer, canvas tiling."""
