"""Kernel count and GPU time of one captured training step (CUDA only).

    python benchmarks/profile_step.py --model sdm [--compile on|off]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sdmvae_cli.nets import ModelConfig, build_model  # noqa: E402
from sdmvae_cli.train import Stepper, make_optimizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sdm")
    ap.add_argument("--compile", default="on", help="on (loss and Adam), loss, off")
    ap.add_argument("--steps", type=int, default=32)
    a = ap.parse_args()
    dev = torch.device("cuda")
    model = build_model(ModelConfig(model=a.model)).to(dev)
    opt = make_optimizer(model, 1e-4, dev, capturable=True, compiled=a.compile == "on")
    data = torch.rand(100_000, 513, device=dev) * 10
    st = Stepper(model, opt, data, 128, dev, compile_loss=a.compile in ("on", "loss"), compile_opt=a.compile == "on")
    idx = torch.randint(0, data.shape[0], (a.steps + 3, 128), device=dev)
    st.capture(a.steps, idx[:3])
    for _ in range(5):
        st.replay(idx[3:])
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(4):
            st.replay(idx[3:])
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    n_steps = 4 * a.steps
    print(f"{a.model} compile={a.compile}: {len(ev) / n_steps:.1f} kernels/step, "
          f"{sum(e.device_time for e in ev) / n_steps:.1f} us GPU busy/step")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):
        st.replay(idx[3:])
    end.record()
    torch.cuda.synchronize()
    print(f"wall per step: {start.elapsed_time(end) * 1000 / (50 * a.steps):.1f} us")


if __name__ == "__main__":
    main()
