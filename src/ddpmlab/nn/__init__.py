"""The noise-predictor network: the DDPM UNet and its timestep/class embeddings.

``nn`` imports only torch, :mod:`ddpmlab.config` and :mod:`ddpmlab.errors`, never the diffusion
math: the math takes the network as a plain callable ``model(x_t, t, y=None)``.
"""

from .embedding import ClassEmbedding, TimeEmbedding, timestep_embedding
from .unet import UNet, count_parameters

__all__ = ["UNet", "timestep_embedding", "count_parameters", "TimeEmbedding", "ClassEmbedding"]
