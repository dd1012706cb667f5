"""The names of the headers relaygate adds to its answers, in one place: the client's rate-limit
headers (SPEC §6) rendered from an admission's numbers, and the x-relaygate-* of proxied answers.
Nothing below http/ writes a header name of its own."""

from __future__ import annotations

from relaygate.state.records import Admission


def limit_headers(admission: Admission | None) -> dict[str, str]:
    """`x-ratelimit-*` for a client with an rpm and/or tpm limit; none for one without."""
    if admission is None:
        return {}
    out: dict[str, str] = {}
    if admission.rpm is not None:
        remaining = 0 if admission.refused == "requests" else admission.remaining_requests
        out["x-ratelimit-limit-requests"] = str(admission.rpm)
        out["x-ratelimit-remaining-requests"] = str(max(0, remaining))
        out["x-ratelimit-reset-requests"] = f"{max(0.0, admission.reset_requests_s):.0f}s"
    if admission.tpm is not None and admission.refused is None:
        out["x-ratelimit-limit-tokens"] = str(admission.tpm)
        out["x-ratelimit-remaining-tokens"] = str(max(0, admission.remaining_tokens))
    return out
