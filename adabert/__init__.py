"""adabert: task-adaptive compression of BERT-family models by differentiable architecture search.

Importing the package is cheap (no torch, no transformers), so ``adabert --help`` is instant, and yet
``import adabert`` followed by ``AutoModelForSequenceClassification.from_pretrained(student_dir)``
(or ``transformers.pipeline(...)``, or ``AutoConfig``) works. Registration with transformers' Auto
classes needs the model classes, hence torch and transformers, so it is deferred:

- if transformers' Auto modules are already imported, the classes are registered now;
- otherwise a one-shot import hook (``sys.meta_path``) waits for ``transformers.models.auto.
  modeling_auto`` or ``configuration_auto`` to finish loading (however it is reached: an Auto class,
  a pipeline) and registers them right then, before any Auto lookup can happen;
- the code that loads or saves models calls :func:`register_auto_classes` itself as well.

Why not ``auto_map`` in ``config.json``: transformers then treats the model as remote code, needs
``trust_remote_code=True`` and loads the class from a ``.py`` file shipped inside the model folder.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

_AUTO_MODULES = ("transformers.models.auto.modeling_auto", "transformers.models.auto.configuration_auto")
_MODEL_MODULES = ("adabert.student", "adabert.compress.model")  # each registers its classes on import


def register_auto_classes() -> None:
    """Register the student and compressed-model classes with the Auto classes (idempotent, cheap twice)."""
    import importlib

    for name in _MODEL_MODULES:
        importlib.import_module(name)


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_when_ready(loaded: str | None = None) -> None:
    """Called once the Auto module ``loaded`` has run: register, unless the other one is still half-loaded
    (then its own completion calls this again). Our model modules may be mid-import themselves (they
    import transformers): importing them again returns the module being built, which registers when done."""
    if any(_initializing(name) for name in _AUTO_MODULES if name != loaded):
        return
    _uninstall()
    try:
        register_auto_classes()
    except Exception as err:  # never break the user's `import transformers` over our classes
        logging.getLogger(__name__).warning("adabert: registering the Auto classes failed: %s", err)


class _Loader(importlib.abc.Loader):
    """The real loader of an Auto module, plus a call to ``_register_when_ready`` after it ran."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _register_when_ready(module.__name__)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, is_package, ...
        return getattr(self._loader, name)


class _AutoImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader the other finders give for transformers' Auto modules."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in _AUTO_MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_HOOK = _AutoImportHook()


def _uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


if any(name in sys.modules for name in _AUTO_MODULES):
    _register_when_ready()
else:
    sys.meta_path.insert(0, _HOOK)
