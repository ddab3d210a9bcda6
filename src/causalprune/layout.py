"""One flat ↔ named layout for parameters: which entries are alive, where each sits in a flat vector.

Every piece of the library that turns named parameter tensors into one vector (the
recorder's rows, a `Trajectory`'s columns, global selection's candidates, the Hessian's
vectors) or cuts a vector into consecutive blocks (the Lasso design's blocks) uses this
module, so the order is written once:

* `Segments` — a flat vector cut into consecutive segments of known sizes.
* `ParamLayout` — named tensors (in a fixed order) whose *alive* entries, row-major within
  each tensor, are concatenated into one flat vector of length `d`. A layout may also map
  its entries onto `n_columns` groups (every entry of a group shares one column: the
  weight sharing of structured pruning, docs/method.md "Structured variant"); without
  groups every entry is its own column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class Segments:
    """A flat vector of length `total` cut into consecutive segments of the given sizes."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = [int(s) for s in sizes]
        if any(s < 0 for s in self.sizes):
            raise ValueError(f"segment sizes must be >= 0, got {self.sizes}")
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.total = self.offsets[-1]

    def __len__(self) -> int:
        return len(self.sizes)

    def span(self, i: int) -> tuple[int, int]:
        """Return [start, end) of segment `i` in the flat vector."""
        return self.offsets[i], self.offsets[i + 1]

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Return the views of the (total, ...) tensor `v` that belong to each segment."""
        if v.shape[0] != self.total:
            raise ValueError(f"expected {self.total} entries along dim 0, got {v.shape[0]}")
        return [v[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def locate(self, idx: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """Group flat indices by segment: (segment, positions in `idx`, indices local to the segment).

        Only segments that receive at least one index are listed.
        """
        idx = idx.to("cpu", torch.long)
        seg = torch.bucketize(idx, torch.tensor(self.offsets[1:]), right=True)  # (n,) segment of each index
        out = []
        for i in torch.unique(seg).tolist():
            pos = torch.nonzero(seg == i).squeeze(1)
            out.append((int(i), pos, idx[pos] - self.offsets[i]))
        return out


class ParamLayout(Segments):
    """Named tensors ↔ one flat vector over their alive entries (optionally grouped into columns).

    Args:
        names: tensor names, in flat order.
        shapes: name → shape.
        alive: name → bool tensor (True = has an entry in the flat vector); default all alive.
        column_of: optional (d,) long tensor giving each flat entry's column (group) in
            [0, n_columns); default: entry k is column k.
        n_columns: number of columns when `column_of` is given.
    """

    def __init__(
        self,
        names: Sequence[str],
        shapes: Mapping[str, torch.Size | tuple[int, ...]],
        alive: Mapping[str, torch.Tensor] | None = None,
        column_of: torch.Tensor | None = None,
        n_columns: int | None = None,
    ) -> None:
        self.names = list(names)
        self.shapes = {n: torch.Size(shapes[n]) for n in self.names}
        self.alive: dict[str, torch.Tensor] = {}
        # name → flat indices of the alive entries (CPU), or None when every entry is alive.
        self.index: dict[str, torch.Tensor | None] = {}
        for n in self.names:
            a = (alive[n].detach().to("cpu", torch.bool) if alive is not None and n in alive
                 else torch.ones(self.shapes[n], dtype=torch.bool))  # fmt: skip
            if a.shape != self.shapes[n]:
                raise ValueError(f"alive mask of {n!r} has shape {tuple(a.shape)}, the tensor {tuple(self.shapes[n])}")
            self.alive[n] = a
            flat = a.reshape(-1)
            self.index[n] = None if bool(flat.all()) else torch.nonzero(flat).squeeze(1)
        super().__init__([int(self.alive[n].sum()) for n in self.names])
        self.d = self.total
        if column_of is not None:
            column_of = column_of.detach().to("cpu", torch.long).reshape(-1)
            if column_of.numel() != self.d:
                raise ValueError(f"column_of must give a column for each of the {self.d} entries")
            if n_columns is None:
                n_columns = int(column_of.max()) + 1 if self.d else 0
            if self.d and not (0 <= int(column_of.min()) and int(column_of.max()) < n_columns):
                raise ValueError(f"column_of must lie in [0, {n_columns})")
        self.column_of = column_of
        self.n_columns = self.d if column_of is None else int(n_columns or 0)
        self._spans = [(n, *self.span(k)) for k, n in enumerate(self.names)]  # (name, start, end)
        self._device_index: dict[torch.device, dict[str, torch.Tensor | None]] = {}
        self._device_column_of: dict[torch.device, torch.Tensor] = {}

    # --- construction ----------------------------------------------------------------
    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor], alive: Mapping[str, torch.Tensor] | None = None) -> ParamLayout:
        """Return the layout of the named `tensors` (in their order), restricted to `alive`."""
        return cls(list(tensors), {n: t.shape for n, t in tensors.items()}, alive)

    @property
    def grouped(self) -> bool:
        """Whether entries share columns (structured pruning)."""
        return self.column_of is not None

    def index_on(self, device: torch.device) -> dict[str, torch.Tensor | None]:
        """Return `index` with every index tensor on `device` (cached; used by `flatten`, `unflatten_like`,
        `flatten_into`)."""
        device = torch.device(device)
        if device not in self._device_index:
            self._device_index[device] = {n: i.to(device) if i is not None else None for n, i in self.index.items()}
        return self._device_index[device]

    # --- named → flat ----------------------------------------------------------------
    def flatten(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                dtype: torch.dtype | None = None) -> torch.Tensor:  # fmt: skip
        """Return the (d,) concatenation of the alive entries of `tensors` (by name or in order).

        The result is on the tensors' device, in `dtype` (default: the first tensor's).
        """
        ts = self._ordered(tensors)
        parts = []
        for n, t in zip(self.names, ts, strict=True):
            flat = t.detach().reshape(-1)
            i = self.index_on(flat.device)[n]
            parts.append(flat if i is None else flat[i])
        out = torch.cat(parts) if parts else torch.zeros(0)
        return out if dtype is None else out.to(dtype)

    def dense_views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """Return, for each fully alive tensor, the view of the flat `buf` that holds it, shaped like it."""
        return [buf[a:b].view(self.shapes[n]) for n, a, b in self._spans if self.index[n] is None]

    def flatten_into(self, tensors: Sequence[torch.Tensor], out: torch.Tensor,
                     views: Sequence[torch.Tensor] | None = None) -> None:  # fmt: skip
        """Copy the alive entries of `tensors` (in layout order) into the flat (d,) `out`, allocation-free.

        Fully alive tensors are copied with one multi-tensor launch into `views` (from
        `dense_views(out)`; computed here when not given), the others by `index_select`.
        """
        index = self.index_on(out.device)
        dense = [t.detach() for n, t in zip(self.names, tensors, strict=True) if index[n] is None]
        if dense:
            views = self.dense_views(out) if views is None else views
            if all(t.dtype == out.dtype for t in dense):
                torch._foreach_copy_(list(views), dense)
            else:
                for v, t in zip(views, dense, strict=True):
                    v.copy_(t)
        for (n, a, b), t in zip(self._spans, tensors, strict=True):
            i = index[n]
            if i is not None:
                torch.index_select(t.detach().reshape(-1), 0, i, out=out[a:b])

    # --- flat → named ----------------------------------------------------------------
    def unflatten(self, values: torch.Tensor, fill: float | bool = 0.0, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:  # fmt: skip
        """Map a (d,) vector back to name → full tensor; entries that are not alive get `fill`."""
        values = values.detach().reshape(-1)
        if values.shape[0] != self.d:
            raise ValueError(f"expected a ({self.d},) vector, got {tuple(values.shape)}")
        values = values.to(device, dtype)
        out = {}
        for n, v in zip(self.names, self.split(values), strict=True):
            i = self.index[n]
            if i is None:
                out[n] = v.reshape(self.shapes[n]).clone()
            else:
                full = torch.full((self.shapes[n].numel(),), fill, dtype=dtype, device=device)
                full[self.index_on(device)[n]] = v
                out[n] = full.view(self.shapes[n])
        return out

    def unflatten_like(self, values: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Map a (d,) vector to a list of full tensors with the dtype and device of `like` (zeros elsewhere)."""
        out = []
        for n, v, ref in zip(self.names, self.split(values), like, strict=True):
            full = torch.zeros(ref.numel(), dtype=ref.dtype, device=ref.device)
            i = self.index_on(ref.device)[n]
            if i is None:
                full.copy_(v)
            else:
                full[i] = v.to(ref.dtype)
            out.append(full.view_as(ref))
        return out

    # --- columns (groups) ------------------------------------------------------------
    def column_of_on(self, device: torch.device | str) -> torch.Tensor:
        """Return `column_of` on `device` (cached: moved once per device). Only for a grouped layout."""
        if self.column_of is None:
            raise ValueError("the layout is not grouped: it has no column_of")
        device = torch.device(device)
        if device not in self._device_column_of:
            self._device_column_of[device] = self.column_of.to(device)
        return self._device_column_of[device]

    def to_columns(self, entries: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Sum a (d,) or (..., d) per-entry quantity over each column's entries → (n_columns,) or (..., n_columns).

        One segment-sum (`index_add_`) on the entries' device; `out` (same dtype and device,
        shape (..., n_columns)) receives it without allocating. Ungrouped: `entries` itself
        (copied into `out` when given).
        """
        if self.column_of is None:
            return entries if out is None else out.copy_(entries)
        if out is None:
            out = torch.zeros(*entries.shape[:-1], self.n_columns, dtype=entries.dtype, device=entries.device)
        else:
            out.zero_()
        return out.index_add_(-1, self.column_of_on(entries.device), entries)

    def from_columns(self, columns: torch.Tensor) -> torch.Tensor:
        """Give every entry its column's value: (n_columns,) → (d,)."""
        if self.column_of is None:
            return columns
        return columns[self.column_of_on(columns.device)]

    def _ordered(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise ValueError(f"missing tensors {missing} (have: {', '.join(tensors)})")
            ts = [tensors[n] for n in self.names]
        else:
            ts = list(tensors)
            if len(ts) != len(self.names):
                raise ValueError(f"expected {len(self.names)} tensors, got {len(ts)}")
        for n, t in zip(self.names, ts, strict=True):
            if t.shape != self.shapes[n]:
                raise ValueError(f"{n!r} has shape {tuple(t.shape)}, the layout {tuple(self.shapes[n])}")
        return ts

