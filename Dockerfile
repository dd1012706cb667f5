# syntax=docker/dockerfile:1
# relaygate container image.
#
#   docker build -t relaygate .
#   docker run --rm -p 8000:8000 -e OPENAI_API_KEY relaygate
#
# Two stages: the first builds wheels for relaygate and every dependency, the second installs
# them into a clean slim image that has no build tools, no sources and no secrets. Configuration
# comes only from the environment at run time (PORT, DATABASE_URL, REDIS_URL, RELAYGATE_CONFIG,
# ADMIN_SECRET, <P>_API_KEY, ...). Without DATABASE_URL the SQLite ledger lives in the volume
# /app/relaygate-data. docker-compose.yml runs two replicas with Redis and Postgres.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels relaygate \
    && groupadd --system --gid 10001 relaygate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin relaygate \
    && mkdir -p /app/relaygate-data /app/keys \
    && chown relaygate:relaygate /app/relaygate-data /app/keys
WORKDIR /app
# The default SQLite database (sqlite:///relaygate-data/relaygate.db, relative to /app).
# /app/keys holds keys/forwarder_api_keys.txt for `relaygate generate-key`: mount it to keep it.
VOLUME ["/app/relaygate-data"]
USER 10001:10001
EXPOSE 8000
# No curl in the slim image: python's urllib, with proxies off so that HTTP(S)_PROXY (meant for
# the upstream calls) never catches the probe. A non-2xx answer raises, which fails the check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
# `relaygate serve` reads PORT itself (Render, Heroku and the like set it); only the bind
# address has to be given, since the default is 127.0.0.1.
CMD ["relaygate", "serve", "--host", "0.0.0.0"]
