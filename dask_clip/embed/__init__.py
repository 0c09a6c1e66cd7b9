"""Embedding: ImageEmbedder and TextEmbedder (the public presets), the chunk pipeline and
the model's forward passes, the text tower, and whole jobs (input folder to output folder).
"""
