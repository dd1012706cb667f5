"""OpenAI, and any `type: openai` server with its own base_url (vLLM, llama.cpp, LM Studio)."""

from relaygate.providers._openai_compat import OpenAICompatProvider
from relaygate.providers.base import ProviderMeta

META = ProviderMeta(
    kind="openai",
    default_base_url="https://api.openai.com/v1",
    model_prefixes=("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "whisper-1"),
)


class Provider(OpenAICompatProvider):
    meta = META
