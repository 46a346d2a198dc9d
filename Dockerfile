# tallygate: the gateway image for Cloud Run (or any container runtime).
#
#   gcloud builds submit --tag "$REGION-docker.pkg.dev/$PROJECT/litellm/litellm-proxy:$TAG" .
#   docker build -t tallygate . && docker run --rm -p 8080:8080 -e PROXY_GATEWAY_TOKEN=... tallygate
#
# No secret is baked in: OPENAI_API_KEY, PROXY_GATEWAY_TOKEN, PROXY_MASTER_KEY and PGPASSWORD
# come from the runtime (Secret Manager through --set-secrets on Cloud Run).
#
# The base image is pinned by digest (the multi-platform index of the Docker Official Image,
# as docker-library/repo-info records it under repos/python/remote/): a re-pushed tag cannot
# change what is built. The tag stays in front for the reader; the digest decides. To bump it,
# see docs/deployment.md, "Reproducible images".
FROM python:3.11.16-slim-trixie@sha256:be1575ed968de893bd54f4c56315ff7c4736ce522c1bca08fd521731aafc0d76

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The app's own user, fixed IDs, no login shell, no home directory to write to.
RUN groupadd --system --gid 10001 tallygate \
 && useradd --system --uid 10001 --gid tallygate --no-create-home --shell /usr/sbin/nologin tallygate

# Dependencies first, from the pinned lock file, so code changes reuse this layer. Every file
# pip downloads must match a sha256 in the lock file (--require-hashes): a re-uploaded or
# tampered release fails the build instead of entering the image.
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock \
 && rm /tmp/requirements.lock

# Then the package itself, without resolving anything again.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && rm -rf /src/build /src/src/*.egg-info

# Writable place for the SQLite ledger when no Postgres is configured (ephemeral in a
# container; Cloud Run deployments use Cloud SQL through PGHOST).
RUN mkdir -p /data && chown tallygate:tallygate /data
ENV TALLYGATE_SQLITE_PATH=/data/tallygate.db
WORKDIR /data

USER 10001:10001

# Cloud Run sends traffic to $PORT (8080 by default); the gateway reads $PORT itself.
EXPOSE 8080

# Exec form: the server is PID 1 and receives SIGTERM directly (10 s to drain on Cloud Run).
CMD ["tallygate", "serve", "--host", "0.0.0.0"]
