"""Thin entry points, one per DVC stage: parse arguments, read params, call the library, write outs."""
