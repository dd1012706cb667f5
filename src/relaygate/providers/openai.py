"""OpenAI, and any `type: openai` server with its own base_url (vLLM, llama.cpp, LM Studio)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relaygate.providers._openai_compat import EMBEDDINGS, OpenAICompatProvider
from relaygate.providers.base import ProviderMeta

if TYPE_CHECKING:
    from relaygate.config.model import ProviderConfig

META = ProviderMeta(
    kind="openai",
    default_base_url="https://api.openai.com/v1",
    model_prefixes=("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "whisper-1"),
)


class Provider(OpenAICompatProvider):
    meta = META
    transcription_model = "whisper-1"  # /upload's model unless routing.audio_model names one

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        speaks = config.responses_api
        if speaks is None:
            speaks = self.base_url == META.default_base_url
        responses = {"openai_responses": "_responses_native"} if speaks else {}
        self.native_doors = {**EMBEDDINGS, **responses, "audio_transcriptions": "_transcribe"}
