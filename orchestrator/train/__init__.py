"""The worker side of Ray Train: the toolkit both loops share (process setup, collectives, evaluation,
reporting), the two steps of the bilevel search, the search loop, the retrain loop, and the trainer builders
that launch them. Imports no Ray Tune."""
