"""pivotal: reinforcement learning with verifiable rewards, with per-token credit assignment."""

__version__ = "0.1.0"
