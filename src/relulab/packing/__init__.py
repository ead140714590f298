"""Training many models at once: stacks of same-shape models, CUDA graphs, units side by side.

- `pack`: `train_many` (the one entry point experiments and searches use), `train_together`, and `time_alone`
  (one configuration timed as a lone run trains);
- `rules`: what trains with what, read from the model and activation registries (`stack_key`, `pack_key`,
  `fusable`, `compiles`, stack sizes);
- `units`: a pack's units (a stack, or one model), `steps`: their (graphed) training steps;
- `stacking`, `stacked_mlp`, `stacked_cnn`: K models' weights as one stacked model; `functional`: K copies of
  any network as one, through torch.func (vmap of functional_call); `fused`: the hand-written step of plain
  MLP stacks (its Triton kernels are `relulab.kernels`).

The modules of this package import each other by module, never through this face, so that it can
re-export them without an import cycle.
"""
from relulab.packing.pack import time_alone, train_many, train_together
from relulab.packing.rules import pack_key, stack_key

__all__ = ["pack_key", "stack_key", "time_alone", "train_many", "train_together"]
