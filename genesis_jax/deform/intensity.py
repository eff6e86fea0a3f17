"""Non-linear intensity transformation through a random cubic Bezier curve (spec step 3).

Control points (0, 0), P1, P2, (1, 1) with P1, P2 uniform in [0, 1]^2. For control x
coordinates in [0, 1] the curve's x(u) is non-decreasing (its derivative is a
quadratic Bernstein form with coefficients 3a, 3(b - a), 3(1 - b), never negative),
and so is y(u). The original samples the curve at 100,000 points and applies
np.interp: increasing map x(u) -> y(u), or, with probability 0.5, the decreasing map
x(u) -> y(1 - u) (x sorted ascending while y keeps its order from 1 down to 0).

Two ways to apply it, chosen by DeformConfig.lookups:
- "table": tabulated once per cube on a uniform grid of x (u found by bisection, exact
  to float32) and applied to each voxel by linear interpolation in that table: two
  gathers per voxel instead of a 17-step binary search. Fastest on CPU and GPU.
- "compute": u found for each voxel by bisection on x(u) = voxel, no table and no gather.
  The TPU compiler costs a per-element gather as reading its whole operand per element
  (a 4096-entry table: 16 KiB per voxel), so there elementwise arithmetic is cheaper.
  It is also closer to the curve (no interpolation error).
"auto" (the default) is compute on TPU, table elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from genesis_jax.deform._random import Stream, seed_from_key, uniform
from genesis_jax.deform._xla import materialize
from genesis_jax.deform.config import resolve_lookups

_BISECTION_STEPS = 30
_SOLVE_STEPS = 24  # 2^-24: float32's resolution of u in [0.5, 1]


def _cubic_bezier(u: jax.Array, p1: jax.Array, p2: jax.Array) -> jax.Array:
    """One coordinate of the Bezier curve with control values 0, p1, p2, 1."""
    v = 1.0 - u
    return 3.0 * p1 * u * v * v + 3.0 * p2 * u * u * v + u * u * u


def bezier_params(key: jax.Array):
    """(p1, p2, decreasing): control points (x, y) float32 (2,) each, and the branch."""
    draws = uniform(seed_from_key(key), Stream.BEZIER, jnp.arange(5))
    return draws[0:2], draws[2:4], draws[4] < 0.5


def curve_map(x: jax.Array, p1: jax.Array, p2: jax.Array, decreasing: jax.Array, steps: int) -> jax.Array:
    """The intensity map at values x in [0, 1]: u with x(u) = x found by `steps` bisection
    steps (x(u) is monotone), then y(u), or y(1 - u) for the decreasing map."""
    low, high = jnp.zeros_like(x), jnp.ones_like(x)
    for _ in range(steps):  # unrolled: XLA fuses the whole search into one elementwise kernel
        mid = 0.5 * (low + high)
        below = _cubic_bezier(mid, p1[0], p2[0]) < x
        low, high = jnp.where(below, mid, low), jnp.where(below, high, mid)
    # The ends are exact, as in np.interp over the curve's samples: x = 0 is u = 0 and x = 1 is
    # u = 1 (bisection alone stops 2^-steps inside, and CT cubes are full of exact 0s).
    u = jnp.where(x <= 0.0, 0.0, jnp.where(x >= 1.0, 1.0, 0.5 * (low + high)))
    return _cubic_bezier(jnp.where(decreasing, 1.0 - u, u), p1[1], p2[1])


def bezier_table(p1: jax.Array, p2: jax.Array, decreasing: jax.Array, size: int = 4096) -> jax.Array:
    """float32 (size,): the intensity map at x = 0, 1/(size-1), ..., 1."""
    return curve_map(jnp.linspace(0.0, 1.0, size, dtype=jnp.float32), p1, p2, decreasing, _BISECTION_STEPS)


def apply_table(x: jax.Array, table: jax.Array) -> jax.Array:
    """Piecewise-linear map of x (clipped to [0, 1], as np.interp clamps) through table."""
    last = table.shape[0] - 1
    table = materialize(table)  # else the bisection is redone for every voxel
    position = jnp.clip(x, 0.0, 1.0) * last
    left = jnp.minimum(position.astype(jnp.int32), last - 1)
    frac = position - left.astype(position.dtype)
    # (1 - f) a + f b, not a + f (b - a): exactly a at f = 0 and b at f = 1, so the end values pass unchanged.
    return (1.0 - frac) * table[left] + frac * table[left + 1]


def solve_map(x: jax.Array, p1: jax.Array, p2: jax.Array, decreasing: jax.Array,
              steps: int = _SOLVE_STEPS) -> jax.Array:
    """The intensity map at every voxel of x, each voxel's u found by its own bisection."""
    return curve_map(jnp.clip(x.astype(jnp.float32), 0.0, 1.0), p1, p2, decreasing, steps)


def nonlinear_intensity(key: jax.Array, x: jax.Array, *, table_size: int = 4096, lookups: str = "auto") -> jax.Array:
    """Map cube x through a random monotone (increasing or decreasing) Bezier curve."""
    p1, p2, decreasing = bezier_params(key)
    if resolve_lookups(lookups) == "compute":
        return solve_map(x, p1, p2, decreasing).astype(x.dtype)
    return apply_table(x, bezier_table(p1, p2, decreasing, size=table_size)).astype(x.dtype)
