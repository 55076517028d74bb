"""Random-weight models of the real SD1.5/SDXL shapes, for tests, benchmarks and the demo checkpoint."""
