"""NNCF's pattern matching, remembered per graph topology: a pruned variant quantizes without matching again.

NNCF's post-training quantizer fuses the hardware patterns of its target (Conv + SiLU, ...)
by matching a 674-node pattern graph against the model's graph with networkx's VF2
subgraph isomorphism (`nncf.common.graph.graph_matching.find_subgraphs_matching_pattern`).
On the embedded YOLO11n that took 7.8 of a 13.3 s quantization (profiled), and it gives
the same answer for every pruned variant of one model: pruning changes channel counts,
never which nodes exist, their types or their edges.

`remembered_matching()` is a context manager under which that function answers from a
process-wide table keyed by exactly what it reads: the graph's node keys with the node
attributes a pattern compares (`_matched_attributes`), its edges, the pattern graph's
nodes and edges, and `strict`. A graph that differs in any of these is matched afresh, so
the answer is always the one NNCF would give. If NNCF no longer has the function where
this expects it, nothing is replaced (quantization is only slower).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
from collections.abc import Iterator

# Modules that import the matcher by name; each binding is replaced while the context is open.
_USERS = ("nncf.common.insertion_point_graph", "nncf.common.graph.graph")
_FUNCTION = "find_subgraphs_matching_pattern"
_MAX_ENTRIES = 64
_table: dict[str, list[list[str]]] = {}


@contextlib.contextmanager
def remembered_matching() -> Iterator[None]:
    """Within the block, NNCF's subgraph matching answers from the process-wide table (see the module docstring)."""
    bound = []
    for name in _USERS:
        module = importlib.import_module(name)
        original = getattr(module, _FUNCTION, None)
        if original is not None:
            bound.append((module, original))
    try:
        for module, original in bound:
            setattr(module, _FUNCTION, _remembering(original))
        yield
    finally:
        for module, original in bound:
            setattr(module, _FUNCTION, original)


def _remembering(original):
    def find(graph, pattern_graph, strict: bool = True):
        key = _key(graph, pattern_graph, strict)
        if key not in _table:
            if len(_table) >= _MAX_ENTRIES:
                _table.pop(next(iter(_table)))
            _table[key] = original(graph, pattern_graph, strict)
        return copy.deepcopy(_table[key])

    return find


def _matched_attributes(pattern) -> list[str]:
    """The node attributes NNCF's node comparison reads: those a pattern node names, and the node type."""
    from nncf.common.graph.graph_matching import ATTRS_TO_SKIP
    from nncf.common.graph.patterns import GraphPattern

    names = {attr for _, data in pattern.nodes(data=True) for attr in data if attr not in ATTRS_TO_SKIP}
    return sorted(names | {GraphPattern.NODE_TYPE_ATTR})


def _key(graph, pattern_graph, strict: bool) -> str:
    pattern = pattern_graph.graph
    attributes = _matched_attributes(pattern)
    digest = hashlib.sha256(repr((strict, attributes)).encode())
    for nodes, attrs in ((graph, attributes), (pattern, None)):
        for node in sorted(nodes.nodes, key=repr):
            data = nodes.nodes[node]
            shown = data.items() if attrs is None else ((a, data.get(a)) for a in attrs)
            digest.update(repr((node, [(a, _name(v)) for a, v in shown])).encode())
        for edge in sorted(nodes.edges(keys=True), key=repr):
            digest.update(repr(edge).encode())
        digest.update(b"|")
    return digest.hexdigest()


def _name(value) -> str:
    """A stable text for an attribute value: a class by its qualified name, a collection by its members."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, (list, tuple, set, frozenset)):
        return repr(sorted(_name(v) for v in value))
    return repr(value)
