"""`causalprune export`: a finished run's model as a file that loads without this package.

Formats (`FORMATS`), each with the file name suffix it writes (`SUFFIXES`; another suffix
in ``out`` is refused, naming the expected one):

* ``pt2`` (``.pt2``): `torch.export.export` of the model in eval mode, saved with
  `torch.export.save`; load it with ``torch.export.load(path).module()``. The batch
  dimension is dynamic where the model allows it (``"dynamic_batch"`` in the sidecar), else
  fixed to 2, and ``"static_batch_reason"`` says in one line why torch.export refused the
  dynamic one (the same for ``onnx``).
* ``onnx`` (``.onnx``): `torch.onnx.export` (its dynamo exporter: needs the ``onnx`` extra,
  ``pip install 'causalprune[onnx]'`` — onnx, onnxscript, onnxruntime). One self-contained
  file while the weights take under `ONNX_EXTERNAL_BYTES`; a larger model's weights go to a
  second file ``<file>.data`` beside it (ONNX's protobuf limit is 2 GiB). The file is run
  with ``onnxruntime`` and compared with the model (when onnxruntime is missing the check is
  skipped, with a note).
* ``state_dict`` (``.pt`` / ``.pth``): the model's state dict (`torch.save`; tensors only, so
  ``torch.load(path, weights_only=True)`` reads it), pruned weights stored as zeros.
* ``safetensors`` (``.safetensors``): the same dense weights (needs ``safetensors``).
* ``sparse`` (``.pt`` / ``.pth``): the 2-D weights as ``torch.sparse_csr`` tensors with int32
  indices, the rest dense (`causalprune.formats.load_sparse` gives back a dense state dict);
  smaller than ``state_dict`` above about 50 % sparsity. A slim channel network has no zeros
  to compress, so its sparse file is larger than the dense one: the sidecar's ``note`` says so.

``semi_structured=True`` (``--semi-structured``, format ``state_dict`` only) converts the
weights of a ``prune.pattern: "2:4"`` run for NVIDIA's sparse tensor cores: the model is cast
to float16 on the CUDA device, and every pruned ``nn.Linear`` weight becomes a
`torch.sparse.to_sparse_semi_structured` tensor (saved with `torch.save`; reading it needs
``weights_only=False`` and a CUDA device). That API takes 2:4 only (float16 / bfloat16; int8),
on CUDA compute capability 8.0+ (`SEMI_STRUCTURED_PATTERN`, `semi_structured_support`). Before
any conversion every pruned Linear weight is checked to hold at most 2 nonzeros in every block
of 4 consecutive inputs of a row (`check_semi_structured`: a weight that does not is refused,
naming its row and block); a weight whose shape the kernels do not take (float16: rows a
multiple of 32, columns of 64: `SEMI_STRUCTURED_MIN`) or that is tied to a non-Linear tensor
stays dense, and the sidecar's ``kept_dense`` says why. A run with another pattern, another
format, or no CUDA device of compute capability 8.0+ is refused in one line naming what is
missing, before anything is written.

Every format also writes a JSON sidecar ``<file>.json``: the format, ``files`` (every file
the export wrote besides the sidecar, ``{"name", "bytes"}``, names relative to the sidecar's
folder), ``bytes`` (their total on disk; for ``sparse`` also the dense file's,
``dense_bytes``), one sample's input shape and dtype (``input_dtype``), the number of
outputs, the exported network's ``model`` config (for a channel run ``widths`` are the slim
widths and ``dense_widths`` the config's), ``layer_widths`` (output channels of every
prunable layer), the run's ``pattern`` (``prune.pattern``, null without one), method,
sparsity, seed and the summary's ``efficiency`` entry (as the run recorded it).

The model is rebuilt from the run folder by `load_run` (``config.yaml`` + ``model.pt``;
for a channel run the dense model is first slimmed to the groups ``mask.pt`` keeps) and the
example input from the run's `ModelIO` (`run_io`): float32 samples of the data set's shape
(`causalprune.data.shape_of`), or for a token data set (`TOKEN_DATA`: ``pysrc``) int64 token
ids, one window of ``model.block_size``, drawn in ``[0, vocabulary)`` from a fixed seed. The
sidecar's ``input_dtype`` says which; no data is loaded.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import io
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import resolve
from .data import shape_of
from .formats import save_dense, save_sparse
from .io import save_json
from .masks import Mask, prunable_parameters
from .modelio import ModelIO
from .models import build_model
from .plan import restore_model, slims
from .runfolder import RunFolder

FORMATS = ("pt2", "onnx", "state_dict", "safetensors", "sparse")
SUFFIXES = {"pt2": (".pt2",), "onnx": (".onnx",), "state_dict": (".pt", ".pth"), "safetensors": (".safetensors",),
            "sparse": (".pt", ".pth")}  # fmt: skip
SUFFIX = {fmt: s[0] for fmt, s in SUFFIXES.items()}
DEFAULT_NAME = {"pt2": "model.pt2", "onnx": "model.onnx", "state_dict": "state_dict.pt",
                "safetensors": "model.safetensors", "sparse": "sparse_csr.pt"}  # fmt: skip
EXAMPLE_BATCH = 2  # a batch of 1 would be specialised by torch.export
ONNX_MODULES = ("onnx", "onnxscript")  # torch.onnx.export's dynamo exporter needs both; onnxruntime checks the file
ONNX_EXTERNAL_BYTES = 1 << 30  # bytes of weights from which an ONNX export keeps them in <file>.data (limit 2 GiB)
SEMI_STRUCTURED_PATTERN = "2:4"  # the one pattern torch.sparse.to_sparse_semi_structured takes (float16/bfloat16)
SEMI_STRUCTURED_DTYPE = torch.float16  # the converted model's dtype
SEMI_STRUCTURED_MIN = (32, 64)  # float16 weight (rows, columns): each a multiple of these (PyTorch's CUTLASS kernels)
#: Data sets whose samples are int64 token ids, one window of ``model.block_size`` (the model embeds them).
TOKEN_DATA = ("pysrc",)


class LoadedRun(NamedTuple):
    """A finished run's model and its mask, as `load_run` returns them: ``model, mask = load_run(run)``."""

    model: torch.nn.Module
    """The trained network in eval mode, weights loaded: the slim network for a channel run."""
    mask: Mask
    """`model`'s mask, keyed by its canonical parameter names (all True for a channel run's slim network)."""


@dataclasses.dataclass(frozen=True)
class _Finished:
    model: torch.nn.Module
    mask: Mask
    input_shape: tuple[int, ...]
    summary: dict[str, Any]
    cfg: Any
    dense_layer_widths: dict[str, int]  # output channels per prunable layer of the network as configured


def layer_widths(model: torch.nn.Module) -> dict[str, int]:
    """Return the output channels (features) of every prunable layer of `model`, keyed by weight name."""
    return {name: int(p.shape[0]) for name, p in prunable_parameters(model).items()}


def run_io(cfg: Any) -> ModelIO:
    """Build the inputs of a run's model from its config, without loading data.

    Float32 samples of the data set's shape (`causalprune.data.shape_of`) for every data set
    but the token data sets (`TOKEN_DATA`), whose samples are int64 token ids of one window of
    ``model.block_size``; their example holds ``EXAMPLE_BATCH + 1`` windows of ids drawn in
    ``[0, vocabulary)`` from a fixed seed, so every batch an export uses sees distinct rows.
    """
    shape, outputs = shape_of(cfg.data.name, cfg.data.image_size)
    if cfg.data.name not in TOKEN_DATA:
        return ModelIO.from_shape(tuple(shape))
    g = torch.Generator().manual_seed(0)
    return ModelIO(torch.randint(0, outputs, (EXAMPLE_BATCH + 1, int(cfg.model.block_size)), generator=g))


def _load(run_dir: str | Path) -> _Finished:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no such run folder: {run_dir}")
    for f in ("config.yaml", "model.pt", "mask.pt", "summary.json"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(f"{run_dir} is not a finished run folder (no {f})")
    cfg = resolve.load(run_dir / "config.yaml")
    _, outputs = shape_of(cfg.data.name, cfg.data.image_size)
    input_shape = run_io(cfg).input_shape or ()
    model = build_model(cfg.model, input_shape, outputs)
    dense_widths = layer_widths(model)
    folder = RunFolder(run_dir)
    channel = slims(cfg.prune.granularity)  # a channel run's model.pt holds the slim network
    prepare = (lambda m, mask: restore_model(cfg.prune.granularity, m, mask, run_io(cfg))) if channel \
        else None
    mask = folder.load_result(model, prepare)  # names a damaged model.pt / mask.pt
    mask = Mask.ones(model) if channel else mask.canonical(model)  # nothing of a slim network is masked
    return _Finished(model.eval(), mask, tuple(input_shape), folder.summary(), cfg, dense_widths)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load a finished run's trained model and its mask from its folder.

    The model is rebuilt from ``config.yaml`` (no data is loaded) and ``model.pt`` is loaded
    into it; for a channel run (``prune.granularity: channel``) the built network is first
    slimmed to the channel groups ``mask.pt`` keeps, so the model returned is the slim one
    and its mask keeps everything. The model is in eval mode (call ``model.train()`` to
    fine-tune it, e.g. after ``mask.attach(model, optimizer)``). A missing folder or file and
    a damaged ``model.pt`` / ``mask.pt`` raise an error naming it.
    """
    f = _load(run_dir)
    return LoadedRun(f.model, f.mask)


def load_finished_model(run_dir: str | Path) -> tuple[torch.nn.Module, tuple[int, ...], dict[str, Any], Any]:
    """Return (the finished run's trained model in eval mode, one sample's input shape, summary, config)."""
    f = _load(run_dir)
    return f.model, f.input_shape, f.summary, f.cfg


def _example(inputs: ModelIO | tuple[int, ...], batch: int = EXAMPLE_BATCH, seed: int = 0) -> Any:
    """`batch` samples of random inputs (floats drawn from a generator seeded `seed`; token ids the example's)."""
    return ModelIO.of(inputs).example_inputs(batch, "randn", generator=torch.Generator().manual_seed(seed))


class _Forward(torch.nn.Module):
    """A model called through a `ModelIO`'s ``forward_fn``, as the module torch.export / ONNX trace."""

    def __init__(self, model: torch.nn.Module, io: ModelIO) -> None:
        super().__init__()
        self.model, self.io = model, io

    def forward(self, *args: Any) -> Any:
        return self.io.forward(self.model, args[0] if self.io.kind == "tensor" else args)


def _traced(model: torch.nn.Module, io: ModelIO, example: Any) -> tuple[torch.nn.Module, tuple[Any, ...],
                                                                          dict[str, Any], Any]:  # fmt: skip
    """(module, args, kwargs, dynamic shapes with a dynamic batch) for torch.export / ONNX from `io`'s inputs."""
    batch = torch.export.Dim("batch")
    if io.kind == "dict":
        if io.forward_fn is not None:
            raise ValueError("export of dict inputs calls model(**inputs); a ModelIO with a forward_fn cannot be "
                             "exported with dict inputs")  # fmt: skip
        return model, (), dict(example), {k: {0: batch} for k in example}
    args = (example,) if io.kind == "tensor" else tuple(example)
    module = _Forward(model, io) if io.forward_fn is not None else model
    return module, args, {}, tuple({0: batch} for _ in args)


def _why(e: BaseException) -> str:
    """One line saying why an export failed: the exception's type and the first line of its message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else 'no message'}"


def _export_pt2(model: torch.nn.Module, io: ModelIO, example: Any, out: Path) -> tuple[bool, str]:
    """Write a torch.export program; return (whether its batch dimension is dynamic, why not when it is not).

    A model whose batch size cannot vary (torch.export's constraint solver or a guard on the
    batch dimension refuses the dynamic one) is exported for the example's batch size; the
    reason is returned in one line. Any other failure of the static export is raised.
    """
    module, args, kwargs, dynamic_shapes = _traced(model, io, example)
    why = ""
    try:
        program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes)
        dynamic = True
    except Exception as e:  # (torch raises UserError, ConstraintViolationError, guard errors... ) said below
        why = _why(e)
        program = torch.export.export(module, args, kwargs)
        dynamic = False
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out)
    return dynamic, why



def _check_onnx_modules() -> None:
    """Refuse format onnx, naming every missing module, unless its exporter's modules are installed."""
    missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"format onnx needs the onnx extra: pip install 'causalprune[onnx]' "
                         f"(missing module{'s' if len(missing) > 1 else ''}: {', '.join(missing)})")  # fmt: skip


def _export_onnx(model: torch.nn.Module, mio: ModelIO, example: Any,
                 out: Path) -> tuple[bool, list[Path], str, str]:  # fmt: skip
    """Write an ONNX file; return (dynamic batch, the files written, a note on the onnxruntime check, why static)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    external = weight_bytes >= ONNX_EXTERNAL_BYTES
    module, args, kw, dynamic_shapes = _traced(model, mio, example)
    names = {"input_names": ["input"], "output_names": ["output"]} if mio.kind == "tensor" else {}
    kwargs: dict[str, Any] = {**names, "dynamo": True, "external_data": external}
    why = ""
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        try:
            torch.onnx.export(module, args, str(out), kwargs=kw or None, dynamic_shapes=dynamic_shapes, **kwargs)
            dynamic = True
        except Exception as e:  # a model whose batch size cannot vary: export it for the example's batch size
            why = _why(e)
            torch.onnx.export(module, args, str(out), kwargs=kw or None, **kwargs)
            dynamic = False
    files = [out, out.with_name(out.name + ".data")] if external else [out]
    if importlib.util.find_spec("onnxruntime") is None:
        return dynamic, files, "not checked: onnxruntime is not installed (pip install 'causalprune[onnx]')", why
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = EXAMPLE_BATCH + 1 if dynamic else EXAMPLE_BATCH  # a batch size the export did not see, where it may vary
    x = _example(mio, batch, seed=1)
    with torch.no_grad():
        want = mio.forward(model, x)
    if not isinstance(want, torch.Tensor):
        return dynamic, files, f"not checked: the model returns {type(want).__name__}, not one tensor", why
    tensors = list(x.values()) if isinstance(x, dict) else [x] if isinstance(x, torch.Tensor) else list(x)
    feeds = [i.name for i in session.get_inputs()]
    if isinstance(x, dict) and set(feeds) <= set(x):
        tensors = [x[n] for n in feeds]
    got = session.run(None, {n: t.numpy() for n, t in zip(feeds, tensors, strict=False)})[0]
    diff = float(np.abs(got - want.numpy()).max())
    if diff > 1e-4:
        raise ValueError(f"the ONNX file {out} disagrees with the model (max abs difference {diff:.3g})")
    return dynamic, files, f"checked with onnxruntime (batch {batch}): max abs difference {diff:.3g}", why


def semi_structured_support() -> str:
    """Return what this machine lacks for semi-structured (2:4) tensors, or "" when it has a CUDA device of sm80+."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f"CUDA device {torch.cuda.get_device_name()} has compute capability {major}.{minor}, below 8.0 "
                "(Ampere)")  # fmt: skip
    return ""


def check_semi_structured(model: torch.nn.Module, mask: Mask) -> tuple[list[str], dict[str, str]]:
    """Check that every pruned Linear weight holds 2:4; return (weights to convert, {kept dense: why}).

    A weight is pruned when `mask` masks any of its entries. Each block of 4 consecutive
    inputs of each row must hold at most 2 nonzeros (checked on the weights themselves); a
    weight that does not raises a ValueError naming it, its first such row and block. Of the
    weights that hold it, those the kernels cannot take (shape not a multiple of
    `SEMI_STRUCTURED_MIN`, or tied to a tensor that is not a Linear weight) are kept dense.
    """
    n, m = (int(v) for v in SEMI_STRUCTURED_PATTERN.split(":"))
    prunable = prunable_parameters(model)
    names = {id(p): name for name, p in prunable.items()}
    linear = {id(mod.weight) for mod in model.modules() if isinstance(mod, torch.nn.Linear)}
    tied = {id(p) for p in (mod.weight for mod in model.modules() if not isinstance(mod, torch.nn.Linear)
                            and isinstance(getattr(mod, "weight", None), torch.Tensor))}  # fmt: skip
    convert: list[str] = []
    dense: dict[str, str] = {}
    for pid, name in names.items():
        if pid not in linear or name not in mask or bool(mask[name].all()):
            continue
        w = prunable[name].detach()
        rows, cols = w.shape
        if cols % m:
            raise ValueError(f"weight {name} (shape {tuple(w.shape)}) has {cols} inputs, not a multiple of {m}: it "
                             f"cannot hold {SEMI_STRUCTURED_PATTERN}")  # fmt: skip
        kept = (w != 0).reshape(rows, cols // m, m).sum(-1)  # (rows, blocks): nonzeros per block of m inputs
        if int(kept.max()) > n:
            r, b = (int(i) for i in (kept > n).nonzero()[0])
            raise ValueError(f"weight {name} is not {SEMI_STRUCTURED_PATTERN}: row {r}, inputs "
                             f"{b * m}..{b * m + m - 1} hold {int(kept[r, b])} nonzeros (at most {n}); "
                             f"--semi-structured needs every pruned Linear weight 2:4")  # fmt: skip
        r_min, c_min = SEMI_STRUCTURED_MIN
        if pid in tied:
            dense[name] = "tied to a weight that is not a Linear's (an embedding)"
        elif rows % r_min or cols % c_min:
            dense[name] = (f"shape {tuple(w.shape)}: the kernels take rows a multiple of {r_min} and columns a "
                           f"multiple of {c_min}")  # fmt: skip
        else:
            convert.append(name)
    return convert, dense


def _check_semi_structured_run(fmt: str, cfg: Any) -> None:
    """Refuse --semi-structured, in one line, for a format other than state_dict or a run not pruned 2:4."""
    if fmt != "state_dict":
        raise ValueError(f"--semi-structured writes format state_dict (torch.save of the converted tensors), got "
                         f"--format {fmt}")  # fmt: skip
    if cfg.prune.pattern != SEMI_STRUCTURED_PATTERN:
        raise ValueError(f"--semi-structured needs a run pruned with prune.pattern \"{SEMI_STRUCTURED_PATTERN}\" "
                         f"(torch.sparse.to_sparse_semi_structured takes 2:4 only, for float16/bfloat16); this run "
                         f"has prune.pattern {cfg.prune.pattern!r}")  # fmt: skip


def _save_semi_structured(model: torch.nn.Module, convert: list[str], out: Path, device: str = "cuda") -> None:
    """Cast a copy of `model` to float16 on `device`, make the `convert` weights semi-structured, save its state."""
    from torch.sparse import to_sparse_semi_structured

    model = copy.deepcopy(model).to(device=device, dtype=SEMI_STRUCTURED_DTYPE)
    params = prunable_parameters(model)
    targets = {id(params[name]) for name in convert}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and id(mod.weight) in targets:
            mod.weight = torch.nn.Parameter(to_sparse_semi_structured(mod.weight.detach()), requires_grad=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)


def _out_path(run_dir: str | Path, fmt: str, out: str | Path | None) -> Path:
    """The export's file: `out`, or the format's default name in the run folder; refuse a suffix of another format."""
    path = Path(out) if out is not None else Path(run_dir) / DEFAULT_NAME[fmt]
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name, e.g. {path / DEFAULT_NAME[fmt]}")
    expected = SUFFIXES[fmt]
    if path.suffix not in expected:
        raise ValueError(f"--out {path}: format {fmt} writes a {' or '.join(expected)} file; give a name ending in "
                         f"{expected[0]}, e.g. {path.with_suffix(expected[0])}")  # fmt: skip
    return path


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               semi_structured: bool = False) -> dict[str, Any]:  # fmt: skip
    """Export a finished run's model in format `fmt` to `out` and write the sidecar ``<out>.json``.

    `out` defaults to the format's file in the run folder (`DEFAULT_NAME`) and must end in
    the format's suffix (`SUFFIXES`). Returns the sidecar's content plus ``"file"`` (the
    exported file's path) and ``"paths"`` (every file written besides the sidecar).
    `semi_structured`: format ``state_dict`` of a 2:4 run with its pruned Linear weights as
    `torch.sparse.to_sparse_semi_structured` tensors in float16 (CUDA sm80+; module docstring).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":  # before any work
        _check_onnx_modules()
    if fmt == "safetensors" and importlib.util.find_spec("safetensors") is None:
        raise ValueError("format safetensors needs the safetensors package: pip install safetensors")
    path = _out_path(run_dir, fmt, out)
    run = _load(run_dir)
    model, input_shape, summary, cfg = run.model, run.input_shape, run.summary, run.cfg
    semi: dict[str, Any] = {}
    if semi_structured:  # every refusal before anything is written
        _check_semi_structured_run(fmt, cfg)
        convert, kept_dense = check_semi_structured(model, run.mask)
        missing = semi_structured_support()
        if missing:
            raise ValueError(f"--semi-structured needs a CUDA device of compute capability 8.0+ (Ampere or newer) "
                             f"for torch.sparse.to_sparse_semi_structured: {missing}")  # fmt: skip
        semi = {"semi_structured": convert, "kept_dense": kept_dense,
                "dtype": str(SEMI_STRUCTURED_DTYPE).removeprefix("torch.")}  # fmt: skip
    channel = slims(cfg.prune.granularity)
    mio = run_io(cfg)
    example = _example(mio)
    note = ""
    check = ""
    why = ""
    sizes: dict[str, int] = {}
    files = [path]
    with torch.no_grad():
        if fmt == "pt2":
            dynamic, why = _export_pt2(model, mio, example, path)
        elif fmt == "onnx":
            dynamic, files, check, why = _export_onnx(model, mio, example, path)
        elif fmt == "sparse":
            save_sparse(model, path)
            dense = path.with_name(f".{path.name}.dense")  # measured, then removed
            sizes["dense_bytes"] = save_dense(model, dense)
            dense.unlink()
            dynamic = True
        elif semi:
            _save_semi_structured(model, semi["semi_structured"], path)
            dynamic = True
        else:  # state_dict / safetensors: the dense weights, zeros where pruned
            save_dense(model, path)
            dynamic = True
    listed = [{"name": f.name, "bytes": f.stat().st_size} for f in files]
    total = sum(f["bytes"] for f in listed)
    if fmt == "sparse" and total >= sizes["dense_bytes"]:
        why = ("a slim channel network has no zeros to compress" if channel
               else "too few zeros: a CSR entry takes 8 bytes against 4 dense")  # fmt: skip
        note = (f"the sparse file ({total} bytes) is not smaller than the dense weights ({sizes['dense_bytes']} "
                f"bytes): {why}; use --format safetensors or state_dict")  # fmt: skip
    _, outputs = shape_of(cfg.data.name, cfg.data.image_size)
    widths = layer_widths(model)
    model_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg.model).items()}
    sidecar: dict[str, Any] = {
        "format": fmt,
        "files": listed,
        "bytes": total,
        **sizes,
        "input_shape": list(input_shape),
        "input_dtype": str(mio.example.dtype).removeprefix("torch."),
        "outputs": outputs,
        "dynamic_batch": dynamic,
        "example_batch": EXAMPLE_BATCH,
        "model": model_cfg,
        "layer_widths": widths,
        "data": cfg.data.name,
        "granularity": cfg.prune.granularity,
        "pattern": cfg.prune.pattern,
        "method": summary.get("method"),
        "sparsity": summary.get("sparsity_actual", summary.get("sparsity_target")),
        "seed": summary.get("seed"),
        "efficiency": summary.get("efficiency"),
        "torch": torch.__version__,
        "run": str(run_dir),
        **semi,
    }
    if channel:
        sidecar["speedup_target"] = summary.get("speedup_target")
        sidecar["model"] = {**model_cfg, **_slim_widths(model_cfg, run.dense_layer_widths, widths)}
    if why:  # why the batch dimension could not be dynamic
        sidecar["static_batch_reason"] = why
    if check:
        sidecar["check"] = check
    if note:
        sidecar["note"] = note
    save_json(sidecar, path.with_name(path.name + ".json"))
    return {**sidecar, "file": str(path), "paths": [str(f) for f in files]}


def _slim_widths(model_cfg: dict[str, Any], dense: dict[str, int], slim: dict[str, int]) -> dict[str, Any]:
    """The config's ``widths`` as the slim network has them, where they are its hidden layers' output channels.

    ``model.widths`` are the hidden widths of ``mlp`` and the conv channels of ``cnn1d`` /
    ``cnn2d``: the prunable layers' output channels but the last layer's. Where the dense
    network's layers show exactly the config's widths, they are replaced by the slim ones
    (``dense_widths`` keeps the config's); otherwise ``layer_widths`` alone describes it.
    """
    widths = list(model_cfg.get("widths") or ())
    hidden = list(dense.values())[:-1]
    if not widths or hidden != widths or list(dense) != list(slim):
        return {}
    return {"widths": list(slim.values())[:-1], "dense_widths": widths}


__all__ = ["DEFAULT_NAME", "FORMATS", "SEMI_STRUCTURED_PATTERN", "SUFFIXES", "TOKEN_DATA", "LoadedRun",
           "check_semi_structured", "export_run", "layer_widths", "load_finished_model", "load_run", "run_io",
           "semi_structured_support"]  # fmt: skip
