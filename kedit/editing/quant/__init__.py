"""Quantised models: a bitsandbytes copy for queries, and quantised loading for editing.

One concept per module:

* ``modes``: the modes (``none``/``int8``/``nf4``), support checks, the loading config;
* ``modules``: which modules are quantised, a model's memory, bitsandbytes' CPU repacking;
* ``requantize``: re-quantising edited projections from new full-precision weights;
* ``loading``: loading a quantised copy, or a model for quantised editing (``--load``);
* ``identity``: the base model's fingerprint, independent of ``--load``;
* ``export``: the full-precision export of a quantised-loaded model;
* ``query_copy``: the quantised copy that answers a session's queries (``--query-quant``).

bitsandbytes runs on CUDA and, from 0.46 on, on the CPU (tested with 0.50 here).
"""

from kedit.editing.quant.export import ExportReport, export_full_precision
from kedit.editing.quant.identity import base_fingerprint, base_layer_digests
from kedit.editing.quant.loading import (
    build_quantized_copy, load_quantized_for_editing, mlp_out_names_from_config, num_layers_from_config,
)
from kedit.editing.quant.modes import HEAD, QUANT_MODES, bnb_config, check_quant_support, normalize_mode
from kedit.editing.quant.modules import is_quantized_module, memory_bytes, quant_mode_of, set_cpu_packing
from kedit.editing.quant.query_copy import QueryCopy
from kedit.editing.quant.requantize import linear_weights, requantize_modules, sync_layers

__all__ = [
    "HEAD", "QUANT_MODES", "ExportReport", "QueryCopy", "base_fingerprint", "base_layer_digests", "bnb_config",
    "build_quantized_copy", "check_quant_support", "export_full_precision", "is_quantized_module",
    "linear_weights", "load_quantized_for_editing", "memory_bytes", "mlp_out_names_from_config",
    "normalize_mode", "num_layers_from_config", "quant_mode_of", "requantize_modules", "set_cpu_packing",
    "sync_layers",
]
