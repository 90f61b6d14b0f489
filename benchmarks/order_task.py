"""The word-order diagnostic: "is this sentence in its original word order, or shuffled?".

A task that only an order-aware model can learn. Each SST-2 sentence of ``min_words`` to
``max_words`` words (short enough that no tokenizer truncates it at 64 tokens) gives two rows: the
sentence as written (``original``) and its words in a random order (``shuffled``; whole words, never
word pieces; a shuffle equal to the original is drawn again).
Both versions of a sentence are in the same split, so a model that sees a bag of words gives both
the same answer and sits at exactly 50% accuracy: any gain over that is word order.

    python benchmarks/order_task.py --data-dir ../shared/data/glue --out runs/order_data

writes ``train.csv`` and ``dev.csv`` (columns ``sentence,label``) for ``adabert pipeline
--train-file ... --dev-file ... --text-columns sentence --label-column label`` and for
``benchmarks/search_quality.py order``. Train rows come from SST-2's train file, dev rows from its
dev file, so no sentence is in both.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

LABELS = ("original", "shuffled")
COLUMNS = ("sentence", "label")


def shuffled(words: list[str], rng: random.Random, tries: int = 100) -> list[str] | None:
    """The words in a random order that differs from theirs; None when every order is the same."""
    if len(set(words)) < 2:
        return None
    for _ in range(tries):
        order = words[:]
        rng.shuffle(order)
        if order != words:
            return order
    return None


def order_rows(
    sentences: list[str], rng: random.Random, min_words: int, max_words: int
) -> list[tuple[str, str]]:
    """Both versions of every usable sentence, the two rows of a sentence side by side."""
    rows = []
    for sentence in sentences:
        words = sentence.split()
        if not min_words <= len(words) <= max_words:
            continue
        other = shuffled(words, rng)
        if other is not None:
            rows += [(" ".join(words), LABELS[0]), (" ".join(other), LABELS[1])]
    return rows


def read_sentences(path: Path) -> list[str]:
    """Distinct sentences of a GLUE SST-2 file, in file order."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)  # header
        return list(dict.fromkeys(row[0].strip() for row in reader if row and row[0].strip()))


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    from adabert.io import atomic_write_text

    lines = [",".join(COLUMNS)]
    lines += ['"' + text.replace('"', '""') + '",' + label for text, label in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def build(
    data_dir: str | Path,
    out: str | Path,
    train_sentences: int = 6000,
    min_words: int = 6,
    max_words: int = 40,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the task's ``train.csv`` (at most ``train_sentences`` sentences, two rows each) and
    ``dev.csv`` (every usable SST-2 dev sentence); returns their paths."""
    sst2, out = Path(data_dir) / "SST-2", Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = [s for s in read_sentences(sst2 / "train.tsv") if min_words <= len(s.split()) <= max_words]
    rng.shuffle(train)
    files = {"train": out / "train.csv", "dev": out / "dev.csv"}
    write_csv(files["train"], order_rows(train[:train_sentences], rng, min_words, max_words))
    write_csv(files["dev"], order_rows(read_sentences(sst2 / "dev.tsv"), rng, min_words, max_words))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default="../shared/data/glue", help="GLUE folder holding SST-2/")
    parser.add_argument("--out", default="runs/order_data", help="folder for train.csv and dev.csv")
    parser.add_argument("--train-sentences", type=int, default=6000, help="train sentences (2 rows each)")
    parser.add_argument("--min-words", type=int, default=6, help="shortest sentence kept, in words")
    parser.add_argument("--max-words", type=int, default=40, help="longest sentence kept, in words")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.train_sentences < 1 or not 2 <= args.min_words <= args.max_words:
        parser.error("--train-sentences must be at least 1, and 2 <= --min-words <= --max-words")
    files = build(args.data_dir, args.out, args.train_sentences, args.min_words, args.max_words, args.seed)
    for split, path in files.items():
        print(f"{split}: {path} ({sum(1 for _ in open(path)) - 1} rows)")


if __name__ == "__main__":
    main()
