# The engine image: one image for the `atp` command (topics, flow, serve, ...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first so code edits do not reinstall them; the packages are copied afterwards.
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY connectors ./connectors
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /var/lib/atp atp \
 && mkdir -p /var/lib/atp/recovery \
 && chown -R atp /var/lib/atp

USER atp
WORKDIR /var/lib/atp
CMD ["atp", "--help"]
