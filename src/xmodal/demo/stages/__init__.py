"""Demo stages, one module each; every module registers its stage with `register_stage`."""
