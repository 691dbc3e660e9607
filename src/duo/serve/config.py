"""What ``duo serve`` is started with, and the per-request limits it enforces."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Server settings; :meth:`validate` raises one-line errors naming the field."""

    checkpoint: str | None = None  # a run directory, .ckpt, model folder or hf:<repo>
    host: str = "127.0.0.1"  # the address to listen on (0.0.0.0: every interface)
    port: int = 8000  # 0 = any free port
    device: str = "auto"  # auto | cpu | cuda | cuda:<index>
    use_ema: bool = True  # the EMA weights when the checkpoint has them
    max_steps: int = 1024  # per request; steps above it -> 400
    max_samples: int = 8  # per request (n)
    max_length: int | None = None  # per request seq_len; None = the model's maximum length
    queue: int = 16  # requests admitted at once (queued + running + streaming); more -> 503
    batch_wait_ms: float = 5.0  # how long the worker collects identical requests before a run
    log_level: str = "warning"  # uvicorn's access/error log level
    threads: int | None = None  # torch CPU threads; None = torch's default (1 helps on a busy machine)

    def validate(self) -> "ServeConfig":
        for name, low in (("port", 0), ("max_steps", 1), ("max_samples", 1), ("queue", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if self.port > 65535:
            raise ValueError(f"port={self.port} must be in [0, 65535]")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads={self.threads!r} must be an integer >= 1 (or unset for torch's default)")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length={self.max_length!r} must be an integer >= 1 (or unset for the model's)")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"batch_wait_ms={self.batch_wait_ms!r} must lie in [0, 1000]")
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if self.log_level not in levels:
            raise ValueError(f"log_level={self.log_level!r} is unknown; valid levels: {', '.join(levels)}")
        return self
