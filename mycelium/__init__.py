"""Mycelium: math word problems answered by an operation graph, not by chain-of-thought text.

    >>> from mycelium.data import load
    >>> from mycelium.reference import reference_graph
    >>> from mycelium.executor import execute
    >>> problem = load("gsm8k", "test")[0]
    >>> execute(reference_graph(problem)).answer
    18
"""

__version__ = "0.1.0"
