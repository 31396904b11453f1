"""Start the Mentorix shim in a Python process without touching its code.

Activation (the API process only, never the sidecar's own process)::

    PYTHONPATH=/path/to/repo/shim/activate${PYTHONPATH:+:$PYTHONPATH}
    SIDECAR_SHIM=async          # or sync; unset/off: nothing happens
    # optional: RUNTIME_DATA_DIR, SIDECAR_SOCKET, SIDECAR_SHIM_ON_FAILURE,
    #           SIDECAR_SHIM_TIMEOUT_MS, SIDECAR_SHIM_QUEUE

Python imports the first ``sitecustomize`` on ``sys.path`` at startup; this
directory holds only this file, so nothing else of the repository lands on the
API's path. The ``shim`` package is found next to this directory, or as an
installed package.

Rules this hook keeps:

* Never stop the interpreter: every failure is logged (logger
  ``mentorix_shim``) and the process goes on without the shim.
* Chain: the ``sitecustomize`` this file shadows (a distribution's, a
  coverage hook's ...) is found further down ``sys.path`` and run as well.
* Idempotent: if the shim is already installed (another hook, an explicit
  ``shim.install()``), installing again does nothing.
"""

import os
import sys


def _chain_next_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.realpath(__file__))

    def _not_here(entry: str) -> bool:
        try:
            return os.path.realpath(entry or os.getcwd()) != here
        except (OSError, ValueError):
            return True

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [p for p in sys.path if _not_here(p)])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        # What site.py itself does with a failing sitecustomize: report, go on.
        print(f"Error in chained sitecustomize {spec.origin}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    globals()["chained"] = module


def _load_shim():
    """The shim package that lives beside this directory, whatever sys.path says."""
    import importlib.util

    package_dir = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    init = os.path.join(package_dir, "__init__.py")
    if not os.path.isfile(init):
        # Installed without the source tree: rely on the import system.
        import shim

        return shim
    existing = sys.modules.get("shim")
    if existing is not None and os.path.realpath(getattr(existing, "__file__", "") or "") == init:
        return existing
    found = importlib.util.find_spec("shim") if existing is None else None
    if found is not None and found.origin and os.path.realpath(found.origin) == init:
        import shim

        return shim
    # Either nothing called "shim" is importable, or something else is: load
    # ours from its file. Under its usual name if that name is free; under a
    # private one otherwise, so as not to shadow the application's module.
    name = "shim" if existing is None and found is None else "mentorix_shim"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[package_dir])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the shim from {package_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _activate() -> None:
    mode = os.environ.get("SIDECAR_SHIM", "").strip().lower()
    if mode in ("", "off"):
        return
    try:
        _load_shim().activate_from_env()
    except Exception as exc:
        import logging

        logging.getLogger("mentorix_shim").warning(
            "mentorix shim not activated: %s: %s", type(exc).__name__, exc
        )


try:
    _chain_next_sitecustomize()
except Exception as _exc:  # pragma: no cover - defensive
    print(f"mentorix shim: could not chain sitecustomize: {_exc!r}", file=sys.stderr)
_activate()
