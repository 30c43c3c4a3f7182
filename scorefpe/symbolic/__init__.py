"""Symbolic mathematics with sympy: the derivation of the score Fokker-Planck equation
(`derivation`, behind `scorefpe derive`). The battery's sympy cross-check of the torch
operators is a section of the check battery: `scorefpe.validation.symbolic_checks`."""
