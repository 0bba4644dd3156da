"""The model file and where models come from: weights + metadata, published checkpoints, zoo, vocabularies, channels, normalisation."""
