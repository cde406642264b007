"""Benchmarks behind ``tools/benchmark.py``: one module per subcommand, each with ``add_arguments(parser)``
and ``run(args) -> dict``; shared measurement helpers in :mod:`ccnet.apps.benchmarks.common`.
"""

TOOL = "benchmark"  # the name the benchmarks' files are recorded under in the manifest.txt of their folder
