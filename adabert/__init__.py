"""adabert: task-adaptive compression of BERT-family models by differentiable architecture search."""

__version__ = "0.1.0"

# Importing the package registers the student with transformers' Auto classes, so saved students
# load with AutoModelForSequenceClassification and pipelines.
from adabert import student as _student  # noqa: E402, F401
