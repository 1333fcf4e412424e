"""Pruning: unstructured masks (torch.nn.utils.prune) and structured channel removal.

Introduced in notebook 05. `unstructured`: masks zero individual weights, the tensors keep their
shape. `structured`: whole channels removed (by hand for the course CNN, or with torch-pruning's
dependency graph for any model), which really shrinks the network. Every name is re-exported
here, so `kd.pruning.global_magnitude_prune` and `kd.pruning.structured_prune` both work.
"""
from .structured import _sub_bn, _sub_conv, _sub_linear, l1_prune_conv_block, structured_prune
from .unstructured import (check_amount, global_magnitude_prune, layerwise_magnitude_prune, make_permanent,
                           prunable_layers, prune_by_scores, sensitivity_scan, sparsity_report, taylor_scores,
                           unprunable_layers)

__all__ = ["prunable_layers", "unprunable_layers", "check_amount", "sparsity_report", "global_magnitude_prune",
           "layerwise_magnitude_prune", "prune_by_scores", "taylor_scores", "make_permanent",
           "sensitivity_scan", "l1_prune_conv_block", "structured_prune"]
