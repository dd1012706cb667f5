"""Groq: OpenAI-compatible; rejects `name` on messages and a few sampling fields."""

from relaygate.providers._openai_compat import EMBEDDINGS, OpenAICompatProvider
from relaygate.providers.base import ProviderMeta

META = ProviderMeta(kind="groq", default_base_url="https://api.groq.com/openai/v1")


class Provider(OpenAICompatProvider):
    meta = META
    drop_params = frozenset({"logprobs", "logit_bias", "top_logprobs"})
    strip_message_names = True
    # Whisper (protocols.md §6), and embeddings as every OpenAI-compatible upstream
    native_doors = {**EMBEDDINGS, "audio_transcriptions": "_transcribe"}
    transcription_model = "whisper-large-v3"
