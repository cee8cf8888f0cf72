"""Conformance checks for oracles and adapters, plus hypothesis strategies.

``check_oracle(oracle, params)`` verifies every capability an oracle declares against
plain calls and raises :class:`OracleCheckError` with a readable report. The strategies in
:mod:`zoracle.testing.strategies` (needs ``hypothesis``) generate quadratic oracles with a
known gradient, to property-test your own code.
"""

from ._check import OracleCheckError, check_oracle
from ._quadratic import QuadraticOracle

__all__ = ["OracleCheckError", "QuadraticOracle", "check_oracle"]
