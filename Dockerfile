# Container image of intune-apple-token-exporter.
#
#   docker build -t intune-apple-token-exporter .
#   docker run --rm -p 9893:9893 intune-apple-token-exporter --demo
#
# The config is read from /etc/intune-apple-token-exporter/config.yaml (mount it there); secrets
# come from files mounted beside it (client_secret_file, client_certificate_file,
# federated_token_file) and never from the image. The image runs as UID/GID 65532 with a
# read-only root filesystem: the one thing written at run time is the kept state (each tenant's
# last good records, --storage.path), in the volume /var/lib/intune-apple-token-exporter.

# Pinned base; bump deliberately (and rebuild) for Python security releases.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies get a layer of their own, keyed on pyproject.toml only, so that a change to the
# source does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install --requirement /tmp/requirements.txt

COPY README.md ./
COPY exporter/ ./exporter/
# --no-deps: everything needed is in the layer above; byte-compile now, since the root
# filesystem is read-only at run time.
RUN pip install --no-deps . \
 && python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="intune-apple-token-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the Apple ADE/DEP tokens, VPP tokens and APNs certificate of Microsoft Intune tenants" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.documentation="README.md in the source repository (section Deploying)"

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Kept state across restarts (--storage.path): owned by the user the image runs as.
RUN mkdir -p /var/lib/intune-apple-token-exporter \
 && chown 65532:65532 /var/lib/intune-apple-token-exporter \
 && chmod 0700 /var/lib/intune-apple-token-exporter
VOLUME ["/var/lib/intune-apple-token-exporter"]

# Numeric, so that Kubernetes' runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532
WORKDIR /
EXPOSE 9893

# Python instead of curl, which the image does not carry. HEALTHCHECK_URL overrides the target
# (e.g. https://127.0.0.1:9893/-/healthy with a web config that enables TLS; the certificate is
# not verified for this local liveness check). /-/healthy never asks for basic auth.
ENV HEALTHCHECK_URL=http://127.0.0.1:9893/-/healthy
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, ssl, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context()).status == 200 else 1)"]

ENTRYPOINT ["intune-apple-token-exporter"]
CMD ["--config.file=/etc/intune-apple-token-exporter/config.yaml", "--storage.path=/var/lib/intune-apple-token-exporter"]
