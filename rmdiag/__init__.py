"""rmdiag: how far can we trust a recommender's reward model, and which post-training follows."""

__version__ = "0.1.0"
