"""Collective operations in a compiled (SPMD-partitioned) XLA program.

Used to check that a sharded optimizer update never moves a full matrix and to
compare how many bytes different optimizers move per step. The measure is the
per-device result size of every collective instruction in the optimized HLO
(``jax.jit(f).lower(...).compile().as_text()``); collectives inside loops or
untaken conditional branches are counted once, so it is a static count.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s64": 8, "s32": 4, "u32": 4, "s16": 2,
                "u16": 2, "s8": 1, "u8": 1, "pred": 1, "u64": 8, "c64": 8, "c128": 16}
_INSTR = re.compile(r"=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


class Collective(NamedTuple):
  op: str
  shapes: tuple[tuple[int, ...], ...]
  bytes: int

  @property
  def elements(self) -> int:
    return max((math.prod(s) for s in self.shapes), default=0)


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective instruction of an HLO module text with its result shapes and bytes."""
  out = []
  for line in hlo_text.splitlines():
    match = _INSTR.search(line)
    if not match:
      continue
    shapes = [(m["dtype"], tuple(int(d) for d in m["dims"].split(",") if d))
              for m in _SHAPE.finditer(match["type"]) if m["dtype"] in _DTYPE_BYTES]
    if match["start"] and shapes:  # async pair: (operand, result) -> count the result
      shapes = shapes[-1:]
    total = sum(_DTYPE_BYTES[dt] * math.prod(dims) for dt, dims in shapes)
    out.append(Collective(match["op"], tuple(dims for _, dims in shapes), total))
  return out


def total_bytes(hlo_text: str) -> int:
  """Sum of `collectives` bytes (per device, static count)."""
  return sum(c.bytes for c in collectives(hlo_text))
