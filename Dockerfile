# A migrate-node image:  docker build -t wasm-migrate:0.1.0 .
#   docker run -e MIGRATE_NODE_NAME=edge-1 -v /srv/edge-1/tls:/etc/migrate-node/tls:ro \
#              -v edge-1-data:/var/lib/migrate-node -p 7400:7400 wasm-migrate:0.1.0
# The TLS dir holds cert.pem, key.pem, ca.pem and data.key (mode 0600, owned by uid 10001).
FROM python:3.11-slim

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/migrate-node --create-home migrate-node

WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY snapshot ./snapshot
COPY nodes ./nodes
COPY migrate ./migrate
COPY workloads ./workloads
RUN pip install --no-cache-dir --constraint constraints.txt . && rm -rf /src

USER migrate-node
WORKDIR /var/lib/migrate-node
# Settings as environment variables (every --flag has one); flags given to `serve` win.
# Metrics listen on all of the container's addresses: the port is reachable only where
# it is published (docker -p) or inside the pod network; the metrics name tenants and peers.
ENV MIGRATE_NODE_LISTEN=0.0.0.0:7400 \
    MIGRATE_NODE_DATA_DIR=/var/lib/migrate-node \
    MIGRATE_NODE_TLS_DIR=/etc/migrate-node/tls \
    MIGRATE_NODE_METRICS_LISTEN=0.0.0.0:9400 \
    MIGRATE_NODE_METRICS_PUBLIC=true
EXPOSE 7400 9400
VOLUME /var/lib/migrate-node
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2)"]
# docker stop sends SIGTERM: the node checkpoints its workloads (default grace 10 s; docker waits 10 s,
# so run with --stop-timeout 30 for large workloads).
STOPSIGNAL SIGTERM
ENTRYPOINT ["migrate-node"]
CMD ["serve"]
