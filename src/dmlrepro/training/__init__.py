"""Training regimes: the frozen regime trains a head on cached features; heads and the sampler."""
