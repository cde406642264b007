"""CCNet: criss-cross attention for semantic segmentation."""
