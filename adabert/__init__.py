"""adabert: task-adaptive compression of BERT-family models by differentiable architecture search."""

__version__ = "0.1.0"
