"""Inputs and outputs: one module per format, each in a registry (``readers/``, ``writers/``)."""
