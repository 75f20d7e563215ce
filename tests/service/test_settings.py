"""Settings: the SIMCLR_* environment, overridable in code (what the command line gives)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().cors_origins == [] and Settings().max_upload_bytes == 10_000_000
    monkeypatch.setenv("SIMCLR_HOME", str(tmp_path))
    monkeypatch.setenv("SIMCLR_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("SIMCLR_TORCH_THREADS", "2")
    s = Settings()
    assert s.home == tmp_path and s.torch_threads == 2
    assert s.cors_origins == ["http://a.example", "http://b.example"]
    monkeypatch.setenv("SIMCLR_CORS_ORIGINS", '["http://c.example"]')
    assert Settings().cors_origins == ["http://c.example"]
    assert Settings(port=9000).port == 9000  # explicit values (the CLI's) win over the environment
    assert Settings().opentelemetry is False
    monkeypatch.setenv("SIMCLR_OPENTELEMETRY", "1")
    assert Settings().opentelemetry is True


def test_the_qdrant_backend_needs_exactly_one_place_and_embedded_mode_one_process(tmp_path: Path) -> None:
    assert Settings().index_backend == "faiss"
    assert Settings(index_backend="qdrant", qdrant_url="http://qdrant:6333", workers=4).qdrant_url == "http://qdrant:6333"
    assert Settings(index_backend="qdrant", qdrant_path=tmp_path).qdrant_path == tmp_path
    for bad, words in (({}, "SIMCLR_QDRANT_URL"), ({"qdrant_url": "", "qdrant_path": ""}, "SIMCLR_QDRANT_PATH"),
                       ({"qdrant_url": "http://q:6333", "qdrant_path": tmp_path}, "one of"),
                       ({"qdrant_path": tmp_path, "workers": 2}, "one process")):
        with pytest.raises(ValueError, match=words):
            Settings(index_backend="qdrant", **bad)
    with pytest.raises(ValueError):
        Settings(index_backend="milvus")
    assert Settings(qdrant_url="").qdrant_url is None  # compose's ${SIMCLR_QDRANT_URL:-} with the FAISS backend
