"""Experience replay (ER) for online class-incremental learning, as a mixhub plugin."""

from .functional import er_loss

__all__ = ["er_loss"]
