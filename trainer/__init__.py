"""Semantic Matte trainer: data, losses and loops for the classifier, discriminator and matting network."""
