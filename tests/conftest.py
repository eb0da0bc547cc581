"""Test-session setup: the theory's float64 contract is switched on here, as users do."""

import jax

jax.config.update("jax_enable_x64", True)
