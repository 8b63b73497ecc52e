# spangraph serve: query API, live streams, OTLP/HTTP receiver (POST /v1/traces) and web UI
# on port 8000. Configure it with environment variables (see README "Configuration"):
# NEO4J_URI / NEO4J_USER / NEO4J_PASSWORD (or SPANGRAPH_GRAPH_URL), SPANGRAPH_REDIS_URL,
# SPANGRAPH_JAEGER_URL, SPANGRAPH_API_TOKEN. docker-compose.yml runs it with Neo4j,
# Redis, Jaeger and an OpenTelemetry Collector.
#
#   docker build -t spangraph .
#   docker run -p 8000:8000 -e NEO4J_URI=neo4j://host:7687 -e NEO4J_PASSWORD=... \
#     -e SPANGRAPH_REDIS_URL=redis://host:6379/0 spangraph

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# a C compiler for the optional extension (the span copies, JSON and Cypher text in C:
# the ingest's mapping is about twice as fast); the final image keeps only the result
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/spangraph
ENV PATH=/opt/spangraph/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY src ./src
RUN pip install --upgrade pip \
 && pip install ".[server,neo4j,otlp]"

FROM python:3.12-slim
ENV PATH=/opt/spangraph/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPANGRAPH_HOME=/home/spangraph/data
RUN groupadd --system --gid 10001 spangraph \
 && useradd --system --uid 10001 --gid spangraph --create-home --home-dir /home/spangraph \
      --shell /usr/sbin/nologin spangraph
COPY --from=build /opt/spangraph /opt/spangraph
USER spangraph
WORKDIR /home/spangraph
EXPOSE 8000
# /api/health answers 200 when the graph store and Redis answer (503 otherwise); it needs
# the bearer token when SPANGRAPH_API_TOKEN is set.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; t = os.environ.get('SPANGRAPH_API_TOKEN'); r = urllib.request.Request('http://127.0.0.1:8000/api/health', headers={'Authorization': 'Bearer ' + t} if t else {}); urllib.request.urlopen(r, timeout=4)"]
CMD ["spangraph", "serve", "--host", "0.0.0.0", "--port", "8000"]
