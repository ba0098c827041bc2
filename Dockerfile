# The engine image: one image for the `atp` command (topics, flow, serve, ...).
# The base is pinned by tag only: pin it by digest where a registry is reachable (README "Production").
FROM python:3.11-slim-trixie

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The locked dependencies first (every file checked against its hash) so that code edits do not
# reinstall them; setuptools, the build backend, is in the lock too, so the build fetches nothing.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY connectors ./connectors
# A numeric user (no name lookup needed by the runtime or by Kubernetes' runAsNonRoot) that owns
# only the state directory; the installed code stays root's and read-only to it.
RUN pip install --no-deps --no-build-isolation . \
 && groupadd --system --gid 10001 atp \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/atp --no-create-home atp \
 && mkdir -p /var/lib/atp/recovery \
 && chown -R 10001:10001 /var/lib/atp

USER 10001:10001
WORKDIR /var/lib/atp
CMD ["atp", "--help"]
