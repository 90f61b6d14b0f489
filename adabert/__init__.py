"""adabert: task-adaptive compression of BERT-family models by differentiable architecture search.

Importing the package is cheap (no torch, no transformers), so ``adabert --help`` is instant, and yet
``import adabert`` followed by ``transformers.pipeline("text-classification", model=student_dir)``,
``AutoModelForSequenceClassification.from_pretrained(student_dir)`` or ``AutoConfig`` works, however
transformers is reached. Registration with transformers' Auto classes is deferred, in two halves:

- the configs (``adabert.configs``, which needs only ``transformers.configuration_utils``) are
  registered with ``AutoConfig`` as soon as ``transformers.models.auto.configuration_auto`` has loaded:
  an import hook (``sys.meta_path``) runs right after it, before any Auto lookup can happen;
- the model classes (``adabert.student.network``, ``adabert.compress.model``; torch and transformers' modeling
  code) are registered once ``modeling_auto`` has loaded and no transformers module is half-loaded:
  ``transformers.pipelines`` loads the Auto modules from inside ``modeling_utils``, and importing our
  models then fails. As ``AutoModel*.from_pretrained`` builds the config before it looks the model
  class up, a config that is created registers the models too (:func:`register_models_when_ready`);
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

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODEL_AUTO = "transformers.models.auto.modeling_auto"
_AUTO_MODULES = (_MODEL_AUTO, _CONFIG_AUTO)
_MODEL_MODULES = ("adabert.student.network", "adabert.compress.model")  # each registers its classes on import
_registered = {"configs": False, "models": False}


def register_auto_classes() -> None:
    """Register the configs and the student and compressed-model classes with the Auto classes
    (idempotent, cheap twice). Imports torch and transformers' modeling code."""
    import importlib

    from adabert.configs import register_configs

    register_configs(on_create=register_models_when_ready)
    for name in _MODEL_MODULES:
        importlib.import_module(name)
    _registered.update(configs=True, models=True)


def _loaded(name: str, just_run: str | None) -> bool:
    """Whether module ``name`` has finished loading (``just_run``: the one whose code has just run, which
    importlib still marks as initializing)."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return name == just_run or not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _transformers_loading(just_run: str | None) -> bool:
    """Whether some transformers module is half-loaded: importing our models may need it (a cycle)."""
    return any(not _loaded(name, just_run) for name in list(sys.modules) if name.startswith("transformers."))


def register_models_when_ready(just_run: str | None = None) -> None:
    """Register whatever transformers is ready for: the configs once ``configuration_auto`` has loaded,
    the model classes once ``modeling_auto`` has and no transformers module is half-loaded (an import
    of our models, which import ``modeling_utils``, could fail then). Cheap when done; called as each
    Auto module loads and as each of our configs is created (``just_run``: the Auto module just run)."""
    if _registered["models"]:
        return
    try:
        if not _registered["configs"] and _loaded(_CONFIG_AUTO, just_run):
            from adabert.configs import register_configs

            register_configs(on_create=register_models_when_ready)
            _registered["configs"] = True
        if _loaded(_MODEL_AUTO, just_run) and not _transformers_loading(just_run):
            register_auto_classes()
            _uninstall()
    except Exception as err:  # never break the user's `import transformers` over our classes
        _uninstall()
        _registered.update(configs=True, models=True)
        logging.getLogger(__name__).warning("adabert: registering the Auto classes failed: %s", err)


class _Loader(importlib.abc.Loader):
    """The real loader of an Auto module, plus a call to ``register_models_when_ready`` after it ran."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        register_models_when_ready(module.__name__)

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


sys.meta_path.insert(0, _HOOK)
register_models_when_ready()  # transformers imported before adabert: register now
