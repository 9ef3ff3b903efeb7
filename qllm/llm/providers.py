"""Chat models from a ``provider:model`` spec, through LangChain's standard interface.

``local`` (the built-in Qwen2.5-Coder-1.5B served on 127.0.0.1), ``openai:gpt-4o-mini``,
``deepseek:deepseek-reasoner``, ``anthropic:claude-sonnet-4-5``, ``ollama:qwen2.5-coder``, or any
OpenAI-compatible server with ``openai:MODEL`` plus a base URL. Every model is built by
``init_chat_model`` with the provider's client retries turned off: retries with backoff belong to the
graph (one policy, recorded in the trace), which needs to know which failures are worth retrying, so
:func:`is_transient` and :func:`provider_error` classify them here.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from langchain.chat_models import init_chat_model
from langchain_core.language_models import BaseChatModel

from qllm.llm import local

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
FATAL_STATUS = {
    400: "the provider refused the request",
    401: "bad or missing credentials",
    403: "the credentials are not allowed to use this model",
    404: "unknown model or endpoint",
    422: "the provider refused the request",
}


class ProviderError(RuntimeError):
    """A provider problem that retrying will not fix: bad credentials, unknown model, missing package."""


@dataclass(frozen=True)
class Provider:
    """How to reach one kind of provider."""

    langchain_provider: str
    """``model_provider`` for ``init_chat_model``."""
    package: str
    """The LangChain integration package it needs."""
    api_key_env: str | None
    """Environment variable holding the API key (``None``: no key needed)."""
    base_url: str | None = None
    """Endpoint, for OpenAI-compatible providers that are not OpenAI itself."""
    structured_output: bool = False
    """Whether it supports tool-calling structured output (otherwise JSON is extracted from text)."""
    max_concurrency: int = 4
    """How many requests to send at once."""


PROVIDERS: dict[str, Provider] = {
    "local": Provider("openai", "langchain-openai", None, max_concurrency=1),
    "openai": Provider("openai", "langchain-openai", "OPENAI_API_KEY", structured_output=True),
    "deepseek": Provider(
        "openai", "langchain-openai", "DEEPSEEK_API_KEY", base_url="https://api.deepseek.com"
    ),
    "anthropic": Provider("anthropic", "langchain-anthropic", "ANTHROPIC_API_KEY", structured_output=True),
    "ollama": Provider("ollama", "langchain-ollama", None, max_concurrency=1),
}


@dataclass(frozen=True)
class ModelSpec:
    """Which model plays a role, and where it is served."""

    provider: str
    model: str
    base_url: str | None = None
    """Overrides the provider's endpoint (any OpenAI-compatible server with ``openai``)."""

    @classmethod
    def parse(cls, text: str, base_url: str | None = None) -> ModelSpec:
        """``local``, ``PROVIDER:MODEL``; :class:`ProviderError` for an unknown provider."""
        provider, _, model = text.strip().partition(":")
        if provider == "local":
            return cls("local", model or local.MODEL_ALIAS, base_url)
        if provider not in PROVIDERS or not model:
            raise ProviderError(
                f"unknown model spec {text!r}: use `local` or PROVIDER:MODEL with PROVIDER one of "
                f"{', '.join(p for p in PROVIDERS if p != 'local')} (e.g. openai:gpt-4o-mini; add a base URL "
                "for any OpenAI-compatible server)"
            )
        return cls(provider, model, base_url)

    @property
    def info(self) -> Provider:
        return PROVIDERS[self.provider]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


def make_chat_model(spec: ModelSpec, temperature: float, max_tokens: int, timeout_s: float) -> BaseChatModel:
    """The LangChain chat model for ``spec``; starts the local server if ``spec`` is local and none runs."""
    info = spec.info
    if importlib.util.find_spec(info.package.replace("-", "_")) is None:
        raise ProviderError(
            f"provider {spec.provider!r} needs the package {info.package}: pip install {info.package}"
        )
    base_url = spec.base_url or info.base_url
    api_key = None
    if spec.provider == "local":
        base_url = base_url or _local_server_url()
        api_key = "not-needed"
    elif info.api_key_env:
        api_key = os.environ.get(info.api_key_env)
        if not api_key and spec.base_url is None:
            raise ProviderError(f"{spec}: set {info.api_key_env} to the provider's API key")
        api_key = api_key or "not-needed"  # a self-hosted OpenAI-compatible server usually needs none
    options: dict[str, object] = {"temperature": temperature, "timeout": timeout_s}
    if info.langchain_provider == "openai" and (spec.provider != "openai" or spec.base_url):
        # langchain-openai sends the limit as `max_completion_tokens`, which OpenAI-compatible servers such
        # as llama-cpp-python ignore: the local model then writes until its context is full (measured:
        # 6,815 tokens, 5 minutes, for one reply). They all read the classic `max_tokens` field.
        options["extra_body"] = {"max_tokens": max_tokens}
    else:
        options["max_tokens"] = max_tokens
    if info.langchain_provider in {"openai", "anthropic"}:
        options["max_retries"] = 0
    if base_url:
        options["base_url"] = base_url
    if api_key:
        options["api_key"] = api_key
    return init_chat_model(spec.model, model_provider=info.langchain_provider, **options)


def _local_server_url() -> str:
    try:
        return local.serve().base_url
    except local.LocalModelError as exc:
        raise ProviderError(f"the built-in local model is not available: {exc}") from None


def _status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """Timeouts, dropped connections, rate limits and server errors: worth retrying with backoff."""
    code = _status_code(exc)
    if code is not None:
        return code in TRANSIENT_STATUS
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        isinstance(exc, TimeoutError | ConnectionError)
        or names
        & {"APITimeoutError", "APIConnectionError", "TimeoutException", "NetworkError", "RemoteProtocolError"}
    )


def provider_error(exc: BaseException, spec: ModelSpec) -> ProviderError | None:
    """A clear :class:`ProviderError` for a failure that retrying will not fix, or ``None``."""
    code = _status_code(exc)
    if code in FATAL_STATUS:
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return ProviderError(f"{spec}: {FATAL_STATUS[code]} (HTTP {code}): {detail}")
    return None
