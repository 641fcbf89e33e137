"""Ring 1: pure editing functions over tensors and a model (no UI, no sessions).

Importing this package loads torch but never textual or typer.
"""

from kedit.editing.delta import Delta, apply_deltas, fingerprint, tensor_digest
from kedit.editing.edit import PHASES, Editor, EditResult, Progress
from kedit.editing.hparams import METHODS, HParams, preset
from kedit.editing.models import DEFAULT_MODEL, LoadedModel, load_model, model_fingerprint
from kedit.editing.prefixes import sample_prefixes
from kedit.editing.scoring import TargetScore, TokenProb, greedy, score_targets, top_k_next
from kedit.editing.solver import factor_c0, solve
from kedit.editing.values import ValueConfig, optimize_values

__all__ = [
    "DEFAULT_MODEL", "Delta", "EditResult", "Editor", "HParams", "LoadedModel", "METHODS", "PHASES",
    "Progress", "TargetScore", "TokenProb", "ValueConfig", "apply_deltas", "factor_c0", "fingerprint",
    "greedy", "load_model", "model_fingerprint", "optimize_values", "preset", "sample_prefixes",
    "score_targets", "solve", "tensor_digest", "top_k_next",
]
