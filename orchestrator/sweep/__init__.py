"""The Ray Tune side: the sweep over outer hyperparameters, the whole chain (sweep, final step, validation),
the final actor that decodes and retrains, short-retrain selection, and validation against random
architectures. Reaches the model only through `search_space`'s public names."""
