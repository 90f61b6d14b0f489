"""A compressed model that reloads at its smaller size through the Auto classes.

Pruning and factorizing change layer shapes, so the base model's own config would rebuild the
original, larger layers and the saved weights would not fit ("the compact model will not reload").
``AdaBertCompressedForSequenceClassification`` (model_type ``adabert-compressed``) fixes that for
any sequence classifier, BERT-family teacher and AdaBERT student alike. Its config holds

- ``base``: the original model's config (a dict with its ``model_type``), and
- ``compression``: ``{"format_version": 1, "methods": [...], "modules": {dotted name: spec}}``, one
  spec per module whose shape or kind differs from what ``base`` builds, e.g.
  ``{"type": "factorized_linear", "in_features": 768, "rank": 96, "out_features": 768, "bias": true}``
  or ``{"type": "linear", "in_features": 768, "out_features": 1536, "bias": true}``.

``from_pretrained`` builds the base model from ``base`` (``AutoModelForSequenceClassification
.from_config``), replaces the listed modules by ones of the recorded shapes, then loads the weights
into them, so ``AutoModelForSequenceClassification.from_pretrained(dir)`` returns the small model with
the outputs it was saved with. The spec is derived at save time by comparing the model against a
fresh base built on the meta device, so it can never drift from the weights.

New module kinds are added by one entry in ``MODULE_KINDS`` (a mapping, not subclassing).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel

import adabert.student.network  # noqa: F401  (registers the student, which may be the base of a compressed model)
from adabert.compress.factorize import FactorizedConv1d, FactorizedEmbedding, FactorizedLinear, set_submodule
from adabert.configs import SPEC_VERSION, AdaBertCompressedConfig


# ------------------------------------------------------------------------------------------- module specs
@dataclass(frozen=True)
class ModuleKind:
    """How to describe a module as a JSON spec and how to build an (uninitialised) one from it."""

    cls: type[nn.Module]
    describe: Callable[[Any], dict[str, Any]]
    build: Callable[[dict[str, Any]], nn.Module]


def _conv_geometry(conv: nn.Conv1d) -> dict[str, Any]:
    padding = conv.padding if isinstance(conv.padding, str) else conv.padding[0]
    return {
        "kernel_size": conv.kernel_size[0],
        "stride": conv.stride[0],
        "padding": padding,
        "dilation": conv.dilation[0],
        "padding_mode": conv.padding_mode,
    }


MODULE_KINDS: dict[str, ModuleKind] = {
    "linear": ModuleKind(
        nn.Linear,
        lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
        lambda s: nn.Linear(s["in_features"], s["out_features"], bias=s["bias"]),
    ),
    "conv1d": ModuleKind(
        nn.Conv1d,
        lambda m: {
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            **_conv_geometry(m),
            "groups": m.groups,
            "bias": m.bias is not None,
        },
        lambda s: nn.Conv1d(
            s["in_channels"],
            s["out_channels"],
            s["kernel_size"],
            stride=s["stride"],
            padding=s["padding"],
            dilation=s["dilation"],
            groups=s["groups"],
            bias=s["bias"],
            padding_mode=s["padding_mode"],
        ),
    ),
    "factorized_linear": ModuleKind(
        FactorizedLinear,
        lambda m: {
            "in_features": m.in_features,
            "rank": m.rank,
            "out_features": m.out_features,
            "bias": m.second.bias is not None,
        },
        lambda s: FactorizedLinear(s["in_features"], s["rank"], s["out_features"], bias=s["bias"]),
    ),
    "factorized_conv1d": ModuleKind(
        FactorizedConv1d,
        lambda m: {
            "in_channels": m.in_channels,
            "rank": m.rank,
            "out_channels": m.out_channels,
            **_conv_geometry(m.first),
            "bias": m.second.bias is not None,
        },
        lambda s: FactorizedConv1d(
            s["in_channels"],
            s["rank"],
            s["out_channels"],
            s["kernel_size"],
            stride=s["stride"],
            padding=s["padding"],
            dilation=s["dilation"],
            bias=s["bias"],
            padding_mode=s["padding_mode"],
        ),
    ),
    "embedding": ModuleKind(
        nn.Embedding,
        lambda m: {
            "num_embeddings": m.num_embeddings,
            "embedding_dim": m.embedding_dim,
            "padding_idx": m.padding_idx,
        },
        lambda s: nn.Embedding(s["num_embeddings"], s["embedding_dim"], padding_idx=s["padding_idx"]),
    ),
    "factorized_embedding": ModuleKind(
        FactorizedEmbedding,
        lambda m: {
            "num_embeddings": m.num_embeddings,
            "rank": m.rank,
            "embedding_dim": m.embedding_dim,
            "padding_idx": m.padding_idx,
        },
        lambda s: FactorizedEmbedding(s["num_embeddings"], s["rank"], s["embedding_dim"], s["padding_idx"]),
    ),
}


def describe_module(module: nn.Module) -> dict[str, Any] | None:
    """The JSON spec of a module of a known kind (exact class match), or None."""
    for name, kind in MODULE_KINDS.items():
        if type(module) is kind.cls:
            return {"type": name, **kind.describe(module)}
    return None


def build_module(spec: dict[str, Any]) -> nn.Module:
    """An uninitialised module of the spec's kind and shapes (weights are loaded afterwards)."""
    try:
        kind = MODULE_KINDS[spec["type"]]
    except KeyError:
        raise ValueError(f"unknown module kind {spec.get('type')!r}; known: {sorted(MODULE_KINDS)}") from None
    return kind.build(spec)


def apply_spec(model: nn.Module, compression: dict[str, Any] | None) -> nn.Module:
    """Replace the modules listed in a compression spec by modules of the recorded shapes, in place."""
    if not compression:
        return model
    version = compression.get("format_version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise ValueError(f"compression spec format {version!r}; this adabert reads {SPEC_VERSION}")
    for name, spec in sorted(compression.get("modules", {}).items()):
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"compression spec names {name!r}, which the base model does not have") from None
        set_submodule(model, name, build_module(spec))
    return model


def _fresh_base(config: PretrainedConfig) -> nn.Module:
    """The base architecture built from its config on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(copy.deepcopy(config))


def compression_spec(model: nn.Module, methods: list[str] | None = None) -> dict[str, Any]:
    """``{"format_version", "methods", "modules"}``: every known-kind module differing from a fresh base.

    ``model`` is the base classifier (or a compressed wrapper, whose inner model is used).
    """
    inner = model.model if isinstance(model, AdaBertCompressedForSequenceClassification) else model
    fresh = _fresh_base(inner.config)
    fresh_modules = dict(fresh.named_modules())
    modules: dict[str, Any] = {}
    factored: list[str] = []
    for name, module in inner.named_modules():
        if any(name.startswith(prefix + ".") for prefix in factored):
            continue
        spec = describe_module(module)
        if spec is None:
            continue
        if spec["type"].startswith("factorized"):
            factored.append(name)
        original = fresh_modules.get(name)
        if original is None or describe_module(original) != spec:
            modules[name] = spec
    return {"format_version": SPEC_VERSION, "methods": list(methods or []), "modules": modules}


# ------------------------------------------------------------------------------------- the wrapper pair
class AdaBertCompressedForSequenceClassification(PreTrainedModel):
    """Any sequence classifier (``self.model``) with the modules of its compression spec replaced.

    The forward passes the usual batch through to the inner model (dropping inputs it does not take,
    e.g. ``token_type_ids`` for DistilBERT) and returns its output unchanged.
    """

    config_class = AdaBertCompressedConfig
    base_model_prefix = "compressed"
    main_input_name = "input_ids"

    def __init__(self, config: AdaBertCompressedConfig, model: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        if model is None:
            model = AutoModelForSequenceClassification.from_config(config.base_config())
            apply_spec(model, config.compression)
        else:
            # wrapping a trained model: it must not be re-initialised by post_init
            for module in model.modules():
                module._is_hf_initialized = True
        self.model = model
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """The inner model initialises its own modules; the wrapper owns no weights."""

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def unwrap(self) -> PreTrainedModel:
        return self.model

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        from adabert.report.evaluate import accepted_inputs

        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "labels": labels,
            **kwargs,
        }
        batch = {k: v for k, v in batch.items() if v is not None}
        return self.model(**accepted_inputs(self.model, batch))

    def refresh_spec(self, methods: list[str] | None = None) -> dict[str, Any]:
        """Re-derive ``config.compression`` (and ``config.base``) from the current modules."""
        if methods is None:
            methods = list((self.config.compression or {}).get("methods", []))
        self.config.base = self.model.config.to_dict()
        self.config.compression = compression_spec(self.model, methods)
        return self.config.compression

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """Save with a compression spec derived from the modules as they are now, the weights stamped
        with the hash of the architecture they fit (``adabert.model_folder``)."""
        masked = [n for n, m in self.named_modules() if getattr(m, "parametrizations", None)]
        if masked:
            raise ValueError(
                f"{len(masked)} modules still carry pruning masks (e.g. {masked[0]}); make them "
                "permanent first (adabert.compress.prune.make_permanent)"
            )
        self.refresh_spec()
        from adabert.model_folder import stamp_architecture

        result = super().save_pretrained(save_directory, *args, **kwargs)
        stamp_architecture(save_directory, self.config)
        return result


AutoConfig.register(AdaBertCompressedConfig.model_type, AdaBertCompressedConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    AdaBertCompressedConfig, AdaBertCompressedForSequenceClassification, exist_ok=True
)


def wrap(
    model: PreTrainedModel, methods: list[str] | None = None
) -> AdaBertCompressedForSequenceClassification:
    """Put a sequence classifier in the compressed wrapper (a no-op for one already wrapped)."""
    if isinstance(model, AdaBertCompressedForSequenceClassification):
        return model
    config = AdaBertCompressedConfig(base=model.config.to_dict())
    wrapper = AdaBertCompressedForSequenceClassification(config, model=model)
    wrapper.refresh_spec(methods or [])
    wrapper.train(model.training)
    return wrapper


def unwrap(model: nn.Module) -> nn.Module:
    """The inner classifier of a compressed wrapper; any other model as it is."""
    return model.model if isinstance(model, AdaBertCompressedForSequenceClassification) else model
