"""adabert: task-adaptive compression of BERT-family models by differentiable architecture search."""

__version__ = "0.1.0"

# Importing the package registers the student and compressed models with transformers' Auto
# classes, so saved models load with AutoModelForSequenceClassification and pipelines.
from adabert import student as _student  # noqa: E402, F401
from adabert.compress import model as _compressed  # noqa: E402, F401
