"""Applications built on the library: the bodies of the tools (eval, infer, export, browse, attention
pictures), benchmarks, the self-check, the preset rehearsal and its generated dataset layouts.

The library (models, data, engine, evaluation, convert, the API) never imports this package
(tests/test_layers.py).
"""
