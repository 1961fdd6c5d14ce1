# syntax=docker/dockerfile:1
# dicom-gateway appliance image.
#
#   docker build -t dicom-gateway .
#   docker run -d --name gw -p 11112:11112 -p 8080:8080 -v gw-data:/data \
#     --stop-timeout 120 dicom-gateway
#
# Configuration: /etc/dicom-gateway/config.yaml (a copy of config.yaml) and rules in
# /etc/dicom-gateway/rules; mount your own over them, or override single keys with
# -e GATEWAY__SECTION__KEY=value (e.g. -e GATEWAY__DIMSE__ALLOWED_CALLING_AETS='["CT1"]').
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini as PID 1: forwards SIGTERM to the supervisor (which stops its children in order)
# and reaps orphans. The supervisor must not be PID 1 itself: its children treat a
# parent PID of 1 as "the supervisor is gone" and stop at once.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

# The same steps as on a machine: scripts/install.sh finds this image's Python 3.11 with a
# working venv (so installs no apt package), creates .venv and pip-installs the gateway.
WORKDIR /opt/dicom-gateway
COPY pyproject.toml README.md LICENSE ./
COPY scripts/install.sh scripts/install.sh
COPY gateway gateway
RUN bash scripts/install.sh \
 && rm -rf build dicom_gateway.egg-info \
 && .venv/bin/dicom-gateway --version

RUN groupadd --system gateway \
 && useradd --system --gid gateway --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin gateway \
 && mkdir -p /data /etc/dicom-gateway \
 && chown gateway:gateway /data \
 && chmod 0750 /data

COPY config.yaml /etc/dicom-gateway/config.yaml
COPY rules /etc/dicom-gateway/rules

ENV PATH=/opt/dicom-gateway/.venv/bin:$PATH \
    GATEWAY_CONFIG=/etc/dicom-gateway/config.yaml \
    GATEWAY__DATA_DIR=/data \
    GATEWAY__RULES_DIR=/etc/dicom-gateway/rules

# Spool, queue database and archive. Declared after the chown so a new named volume
# starts out owned by the gateway user.
VOLUME /data
WORKDIR /data
USER gateway

EXPOSE 11112 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY__HTTP__PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM: listeners stop first, then workers finish their batch, then HTTP (up to ~90 s;
# give `docker stop` that long with --stop-timeout 120, or docker compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["dicom-gateway", "run", "-c", "/etc/dicom-gateway/config.yaml"]
