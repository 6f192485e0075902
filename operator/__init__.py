"""tierserve.operator: the Kopf operator, imported as `tierserve.operator`.

pyproject.toml maps this folder into the `tierserve` package. If the repository root itself ends up
first on sys.path (`python -m ...` run from a checkout), Python would import this folder as the
top-level module `operator` and shadow the standard library's. The guard below then loads the
standard library module and puts it in this module's place, so nothing else notices.
"""

if __name__ == "operator":  # imported as the stdlib name by accident: hand over to the real one
    import os as _os
    import sys as _sys
    from _frozen_importlib import module_from_spec as _module_from_spec
    from _frozen_importlib_external import PathFinder as _PathFinder

    _spec = _PathFinder.find_spec("operator", [_os.path.dirname(_os.__file__)])
    _std = _module_from_spec(_spec)
    _spec.loader.exec_module(_std)
    _sys.modules["operator"] = _std
