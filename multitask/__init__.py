"""multitask: hierarchical multitask text classification (a Pick/Decline gate and an N-way category head)."""

__version__ = "0.1.0"
