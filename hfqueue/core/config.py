"""One settings object for the whole project, read from ``HFQ_*`` environment variables.

Every knob lives here, typed, defaulted and documented; nothing else reads ``os.environ``. Relations
between settings that would only fail hours later (a visibility timeout shorter than the chunk time
limit re-delivers every long chunk) are checked when the settings are built.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from hfqueue.errors import ConfigError

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
CACHE_FOLDER = ".hfq-cache"  # the result cache's folder under the output root, unless HFQ_CACHE_DIR names one
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|KB|MB|GB)")  # what accelerate reads (lower-case b: bits)


class Settings(BaseSettings):
    """hfqueue's settings; each field is read from ``HFQ_<FIELD NAME>`` (e.g. ``HFQ_CHUNK_SIZE``).

    >>> Settings(chunk_size=500).chunk_size
    500
    """

    # env_ignore_empty: a variable set to "" (compose and Kubernetes pass them) counts as unset.
    model_config = SettingsConfigDict(env_prefix="HFQ_", extra="forbid", validate_default=True, env_ignore_empty=True)

    # repr=False: the URLs may carry a password, and settings end up in tracebacks and test reports.
    broker_url: str | None = Field(
        None,
        repr=False,
        description="Redis URL for the Celery broker and the job records: redis://, or rediss:// (TLS) with "
        "?ssl_cert_reqs=required and, for a private CA, &ssl_ca_certs=/path/ca.pem. "
        "Unset: a private redis-server is started under the state folder and reused.",
    )
    result_backend: str | None = Field(
        None, repr=False, description="Celery result backend URL. Unset: the broker URL."
    )
    state_dir: Path = Field(
        Path(".hfq"), description="Folder for local state: the embedded redis-server's data and address."
    )
    output_root: Path = Field(
        Path("results"),
        description="Every job writes under this folder; a job's output_dir must resolve inside it.",
    )
    input_roots: list[Path] = Field(
        [Path(".")],
        description="Folders jobs may read local datasets, data files and model folders from (a JSON list; "
        "paths are resolved, symlinks followed). Default: the working directory.",
    )
    output_urls: list[str] = Field(
        ["hub://", "hf://", "s3://", "gs://", "gcs://", "az://", "abfs://"],
        description="URL prefixes a job's `output` may start with (a JSON list), e.g. [\"hub://my-org/\"]; a local "
        "`output` path must lie under HFQ_OUTPUT_ROOT. Workers check it too.",
    )
    hub_shard_mb: float = Field(
        256, gt=0, description="Results published to the Hub or an fsspec URL are cut into Parquet shards of about "
        "this many megabytes."
    )
    hub_commit_files: int = Field(
        50, gt=0, description="Files per Hub commit when publishing results (each commit is one retry unit)."
    )
    queue: str = Field("hfq", min_length=1, description="Celery queue the chunk tasks go to.")
    chunk_size: int = Field(1000, gt=0, description="Rows per chunk task (a spec may override it).")
    max_inline_rows: int = Field(
        100_000, gt=0, description="Most rows a job may carry inline (`inputs=[...]`)."
    )
    max_batch_size: int = Field(64, gt=0, description="Most rows in one forward pass.")
    max_batch_tokens: int | None = Field(
        None, gt=0, description="Most padded tokens (rows x longest row) in one forward pass; unset: "
        "4096 on CPU (measured fastest, see Benchmarks), 16384 on CUDA."
    )
    max_length: int = Field(512, gt=0, description="Inputs are truncated to this many tokens at most (fewer when the "
                            "model's own limit is lower).")
    max_wait_ms: int = Field(
        5, ge=0, description="Request lane (`client.infer`, small jobs): most milliseconds a worker keeps "
        "gathering queued entries into one batch (it stops at once when none is waiting)."
    )
    request_batch_tokens: int | None = Field(
        None, gt=0, description="Request lane: padded-token budget of one forward pass; unset: 256 on "
        "CPU (measured best for gathered one-row requests, see Benchmarks), max_batch_tokens's default on CUDA."
    )
    small_job_rows: int = Field(
        64, ge=0, description="Jobs of at most this many inline rows go to the request lane instead of the chunk "
        "queue: workers run them together with `client.infer` requests and other small jobs for the same model, "
        "sharing forward passes (0: every job goes through the chunk queue)."
    )
    prefetch_batches: bool | None = Field(
        None, description="Pad the next batch and move it to the device while the model runs the current one; "
        "unset: on for CUDA, off on CPU (where the forward pass needs every core, see Benchmarks)."
    )
    coalesce_requests: bool = Field(
        True, description="Request lane entries (`client.infer`, small jobs) for the same model share forward "
        "passes (false: one at a time)."
    )
    model_cache_size: int = Field(
        2, gt=0, description="Models a worker process keeps resident (least recently used leaves first)."
    )
    device: str = Field(
        "auto", description="Device the worker runs models on: auto (CUDA when present), cpu, cuda, cuda:N."
    )
    dtype: Dtype = Field("auto", description="Precision: auto (bfloat16, else float16, on CUDA; float32 on CPU), "
                         "float32, float16 or bfloat16.")
    engine: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch", description="Engine a job's model body runs on when the job names none and its task has it: torch, "
                             "onnx (ONNX Runtime, float32) or onnx-int8 (needs hfqueue[onnx]).")
    engine_cache: Path = Field(Path("~/.cache/hfqueue/engines"), description="Folder of exported engine artifacts, "
                               "shared by the workers of a host (built once per model, revision and engine).")
    reuse: bool = Field(True, description="Jobs that do not say (`reuse`) look their rows up in the result cache "
                        "and store new results there: rows run before with the same model, revision, options, "
                        "precision and engine are copied, not computed.")
    cache_dir: Path | None = Field(None, description="Folder of the result cache, shared by the workers of a host or "
                                   "volume. Unset: .hfq-cache under HFQ_OUTPUT_ROOT.")
    cache_max_gb: float = Field(20.0, gt=0, description="Bound on the result cache's size; least recently used "
                                "results are pruned past it.")
    device_map: Literal["auto"] | None = Field(
        None, description="auto: load each model with accelerate's device_map='auto', spread over every GPU the worker "
        "sees and CPU memory (models larger than one GPU); such a worker owns all its GPUs, so not with `hfq worker "
        "--gpus`. Unset: each model on HFQ_DEVICE."
    )
    max_memory: dict[str, str] | None = Field(
        None, description="With HFQ_DEVICE_MAP=auto: most memory each device may hold, a JSON object of GPU index or "
        "'cpu' -> size, e.g. {\"0\": \"70GiB\", \"1\": \"70GiB\", \"cpu\": \"200GiB\"}; unset: what each device has "
        "free."
    )
    adapter_cache_size: int = Field(
        8, gt=0, description="PEFT adapters a worker keeps applied to each resident model (least recently used leave "
        "first)."
    )
    chunk_soft_time_limit: int = Field(
        3000, gt=0, description="Seconds before a chunk is asked to stop (SoftTimeLimitExceeded)."
    )
    chunk_time_limit: int = Field(
        3600, gt=0, description="Seconds before a chunk's process is killed (hard limit)."
    )
    visibility_timeout: int = Field(
        7200,
        gt=0,
        description="Seconds before Redis re-delivers an unacknowledged chunk; must exceed chunk_time_limit.",
    )
    max_attempts: int = Field(
        3, gt=0, description="Times a chunk is started before it is marked failed."
    )
    job_ttl: int = Field(
        7 * 24 * 3600, gt=0, description="Seconds job records stay in Redis after their last update."
    )
    allow_remote_code: bool = Field(
        False, description="Let jobs ask for trust_remote_code=True (runs code shipped with a model)."
    )
    redis_socket_timeout: float = Field(
        30.0, gt=0, description="Seconds a Redis read or write may block before it is retried."
    )
    redis_health_check_interval: int = Field(
        25, ge=0, description="Seconds between pings on idle Redis connections (0 turns them off)."
    )
    log_level: str = Field("INFO", description="Log level of `hfq` commands and workers.")
    affinity_chunks: int = Field(
        2, ge=0, description="Chunks of a job sent straight to each live worker that already holds its model (counting "
        "what already waits for that worker); the rest go to the shared queue. 0 turns model affinity off."
    )
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Port each worker serves Prometheus metrics on (/metrics); give each worker "
        "on one host its own; 0 turns metrics off."
    )
    metrics_address: str = Field(
        "0.0.0.0", description="Address the worker's metrics endpoint listens on (127.0.0.1: this host only)."
    )
    api_address: str = Field("127.0.0.1", description="Address `hfq api` listens on (0.0.0.0: every interface).")
    api_port: int = Field(8000, gt=0, le=65535, description="Port `hfq api` listens on.")
    api_keys: dict[str, str] = Field(
        {}, description="`hfq api`'s API keys as a JSON object of name -> 'sha256:<hex>' hash "
        "(`hfq api-key NAME` makes one); what a key creates belongs to its name. Empty: the API refuses every call."
    )
    api_max_body_mb: float = Field(
        32, gt=0, description="Largest request body `hfq api` accepts, in megabytes (file uploads excepted); larger: 413."
    )
    api_max_upload_mb: float = Field(
        200, gt=0, description="Largest file `POST /v1/files` accepts, in megabytes (OpenAI's batch file limit); "
        "larger: 413. Uploads are streamed to disk."
    )
    api_files_dir: Path | None = Field(
        None, description="Where `hfq api` keeps uploaded files; unset: STATE_DIR/api-files. Give API replicas a "
        "shared folder."
    )
    flower_address: str = Field(
        "127.0.0.1", description="Address `hfq flower` listens on (0.0.0.0: every interface; basic auth stays on)."
    )
    flower_port: int = Field(5555, gt=0, le=65535, description="Port `hfq flower` listens on.")
    flower_user: str = Field("hfq", min_length=1, description="Flower's basic-auth user name.")
    flower_password: SecretStr | None = Field(
        None, description="Flower's basic-auth password; unset: one is generated on first use, kept in "
        "STATE_DIR/flower-password and printed once."
    )

    @field_validator("input_roots")
    @classmethod
    def _resolve_roots(cls, roots: list[Path]) -> list[Path]:
        # Resolved once, where the settings are built: "." means the directory the process started in.
        return [root.expanduser().resolve() for root in roots]

    @field_validator("api_keys")
    @classmethod
    def _hashed_keys(cls, hashes: dict[str, str]) -> dict[str, str]:
        from hfqueue.core.apikeys import check_hashes

        try:
            check_hashes(hashes)
        except ValueError as exc:
            raise ValueError(f"HFQ_API_KEYS: {exc}") from None
        return hashes

    @field_validator("max_memory")
    @classmethod
    def _memory_sizes(cls, limits: dict[str, str] | None) -> dict[str, str] | None:
        if limits is None:
            return None
        if not limits:
            raise ValueError("give at least one device, e.g. {\"0\": \"70GiB\", \"cpu\": \"200GiB\"}, or unset it")
        out = {}
        for key, size in limits.items():
            if not (key == "cpu" or key.isdigit()):
                raise ValueError(f"keys are GPU indexes (\"0\", \"1\", ...) or \"cpu\", got {key!r}")
            match = _SIZE.fullmatch(size.strip())
            if match is None:
                raise ValueError(f"the size of {key!r} must be a number with a unit among KiB, MiB, GiB, KB, MB, GB "
                                 f"(e.g. \"70GiB\"), got {size!r}")
            device = str(int(key)) if key.isdigit() else key
            if device in out:
                raise ValueError(f"GPU {device} is named twice")
            out[device] = match[1] + match[2]
        return out

    @model_validator(mode="after")
    def _check_relations(self) -> "Settings":
        if self.chunk_soft_time_limit >= self.chunk_time_limit:
            raise ValueError(
                f"HFQ_CHUNK_SOFT_TIME_LIMIT ({self.chunk_soft_time_limit} s) must be below "
                f"HFQ_CHUNK_TIME_LIMIT ({self.chunk_time_limit} s), so a chunk can save its work before it is killed"
            )
        if self.visibility_timeout <= self.chunk_time_limit:
            raise ValueError(
                f"HFQ_VISIBILITY_TIMEOUT ({self.visibility_timeout} s) must exceed HFQ_CHUNK_TIME_LIMIT "
                f"({self.chunk_time_limit} s): otherwise Redis hands a running chunk to a second worker"
            )
        if self.job_ttl <= self.visibility_timeout:
            raise ValueError(
                f"HFQ_JOB_TTL ({self.job_ttl} s) must exceed HFQ_VISIBILITY_TIMEOUT ({self.visibility_timeout} s): "
                "a job's record must outlive any delivery of its chunks, or they are skipped as unknown"
            )
        for name in ("broker_url", "result_backend"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"HFQ_{name.upper()} must be a redis://, rediss:// or unix:// URL, got {redact(url)!r}")
            if url is not None and url.startswith("rediss://") and "ssl_cert_reqs=" not in url:
                # kombu would fall back to not checking the certificate at all; Celery's result backend refuses
                raise ValueError(
                    f"HFQ_{name.upper()} ({redact(url)}) must say how to check the server's certificate: add "
                    "?ssl_cert_reqs=required, and &ssl_ca_certs=/path/to/ca.pem when a private CA signed it")
        if any(c in self.flower_user for c in ":,"):
            raise ValueError(f"HFQ_FLOWER_USER may not hold ':' or ',' (Flower splits on them), "
                             f"got {self.flower_user!r}")
        if self.flower_password is not None and "," in self.flower_password.get_secret_value():
            raise ValueError("HFQ_FLOWER_PASSWORD may not hold ',' (Flower splits its credentials on it)")
        if self.device != "auto" and not (self.device in ("cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ValueError(f"HFQ_DEVICE must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        self._check_device_map()
        return self

    def _check_device_map(self) -> None:
        if self.device_map is None:
            if self.max_memory is not None:
                raise ValueError("HFQ_MAX_MEMORY only applies with HFQ_DEVICE_MAP=auto: set both, or unset it")
            return
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"HFQ_DEVICE_MAP=auto spreads each model over every GPU the worker sees, which HFQ_DEVICE="
                             f"{self.device} contradicts: leave HFQ_DEVICE at auto (or cuda), and narrow the GPUs with "
                             "CUDA_VISIBLE_DEVICES or HFQ_MAX_MEMORY")
        gpus = [k for k in self.max_memory or {} if k != "cpu"]
        if self.device == "cpu" and (self.max_memory is None or gpus):
            # accelerate places weights on every GPU it sees unless max_memory leaves them out
            raise ValueError("HFQ_DEVICE=cpu with HFQ_DEVICE_MAP=auto needs HFQ_MAX_MEMORY naming only \"cpu\" (e.g. "
                             "{\"cpu\": \"200GiB\"}), or the weights would go to the GPUs; or leave HFQ_DEVICE at auto")

    def result_cache_dir(self) -> Path:
        """The result cache's folder: HFQ_CACHE_DIR, else ``.hfq-cache`` under the output root."""
        return (self.cache_dir or self.output_root / CACHE_FOLDER).expanduser()

    def batch_tokens(self, device: str) -> int:
        """``max_batch_tokens``, or the default for ``device`` when it is unset."""
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        return 16_384 if device.startswith("cuda") else 4_096

    def prefetch(self, device: str) -> bool:
        """``prefetch_batches``, or the default for ``device`` when it is unset."""
        return self.prefetch_batches if self.prefetch_batches is not None else device.startswith("cuda")

    def request_tokens(self, device: str) -> int:
        """``request_batch_tokens``, or the default for ``device`` when it is unset.

        Gathered requests are few rows of any length; on CPU a tight budget splits the long ones off
        instead of padding every short row to them.
        """
        if self.request_batch_tokens is not None:
            return self.request_batch_tokens
        return self.batch_tokens(device) if device.startswith("cuda") else 256


def redact(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` query parameter) replaced by ``***``.

    Use it wherever a Redis URL could reach a log, a message or an error.

    >>> redact("rediss://:s3cret@redis.internal:6380/0?ssl_cert_reqs=required")
    'rediss://:***@redis.internal:6380/0?ssl_cert_reqs=required'
    """
    url = re.sub(r"(://[^/:@]*:)[^/]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment plus ``overrides``; raise :class:`ConfigError` if invalid.

    The message names each bad variable and why, e.g.
    ``HFQ_CHUNK_SIZE: Input should be greater than 0 (got 0)``.
    """
    try:
        return Settings(**overrides)
    except SettingsError as exc:  # a list or object setting whose value is not JSON
        raise ConfigError(f"invalid hfqueue settings: {exc} (lists and objects are JSON, e.g. HFQ_INPUT_ROOTS="
                          "'[\"/data\"]')", value=overrides) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            where = f"HFQ_{field.upper()}: " if field else ""
            got = f" (got {redact(repr(err['input']))})" if field and "input" in err else ""
            problems.append(f"{where}{err['msg'].removeprefix('Value error, ')}{got}")
        raise ConfigError("invalid hfqueue settings:\n  " + "\n  ".join(problems), value=overrides) from None
