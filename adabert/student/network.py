"""The compact student: a transformers config/model pair built from a genotype alone.

Only the genotype's ops exist (nothing of the supernet remains). The model takes the usual batch
dict (``input_ids``, ``attention_mask``, ``token_type_ids``, optional ``labels``), returns
``.loss`` / ``.logits``, saves with ``save_pretrained`` and reloads through the Auto classes, so
it works with ``transformers`` pipelines.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from adabert.configs import AdaBertStudentConfig
from adabert.distill import task_loss
from adabert.genotype import Genotype
from adabert.modules import Cell, ClassifierHead, Embeddings, build_head, masked_mean
from search_spaces import get_space


def _head(config: AdaBertStudentConfig) -> nn.Module:
    kind = getattr(config, "head", "paper")
    norm = getattr(config, "cell_norm", False)
    head = build_head(kind, config.hidden_size, config.num_labels, config.hidden_dropout_prob, norm)
    if kind == "pair" and not config.head_norm:
        head.norm = nn.Identity()
    return head


def _embeddings(config: AdaBertStudentConfig) -> Embeddings:
    return Embeddings(
        config.vocab_size,
        config.max_position_embeddings,
        config.hidden_size,
        dropout=config.hidden_dropout_prob,
        pair=config.pair,
        norm_width=getattr(config, "norm_width", None),
    )


class AdaBertStudentForSequenceClassification(PreTrainedModel):
    config_class = AdaBertStudentConfig
    base_model_prefix = "adabert"
    main_input_name = "input_ids"

    def __init__(self, config: AdaBertStudentConfig) -> None:
        super().__init__(config)
        if config.genotype is None:
            raise ValueError("AdaBertStudentConfig.genotype is required to build a student")
        genotype = Genotype.from_dict(config.genotype)
        space = get_space(genotype.space)
        edges = [(e.source, e.target) for e in genotype.edges]
        ops = [[e.op] for e in genotype.edges]
        self.embeddings = _embeddings(config)
        self.cells = nn.ModuleList(
            Cell(space, edges, ops, config.hidden_size) for _ in range(genotype.num_cells)
        )
        self.head = _head(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Keep PyTorch's per-layer defaults: they suit convolutions better than a flat normal init."""

    @property
    def genotype(self) -> Genotype:
        return Genotype.from_dict(self.config.genotype)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """Save, and stamp the weights with the hash of the architecture they fit (``model_folder``)."""
        from adabert.model_folder import stamp_architecture

        result = super().save_pretrained(save_directory, *args, **kwargs)
        stamp_architecture(save_directory, self.config)
        return result

    HIDDEN_TENSORS = (
        ("embeddings.word", "weight"),
        ("embeddings.position", "weight"),
        ("embeddings.norm", "weight"),
        ("embeddings.norm", "bias"),
    )
    """The embedding stage's tensors whose last axis is the hidden dimension: a dimension zero in all of
    them is zero everywhere downstream of parameter-free cells."""

    @torch.no_grad()
    def remove_pruned_hidden_dims(self) -> dict[str, int] | None:
        """Remove, exactly, the hidden dimensions pruned to zero in every ``HIDDEN_TENSORS`` slice.

        Only when no cell op has parameters (they would mix dimensions back in) and the head does not
        normalise the cells (a zero dimension is not zero once normalised): a pruned dimension is then
        zero in every cell output, so the head's columns for it are dead too. The LayerNorm
        keeps counting the removed dimensions (``norm_width``). Returns the widths, or None.
        """
        tables = (self.embeddings.word, self.embeddings.position)
        if (
            any(p.numel() for cell in self.cells for p in cell.ops.parameters())
            or not all(type(t) is nn.Embedding for t in tables)
            or not (isinstance(self.head, ClassifierHead) and self.head.pool is masked_mean)
            or self.head.norm
        ):
            return None
        state = self.state_dict()
        written = [f"{module}.{tensor}" for module, tensor in self.HIDDEN_TENSORS]
        alive = sum(state[k].abs().reshape(-1, state[k].shape[-1]).sum(0) for k in written) > 0
        if bool(alive.all()):
            return None
        alive[0] |= not alive.any()  # keep one dimension so that every layer keeps a valid shape
        keep = torch.nonzero(alive).flatten()
        config, device, dtype = self.config, self.device, self.dtype
        before, width = config.hidden_size, config.norm_width or config.hidden_size
        config.hidden_size, config.norm_width = int(keep.numel()), width
        self.embeddings = _embeddings(config)
        self.head = _head(config)
        self.to(device=device, dtype=dtype).train(self.training)
        read = ["head.score.weight", "head.out.weight"]  # the head's input columns of those dimensions
        self.load_state_dict({k: v[..., keep] if k in written + read else v for k, v in state.items()})
        return {"before": before, "after": int(keep.numel())}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple:
        """``hidden_states`` (when asked): ``[batch, tokens, hidden]`` for the embedding and each cell."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
        limit = self.config.max_position_embeddings
        if input_ids.shape[1] > limit:
            raise ValueError(
                f"input has {input_ids.shape[1]} tokens but this model takes at most {limit} "
                f"(max_position_embeddings); truncate the inputs, e.g. tokenizer(..., truncation=True, "
                f"max_length={limit})"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs, masks = self.embeddings(input_ids, attention_mask, token_type_ids)
        levels = [inputs[0] + inputs[1] if self.config.pair else inputs[0]]
        states = inputs
        for cell in self.cells:
            out = cell(states, masks.all)
            states = [states[-1], out]
            levels.append(out)
        logits = self.head(levels, masks)
        loss = None
        if labels is not None:
            loss = task_loss(logits, labels, regression=self.config.num_labels == 1)
        hidden = tuple(x.transpose(1, 2) for x in levels) if output_hidden_states else None
        if return_dict is False:
            return tuple(v for v in (loss, logits, hidden) if v is not None)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)


AutoConfig.register(AdaBertStudentConfig.model_type, AdaBertStudentConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    AdaBertStudentConfig, AdaBertStudentForSequenceClassification, exist_ok=True
)


def pca_projection(word: torch.Tensor, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear map (weight, bias) onto the top principal directions of the teacher's word table.

    Used to initialise the student's tables when no searched projection is available: it keeps as
    much of the teacher's embedding geometry as ``hidden_size`` dimensions can.
    """
    mean = word.mean(0)
    _, _, v = torch.linalg.svd(word - mean, full_matrices=False)
    weight = v[:hidden_size]
    return weight, -(weight @ mean)


def build_student(
    genotype: Genotype,
    num_labels: int,
    tables: dict[str, torch.Tensor],
    pair: bool,
    dropout: float = 0.1,
    supernet_state: dict[str, torch.Tensor] | None = None,
    head: str = "paper",
    **config_kwargs: Any,
) -> AdaBertStudentForSequenceClassification:
    """A student whose embedding tables start from ``tables`` (``word`` [V, d], ``position`` [P, d]).

    Tables as wide as the cells (the distilled table) are used as they are; wider ones (the teacher's
    input tables) are projected to the cell width, by the searched projection when
    ``supernet_state`` has one, else by a PCA of the word table. With ``supernet_state`` the cells,
    head and LayerNorm start from the searched weights too, and the tables from the searched ones
    when the search trained them.
    """
    word, position = tables["word"], tables["position"]
    config = AdaBertStudentConfig(
        genotype=genotype.to_dict(),
        vocab_size=word.shape[0],
        max_position_embeddings=position.shape[0],
        hidden_size=genotype.hidden_size,
        hidden_dropout_prob=dropout,
        pair=pair,
        num_labels=num_labels,
        head=head,
        head_norm=True,
        **{"cell_norm": True, **config_kwargs},
    )
    model = AdaBertStudentForSequenceClassification(config)
    state = supernet_state or {}
    searched = {k.removeprefix("embeddings."): v for k, v in state.items() if k.startswith("embeddings.")}
    word = searched.get("word.weight", word)
    position = searched.get("position.weight", position)
    source = Embeddings(word.shape[0], position.shape[0], genotype.hidden_size, dim=word.shape[1])
    source.word.weight.data.copy_(word)
    source.position.weight.data.copy_(position)
    if source.projection is not None:
        if "projection.weight" in searched:
            source.projection.weight.data.copy_(searched["projection.weight"])
            source.projection.bias.data.copy_(searched["projection.bias"])
        else:
            weight, bias = pca_projection(word, genotype.hidden_size)
            source.projection.weight.data.copy_(weight)
            source.projection.bias.data.copy_(bias)
    if supernet_state is not None:
        _load_searched_weights(model, genotype, supernet_state)
    word_table, position_table = source.projected_tables()
    model.embeddings.word.weight.data.copy_(word_table)
    model.embeddings.position.weight.data.copy_(position_table)
    return model


def _load_searched_weights(
    model: AdaBertStudentForSequenceClassification, genotype: Genotype, state: dict[str, torch.Tensor]
) -> None:
    """Copy the searched cells (chosen ops only), the depth's head and the LayerNorm into the student."""
    space = get_space(genotype.space)
    mapped: dict[str, torch.Tensor] = {}
    for kept, edge in enumerate(genotype.edges):
        source_edge = space.edges.index((edge.source, edge.target))
        op = space.op_index(edge.op)
        for k in range(genotype.num_cells):
            prefix = f"cells.{k}.ops.{source_edge}.{op}."
            for key, value in state.items():
                if key.startswith(prefix):
                    mapped[f"cells.{k}.ops.{kept}.0.{key[len(prefix) :]}"] = value
    for k in range(genotype.num_cells):
        mapped[f"cells.{k}.node_mix"] = state[f"cells.{k}.node_mix"]
    head = f"heads.{genotype.num_cells - 1}."
    if not any(key.startswith(head) for key in state):  # one head shared by every depth
        head = "heads.0."
    mapped.update({"head." + key[len(head) :]: v for key, v in state.items() if key.startswith(head)})
    mapped.update({key: v for key, v in state.items() if key.startswith("embeddings.norm.")})
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected:
        raise ValueError(f"searched weights do not fit the student: unexpected {unexpected[:5]}")
    expected_missing = {"embeddings.word.weight", "embeddings.position.weight"}
    if set(missing) - expected_missing:
        raise ValueError(f"searched weights do not fit the student: missing {sorted(set(missing))[:5]}")
