"""Applications built on the library: the tools' bodies, benchmarks, the self-check and the preset rehearsal.
The library never imports this package (docs/design.md, "Layers").
"""
