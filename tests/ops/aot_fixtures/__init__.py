"""Small real kernel modules that ``tests/ops/test_aot_compile.py`` runs ``scalegan.kernels.aot``
over: a module is named on the tool's command line as ``aot_fixtures.<name>`` with ``tests/ops``
on ``PYTHONPATH``."""
