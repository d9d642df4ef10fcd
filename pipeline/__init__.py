"""Meta-IADA: implicit adversarial data augmentation with a meta-learned perturbation network.

The package holds the library code (data, networks, losses, methods, training, tracking,
tuning) and one thin entry point per DVC stage in :mod:`pipeline.stages`.
"""

__version__ = "0.1.0"
