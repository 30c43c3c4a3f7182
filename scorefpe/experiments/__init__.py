"""Experiment drivers, the top of the library: each trains or evaluates many runs and writes a
results page. Table I (`table1`), the lambda sweep (`lambda_sweep`), the synthetic benchmark
against true densities (`synthetic_bench`, `synthetic_report`), the PINN Cauchy experiment
(`cauchy`)."""
