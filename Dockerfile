# syntax=docker/dockerfile:1.7
# snowtrap stream processes (`snowtrap worker`, `snowtrap topics`, later the matcher).
#
#   CPU:  docker build -t ghcr.io/snowtrap/snowtrap:0.1.0 .
#   GPU:  docker build --build-arg VARIANT=gpu -t ghcr.io/snowtrap/snowtrap:0.1.0-gpu .
#   With a model bundle baked in at /opt/snowtrap/bundle (bundle.source=image in the chart):
#         docker build --target bundled --build-context bundle=runs/demo/bundle \
#           -t ghcr.io/snowtrap/snowtrap:0.1.0 .
#   Without one (the default target), mount the bundle at /opt/snowtrap/bundle (a PVC or
#   the chart's init container) or point SNOWTRAP_BUNDLE_DIR elsewhere.
#
# The image installs `.[serve]`: the stream processes' dependencies (Faust, Kafka, ONNX Runtime,
# OpenCV, Prometheus client), none of the training stack (no torch, torchvision, onnxscript,
# scikit-image): the venv `pip install '.[serve]'` builds is 418 MB (`du -sh`, Python 3.11,
# CPU), so expect the CPU image at about 420 MB of venv over the python:3.11-slim base. The
# training stack it leaves out measures 4.7 GB in the dev venv (torch 1.2 GB, its nvidia-* and
# triton wheels 3.4 GB, scipy, scikit-*, onnx). tests/test_architecture.py holds the serving
# entry points to never importing torch.
#
# The GPU variant swaps onnxruntime for onnxruntime-gpu with its CUDA 12 / cuDNN wheels; the
# NVIDIA driver comes from the node (NVIDIA container toolkit / GPU operator).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached until pyproject.toml changes), then the code.
COPY pyproject.toml README.md ./
# (every package pyproject lists must exist for this dependency-only install)
RUN for p in snowtrap snowtrap/core snowtrap/demo snowtrap/devtools models models/reid \
        training training/sources training/synthetic stream stream/contracts stream/export \
        stream/live stream/matcher stream/runtime stream/serve stream/uploader stream/worker; do \
        mkdir -p $p && touch $p/__init__.py; done \
    && pip install ".[serve]" \
    && pip uninstall -y snowtrap
COPY snowtrap ./snowtrap
COPY models ./models
COPY training ./training
COPY stream ./stream
RUN pip install --no-deps . \
    && if [ "$VARIANT" = "gpu" ]; then \
         pip uninstall -y onnxruntime \
         && pip install "onnxruntime-gpu[cuda,cudnn]==1.31.1"; \
       elif [ "$VARIANT" != "cpu" ]; then \
         echo "VARIANT must be cpu or gpu, not $VARIANT" >&2; exit 1; \
       fi \
    && python -c "import onnxruntime, snowtrap.stream.worker.cli; print(onnxruntime.get_available_providers())"

FROM ${PYTHON_IMAGE} AS runtime-base
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="snowtrap" \
      org.opencontainers.image.description="snowtrap camera-trap stream processors" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.snowtrap.variant="${VARIANT}"
# libgomp: OpenMP runtime of the ONNX Runtime and OpenCV wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 snowtrap \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin snowtrap \
    && mkdir -p /opt/snowtrap/bundle
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SNOWTRAP_BUNDLE_DIR=/opt/snowtrap/bundle \
    SNOWTRAP_METRICS_PORT=9400
# GPU: let the dynamic loader find the CUDA / cuDNN libraries of the nvidia-* wheels (their
# layout differs between CUDA majors: nvidia/cu13/lib, nvidia/cudnn/lib...).
RUN if [ "$VARIANT" = "gpu" ]; then \
      find /opt/venv/lib -path '*/site-packages/nvidia/*' -name 'lib' -type d \
        > /etc/ld.so.conf.d/snowtrap-nvidia-wheels.conf \
      && ldconfig; \
    fi
WORKDIR /tmp
USER 10001:10001
EXPOSE 9400
# tini forwards SIGTERM to the worker (it stops its agents and commits what was acknowledged).
ENTRYPOINT ["/usr/bin/tini", "--", "snowtrap"]
CMD ["worker"]

# A bundle baked in: --target bundled --build-context bundle=DIR (a directory with manifest.json).
FROM runtime-base AS bundled
COPY --from=bundle --chown=0:0 . /opt/snowtrap/bundle/

# The default target: no bundle inside; mount one at /opt/snowtrap/bundle.
FROM runtime-base AS runtime
