"""From control cells to generated cells: controls, trajectories and results, export, virtual screens."""
