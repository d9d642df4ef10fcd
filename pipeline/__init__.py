"""Meta-IADA: implicit adversarial data augmentation with a meta-learned perturbation network.

The package holds the library code (data, networks, losses, methods, training, tracking,
tuning) and one thin entry point per DVC stage in :mod:`pipeline.stages`.
"""

import warnings

__version__ = "0.1.0"

# torch scripts a helper on the first forward-mode AD call (the full-scope meta step) and warns
# that torch.jit.script is deprecated: nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
