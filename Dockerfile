# pegasus-gsg summarization server.
#
#   docker build -t pegasus-gsg-server .                       # CPU torch (default)
#   bash scripts/build_image.sh      # the same without Docker or a registry (buildah, local base)
#   docker build -t pegasus-gsg-server:cu128 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm -p 127.0.0.1:50051:50051 -v /path/to/model:/model:ro pegasus-gsg-server
#
# The model directory (a save_pretrained dir: config, weights, tokenizer, generation config) is
# mounted read-only at /model. Inside the container the server must bind 0.0.0.0 to be reachable
# through the published port; publish it on 127.0.0.1 (as above) unless the host should expose it.
# Extra server flags go after the image name, e.g. `... pegasus-gsg-server --max-batch-size 32`.
# TLS / auth: mount the files and pass --tls-cert/--tls-key, --auth-token-file (or set
# PEGASUS_GSG_AUTH_TOKEN).

# Any Debian-like image with python3 (3.10+) and its venv module; scripts/build_image.sh passes a
# locally built bookworm base where no registry is reachable.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
# CPU wheels by default; a CUDA index (e.g. .../whl/cu128) gives a GPU build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A directory of wheels mounted at build time (`buildah bud --volume /opt/wheels:/wheels:ro
# --build-arg TORCH_WHEEL_DIR=/wheels`) to take torch from instead; its dependencies then come
# from PyPI. Empty: TORCH_INDEX_URL.
ARG TORCH_WHEEL_DIR=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
# glibc's default per-thread arenas grew a CTranslate2 server's RSS 13.8% in a 300 s soak; two
# arenas held it to +0.5% (docs/serving.md).
ENV MALLOC_ARENA_MAX=2
# Everything installs into one venv, so the image is the same on either base (Debian's python3
# refuses system-wide pip installs) and `python`, `pip` and `pegasus-gsg` resolve to it.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin pegasus

WORKDIR /app
# torch first, pinned, from the chosen index: letting pip resolve a bare `torch` from PyPI
# would pull a multi-GB CUDA build into a CPU image.
COPY requirements.lock ./
RUN if [ -n "${TORCH_WHEEL_DIR}" ]; then \
        pip install "torch==${TORCH_VERSION}" --find-links "${TORCH_WHEEL_DIR}" \
            --constraint requirements.lock; \
    else \
        pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
    fi

# What a (non-editable) `pip install .` needs: the metadata, the library, the server (installed
# as pegasus_gsg.server), and the proto and configs shipped inside the package.
COPY pyproject.toml README.md ./
COPY pegasus_gsg ./pegasus_gsg
COPY server ./server
COPY proto ./proto
COPY configs ./configs
# A regular install with the CTranslate2 backend (--backend ctranslate2), at the versions CI
# tested; the source copy is then removed, so the server runs from site-packages as installed.
# pegasus_gsg.serving.protos finds the installed summarizer.proto and compiles it at import time
# (grpcio-tools is a runtime dependency).
RUN pip install ".[ct2]" --constraint requirements.lock \
    && rm -rf /app/pegasus_gsg /app/server /app/proto /app/configs /app/build /app/*.egg-info \
    && cd / \
    && python -c "from pegasus_gsg.serving.protos import pb2; print(pb2.DESCRIPTOR.package)" \
    && pegasus-gsg serve --help > /dev/null

USER pegasus
VOLUME ["/model"]
EXPOSE 50051

# The standard gRPC health service (no auth token needed); NOT_SERVING while loading/draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "pegasus_gsg.server.healthcheck", "--target", "127.0.0.1:50051"]

# SIGTERM (docker stop) drains: NOT_SERVING, then in-flight requests get --grace seconds
# (8 s fits docker stop's default 10 s before SIGKILL; raise both together: docker stop -t).
STOPSIGNAL SIGTERM
ENTRYPOINT ["pegasus-gsg", "serve", "--model", "/model", "--host", "0.0.0.0", "--port", "50051"]
CMD ["--grace", "8"]
