"""kdcourse: the tested companion package of the knowledge-distillation course.

Import it as ``import kdcourse as kd``. Importing has no side effects: nothing is seeded,
downloaded, trained or written until you call a function.
"""
from . import (augment, benchmark, cache, chains, data, datafree, exercises, features, hooks, lm, logit_losses, losses, metrics, models,
               pipeline, profiles, pruning, quantization, relations, results, similarity, stats, teacher_outputs,
               teachers, training, utils)
from .data import load_dataset, load_torchvision
from .exercises import check
from .hooks import capture
from .models import build_model, count_params, model_size_bytes, preset
from .profiles import get_profile
from .results import load_results, record
from .teachers import get_teacher
from .training import evaluate, fit, predict
from .utils import get_device, seed_everything, set_threads, show_source

__version__ = "0.1.0"

__all__ = [
    "augment", "benchmark", "cache", "chains", "data", "datafree", "exercises", "features", "hooks", "lm", "logit_losses", "losses", "metrics", "models", "pipeline", "profiles",
    "pruning", "quantization", "relations", "results", "similarity", "stats", "teacher_outputs", "teachers",
    "training", "utils", "load_dataset", "load_torchvision", "check", "capture", "build_model",
    "count_params", "model_size_bytes", "preset", "get_profile", "load_results", "record",
    "get_teacher", "evaluate", "fit", "predict", "get_device", "seed_everything",
    "set_threads", "show_source", "__version__",
]
