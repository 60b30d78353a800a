# energy-collector: the collector daemon with its HTTP API (`energy-collector run`).
# Build:  docker build -t energy-collector .
# Run:    docker compose up   (docker-compose.yml: PostgreSQL, Mosquitto, the collector)
# The schema is applied at start (MIGRATE_ON_START=true); with MIGRATE_ON_START=false run
# `docker run --rm --env-file ... energy-collector migrate` before a new version starts.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/energy-collector
WORKDIR /src
COPY pyproject.toml README.md ./
COPY collector ./collector
COPY api ./api
COPY sql ./sql
# Wheels exist for every dependency on linux/amd64 and arm64: no compiler needed.
RUN /opt/energy-collector/bin/pip install --no-compile . \
 && /opt/energy-collector/bin/python -m compileall -q /opt/energy-collector/lib

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin collector
COPY --from=build /opt/energy-collector /opt/energy-collector
# The shipped payload mappings: SOURCES_FILE=/opt/energy-collector/sources/tasmota.toml, say.
COPY deploy/sources /opt/energy-collector/sources
ENV PATH=/opt/energy-collector/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json
# An empty working directory: no .env is read unless one is mounted here on purpose.
WORKDIR /home/collector
USER 10001:10001
# 8000: the HTTP API and dashboard; 9000: OCPP chargers, when OCPP_LISTEN=0.0.0.0:9000.
EXPOSE 8000 9000
# Ready means: database reachable, writer keeping up (GET /health answers 200).
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 \
    CMD ["energy-collector", "health", "--timeout", "5"]
# SIGTERM: stop taking messages, flush, acknowledge, exit 0 (SHUTDOWN_TIMEOUT_S, 10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["energy-collector"]
CMD ["run"]
