"""VideoSSM core: autoregressive long-video generation with a hybrid state-space memory.

A self-contained PyTorch library (no ComfyUI imports) that also runs from the command line.
"""

__version__ = "0.1.0"
