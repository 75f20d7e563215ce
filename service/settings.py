"""Service configuration: environment variables ``SIMCLR_*``, overridable in code or on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service reads from its environment, in one validated place."""

    model_config = SettingsConfigDict(env_prefix="SIMCLR_", extra="ignore")

    home: Path = Field(Path("artifacts"), description="artifact home holding models/ and CURRENT")
    host: str = "127.0.0.1"  # loopback by default: exposing the service is a deliberate choice
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(10_000_000, gt=0, description="largest accepted upload, in bytes")
    max_image_pixels: int = Field(40_000_000, gt=0, description="largest accepted image, width x height")
    workers: int = Field(1, ge=1, description="server processes sharing the port, each with its own model copy and batcher")
    torch_threads: int | None = Field(None, gt=0, description="torch/FAISS threads per process; None: the cores / workers")
    # NoDecode: accept "a,b" as well as JSON '["a","b"]' in SIMCLR_CORS_ORIGINS.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="empty = CORS closed")
    reload_interval: float = Field(2.0, ge=0, description="seconds between checks of CURRENT for a new model; 0 = never")
    max_batch_size: int = Field(32, ge=1, description="most images in one forward pass (dynamic batching)")
    neighbor_table_max_items: int = Field(
        20_000, ge=0, description="indexes up to this size get every item's neighbours precomputed at load; 0 = never"
    )
    max_batch_wait_ms: float = Field(5.0, ge=0, description="how long a batch waits for more requests to join, in ms")
    # Bearer token for /admin/*; unset (or empty) = admin endpoints disabled (403).
    admin_token: SecretStr | None = Field(None, description="bearer token of /admin/*; unset = admin disabled")
    # Bearer token of the collection's writes (POST /items, DELETE /items/{id}); unset (or empty) = writes disabled (403).
    write_token: SecretStr | None = Field(None, description="bearer token of POST/DELETE /items; unset = writes disabled")
    # Where the collection lives: FAISS in each process (the embedded default), or a Qdrant cluster
    # that every replica shares (service.qdrant_collection; pip install 'simclr-service[qdrant]').
    index_backend: Literal["faiss", "qdrant"] = Field("faiss", description="faiss (in process) or qdrant (shared by replicas)")
    qdrant_url: str | None = Field(None, description="the Qdrant server, e.g. http://qdrant:6333 (index_backend=qdrant)")
    qdrant_path: Path | None = Field(None, description="embedded Qdrant in this folder instead of a server: one process only")
    qdrant_api_key: SecretStr | None = Field(None, description="Qdrant's API key, if it has one")
    qdrant_collection: str = Field("simclr", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the alias and name prefix of its collections")
    log_level: str = "info"
    # FastAPI's native OpenTelemetry (spans, metrics and logs to the global OTel providers).
    # Off by default: /metrics is this service's telemetry, and FastAPI checks for configured
    # providers on every request (~4% of the event loop's samples on /classify, py-spy).
    opentelemetry: bool = Field(False, description="FastAPI's native OpenTelemetry to the global providers")

    def as_environment(self) -> dict[str, str]:
        """These settings as ``SIMCLR_*`` variables: how worker processes, which read their own environment, get them."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"SIMCLR_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
        return env

    @model_validator(mode="after")
    def _qdrant_needs_a_place(self) -> Settings:
        if self.index_backend == "qdrant":
            if (self.qdrant_url is None) == (self.qdrant_path is None):
                raise ValueError("index_backend=qdrant needs one of SIMCLR_QDRANT_URL (a server) or SIMCLR_QDRANT_PATH (embedded)")
            if self.qdrant_path is not None and self.workers > 1:
                raise ValueError("embedded Qdrant (SIMCLR_QDRANT_PATH) is one process's: use SIMCLR_QDRANT_URL with --workers > 1")
        return self

    @field_validator("admin_token", "write_token", "qdrant_api_key", "qdrant_url", "qdrant_path", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: Any) -> Any:
        # SIMCLR_ADMIN_TOKEN="" (compose's ${SIMCLR_ADMIN_TOKEN:-}) must disable admin, not accept an empty token;
        # the same for SIMCLR_WRITE_TOKEN and writes, and an empty SIMCLR_QDRANT_URL means none.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value
