# One image for both compose services: the API (CPU is enough) and the trainer (GPU when reserved).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SIMCLR_HOME=/artifacts SIMCLR_HOST=0.0.0.0 SIMCLR_PORT=8000
WORKDIR /app

# PyPI's Linux torch wheels carry CUDA and also run on CPU. For a smaller CPU-only image:
#   docker compose build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=""
RUN pip install torch==2.14.1 torchvision==0.29.1 ${TORCH_INDEX:+--index-url $TORCH_INDEX}

COPY pyproject.toml README.md ./
COPY training ./training
COPY index ./index
COPY service ./service
RUN pip install .

RUN useradd --create-home --uid 1000 simclr && mkdir -p /artifacts && chown simclr /artifacts
USER simclr
VOLUME ["/artifacts"]
EXPOSE 8000
CMD ["simclr", "serve"]
