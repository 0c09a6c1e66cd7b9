"""Input and output formats (the reader and writer registries grow here)."""
