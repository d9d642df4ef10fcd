"""``params.yaml`` parsed once into typed objects: :func:`pipeline.params.file.load_params`."""
