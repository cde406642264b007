"""CCNet: criss-cross attention for semantic segmentation."""

from ccnet.run_name import register_resolvers

register_resolvers()
