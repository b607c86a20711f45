"""The local backend: a TrainingJob run as processes on one machine (`trainingjob run`)."""
