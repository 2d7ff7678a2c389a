# One image for the Dockyard operator and the registry it deploys:
#   operator:  dockyard operator run -A
#   registry:  dockyard registry serve --config /etc/dockyard/config.yaml
# Build: make image (docker build -t dockyard:dev .)

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# A virtualenv at the same path in both stages; runtime dependencies only (no test/lint extras).
RUN python -m venv /opt/dockyard \
 && /opt/dockyard/bin/pip install . \
 && /opt/dockyard/bin/pip uninstall --yes pip setuptools \
 && python -m compileall -q /opt/dockyard

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/dockyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/dockyard /opt/dockyard
# A numeric user, so `runAsNonRoot: true` can verify it without an /etc/passwd entry.
USER 65532:65532
# 5000: the registry; 8080: the operator's liveness endpoint (/healthz).
EXPOSE 5000 8080
ENTRYPOINT ["dockyard"]
CMD ["--help"]
