"""Quantization damage across training: the damage laws and their numerics."""
