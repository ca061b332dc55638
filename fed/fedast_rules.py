"""FedAST and Sync-ST server rules as pure functions.

Every rule of the simulated runtime (`fed.fedast.Simulation`) is a function
of plain values here: NumPy arrays or pytrees of them in, new values out, no
state, no clock. The runtime only schedules jobs and calls these. Notation:
task ``m``, model ``x_m`` at version ``k_m``, a job trained from version
``k0`` returns ``Delta = x_local - x_m^(k0)``, staleness ``s = k_m - k0``,
``R_m`` the task's active-job budget, ``r`` the jobs-per-buffer ratio.

Sources: Askin et al., "FedAST: Federated Asynchronous Simultaneous Training",
UAI 2024 (https://arxiv.org/abs/2406.00302), and its demo code (askinb/FedAST:
``server.async_run_fedast`` for the buffer, the dynamic buffer size, the
spread estimate and the reallocation; ``server.sync_run`` for Sync-ST's first
``C`` finishers). Where the demo deviates from the paper's description (no
square root in the reallocation score, no staleness weight), the paper's rule
is used; the staleness weight is an option that defaults to the paper's 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

STALENESS = ("constant", "polynomial")
SYNC_RULES = ("first_c", "fraction")


def staleness_weight(staleness: int, kind: str = "constant", exponent: float = 0.5) -> float:
  """Weight of an update that is ``staleness`` versions old.

  .. math::

     w(s) = 1 \\;(\\text{constant, the paper}),\\qquad w(s) = (1 + s)^{-a} \\;(\\text{polynomial})

  Examples:
    >>> staleness_weight(3), staleness_weight(3, "polynomial", 0.5)
    (1.0, 0.5)
  """
  if kind == "constant":
    return 1.0
  if kind == "polynomial":
    return float((1.0 + staleness) ** (-exponent))
  raise ValueError(f"staleness must be one of {STALENESS}, got {kind!r}.")


def aggregate_buffer(params: Any, deltas: Sequence[Any], weights: Sequence[float], global_lr: float) -> Any:
  """Applies a full buffer: the staleness-weighted mean of its updates, times ``eta_g``.

  .. math::

     x_m \\leftarrow x_m + \\frac{\\eta_g}{|B_m|} \\sum_{j \\in B_m} w(s_j)\\, \\Delta_j

  The mean divides by the number of updates ``|B_m|`` (not by the sum of the
  weights), so stale updates shrink the step.

  Examples:
    >>> aggregate_buffer({"w": np.zeros(2)}, [{"w": np.array([1., 2.])}, {"w": np.array([3., 0.])}],
    ...                  [1.0, 0.5], 1.0)["w"]
    array([1.25, 1.  ])
  """
  if not deltas or len(deltas) != len(weights):
    raise ValueError(f"Need a non-empty buffer and one weight per update, got {len(deltas)} / {len(weights)}.")
  scale = global_lr / len(deltas)

  def leaf(p, *ds):
    total = sum(w * np.asarray(d, np.float64) for w, d in zip(weights, ds))
    return (np.asarray(p) + scale * total).astype(np.asarray(p).dtype)

  return jax.tree.map(leaf, params, *deltas)


def buffer_size(method: str, budget: int, ratio: int, static_buffer: int = 3) -> int:
  """Updates a task's buffer collects before the server step.

  .. math::

     b_m = \\lceil R_m / r \\rceil \\;(\\text{fedast}),\\quad b_m = b \\;(\\text{fedast\\_static}),
     \\quad b_m = 1 \\;(\\text{fedast\\_nobuffer})

  Examples:
    >>> buffer_size("fedast", 96, 32), buffer_size("fedast", 100, 32), buffer_size("fedast_nobuffer", 96, 32)
    (3, 4, 1)
  """
  if method == "fedast_nobuffer":
    return 1
  if method == "fedast_static":
    return static_buffer
  return max(1, math.ceil(budget / ratio))


def normalized_spread(deltas: Sequence[Any]) -> float:
  """Normalised spread of a window of updates (the variance estimate ``v_m``).

  .. math::

     v_m = \\frac{\\sum_{j=1}^{n} \\lVert \\Delta_j - \\bar\\Delta \\rVert^2}{n\\, \\lVert \\bar\\Delta \\rVert^2},
     \\qquad \\bar\\Delta = \\frac{1}{n} \\sum_j \\Delta_j

  over the flattened updates.

  Examples:
    >>> normalized_spread([np.array([1., 0.]), np.array([3., 0.])])
    0.25
  """
  flat = np.stack([np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(d)])
                   for d in deltas])
  mean = flat.mean(0)
  denom = len(flat) * float(mean @ mean)
  return float(((flat - mean) ** 2).sum() / max(denom, 1e-30))


def realloc_scores(spreads: Sequence[Sequence[float]], active: Sequence[bool]) -> list[float]:
  """Reallocation score of each task: the square root of its mean spread estimate.

  .. math::

     a_m = \\sqrt{\\operatorname{mean}(v_m)} \\;(\\text{active } m),\\qquad a_m = 0 \\;(\\text{done, or no estimate})

  Examples:
    >>> realloc_scores([[4.0, 4.0], [1.0], []], [True, True, True])
    [2.0, 1.0, 0.0]
  """
  return [math.sqrt(float(np.mean(s))) if a and len(s) else 0.0 for s, a in zip(spreads, active)]


def realloc_due(since: int, total_jobs: int, versions: Sequence[int], active: Sequence[bool], window: int) -> bool:
  """Whether the budget is reallocated now.

  Every ``P = floor(3/4 R_total) x (#active tasks)`` received updates, once
  every active task has made more than ``window`` versions, and only while at
  least two tasks are active.

  Examples:
    >>> realloc_due(24, 16, [9, 9], [True, True], 8), realloc_due(23, 16, [9, 9], [True, True], 8)
    (True, False)
  """
  idx = [i for i, a in enumerate(active) if a]
  if len(idx) < 2:
    return False
  period = (3 * total_jobs // 4) * len(idx)
  return since >= period and all(versions[i] > window for i in idx)


def allocate_blocks(scores: Sequence[float], active: Sequence[bool], total: int, block: int) -> list[int]:
  """Splits ``total`` jobs over the active tasks in proportion to ``scores``, in blocks of ``block``.

  With ``K = floor(total / block)`` blocks: every active task gets one block;
  the remaining blocks go one by one to the task with the largest shortfall
  ``K a_m / sum(a) - blocks_m``; the ``total - K block`` jobs that fill no block
  go to the task with the largest score. Inactive tasks get 0; the result sums
  to ``total``. With fewer blocks than active tasks the jobs are split evenly.

  Examples:
    >>> allocate_blocks([1.0, 4.0], [True, True], 16, 4)
    [4, 12]
  """
  idx = [i for i, a in enumerate(active) if a]
  out = [0] * len(scores)
  if not idx:
    return out
  blocks = total // block
  if blocks < len(idx):  # too few jobs for a block each: split evenly
    for k, i in enumerate(idx):
      out[i] = total // len(idx) + (1 if k < total % len(idx) else 0)
    return out
  s = np.array([max(scores[i], 0.0) for i in idx], float)
  share = s / s.sum() * blocks if s.sum() > 0 else np.full(len(idx), blocks / len(idx))
  got = np.ones(len(idx), int)
  for _ in range(blocks - len(idx)):
    got[int(np.argmax(share - got))] += 1
  for k, i in enumerate(idx):
    out[i] = int(got[k]) * block
  out[idx[int(np.argmax(s))]] += total - blocks * block
  return out


def release_budget(budget: Sequence[int], task: int, active: Sequence[bool]) -> list[int]:
  """A finished task's budget goes to the tasks still active, in proportion to their budgets.

  .. math::

     R_i \\leftarrow R_i + \\lfloor R_m R_i / \\textstyle\\sum_{j \\ne m} R_j \\rfloor,\\qquad R_m \\leftarrow 0

  (the rounding remainder goes to the largest budget; equal shares when every
  other budget is 0). ``active`` lists the tasks that keep running.

  Examples:
    >>> release_budget([32, 64, 192], 0, [False, True, True])
    [0, 72, 216]
  """
  out = [int(b) for b in budget]
  rest = [i for i, a in enumerate(active) if a and i != task]
  freed, out[task] = out[task], 0
  if not rest:
    return out
  w = np.array([out[i] for i in rest], float)
  w = w / w.sum() if w.sum() > 0 else np.full(len(rest), 1 / len(rest))
  extra = np.floor(w * freed).astype(int)
  extra[int(np.argmax(w))] += freed - int(extra.sum())
  for i, e in zip(rest, extra):
    out[i] += int(e)
  return out


def sync_group_sizes(num_clients: int, num_tasks: int) -> list[int]:
  """Sync-ST: the round's clients split into ``num_tasks`` disjoint groups of near-equal size.

  Examples:
    >>> sync_group_sizes(300, 3), sync_group_sizes(10, 3)
    ([100, 100, 100], [4, 3, 3])
  """
  return [num_clients // num_tasks + (1 if k < num_clients % num_tasks else 0) for k in range(num_tasks)]


def sync_keep_count(group: int, rule: str = "first_c", first_c: int = 30, fraction: float = 0.1) -> int:
  """Sync-ST: how many of a task's ``group`` jobs its round keeps (the first finishers).

  ``first_c`` (the FedAST demo's Sync-ST, ``firstC``): ``min(C, group)``;
  ``fraction``: ``max(1, round(f x group))``.

  Examples:
    >>> sync_keep_count(100), sync_keep_count(20), sync_keep_count(100, "fraction", fraction=0.1)
    (30, 20, 10)
  """
  if rule == "first_c":
    return max(1, min(first_c, group))
  if rule == "fraction":
    return max(1, int(round(fraction * group)))
  raise ValueError(f"sync rule must be one of {SYNC_RULES}, got {rule!r}.")


def sync_select(finish_times: Sequence[Sequence[float]], keep: Sequence[int]) -> tuple[list[list[int]], float]:
  """Sync-ST: each task keeps its ``keep[m]`` first finishers; the round ends at the slowest kept one.

  .. math::

     T_{\\text{round}} = \\max_m \\; t_{m,(C_m)}

  where ``t_{m,(C)}`` is the ``C``-th smallest finish time of task ``m``'s
  group. The other jobs are dropped (their clients stay busy until they would
  have finished; the runtime keeps that).

  Returns:
    ``(kept, end)``: per task the indices of the kept jobs in finishing order
    (ties by position), and the round's end time.

  Examples:
    >>> sync_select([[5.0, 1.0, 3.0], [2.0, 9.0]], [2, 1])
    ([[1, 2], [0]], 3.0)
  """
  kept, end = [], -math.inf
  for times, k in zip(finish_times, keep):
    order = np.argsort(np.asarray(times, float), kind="stable")[:k]
    kept.append([int(j) for j in order])
    if len(order):
      end = max(end, float(np.asarray(times, float)[order[-1]]))
  return kept, end
