"""What a study computes from activations and probes: the grid, directions, generalization, steering, comparison and scoring."""
