"""`causalprune export`: a finished run's model as a file that loads without this package.

Formats (`FORMATS`):

* ``pt2``: `torch.export.export` of the model in eval mode, saved with `torch.export.save`;
  load it with ``torch.export.load(path).module()``. The batch dimension is dynamic where
  the model allows it (``"dynamic_batch"`` in the sidecar), else fixed to 2.
* ``onnx``: `torch.onnx.export` (needs the ``onnx`` package; the file is checked against
  the model with ``onnxruntime`` when that is installed, otherwise the check is skipped with
  a note).
* ``state_dict``: the model's state dict (`torch.save`; tensors only, so
  ``torch.load(path, weights_only=True)`` reads it), pruned weights stored as zeros.
* ``safetensors``: the same dense weights as a ``.safetensors`` file (needs ``safetensors``).
* ``sparse``: the 2-D weights as ``torch.sparse_csr`` tensors with int32 indices, the rest
  dense (`causalprune.formats.load_sparse` gives back a dense state dict); smaller than
  ``state_dict`` above about 50 % sparsity.

Every format also writes a JSON sidecar ``<file>.json``: the format, the file's size on disk
(``bytes``; for ``sparse`` also the dense file's, ``dense_bytes``), one sample's input shape,
the number of outputs, the model config, the run's method, sparsity and seed, and the
summary's ``efficiency`` entry (as the run recorded it).

The model is rebuilt from the run folder (``config.yaml`` + ``model.pt``; for a channel run
the dense model is first slimmed to the groups ``mask.pt`` keeps) and the example input
from `causalprune.data.shape_of`; no data is loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import torch

from . import resolve
from .data import shape_of
from .formats import save_dense, save_sparse
from .io import save_json
from .models import build_model
from .runfolder import RunFolder
from .structured import slim_to_mask

FORMATS = ("pt2", "onnx", "state_dict", "safetensors", "sparse")
SUFFIX = {"pt2": ".pt2", "onnx": ".onnx", "state_dict": ".pt", "safetensors": ".safetensors", "sparse": ".pt"}
DEFAULT_NAME = {"pt2": "model.pt2", "onnx": "model.onnx", "state_dict": "state_dict.pt",
                "safetensors": "model.safetensors", "sparse": "sparse_csr.pt"}  # fmt: skip
EXAMPLE_BATCH = 2  # a batch of 1 would be specialised by torch.export


def load_finished_model(run_dir: str | Path) -> tuple[torch.nn.Module, tuple[int, ...], dict[str, Any], Any]:
    """Return (the finished run's trained model in eval mode, one sample's input shape, summary, config)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run folder: {run_dir}")
    for f in ("config.yaml", "model.pt", "summary.json"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(f"{run_dir} is not a finished run folder (no {f})")
    cfg = resolve.load(run_dir / "config.yaml")
    input_shape, outputs = shape_of(cfg.data.name, cfg.data.image_size)
    model = build_model(cfg.model, input_shape, outputs)
    folder = RunFolder(run_dir)
    prepare = (lambda m, mask: slim_to_mask(m, mask, tuple(input_shape))) if cfg.prune.granularity == "channel" \
        else None  # a channel run's model.pt holds the slim network
    folder.load_result(model, prepare)  # names a damaged model.pt / mask.pt
    summary = folder.summary()
    return model.eval(), tuple(input_shape), summary, cfg


def _example(input_shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(EXAMPLE_BATCH, *input_shape, generator=torch.Generator().manual_seed(0))


def _export_pt2(model: torch.nn.Module, example: torch.Tensor, out: Path) -> bool:
    """Write a torch.export program; return whether its batch dimension is dynamic."""
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        dynamic = True
    except Exception:  # a model whose batch size cannot vary: export it for the example's batch size
        program = torch.export.export(model, (example,))
        dynamic = False
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out)
    return dynamic


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> tuple[bool, str]:
    """Write an ONNX file; return (dynamic batch, a note on the onnxruntime check)."""
    if importlib.util.find_spec("onnx") is None:
        raise ValueError("format onnx needs the onnx package: pip install onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (example,), str(out), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})  # fmt: skip
    if importlib.util.find_spec("onnxruntime") is None:
        return True, "not checked: onnxruntime is not installed (pip install onnxruntime)"
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(EXAMPLE_BATCH + 1, *example.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        raise ValueError(f"the ONNX file {out} disagrees with the model (max abs difference {diff:.3g})")
    return True, f"checked with onnxruntime: max abs difference {diff:.3g}"


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> dict[str, Any]:
    """Export a finished run's model in format `fmt` to `out` (default: RUN_DIR/model.pt2, model.onnx or
    state_dict.pt) and write the sidecar ``<out>.json``; return the sidecar's content (plus ``"file"``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:  # before any work
        raise ValueError("format onnx needs the onnx package: pip install onnx")
    if fmt == "safetensors" and importlib.util.find_spec("safetensors") is None:
        raise ValueError("format safetensors needs the safetensors package: pip install safetensors")
    model, input_shape, summary, cfg = load_finished_model(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / DEFAULT_NAME[fmt]
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name, e.g. {path / DEFAULT_NAME[fmt]}")
    if fmt == "safetensors" and path.suffix != ".safetensors":
        raise ValueError(f"--out {path}: a safetensors file must end in .safetensors")
    example = _example(input_shape)
    note = ""
    sizes: dict[str, int] = {}
    with torch.no_grad():
        if fmt == "pt2":
            dynamic = _export_pt2(model, example, path)
        elif fmt == "onnx":
            dynamic, note = _export_onnx(model, example, path)
        elif fmt == "sparse":
            sizes["bytes"] = save_sparse(model, path)
            dense = path.with_name(f".{path.name}.dense")  # measured, then removed
            sizes["dense_bytes"] = save_dense(model, dense)
            dense.unlink()
            dynamic = True
        else:  # state_dict / safetensors: the dense weights, zeros where pruned
            save_dense(model, path)
            dynamic = True
    sizes.setdefault("bytes", path.stat().st_size)
    _, outputs = shape_of(cfg.data.name, cfg.data.image_size)
    sidecar: dict[str, Any] = {
        "format": fmt,
        **sizes,
        "input_shape": list(input_shape),
        "outputs": outputs,
        "dynamic_batch": dynamic,
        "example_batch": EXAMPLE_BATCH,
        "model": dataclasses.asdict(cfg.model),
        "data": cfg.data.name,
        "method": summary.get("method"),
        "sparsity": summary.get("sparsity_actual", summary.get("sparsity_target")),
        "seed": summary.get("seed"),
        "efficiency": summary.get("efficiency"),
        "torch": torch.__version__,
        "run": str(run_dir),
    }
    if note:
        sidecar["check"] = note
    save_json(sidecar, path.with_name(path.name + ".json"))
    return {**sidecar, "file": str(path)}
