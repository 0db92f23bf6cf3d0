"""Runs an attack's per-iteration body eagerly, or captured once in a CUDA graph and replayed.

A body is a function without Python side effects that reads and writes only tensors that
exist before it is first called ("static" tensors: the iterate, best points, masks, counters):
model forward, input gradient, best-point update and fused step. Such a body can be
captured in a torch.cuda.CUDAGraph and replayed for every later iteration, which removes the
per-kernel launch overhead of the whole step.
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, Sequence

import torch

# Eager runs before a capture: they initialise cuDNN/cuBLAS handles, autotuning and the
# autograd engine's worker state on the side stream, as torch.cuda.graphs' docs ask.
WARMUP_RUNS = 3


class StepRunner:
    """`runner(key, body)` runs body once: eagerly, or, with capture=True, by replaying the
    graph captured for `key` (captured on its first use).

    `state` lists every static tensor the bodies write: the warm-up runs before a capture
    change them, so they are saved first and restored before the capture, and the first
    replay is the first real iteration. All graphs of one runner share one memory pool; that
    is safe because they communicate only through the static tensors and replay one at a time.
    """

    def __init__(self, state: Sequence[torch.Tensor], capture: bool):
        self.state = list(state)
        self.capture = capture
        self.graphs: Dict[Hashable, "torch.cuda.CUDAGraph"] = {}
        self.pool = None

    def __call__(self, key: Hashable, body: Callable[[], None]) -> None:
        if not self.capture:
            body()
            return
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture(key, body)
        graph.replay()

    def _capture(self, key: Hashable, body: Callable[[], None]) -> "torch.cuda.CUDAGraph":
        saved = [t.clone() for t in self.state]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                body()
        torch.cuda.current_stream().wait_stream(side)
        for tensor, value in zip(self.state, saved):
            tensor.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            body()
        self.pool = graph.pool()
        self.graphs[key] = graph
        return graph
