"""Prune while training: HSPG, DHSPG (the Only-Train-Once optimizers), HESSO and ATO on SPA's groups,
and H2SPG on its removal structures (erasing while training).

A user who can train gets a model that is trained and pruned in one run. The ONNX model is
converted with `to_torch`, trained with a group-sparsity optimizer that drives whole channels to
exactly zero, written back to ONNX, and the zero channels are removed by SPA's rewriter: since
they are zero, removing them changes nothing (checked to 1e-5 before anything is returned).

- groups: the zero-invariant groups (each SPA channel as the parameter slices that, all zero,
  make it zero) and SparseTraining, the model made ready to train them;
- optimizer: GroupSparseOptimizer, the base every optimizer subclasses, and the registry;
- flops: SPA's FLOPs model over the groups (a FLOPs target as the channels to zero, and the
  masked model's FLOPs, differentiable in the masks);
- hspg, dhspg, hesso, ato: the optimizers on channels; h2spg on whole structures (structures:
  the removal structures as groups, StructureTraining, erased after training);
- loop: the data, the training loop and `train`, the one call.
"""
from .groups import Pruned, SparseTraining, Unit, prepare_for_training, zero_invariant_members, zero_invariant_units, zero_units
from .optimizer import BASES, LAMBDA_DEFAULTS, OPTIMIZERS, GroupSparseOptimizer, get_optimizer, in_half_space, register_optimizer
from .dhspg import DHSPG, adapted_lambdas  # registered first: the default, listed first
from .hspg import HSPG
from .hesso import HESSO
from .ato import ATO, Controller, flops_penalty, gumbel_sigmoid
from .h2spg import H2SPG
from .structures import StructureFlops, StructureTraining, trainable_structures
from .flops import GroupFlops
from .loop import (COLLAPSE_FRACTION, LOSSES, TRAIN_LMBDA, TRAIN_LR, Dataset, TrainReport, collapse_warnings, collapsed,
                   evaluate, fit, load_data, train)

__all__ = ["ATO", "BASES", "H2SPG", "StructureFlops", "StructureTraining", "trainable_structures", "COLLAPSE_FRACTION", "Controller", "DHSPG", "GroupFlops", "collapse_warnings", "collapsed",
           "flops_penalty", "gumbel_sigmoid", "Dataset", "GroupSparseOptimizer", "HESSO", "HSPG", "LAMBDA_DEFAULTS", "LOSSES", "OPTIMIZERS",
           "Pruned", "SparseTraining", "TRAIN_LMBDA", "TRAIN_LR", "TrainReport", "Unit", "adapted_lambdas", "evaluate",
           "fit", "get_optimizer", "in_half_space", "load_data", "prepare_for_training", "register_optimizer", "train",
           "zero_invariant_members", "zero_invariant_units", "zero_units"]
