# FrameWire server images.
#
#   docker build -t framewire .                  # NVIDIA CUDA (default target: cuda)
#   docker build --target cpu -t framewire:cpu .  # CPU only (echo app, CPU demos, CI)
#
#   docker run --gpus all -p 8000:8000 -v framewire-data:/var/lib/framewire --stop-timeout 40 framewire
#
# Every server option is a FRAMEWIRE_* variable (README, Configuration); the entrypoint is
# `framewire`, so `docker run IMAGE keys create --admin` manages keys in the same volume.
# Give `docker stop` more time than FRAMEWIRE_SHUTDOWN_TIMEOUT_S (30 s) so a drain can finish.

ARG TORCH_VERSION=2.13.0
# The PyTorch wheel index matching the base image's CUDA (cu128: CUDA 12.8).
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu

# -- the demo page's one npm dependency (served from node_modules, no build step) ------------
FROM node:22-bookworm-slim AS web
WORKDIR /web
COPY demo_web/package.json demo_web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

# -- the project's files, shared by both targets ----------------------------------------------
FROM scratch AS source
COPY pyproject.toml README.md /app/
COPY requirements /app/requirements
COPY framewire /app/framewire
COPY demo_web /app/demo_web
COPY --from=web /web/node_modules /app/demo_web/node_modules

# -- CUDA ---------------------------------------------------------------------------------------
# CPython 3.11, the lock's interpreter; torch's CUDA wheels bring the CUDA runtime libraries and
# the NVIDIA container toolkit the driver, so no CUDA base image is needed.
FROM python:3.11-slim-bookworm AS cuda
ARG TORCH_VERSION
ARG TORCH_INDEX_CUDA
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/opt/venv/bin:$PATH
# Triton builds a small launcher with the C compiler and Python's headers when it first runs.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 framewire \
    && useradd --system --create-home --home-dir /var/lib/framewire --uid 10001 --gid 10001 framewire
# torch first, from the CUDA wheel index: as a dependency of the engine extra pip would pick another build.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_CUDA}"
COPY --from=source /app /app
# Everything else exactly as locked (requirements/serve.txt), then the project itself.
RUN pip install --no-cache-dir --require-hashes --no-deps -r /app/requirements/serve.txt \
    && pip install --no-cache-dir --no-deps --no-build-isolation /app \
    && pip check
ENV FRAMEWIRE_HOST=0.0.0.0 \
    FRAMEWIRE_PORT=8000 \
    FRAMEWIRE_DATA_DIR=/var/lib/framewire \
    FRAMEWIRE_DEMO_DIR=/app/demo_web \
    FRAMEWIRE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/framewire
VOLUME ["/var/lib/framewire"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 CMD ["framewire", "health", "--ready"]
ENTRYPOINT ["framewire"]
CMD ["serve"]

# -- CPU ----------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS cpu
ARG TORCH_VERSION
ARG TORCH_INDEX_CPU
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 framewire \
    && useradd --system --create-home --home-dir /var/lib/framewire --uid 10001 --gid 10001 framewire
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_CPU}"
COPY --from=source /app /app
RUN pip install --no-cache-dir --require-hashes --no-deps -r /app/requirements/serve.txt \
    && pip install --no-cache-dir --no-deps --no-build-isolation /app \
    && pip check
ENV FRAMEWIRE_HOST=0.0.0.0 \
    FRAMEWIRE_PORT=8000 \
    FRAMEWIRE_DATA_DIR=/var/lib/framewire \
    FRAMEWIRE_DEMO_DIR=/app/demo_web \
    FRAMEWIRE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/framewire
VOLUME ["/var/lib/framewire"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["framewire", "health", "--ready"]
ENTRYPOINT ["framewire"]
CMD ["serve"]

# The last stage is what a plain `docker build .` produces: the CUDA image.
FROM cuda AS default
