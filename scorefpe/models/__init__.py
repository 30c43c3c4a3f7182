"""Score networks: the tutorial U-Net for 28x28 images and a small MLP for low-dimensional data.

Both are ``nn.Module``s with ``forward(x, t) -> tensor shaped like x``, samples independent
(no batch statistics), parameters a deterministic function of a seed.
"""

from scorefpe.models.mlp import MLPConfig, MLPScoreNet, SinusoidalTimeEmbedding
from scorefpe.models.unet import GaussianFourierProjection, ScoreNet, ScoreNetConfig

__all__ = [
    "GaussianFourierProjection",
    "MLPConfig",
    "MLPScoreNet",
    "ScoreNet",
    "ScoreNetConfig",
    "SinusoidalTimeEmbedding",
]
