"""Continuous batching for the torch engine: rows join and leave a running batch between steps.

A batch is left-padded, as ``generate`` lays one out: every row's keys and values are
right-aligned in one KV cache, padding on the left is masked, and each row has its own
positions. A row that ends leaves at once (its result goes to its caller through the
:data:`~langchain_divconq.local.engine.rows.RowDone` callback); rows that wait (the call's
own rows beyond ``max_rows``, then a :class:`~langchain_divconq.local.engine.rows.RowSource`)
take the free slots: their prompt pass runs on its own and their cache is padded to the
batch's length and stacked onto it. Padding is masked out, so every row gets the tokens it
would get alone, up to floating-point rounding between batch shapes (as for any batch).

A row decoding alone speculatively (batch 1) hands over to this loop when others wait:
its cache holds every token but its last, which becomes its first fed token here. When
the others have left and nobody waits, the loop hands the row back
(``hand_back=True``), so a long request speeds up again once short ones are done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_divconq.local.engine.rows import (
    NewRow,
    Row,
    RowDone,
    RowSource,
    RowStop,
    cache_kwarg,
    new_cache,
)

if TYPE_CHECKING:
    import torch

__all__ = ["Feed", "LiveBatch", "decode_live", "mergeable", "single_row_batch"]


class Feed:
    """The rows of one engine call: the inputs, those that joined, and where results go.

    Args:
        rows: The call's input rows (indices ``0..len(rows) - 1``).
        max_rows: Most rows decoded at once; the other inputs wait for a free slot.
        source: More rows that may join while the call runs.
        on_finish: Told about each row as soon as it ends.

    """

    def __init__(
        self,
        rows: list[Row],
        max_rows: int,
        source: RowSource | None = None,
        on_finish: RowDone | None = None,
    ) -> None:
        if max_rows < 1:
            msg = f"max_rows must be at least 1, got {max_rows}."
            raise ValueError(msg)
        self.rows = rows
        self.max_rows = max_rows
        self.source = source
        self.on_finish = on_finish
        self._queued: deque[int] = deque(range(len(rows)))

    def waiting(self) -> bool:
        """Whether an input row or a row of the source waits for a slot."""
        return bool(self._queued) or (self.source is not None and self.source.waiting())

    def admit(self, limit: int) -> list[int]:
        """Return the indices of up to ``limit`` rows that start now (inputs first).

        Rows cancelled while they waited end here, with no token generated.
        """
        out: list[int] = []
        while len(out) < limit:
            if self._queued:
                index = self._queued.popleft()
            elif self.source is not None:
                joined = self.source.take(limit - len(out))
                if not joined:
                    break
                for new in joined:
                    self._check(new)
                    self.rows.append(Row(new.prompt, new.cancel))
                    out.extend(self._start(len(self.rows) - 1))
                continue
            else:
                break
            out.extend(self._start(index))
        return out

    def _start(self, index: int) -> list[int]:
        row = self.rows[index]
        if row.cancel is not None and row.cancel.is_set():
            row.finish = "cancelled"
            self.finished(index)
            return []
        return [index]

    @staticmethod
    def _check(new: NewRow) -> None:
        if not new.prompt:
            msg = "A row that joins a batch needs at least one prompt token; got an empty prompt."
            raise ValueError(msg)

    def finished(self, index: int) -> None:
        """Report row ``index``, which has just ended, to :attr:`on_finish`."""
        if self.on_finish is not None:
            self.on_finish(index, self.rows[index].result())


@dataclass
class LiveBatch:
    """The running rows: their shared, left-padded KV cache and what each feeds next."""

    rows: list[int]
    """Indices (into :attr:`Feed.rows`) of the rows still decoding, in cache order."""
    cache: Any
    """A ``DynamicCache`` of shape ``[len(rows), heads, length, dim]`` per layer."""
    mask: torch.Tensor
    """``[len(rows), length]``: 1 where the cache holds a real token, 0 for left padding."""
    last_pos: torch.Tensor
    """``[len(rows), 1]``: the position of each row's last cached token."""
    pending: torch.Tensor
    """``[len(rows)]``: each row's newest token, not yet in the cache (fed next step)."""

    def keep(self, positions: Sequence[int]) -> None:
        """Keep only the rows at ``positions`` (in cache order); trim shared left padding.

        Columns that are padding in every row left are dropped. Without that trim, a batch
        that never empties (steady traffic, rows joining as others leave) would keep a cache
        as long as the number of steps since it began; with it, the cache is as long as its
        longest live row.
        """
        import torch

        index = torch.tensor(list(positions), device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self.last_pos = self.mask[index], self.last_pos[index]
        self.pending = self.pending[index]
        self.rows = [self.rows[j] for j in positions]
        drop = self.mask.shape[1] - int(self.mask.sum(dim=1).max())
        if drop > 0 and mergeable(self.cache):
            self.mask = self.mask[:, drop:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[..., drop:, :]
                layer.values = layer.values[..., drop:, :]

    def single_cache(self) -> Any:
        """Return the cache of a one-row batch without its left padding (for batch-1 loops)."""
        real = int(self.mask[0].sum())
        for layer in self.cache.layers:
            layer.keys = layer.keys[..., -real:, :]
            layer.values = layer.values[..., -real:, :]
        return self.cache

    def merge(self, other: LiveBatch) -> None:
        """Stack ``other``'s rows under these, left-padding the shorter cache."""
        import torch

        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
            mine.values = torch.cat(
                [_pad_left(mine.values, length), _pad_left(theirs.values, length)]
            )
        self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(other.mask, length)])
        self.last_pos = torch.cat([self.last_pos, other.last_pos])
        self.pending = torch.cat([self.pending, other.pending])
        self.rows += other.rows


def _pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad dimension -2 of a cache tensor (or -1 of a mask) on the left with zeros."""
    import torch

    dim = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def mergeable(cache: Any) -> bool:
    """Whether rows can be stacked onto ``cache`` (plain growing layers, no sliding windows)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def single_row_batch(row_index: int, row: Row, cache: Any, device: torch.device) -> LiveBatch:
    """Turn a batch-1 cache that holds every token of ``row`` but its last into a batch."""
    import torch

    length = cache.get_seq_length()
    return LiveBatch(
        rows=[row_index],
        cache=cache,
        mask=torch.ones((1, length), dtype=torch.long, device=device),
        last_pos=torch.full((1, 1), length - 1, dtype=torch.long, device=device),
        pending=torch.tensor([row.new[-1]], dtype=torch.long, device=device),
    )


def _prefill(
    model: Any, feed: Feed, indices: list[int], device: torch.device, stop: RowStop, pad: int
) -> LiveBatch | None:
    """Run the prompts of ``indices`` as one left-padded pass; push each row's first token."""
    import torch

    rows = [feed.rows[i] for i in indices]
    width = max(len(r.prompt) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt, device=device)
        mask[i, width - len(r.prompt) :] = 1
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = new_cache(model)
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        **{cache_kwarg(model): cache},
        use_cache=True,
        logits_to_keep=1,
    ).logits
    tokens = logits[:, -1].argmax(dim=-1)
    batch = LiveBatch(list(indices), cache, mask, positions[:, -1:], tokens)
    return _push(batch, feed, tokens.tolist(), stop)


def _push(batch: LiveBatch, feed: Feed, tokens: list[int], stop: RowStop) -> LiveBatch | None:
    """Give each row its new token; drop (and report) the rows that ended; None if none is left."""
    keep = []
    for j, token in enumerate(tokens):
        index = batch.rows[j]
        row = feed.rows[index]
        row.passes += 1
        if row.push(int(token), stop):
            feed.finished(index)
        else:
            keep.append(j)
    if not keep:
        return None
    if len(keep) < len(batch.rows):
        batch.keep(keep)
    return batch


def _step(model: Any, batch: LiveBatch, feed: Feed, stop: RowStop) -> LiveBatch | None:
    """Feed every row its pending token; push the next ones."""
    import torch

    batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=-1)
    batch.last_pos = batch.last_pos + 1
    logits = model(
        input_ids=batch.pending[:, None],
        attention_mask=batch.mask,
        position_ids=batch.last_pos,
        **{cache_kwarg(model): batch.cache},
        use_cache=True,
        logits_to_keep=1,
    ).logits
    batch.pending = logits[:, -1].argmax(dim=-1)
    return _push(batch, feed, batch.pending.tolist(), stop)


def decode_live(
    model: Any,
    feed: Feed,
    device: torch.device,
    stop: RowStop,
    pad: int,
    start: LiveBatch | None = None,
    *,
    hand_back: bool = False,
) -> LiveBatch | None:
    """Decode until no row runs or waits; rows join whenever a slot is free.

    ``start`` continues a batch already running (a speculative row handing over). With
    ``hand_back``, return the batch once a single row is left and none waits (its caller
    goes on with it at batch 1); else None once every row has ended. Rows that wait when
    the cache cannot take more (sliding-window layers) start once the running batch is done.
    """
    batch = start
    while True:
        free = feed.max_rows - (len(batch.rows) if batch is not None else 0)
        joined: list[int] = []
        if free > 0 and (batch is None or mergeable(batch.cache)):
            joined = feed.admit(free)
            if joined:
                new = _prefill(model, feed, joined, device, stop, pad)
                if batch is None:
                    batch = new
                elif new is not None:
                    batch.merge(new)
        if batch is None:
            if joined and feed.waiting():
                continue  # every admitted row ended at its first token; admit more
            return None
        if hand_back and len(batch.rows) == 1 and not feed.waiting() and mergeable(batch.cache):
            return batch
        batch = _step(model, batch, feed, stop)
