"""semmae: masked-autoencoder research framework (pretraining with pluggable masking, evaluation, artifact analysis)."""

__version__ = "0.1.0"
