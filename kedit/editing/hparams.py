"""Hyper-parameters of an edit, and presets per model family.

``HParams`` is a frozen value recorded in every journal entry, so a replay uses exactly the
settings of the original edit. ``preset(model_name_or_type, method)`` picks the published (or, for
the default model, measured) settings; every field can be overridden with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from kedit.editing.values import ValueConfig
from kedit.choices import METHODS, method_name  # noqa: F401 (METHODS: one list, in kedit.choices)
from kedit.errors import UsageError



@dataclass(frozen=True)
class HParams:
    method: str  # "emmet" | "memit" | "rome"
    layers: tuple[int, ...]
    lam: float  # preservation weight on the mean C0 (MEMIT); 0 = equality-constrained (EMMET/ROME)
    values: ValueConfig = field(default_factory=ValueConfig)
    n_prefixes: int = 5  # context prefixes for keys and values ("The …. {prompt}")
    prefix_len: int = 10  # tokens per prefix
    stats_tokens: int = 100_000  # corpus tokens for C0
    stats_seq_len: int = 256
    # Sequential editing: weight α of the earlier active edits' keys in the preservation term,
    # C = C0 + α·KpKpᵀ (solver.py). C0 is a mean of kkᵀ, so α = 1 weighs each earlier key like
    # the whole corpus. 0 (the default, and every record written before it existed) turns it off.
    preserve: float = 0.0
    # Remembered facts' keys per commit (memory.py): computed with the commit's own facts, kept
    # while the projections below the layer are unchanged. False: every remembered fact's key is
    # recomputed in one pass on every commit (records written before the cache existed).
    remember_by_commit: bool = False
    # Lifelong options (solver.py; 0 = off, which every record written before them reads as):
    # ENCORE's norm penalty ν‖Δ‖²_F: C0 becomes C0 + ν·I (ENCORE's 20·I beside 15000·C0 is ν = 20/15000
    # for MEMIT λ = 15000). With ``null_space`` it is AlphaEdit's L2 instead (10 in AlphaEdit's code).
    norm_penalty: float = 0.0
    # AlphaEdit's null-space projection: eigenvalue threshold on C0 (AlphaEdit: 2e-2). The update is
    # projected onto the span of C0's eigenvectors below it and C0 leaves the solve; MEMIT (λ > 0)
    # then solves AlphaEdit's least squares, EMMET/ROME keep ŴK = V exactly. Needs norm_penalty > 0.
    null_space: float = 0.0
    # NAS (norm-anchored values): each target value v* = W·k + δ at the last edit layer is rescaled
    # to this norm, and a fact whose ‖v*‖ exceeds twice it is skipped (its output is kept).
    value_norm: float = 0.0
    # A one-token subject that starts a prompt is, on a model whose tokenizer adds no BOS, the text's
    # first token: the position of the attention sink, whose state is much the same in every text
    # and several times the norm of any other (on the default model 780–900 at layer 3 against
    # about 100). Keyed there, an update changes every text; fitted there, δ's steps and clamp scale
    # with that norm (docs/results.md, "Subjects at the first token"). False: the fact is keyed and
    # fitted on its prefixed prompts only. True: the reference code's prompts, which records written
    # before this field read as.
    first_token_prompts: bool = False

    def __post_init__(self) -> None:
        method_name(self.method)
        if not self.layers:
            raise UsageError("an edit needs at least one layer")
        if self.method in ("emmet", "rome") and len(self.layers) != 1:
            raise UsageError(
                f"{self.method} edits one layer, got layers {list(self.layers)}",
                hint="use --method memit to spread an edit over several layers",
            )
        if self.lam < 0:
            raise UsageError(f"the preservation weight must be ≥ 0, got {self.lam}")
        if not self.preserve >= 0:
            raise UsageError(f"the weight of earlier edits must be ≥ 0, got {self.preserve}")
        for name in ("norm_penalty", "null_space", "value_norm"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.null_space > 0 and not self.norm_penalty > 0:
            raise UsageError("the null-space projection needs norm_penalty > 0 (AlphaEdit's L2, e.g. 10)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HParams":
        d = dict(d)
        d["layers"] = tuple(d["layers"])
        # Records written before prefix reuse, the prefill under the steps' kernel or the
        # self-check's second opinion existed ran without them: replaying them with --recompute
        # must run the same arithmetic to reproduce their weights bit for bit.
        legacy = {"reuse_prefix": False, "prefill_like_steps": False, "reuse_check_rounding": False}
        d["values"] = ValueConfig(**{**legacy, **d.get("values", {})})
        return cls(**{"first_token_prompts": True, **d})


# Presets: (family, method) -> HParams. Sources in the comments.
_LLAMA3_8B_EMMET = HParams(
    # Yoon et al. 2024 ("Is bigger edit batch size always better?"): layer 1 is the best single
    # layer for Llama-3-8B; EMMET is equality-constrained (λ unused). Stats: ~10·d_in tokens
    # (FastMEMIT) rather than the reference's 100k Wikipedia documents.
    method="emmet", layers=(1,), lam=0.0, values=ValueConfig(clamp=4.0, kl_factor=0.0625, weight_decay=1e-3),
    stats_tokens=150_000,
)
_LLAMA3_8B_MEMIT = HParams(
    # MEMIT as published for Llama (layers 4–8, mom2_update_weight 15000 on the mean C0).
    method="memit", layers=(4, 5, 6, 7, 8), lam=15_000.0, values=ValueConfig(clamp=0.75, kl_factor=0.0625),
    stats_tokens=150_000,
)
_LLAMA2_7B_EMMET = dataclasses.replace(_LLAMA3_8B_EMMET, stats_tokens=120_000)
_LLAMA2_7B_MEMIT = dataclasses.replace(_LLAMA3_8B_MEMIT, stats_tokens=120_000)
_GPT2XL_MEMIT = HParams(
    # MEMIT paper, GPT-2 XL: layers 13–17, λ = 20000, clamp 0.75, KL 0.0625.
    method="memit", layers=(13, 14, 15, 16, 17), lam=20_000.0, values=ValueConfig(clamp=0.75, weight_decay=0.5),
    stats_tokens=100_000,
)
_GPT2XL_EMMET = HParams(method="emmet", layers=(17,), lam=0.0, values=ValueConfig(clamp=4.0, weight_decay=0.5))
_GPTJ_MEMIT = HParams(
    # MEMIT paper, GPT-J: layers 3–8, λ = 15000.
    method="memit", layers=(3, 4, 5, 6, 7, 8), lam=15_000.0, values=ValueConfig(clamp=0.75, weight_decay=0.5),
)
_GPTJ_EMMET = HParams(method="emmet", layers=(5,), lam=0.0, values=ValueConfig(clamp=4.0, weight_decay=0.5))

# The embedded default model, SmolLM2-135M-Instruct (30 layers, d_in 1536). Layer chosen by the
# EMMET layer sweep on CounterFact (32 records, batches of 16, layers 1/3/4/6/8): layer 1 had the
# best S (82.1 vs 78.5 at layer 3) and the best NS (71.9, unedited 68.8); ES is 96.9 at every
# layer. The margin is a few records; figures and the command are in docs/results.md.
DEFAULT_LAYER = 1
_SMOLLM2_EMMET = HParams(
    method="emmet", layers=(DEFAULT_LAYER,), lam=0.0,
    # Stopping rule: the argmax. Requiring every rewrite prompt's target ≥ 50% (values.min_prob)
    # raised PS by 0–4 of 64 paraphrases on three sets of CounterFact records but took 2.3× the
    # time for a batch of 64 (docs/results.md, "The stopping rule"); it stays an option.
    # The step: normalised gradient steps of 0.1·‖h‖ (values.step_norm) instead of Adam at lr 0.5.
    # They reach the targets with about half the ‖δ‖: over 128 sequential edits the held-out
    # perplexity rose +3.4% instead of +10.5% (+187% instead of +501% over 512). The price is in one
    # batch: PS 1.6 points lower in a batch of 16 (1.15× the time), 6.3 lower in a batch of 64
    # (docs/results.md, "A smaller value step").
    values=ValueConfig(lr=0.5, steps=25, clamp=4.0, kl_factor=0.0625, weight_decay=1e-3, step_norm=0.1),
    stats_tokens=30_000,
    # Memory of earlier commits: 30 sequential batches of 8 CounterFact facts (bf16), efficacy of
    # all 240 at the end 92.1% with preserve 0, 97.1% with 1. Over 512 sequential edits in commits
    # of 16, a looser memory (0.01) kept more of them than 1 did, on two sets of records (ES 91.6
    # and 94.3 instead of 88.1 and 88.9, S +3.1 and +2.9) with about half the held-out perplexity
    # rise (+83% and +88% instead of +187% and +157%); up to 128 edits the two are within a few
    # paraphrases. The price shows in shorter sessions of smaller commits: 30 commits of 8, ES of
    # all 240 95.0 instead of 97.1, perplexity +26.6% instead of +22.1% (docs/results.md, "How much
    # one layer can hold").
    # The remembered facts' keys are computed once per commit (memory.py): the same solve, without
    # a key pass over every remembered fact on every commit.
    preserve=0.01, remember_by_commit=True,
)
# MEMIT on the default model: the EMMET preset's value steps and memory, spread over layers 1–3,
# each layer's share of the change written exactly (λ = 0). It is the default model's choice for
# long sessions: over 512 sequential edits in commits of 16, on two sets of CounterFact records,
# it held the edits better and damaged the model far less than EMMET on layer 1 (ES 97.3 and 97.7
# against 91.8 and 94.3, held-out perplexity +12% and +13% against +109% and +88%). In one batch
# of 16 it edits as well (ES/PS 100/93.8 both, NS 3 points better); in one batch of 64 worse (PS
# 90.6 against 96.9, NS 6 points lower), so EMMET stays the default method (docs/results.md,
# "MEMIT on layers 1–3 over 512 edits"). Half the value step (values.step_norm=0.05) cut the
# perplexity rise at 1,000 edits from +107% to +28% for 1.7 points of PS, and at 768 edits of a
# second set of records from +205% to +37%, but in one batch of 16 it cost 7.8 points of PS and
# 1.24× the time: not the preset ("A third set", "Two more settings of MEMIT", "A second set of
# records, commit by commit").
# A ridge of 0.001 on each layer's C0 (norm_penalty): 30,000 tokens in 1,536 dimensions
# underestimate C0's weakest directions, where the solve writes; ordinary text has 1.8-2.9× their
# energy there (layers 1 and 3) and takes 1.6× the change that C0 predicts. 0.001 is the size of
# those eigenvalues (0.01, the mean eigenvalue, made the perplexity worse). Over 512 edits on two
# sets of records: held-out perplexity +18.8% and +5.6% against +26.0% and +9.7%, S 1.4 and 0.8
# points higher, ES +1.6 and -0.3; one batch of 16 and one of 64 identical. At 1,000 edits (one
# set) +135% against +168% for 1.6 points of ES (docs/results.md, "Where the damage is, and a
# small ridge on the key statistics"). On EMMET's one layer the same ridge did not help (+125%
# against +119% after 512 edits, S 0.7 lower), so the EMMET preset above has none.
_SMOLLM2_MEMIT = dataclasses.replace(_SMOLLM2_EMMET, method="memit", layers=(1, 2, 3), norm_penalty=1e-3)
# Models kedit has no preset for get the default model's EMMET settings (see ``preset``) or MEMIT as
# published, ridge λ = 15000 on the mean C0, over three early layers.
_GENERIC_MEMIT = HParams(
    method="memit", layers=(2, 3, 4), lam=15_000.0,
    values=ValueConfig(lr=0.5, steps=25, clamp=4.0, kl_factor=0.0625, weight_decay=1e-3),
    stats_tokens=30_000,
)
_GENERIC = {"emmet": _SMOLLM2_EMMET, "memit": _GENERIC_MEMIT}

PRESETS: dict[str, dict[str, HParams]] = {
    "llama-3-8b": {"emmet": _LLAMA3_8B_EMMET, "memit": _LLAMA3_8B_MEMIT},
    "llama-2-7b": {"emmet": _LLAMA2_7B_EMMET, "memit": _LLAMA2_7B_MEMIT},
    "gpt2-xl": {"emmet": _GPT2XL_EMMET, "memit": _GPT2XL_MEMIT},
    "gpt-j-6b": {"emmet": _GPTJ_EMMET, "memit": _GPTJ_MEMIT},
    "smollm2-135m": {"emmet": _SMOLLM2_EMMET, "memit": _SMOLLM2_MEMIT},
}


def with_settings(hp: HParams, items: list[str] | tuple[str, ...]) -> HParams:
    """``hp`` with ``NAME=VALUE`` settings applied (``values.min_prob=0.5``, ``preserve=1``,
    ``layers=1,2``); each value is read as the type the field has now, and the result is checked
    once, with every setting applied."""
    top: dict = {}
    vals: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep:
            raise UsageError(f"cannot read the setting {item!r}", hint="write NAME=VALUE, e.g. values.min_prob=0.5")
        owner, _, leaf = name.rpartition(".")
        if owner not in ("", "values"):
            raise UsageError(f"unknown setting {name!r}", hint="settings are HParams fields or values.FIELD")
        target = hp.values if owner else hp
        if leaf not in {f.name for f in dataclasses.fields(target)}:
            known = ", ".join(f.name for f in dataclasses.fields(target) if f.name != "values")
            raise UsageError(f"unknown setting {name!r}", hint=f"known: {known}")
        (vals if owner else top)[leaf] = _parse_like(getattr(target, leaf), text.strip(), name)
    if not top and not vals:
        return hp
    return dataclasses.replace(hp, values=dataclasses.replace(hp.values, **vals), **top)


def _parse_like(current, text: str, name: str):
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, tuple):
            return tuple(int(x) for x in text.split(",") if x.strip())
        return type(current)(text)
    except ValueError:
        raise UsageError(f"cannot read {name}={text!r} as {type(current).__name__}") from None


def family_of(name: str, num_layers: int | None = None) -> str | None:
    n = name.lower().replace("_", "-")
    if n == "default" or "smollm2" in n:
        return "smollm2-135m"
    for key, pats in {
        "llama-3-8b": ("llama-3-8b", "llama-3.1-8b", "llama3-8b", "meta-llama-3-8b", "llama-3.2"),
        "llama-2-7b": ("llama-2-7b",),
        "gpt2-xl": ("gpt2-xl",),
        "gpt-j-6b": ("gpt-j", "gptj"),
    }.items():
        if any(p in n for p in pats):
            return key
    return None


def is_instruct(model_name: str) -> bool:
    """A chat/instruct model by its name (the embedded default model is SmolLM2-135M-Instruct)."""
    n = model_name.lower().replace("_", "-")
    return n == "default" or re.search(r"instruct|-chat\b|-it\b", n) is not None


def preset(model_name: str, method: str = "emmet", num_layers: int | None = None) -> HParams:
    """Settings for ``model_name`` (a name, path or hub id) and ``method``.

    Unknown models get the default model's EMMET settings, or MEMIT as published, with the layers
    placed at ~10% of depth (the published layer sweeps find early layers best) and Adam's value
    steps: the normalised steps were measured on the default model only, and a model that needs a
    δ of several times ‖h‖ would not reach it in 25 steps of 0.1·‖h‖. ROME is EMMET with one fact
    per batch. Instruct models also fit each fact as a chat turn (``ValueConfig.chat``): on the
    default model, 32 CounterFact edits then show in 50% of chat answers instead of 34%
    (docs/results.md).
    """
    method_name(method)
    fam = family_of(model_name)
    base_method = "emmet" if method == "rome" else method
    if fam is not None:
        hp = PRESETS[fam][base_method]
    else:
        hp = _GENERIC[base_method]
        hp = dataclasses.replace(hp, values=dataclasses.replace(hp.values, step_norm=0.0))
        if num_layers is not None:
            first = max(1, round(0.1 * num_layers))
            layers = (first,) if base_method == "emmet" else tuple(range(first, min(num_layers, first + 3)))
            hp = dataclasses.replace(hp, layers=layers)
    if is_instruct(model_name):
        hp = dataclasses.replace(hp, values=dataclasses.replace(hp.values, chat=True))
    return dataclasses.replace(hp, method=method)
