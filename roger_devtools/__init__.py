"""Developer tooling shared by the tests, the benchmarks and the demo; never installed.

pyproject's packages are found only under ``worker/`` and ``operator/``, so nothing here
ships in the wheel: a local "kubelet" for kwok nodes (``localpods``, ``podspec``) and the
one copy of what tests and benchmarks both need (free ports, polling, worker processes).
Importable from the repository root (pytest's rootdir, ``python -m`` from there).
"""
