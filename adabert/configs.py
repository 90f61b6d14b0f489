"""The configs of adabert's models, apart from the models: what AutoConfig needs, and nothing more.

They live here, not beside their models (``adabert.student.network``, ``adabert.compress.model``), because
registering a config with ``AutoConfig`` must work while transformers is still importing its modeling
code (``transformers.pipelines`` loads ``configuration_auto`` from inside ``modeling_utils``): this
module needs only ``transformers.configuration_utils``, which ``configuration_auto`` itself imported.
A config that is created also registers its model class (the ``on_create`` callback that ``adabert``
passes to :func:`register_configs`: :func:`adabert.register_models_when_ready`), so
``AutoModel*.from_pretrained``, which builds the config before it looks the model class up, finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers.configuration_utils import PretrainedConfig

SPEC_VERSION = 1
"""The format of a compressed model's ``compression`` spec (``adabert.compress.model``)."""

MIRRORED_KEYS = ("vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_size", "pair")
"""Base-config attributes copied onto the compressed config, for code that reads them from any model."""

LABEL_KEYS = ("id2label", "label2id", "problem_type", "pad_token_id")


_on_create: list[Callable[[], None]] = []
"""Called whenever one of these configs is created (see :func:`register_configs`)."""


def _register_models() -> None:
    for callback in _on_create:
        callback()


class AdaBertStudentConfig(PretrainedConfig):
    model_type = "adabert-student"

    def __init__(
        self,
        genotype: dict[str, Any] | None = None,
        vocab_size: int = 30522,
        max_position_embeddings: int = 512,
        hidden_size: int = 128,
        hidden_dropout_prob: float = 0.1,
        pair: bool = True,
        pad_token_id: int = 0,
        norm_width: int | None = None,
        head: str = "paper",
        head_norm: bool = False,
        cell_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        """``norm_width``: the width before pruning removed hidden dimensions (see ``PrunedLayerNorm``);
        ``head``: a ``modules.HEADS`` kind; ``head_norm``: whether the ``pair`` head layer-normalises
        the last cell (False only in the configs of students saved before it did, which reload as
        they were trained); ``cell_norm``: whether the pooled heads layer-normalise each cell (False
        in students saved before they did)."""
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.norm_width = norm_width
        self.head = head
        self.head_norm = head_norm
        self.cell_norm = cell_norm
        self.genotype = genotype
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.pair = pair
        _register_models()

    def architecture(self) -> dict[str, Any]:
        """The settings that decide what the model computes (what its weights were trained for); their
        hash is stamped into ``model.safetensors`` (``adabert.model_folder``). Two parameter-free ops
        (max and average pooling) load the same tensors: only this tells an edited genotype apart."""
        keys = ("genotype", "vocab_size", "max_position_embeddings", "hidden_size", "pair", "norm_width")
        normed = {"cell_norm": True} if getattr(self, "cell_norm", False) else {}  # older stamps had none
        settings = {k: getattr(self, k) for k in keys + ("head", "head_norm")}
        return {**settings, **normed, "num_labels": self.num_labels}


class AdaBertCompressedConfig(PretrainedConfig):
    """The base model's config (``base``) plus the per-module replacements (``compression``)."""

    model_type = "adabert-compressed"

    def __init__(
        self,
        base: dict[str, Any] | None = None,
        compression: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        base = dict(base) if base is not None else None
        mirrored = {}
        if base is not None:
            for key in LABEL_KEYS:
                if key not in kwargs and base.get(key) is not None:
                    kwargs[key] = base[key]
            for key in MIRRORED_KEYS:
                value = kwargs.pop(key, base.get(key))
                if value is not None:
                    mirrored[key] = value
        super().__init__(**kwargs)
        self.base = base
        self.compression = compression or {"format_version": SPEC_VERSION, "methods": [], "modules": {}}
        for key, value in mirrored.items():
            setattr(self, key, value)
        _register_models()

    def architecture(self) -> dict[str, Any]:
        """What decides the outputs (see ``AdaBertStudentConfig.architecture``): the base model's config
        and the modules the compression replaced."""
        return {"base": self.base, "compression": self.compression, "num_labels": self.num_labels}

    def base_config(self) -> PretrainedConfig:
        """The base model's config object (its ``model_type`` must be registered with AutoConfig)."""
        if self.base is None or "model_type" not in self.base:
            raise ValueError("AdaBertCompressedConfig.base (the original model's config) is required")
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        values = dict(self.base)
        try:
            config_class = CONFIG_MAPPING[values["model_type"]]
        except KeyError:
            raise ValueError(
                f"base model type {values['model_type']!r} is not registered with AutoConfig "
                "(import the module that defines it first)"
            ) from None
        return config_class.from_dict(values)


CONFIGS = (AdaBertStudentConfig, AdaBertCompressedConfig)


def register_configs(on_create: Callable[[], None] | None = None) -> None:
    """Register the configs with AutoConfig (idempotent). ``on_create`` is called whenever one of them is
    created from then on: the package passes the registration of its model classes, which this module
    cannot import (the package imports this module)."""
    if on_create is not None and on_create not in _on_create:
        _on_create.append(on_create)
    from transformers.models.auto.configuration_auto import AutoConfig

    for config in CONFIGS:
        AutoConfig.register(config.model_type, config, exist_ok=True)
