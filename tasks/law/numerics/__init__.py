"""The law stage's numerics: the batched solver, the nonlinear laws and their bootstraps, the
extrapolation checks' noise, and the small statistics the claims share."""
