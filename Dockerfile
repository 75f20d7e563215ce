# Two images, one per compose service:
#   docker build --target api .       the HTTP service: CPU-only torch (PyTorch's CPU wheels, far smaller)
#   docker build --target trainer .   the trainer: PyPI's torch, which carries CUDA (and also runs on CPU)
# A plain `docker build .` builds the last stage, the API; BuildKit (Docker's default builder)
# builds only the stages a target needs.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# What `pip install .` needs, and nothing else (.dockerignore keeps the context to the same).
FROM scratch AS source
COPY pyproject.toml README.md LICENSE /src/
COPY core /src/core
COPY training /src/training
COPY index /src/index
COPY service /src/service
COPY simclr /src/simclr

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 SIMCLR_HOME=/artifacts
WORKDIR /app
RUN useradd --create-home --uid 1000 simclr && mkdir -p /artifacts && chown simclr /artifacts

FROM base AS trainer
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
RUN pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}
COPY --from=source /src ./
RUN pip install . && rm -rf /app/*
USER simclr
VOLUME ["/artifacts"]
CMD ["simclr", "refresh", "--home", "/artifacts"]

FROM base AS api
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ENV SIMCLR_HOST=0.0.0.0 SIMCLR_PORT=8000
RUN pip install torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION} --index-url https://download.pytorch.org/whl/cpu
COPY --from=source /src ./
RUN pip install '.[qdrant]' && rm -rf /app/*  # qdrant-client: SIMCLR_INDEX_BACKEND=qdrant (compose's qdrant profile)
USER simclr
VOLUME ["/artifacts"]
EXPOSE 8000
CMD ["simclr", "serve"]
