"""The fast greedy decoding engine behind ``ChatLocalModel(fast_decoding=True)``.

Layers, lowest first: ``stopping`` (stop checkers), ``rows`` (per-row state and
KV-cache helpers), ``prompt_cache``, ``cpu_kernels`` and ``draft_model`` (need
torch at import), ``speculation`` (the batch-1 loops) and ``generation``
(:func:`generate_greedy`, the entry point). Import the submodules directly; this
package imports nothing so that ``import langchain_divconq.local`` stays light.
"""
