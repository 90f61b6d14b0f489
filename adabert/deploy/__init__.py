"""Deployment: what happens to a trained model after the pipeline's evaluation.

- ``export``: an ONNX (fp32 or int8) or TorchScript folder, checked against PyTorch, written atomically;
- ``quantize``: onnxruntime dynamic int8 quantization and the checks that fit it (agreement with fp32);
- ``runtime``: running an exported file (onnxruntime sessions, TorchScript) on a batch;
- ``predict``: batch inference over a CSV / TSV / JSON Lines file with any saved model or export;
- ``card``: the README.md model card of every student, compressed-model and export folder.

Nothing here is imported by ``import adabert``; each module imports torch / onnxruntime itself.
"""

TASK_FILE = "adabert_task.json"  # the task and its max length, as in a fine-tuned teacher's folder
EXPORT_FILE = "export.json"
