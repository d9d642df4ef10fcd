"""The training engine: what a run is built from, the epoch loop, checkpoints, and the runs of
the pretrain and train stages."""
