# One image for every tokenspool process (api, worker, fake-llm); compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# dependencies first, pinned by constraints.txt, so code edits reuse this layer
COPY pyproject.toml README.md constraints.txt ./
COPY tokenspool ./tokenspool
COPY api ./api
COPY worker ./worker
RUN pip install -c constraints.txt .

# models files for compose (TOKENSPOOL_MODELS_FILE=/app/deploy/models.compose.yaml)
COPY deploy ./deploy

RUN useradd --create-home --uid 10001 tokenspool
USER tokenspool

EXPOSE 8000
CMD ["tokenspool", "api", "--host", "0.0.0.0", "--port", "8000"]
