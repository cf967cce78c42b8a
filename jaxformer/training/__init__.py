"""Training: the optimizer and jitted steps, the loop, checkpoints, runs started from runs, meshes, benchmarks."""
