"""Lineage trees read back from codes alone (`hnn-jax lineage`): which models of a set descend
from which, with the distance and the measured chance of each link. The derivatives the lineage
benchmark makes (fine-tunes, LoRA merges, renumbered units) are research code:
hnn_jax.training.derivatives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Edge:
    """`child` (an index into the codes) descends from `parent`: their distances (linked models'
    architecture parts agree, so `architecture` is 0) and the measured chance that two
    independent models have weight parts this close."""
    child: int
    parent: int
    architecture: int
    weights: int
    chance: float


def forest(codes, max_chance: float = 1e-6) -> tuple[list[Edge], list[int]]:
    """(edges, roots): the lineage trees of a set of codes. Two models are linked when their
    architecture parts agree and the chance of their weight parts being this close by accident
    (HashCode.chance, the measured null) is at most `max_chance`; each tree is the minimum
    spanning tree of its links by weight distance, rooted at its medoid (the model nearest to all
    the others: a base from which several derivatives were made is nearest to them all). The
    direction of an edge is a guess the codes cannot settle (a child's code is as near its parent
    as the parent's is to it); roots are listed alone too when nothing links them."""
    n = len(codes)
    weights, chance = np.zeros((n, n), int), np.ones((n, n))
    linked = np.zeros((n, n), bool)
    for i in range(n):  # each pair once: its distances, and its chance where architectures agree
        for j in range(i):
            d = codes[i].distances(codes[j])
            weights[i, j] = weights[j, i] = d.weights
            if d.architecture == 0:  # only these can link (the chance is a beta-binomial tail, slow)
                chance[i, j] = chance[j, i] = codes[i].chance(codes[j])
                linked[i, j] = linked[j, i] = chance[i, j] <= max_chance
    component = -np.ones(n, int)
    for start in range(n):
        if component[start] >= 0:
            continue
        component[start], stack = start, [start]
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(linked[i] & (component < 0)):
                component[j] = start
                stack.append(int(j))
    edges, roots = [], []
    for label in np.unique(component):
        members = [int(i) for i in np.flatnonzero(component == label)]
        sub = weights[np.ix_(members, members)].astype(float)
        root = members[int(np.argmin(np.where(linked[np.ix_(members, members)] | np.eye(len(members), dtype=bool),
                                              sub, sub.max() + 1).sum(1)))]
        roots.append(root)
        placed = {root}
        while len(placed) < len(members):  # Prim's algorithm over the links, outward from the root
            _, parent, child = min((weights[p, c], p, c) for p in placed for c in members
                                   if c not in placed and linked[p, c])
            edges.append(Edge(child, parent, 0, int(weights[child, parent]), float(chance[child, parent])))
            placed.add(child)
    return edges, roots
