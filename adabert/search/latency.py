"""A measured latency table of a search space: what each op, and a student around them, costs here.

FLOPs do not say what a small model costs at batch 1, where per-call overhead dominates; the table
measures it on the machine that runs the command, for the device the student will run on (the CPU
unless told otherwise). Per op of the space: the median time of one call on ``[batch, hidden,
seq_len]`` at batch 1 and batch 32. Around the ops: the fixed cost of a student (embeddings, masks,
and the head it will have: the match head's token products cost more than a mean) and the cost of a
cell's own work (node sums, masking, the output mix), measured on real students built with identity
ops at depths 1 and 2. The teacher is timed in the same run, so a
speedup target becomes a latency in milliseconds. A student's predicted latency is then

    base + depth x (cell + sum of its kept edges' op latencies)

Tables are cached (``~/.cache/adabert/latency``, or ``ADABERT_CACHE``) under a key made of the space
(its ops and the source of the files that define them and the student around them), the width,
length, batches, threads, the teacher, the machine's description and the torch version: a new
machine, torch, op or student code measures anew, anything else reuses the table. Its ``sha256``
goes into the search's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adabert.io import atomic_write_json
from search_spaces import SearchSpace, get_op

log = logging.getLogger(__name__)

TABLE_VERSION = 2  # 2: the students around the ops have the head the student will have


def machine_description() -> dict[str, Any]:
    """What a latency depends on besides the code: the processor, its cores and the torch build."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__}


# the modules of the student around the ops (embeddings, cells, heads): a table timed with other
# student code is another table
STUDENT_MODULES = ("adabert.modules", "adabert.student.network")


def _source_hash(space: SearchSpace) -> str:
    """sha256 of the files that define the space's ops and the student around them: edited code is
    measured again."""
    import importlib.util

    h = hashlib.sha256()
    paths = []
    for name in sorted(space.ops):
        module = sys.modules.get(get_op(name).build.__module__)
        h.update(name.encode())
        paths.append(getattr(module, "__file__", None))
    paths += [getattr(importlib.util.find_spec(name), "origin", None) for name in STUDENT_MODULES]
    for path in paths:
        if path and Path(path).is_file():
            h.update(Path(path).read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per call (median) by batch size: per op, the fixed student cost and the cell cost."""

    ops: dict[str, dict[str, float]]  # op -> {batch: ms}
    base: dict[str, float]  # batch -> ms
    cell: dict[str, float]  # batch -> ms
    teacher: dict[str, float]  # batch -> ms
    params: dict[str, int]  # op -> parameters
    info: dict[str, Any]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "base": self.base,
            "cell": self.cell,
            "teacher": self.teacher,
            "params": self.params,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        return cls(d["ops"], d["base"], d["cell"], d["teacher"], d["params"], d["info"])

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def predict(self, genotype: Any, batch: int) -> float:
        """Predicted milliseconds per call of the student built from ``genotype`` at ``batch``."""
        b = str(batch)
        per_cell = self.cell[b] + sum(self.ops[e.op][b] for e in genotype.edges)
        return self.base[b] + genotype.num_cells * per_cell

    def format(self) -> str:
        batches = list(self.base)
        head = f"{'op':<14}{'params':>10}" + "".join(f"{'b' + b + ' ms':>12}" for b in batches)
        lines = [head]
        for op, times in self.ops.items():
            lines.append(f"{op:<14}{self.params[op]:>10,d}" + "".join(f"{times[b]:>12.4f}" for b in batches))
        for name, row in (("(cell)", self.cell), ("(base)", self.base), ("teacher", self.teacher)):
            lines.append(f"{name:<14}{'':>10}" + "".join(f"{row[b]:>12.4f}" for b in batches))
        info = self.info
        lines.append(
            f"measured on {info['machine']['cpu']} ({info['machine']['cores']} cores, "
            f"{info['threads']} thread(s), torch {info['machine']['torch']}), length {info['seq_len']}, "
            f"{info['repeats']} interleaved repeats, median"
        )
        return "\n".join(lines)


def _identity_genotype(space: SearchSpace, depth: int, hidden: int, embedding: dict[str, Any]) -> Any:
    from adabert.genotype import Edge, Genotype

    op = "identity" if "identity" in space.ops else next(o for o in space.ops if o != space.zero_op)
    edges = []
    for node in range(space.num_input_nodes, space.num_input_nodes + space.num_nodes):
        for src in range(max(0, node - 2), node):
            edges.append(Edge(src, node, op))
    return Genotype(
        space=space.name,
        num_cells=depth,
        edges=tuple(edges),
        hidden_size=hidden,
        num_input_nodes=space.num_input_nodes,
        num_nodes=space.num_nodes,
        embedding=embedding,
    ), op


def build_student(genotype: Any, embedding: dict[str, Any], num_labels: int, head: str) -> torch.nn.Module:
    """The student of ``genotype`` with random weights (its time does not depend on them), in eval mode."""
    from adabert.student.network import AdaBertStudentConfig, AdaBertStudentForSequenceClassification

    config = AdaBertStudentConfig(
        genotype=genotype.to_dict(),
        vocab_size=embedding["vocab_size"],
        max_position_embeddings=embedding["max_position_embeddings"],
        hidden_size=genotype.hidden_size,
        pair=embedding["pair"],
        num_labels=num_labels,
        head=head,
        head_norm=True,
    )
    return AdaBertStudentForSequenceClassification(config).eval()


def measure_table(
    space: SearchSpace,
    hidden: int,
    seq_len: int,
    teacher: torch.nn.Module,
    embedding: dict[str, Any],
    num_labels: int,
    batches: tuple[int, ...] = (1, 32),
    threads: int = 1,
    repeats: int = 20,
    head: str = "paper",
) -> LatencyTable:
    """Time every op, two identity students (with ``head``) and the teacher, interleaved, per batch."""
    from adabert.report.evaluate import EvalMode, accepted_inputs, dummy_batch, time_calls

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ops = {name: space.build_op(name, hidden).eval() for name in space.ops}
        students, identity = {}, None
        for depth in (1, 2):
            genotype, identity = _identity_genotype(space, depth, hidden, embedding)
            students[depth] = build_student(genotype, embedding, num_labels, head)
    pair = bool(embedding["pair"])
    result: dict[str, dict[str, float]] = {"ops": {}, "base": {}, "cell": {}, "teacher": {}}
    for name in space.ops:
        result["ops"][name] = {}
    with EvalMode([*ops.values(), *students.values(), teacher], threads) as used:
        for batch in batches:
            x = torch.randn(batch, hidden, seq_len, generator=torch.Generator().manual_seed(1))
            mask = torch.ones(batch, 1, seq_len)
            calls = {
                f"op:{n}": (lambda m=m, n=n, x=x, mask=mask: m(x, mask) if get_op(n).takes_mask else m(x))
                for n, m in ops.items()
            }
            for depth, model in students.items():
                inputs = accepted_inputs(model, dummy_batch(model, batch, seq_len, pair))
                calls[f"student:{depth}"] = lambda m=model, b=inputs: m(**b)
            teacher_inputs = accepted_inputs(teacher, dummy_batch(teacher, batch, seq_len, pair))
            calls["teacher"] = lambda b=teacher_inputs: teacher(**b)
            times = time_calls(calls, repeats, warmup=3)
            ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
            b = str(batch)
            for name in space.ops:
                result["ops"][name][b] = ms[f"op:{name}"]
            edges = len(_identity_genotype(space, 1, hidden, embedding)[0].edges)
            one, two = ms["student:1"], ms["student:2"]
            result["cell"][b] = max(0.0, two - one - edges * ms[f"op:{identity}"])
            result["base"][b] = max(0.0, 2 * one - two)
            result["teacher"][b] = ms["teacher"]
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in ops.items()}
    info = {
        "space": space.name,
        "hidden": hidden,
        "seq_len": seq_len,
        "threads": used,
        "repeats": repeats,
        "head": head,
        "machine": machine_description(),
        "version": TABLE_VERSION,
    }
    return LatencyTable(result["ops"], result["base"], result["cell"], result["teacher"], params, info)


def cache_dir() -> Path:
    root = os.environ.get("ADABERT_CACHE") or Path.home() / ".cache" / "adabert"
    return Path(root) / "latency"


def table_key(
    space: SearchSpace,
    hidden: int,
    seq_len: int,
    batches: tuple[int, ...],
    threads: int,
    teacher_sha: str,
    pair: bool,
    head: str = "paper",
) -> str:
    key = {
        "space": [space.name, list(space.ops), space.num_input_nodes, space.num_nodes],
        "ops_source": _source_hash(space),
        "hidden": hidden,
        "seq_len": seq_len,
        "batches": list(batches),
        "threads": threads,
        "teacher": teacher_sha,
        "pair": pair,
        "head": head,
        "machine": machine_description(),
        "version": TABLE_VERSION,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def latency_table(
    space: SearchSpace,
    hidden: int,
    seq_len: int,
    teacher_dir: str | Path,
    teacher_sha: str,
    embedding: dict[str, Any],
    num_labels: int,
    batches: tuple[int, ...] = (1, 32),
    threads: int = 1,
    refresh: bool = False,
    head: str = "paper",
) -> LatencyTable:
    """The cached table for this space, machine and torch, measured (and cached) when there is none."""
    path = (
        cache_dir()
        / f"{table_key(space, hidden, seq_len, batches, threads, teacher_sha, embedding['pair'], head)}.json"
    )
    if path.is_file() and not refresh:
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
            log.info("latency table from the cache: %s", path)
            return table
        except (ValueError, KeyError, TypeError):
            log.warning("%s is damaged; measuring the latency table again", path)
    from adabert.model_folder import load_classifier

    log.info(
        "measuring the latency table of %s (%d ops, batches %s, %d thread(s))",
        space.name,
        len(space.ops),
        batches,
        threads,
    )
    teacher = load_classifier(teacher_dir).eval()  # refused, in one line, if its weights do not fit
    table = measure_table(space, hidden, seq_len, teacher, embedding, num_labels, batches, threads, head=head)
    atomic_write_json(path, table.to_dict())
    return table
