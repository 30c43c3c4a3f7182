"""The reverse process: Euler-Maruyama and predictor-corrector samplers, the probability-flow
ODE (`samplers`) and the probability-flow likelihood (`likelihood`)."""
