"""The model: the stack that runs the textbook's blocks, the kernels, the Flax NNX modules."""
