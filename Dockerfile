# syntax=docker/dockerfile:1
# kflow's image: `kflow operator` (the default command) and `kflow runner` (segment Pods).
# Teams build their workflow images FROM it (examples/Dockerfile).
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/kflow
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Bytecode is compiled now: the root filesystem is read-only at run time.
RUN /opt/kflow/bin/pip install --no-compile . \
    && /opt/kflow/bin/python -m compileall -q /opt/kflow

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kflow" \
      org.opencontainers.image.description="Durable workflows on Kubernetes, in Python" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 kflow \
    && useradd --system --uid 10001 --gid kflow --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin kflow
COPY --from=build /opt/kflow /opt/kflow
ENV PATH=/opt/kflow/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["kflow"]
CMD ["operator"]
