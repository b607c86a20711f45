"""TrainingJob operator: API model, reconcile core, interval tuning, local and Kubernetes backends."""

__version__ = "0.1.0"
