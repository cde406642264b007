"""CCNet: criss-cross attention for semantic segmentation.

from ccnet import init_model, inference_model   # the Python API: ccnet/api.py
"""

from ccnet.run_name import register_resolvers

register_resolvers()

from ccnet.api import inference_model, init_model  # noqa: E402  (after the resolvers: configs may be composed)

__all__ = ["inference_model", "init_model"]
