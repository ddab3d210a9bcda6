"""A pruned model's weights as files: dense with zeros (state dict, safetensors) or sparse CSR.

Used by `causalprune export` and by anyone holding a pruned model (`CausalPruner.model`):

* `save_dense`: every tensor of the state dict, pruned entries stored as zeros — ``.pt``
  (`torch.save`, loads with ``weights_only=True``) or ``.safetensors`` (needs the
  ``safetensors`` package; tied tensors are stored once per name).
* `save_sparse`: the 2-D weights (Linear layers, and any 2-D prunable weight) as
  ``torch.sparse_csr`` tensors with int32 indices, everything else dense; a tied tensor
  once (its other names are aliases, restored by `load_sparse`). A CSR entry costs
  4 bytes of value and 4 of column index (plus 4 per row), so the file is smaller than the
  dense one above about 50 % sparsity. `load_sparse` returns a dense state dict that
  ``model.load_state_dict`` takes.
* The ``torch.nn.utils.prune`` form is `causalprune.Mask.to_torch_prune`.

Each function returns the file's size on disk in bytes.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .io import atomic_write, save_torch
from .masks import prunable_parameters

SPARSE_FORMAT = "causalprune.sparse_csr/2"  # /2: a tied tensor stored once, its other names in "aliases"
SPARSE_FORMATS = ("causalprune.sparse_csr/1", SPARSE_FORMAT)  # what `load_sparse` reads


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as CPU tensors (copies; every name its own tensor, as safetensors needs)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def save_dense(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write the dense weights (zeros where pruned) to `path`: ``.safetensors`` or a torch file; return its bytes."""
    path = Path(path)
    state = dense_state(model)
    if path.suffix == ".safetensors":
        if importlib.util.find_spec("safetensors") is None:
            raise ValueError("a .safetensors file needs the safetensors package: pip install safetensors")
        from safetensors.torch import save

        data = save(state, metadata={"format": "pt", "written_by": "causalprune"})
        atomic_write(path, lambda f: f.write(data))
    else:
        save_torch(state, path)
    return path.stat().st_size


def _csr(weight: torch.Tensor) -> torch.Tensor:
    """A 2-D tensor as a CSR tensor with int32 row pointers and column indices."""
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process, is not ours to show
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = weight.to_sparse_csr()
    # indices built by to_sparse_csr are valid: skip torch's invariant checks explicitly (it warns when left implicit)
    return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
                                   csr.values(), size=weight.shape, check_invariants=False)  # fmt: skip


def sparse_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every 2-D prunable weight as a CSR tensor (int32 indices), the rest dense."""
    state = dense_state(model)
    for name, p in prunable_parameters(model).items():
        if p.dim() == 2 and name in state:
            state[name] = _csr(state[name])
    return state


def tied_names(model: nn.Module) -> dict[str, str]:
    """Return state-dict name → the first name of the same tensor, for every later name of a tied tensor."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
    return aliases


def save_sparse(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write `sparse_state(model)` to `path` (`torch.save`), a tied tensor once; return its bytes.

    A tensor the model holds under several names (a tied weight) is stored under its first
    name; the file's ``aliases`` map every other name to it, and `load_sparse` gives them
    back as that same tensor.
    """
    aliases = tied_names(model)
    state = {k: v for k, v in sparse_state(model).items() if k not in aliases}
    save_torch({"format": SPARSE_FORMAT, "state": state, "aliases": aliases}, path)
    return Path(path).stat().st_size


def load_sparse(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a file of `save_sparse` and return a dense state dict (``model.load_state_dict`` takes it).

    Every name of a tied tensor is there, all of them the same tensor object.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") not in SPARSE_FORMATS:
        raise ValueError(f"{path} is not a causalprune sparse file (format {SPARSE_FORMAT})")
    state = {k: v.to_dense() if v.layout == torch.sparse_csr else v for k, v in obj["state"].items()}
    for alias, name in obj.get("aliases", {}).items():
        if name not in state:
            raise ValueError(f"{path} is damaged: {alias!r} is an alias of {name!r}, which the file does not hold")
        state[alias] = state[name]
    return state


__all__ = ["dense_state", "load_sparse", "save_dense", "save_sparse", "sparse_state", "tied_names"]
