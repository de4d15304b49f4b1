# ragtune on CPU, with the default models baked in at build time; serves as a non-root user.
#   docker build -t ragtune .
#   docker run -p 8000:8000 -v ragtune-data:/data \
#     -e RAGTUNE_API_KEYS='[{"name": "me", "key": "a-long-random-secret", "scopes": ["admin"]}]' ragtune
# It serves on 0.0.0.0, so API keys are required: without them it refuses to start.
# To avoid a CUDA build of torch, point pip at PyTorch's CPU wheel index:
#   docker build --build-arg TORCH_PIP_ARGS="--index-url <PyTorch CPU wheel index URL>" -t ragtune .
FROM python:3.11-slim

ARG TORCH_PIP_ARGS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    RAGTUNE_DATA_DIR=/data \
    RAGTUNE_MODELS_DIR=/opt/ragtune/models \
    RAGTUNE_HOST=0.0.0.0 \
    PATH=/app/.venv/bin:$PATH

RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 ragtune \
    && mkdir -p /data /opt/ragtune/models && chown ragtune:ragtune /data /opt/ragtune/models

WORKDIR /app
COPY pyproject.toml Makefile README.md ./
COPY service ./service
COPY retriever ./retriever
COPY tuner ./tuner
COPY eval ./eval
RUN make setup EXTRAS=[pg] TORCH_PIP_ARGS="$TORCH_PIP_ARGS"

USER ragtune
# Bake the models: resolve both offline and convert the generator's GGUF to safetensors now.
RUN ragtune models --load

VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"
CMD ["ragtune", "serve", "--host", "0.0.0.0", "--port", "8000"]
