"""Training throughput with and without recording: ResNet-20 on synthetic CIFAR-shaped data.

Runs the library's own training loop (`causalprune.train.fit`) on a split held on the
device, with on-device pad-crop + flip augmentation, bf16 autocast and channels_last (as
the GPU configs in configs/paper do), for a fixed number of steps: once with plain steps,
once with every step recorded (same-batch ΔL, bf16 storage). Prints images/s of both and
the overhead ratio recorded/plain, then a JSON line. Each mode is timed twice (after a
warm-up epoch) and the faster repeat is kept; one host sync per timed epoch.

    python benchmarks/gpu_check.py                 # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --steps 20   # the same code path on a CPU
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from causalprune import TrajectoryRecorder
from causalprune.data.vision import crop_flip
from causalprune.models import create_model
from causalprune.train import fit, loss_function


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(device: torch.device, steps: int, batch: int, record: bool, amp: bool, channels_last: bool,
               compile_model: bool) -> float:  # fmt: skip
    """Images per second of `steps` training steps of ResNet-20 (best of two timed epochs)."""
    torch.manual_seed(0)
    x = torch.randn(steps * batch, 3, 32, 32, device=device)  # synthetic CIFAR-shaped split on the device
    y = torch.randint(0, 10, (steps * batch,), device=device)
    model = create_model("resnet20").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model.compile()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    best = float("inf")
    for repeat in range(3):  # repeat 0 is the warm-up (allocations, cuDNN autotuning, compilation)
        step = None
        if record:
            rec = TrajectoryRecorder(model, loss_function("classification"), opt, dtype=torch.bfloat16, capacity=steps)
            step = rec.step
        _sync(device)
        t0 = time.perf_counter()
        fit(model, opt, (x, y), epochs=1, batch_size=batch, task="classification", seed=repeat, step=step,
            augment=crop_flip, amp=amp)  # fmt: skip  (fit syncs once per epoch for its loss)
        _sync(device)
        if repeat:
            best = min(best, time.perf_counter() - t0)
        if record:
            assert rec.rows == steps, f"recorded {rec.rows} of {steps} steps"
            rec.close()
    return steps * batch / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (Module.compile)")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --device cpu to exercise the code path)")
    opts = {"amp": not a.no_amp, "channels_last": not a.no_channels_last, "compile_model": a.compile}
    plain = throughput(device, a.steps, a.batch, record=False, **opts)
    recorded = throughput(device, a.steps, a.batch, record=True, **opts)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}: ResNet-20, batch {a.batch}, {a.steps} steps, {opts}")
    print(f"  plain    {plain:10.0f} images/s")
    print(f"  recorded {recorded:10.0f} images/s   overhead ratio (recorded time / plain time) {plain / recorded:.3f}")
    # Unrounded rates: the ratio can be recomputed from them exactly (only the ratio is rounded, to 1e-4).
    print(json.dumps({"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "steps": a.steps, "batch": a.batch, **opts, "plain_images_per_s": plain,
                      "recorded_images_per_s": recorded, "overhead_ratio": round(plain / recorded, 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
