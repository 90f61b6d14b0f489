"""On a CUDA device: search, student training and evaluation on the GPU, in fp32, bf16 and fp16.

Every test here is skipped, saying so, on a machine without CUDA (benchmarks/gpu.sh runs them on one).
They check what a GPU run promises: a valid genotype and finite losses; checkpoints of CPU tensors
that resume on the GPU (also a search begun on the CPU); autocast really computing in the chosen
precision; the same Gumbel draws as on the CPU for a seed; fp32 forward passes that agree with the
CPU's to rounding; and the torchrun code path over nccl in a group of one process.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from adabert import data, distributed
from adabert.checkpoint import load_state
from adabert.config import EvalConfig, TrainConfig
from adabert.genotype import Genotype
from adabert.search import run_search
from adabert.teacher.store import KnowledgeStore
from search_spaces import get_space

sys.path.insert(0, str(Path(__file__).parent))
from test_search import search_config  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _log(search_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (search_dir / "search_log.jsonl").read_text().splitlines()]


def _assert_valid(genotype: Genotype, search_dir: Path) -> None:
    assert Genotype.load(search_dir / "genotype.json") == genotype
    ops = set(get_space("adabert_cnn").ops)
    assert 1 <= genotype.num_cells <= 3 and genotype.hidden_size == 16
    assert genotype.edges and all(edge.op in ops for edge in genotype.edges)
    for record in _log(search_dir):
        values = [record[k] for k in ("loss", "ce", "kd", "efficiency")] + [record["heldout"]["loss"]]
        assert all(math.isfinite(v) for v in values), record


def _train(store: Path, search_dir: Path, out: Path, **overrides) -> dict:
    from adabert.student.train import train_student

    settings = dict(
        genotype=str(search_dir / "genotype.json"),
        store=str(store),
        output_dir=str(out),
        supernet=str(search_dir),
        epochs=2,
        batch_size=8,
        probe_kd=0.5,
    )
    result = train_student(TrainConfig(**{**settings, **overrides}))
    assert all(math.isfinite(r["loss"]) for r in result["history"])
    assert 0.0 <= result["dev"]["accuracy"] <= 1.0
    return result


def test_search_train_and_evaluate_on_cuda(tiny_store, tmp_path):
    from adabert.report.evaluate import load_classifier, run_evaluation

    search_dir = tmp_path / "search"
    genotype = run_search(search_config(tiny_store, search_dir, device="cuda"))
    _assert_valid(genotype, search_dir)
    state = load_state(search_dir / "checkpoint.safetensors", "search")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    assert len(state["cuda_rng_per_rank"]) == 1
    # the checkpoint resumes on the GPU
    resumed = run_search(search_config(tiny_store, search_dir, epochs=3, device="cuda", resume=True))
    assert [r["epoch"] for r in _log(search_dir)] == [1, 2, 3]
    _assert_valid(resumed, search_dir)

    student = tmp_path / "student"
    _train(tiny_store, search_dir, student, device="cuda")
    training = load_state(student / "training_state.safetensors", "training")
    assert all(t.device.type == "cpu" for t in training["model"].values())
    _train(tiny_store, search_dir, student, device="cuda", epochs=3, resume=True)
    model = load_classifier(student)  # saved from the GPU, loads on the CPU
    assert next(model.parameters()).device.type == "cpu"

    report = run_evaluation(
        EvalConfig(
            model=str(student),
            store=str(tiny_store),
            output_dir=str(tmp_path / "eval"),
            batch_sizes=(1, 2),
            seq_len=16,
            repeats=2,
            warmup=1,
            device="cuda",
        )
    )
    assert report["latency"]["model"]["1"]["median_ms"] > 0  # the CPU figures, as always
    on_gpu = report["latency_device"]
    assert on_gpu["device"].startswith("cuda:")
    assert all(on_gpu["latency"][m][bs]["median_ms"] > 0 for m in on_gpu["latency"] for bs in ("1", "2"))
    assert "## Latency per batch on cuda:" in (tmp_path / "eval" / "report.md").read_text()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_computes_in_the_chosen_precision(precision, tiny_store, tmp_path, monkeypatch):
    import adabert.search.loop as loop
    import adabert.student.train as train

    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    seen: list[tuple[bool, torch.dtype]] = []

    def spy(module):
        real = module.task_loss

        def task_loss(logits, *args):
            seen.append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")))
            return real(logits, *args)

        monkeypatch.setattr(module, "task_loss", task_loss)

    spy(loop)
    search_dir = tmp_path / "search"
    genotype = run_search(search_config(tiny_store, search_dir, device="cuda", precision=precision))
    _assert_valid(genotype, search_dir)
    assert seen and set(seen) == {(True, DTYPES[precision])}
    state = load_state(search_dir / "checkpoint.safetensors", "search")
    assert ("w_scaler" in state) == (precision == "fp16")

    seen.clear()
    spy(train)
    _train(tiny_store, search_dir, tmp_path / "student", device="cuda", precision=precision)
    assert seen and set(seen) == {(True, DTYPES[precision])}


def test_a_search_begun_on_the_cpu_resumes_on_cuda(tiny_store, tmp_path):
    search_dir = tmp_path / "search"
    run_search(search_config(tiny_store, search_dir, epochs=1, device="cpu"))
    genotype = run_search(search_config(tiny_store, search_dir, epochs=2, device="cuda", resume=True))
    assert [r["epoch"] for r in _log(search_dir)] == [1, 2]
    _assert_valid(genotype, search_dir)


def test_gumbel_draws_and_fp32_forward_match_the_cpu(tiny_store):
    from adabert.device import prepare
    from adabert.search.loop import build_supernet

    device = prepare("cuda", "fp32")  # fp32 proper: TensorFloat-32 off
    assert not torch.backends.cudnn.allow_tf32
    cfg = search_config(tiny_store, Path("unused"))
    store = KnowledgeStore.open(tiny_store)
    torch.manual_seed(0)
    cpu_net = build_supernet(cfg, store).eval()
    gpu_net = build_supernet(cfg, store).eval()
    gpu_net.load_state_dict(cpu_net.state_dict())
    gpu_net.to(device)
    rows = data.load_split(store, "train")
    batch = next(iter(data.loader(rows, 8, False, pad_token_id=store.pad_token_id)))
    inputs = [batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")]
    for step in range(5):
        cpu_sample = cpu_net.sample(1.0, torch.Generator().manual_seed(step))
        gpu_sample = gpu_net.sample(1.0, torch.Generator().manual_seed(step))
        assert cpu_sample.ops == gpu_sample.ops and cpu_sample.depth == gpu_sample.depth
        with torch.no_grad():
            expected = cpu_net(*inputs, cpu_sample).logits
            actual = gpu_net(*[x.to(device) for x in inputs], gpu_sample).logits.cpu()
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    uniform_cpu = cpu_net.uniform_sample(torch.Generator().manual_seed(9))
    uniform_gpu = gpu_net.uniform_sample(torch.Generator().manual_seed(9))
    assert uniform_cpu.ops == uniform_gpu.ops and uniform_cpu.depth == uniform_gpu.depth


def test_the_torchrun_code_path_over_nccl_in_a_group_of_one(tiny_store, tmp_path, monkeypatch):
    """One GPU cannot host two nccl ranks; a group of one runs every collective of the search and the
    training through nccl on CUDA tensors (the multi-rank path is tested on gloo, test_distributed)."""
    if not dist.is_nccl_available():
        pytest.skip("this torch build has no nccl")
    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    assert distributed.default_backend("cuda") == "nccl"
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed, "active", lambda: True)
        search_dir = tmp_path / "search"
        genotype = run_search(search_config(tiny_store, search_dir, device="cuda"))
        _assert_valid(genotype, search_dir)
        assert load_state(search_dir / "checkpoint.safetensors", "search")["world_size"] == 1
        _train(tiny_store, search_dir, tmp_path / "student", device="cuda")
    finally:
        dist.destroy_process_group()
