# The consortium's SuperLink, with the project installed: in "subprocess" isolation the
# ServerApp runs inside this container, so it needs medsilo and its dependencies.
#
#   docker build -f docker/superlink.Dockerfile -t medsilo/superlink:0.1.0 .    (from the repo root)
#
# Why not FROM flwr/superlink: Flower publishes flwr/superlink only for its newest Python
# (3.13, Alpine or Ubuntu), and medsilo requires Python 3.11 (torch, tenseal). flwr/base is
# the official image flwr/superlink is built on; its Python 3.11 Ubuntu variant holds the same
# flwr with the flower-superlink command. The Flower version of the tag must equal the flwr
# that medsilo pins (tests/deploy checks it).
FROM flwr/base:1.42.0-py3.11-ubuntu24.04

# torch comes from PyTorch's CPU wheel index by default (the server never trains).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

WORKDIR /app/medsilo
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app common ./common
COPY --chown=app:app client ./client
COPY --chown=app:app server ./server

# The image already holds flwr at the tag's version. As in Flower's own Docker guides, the
# flwr[simulation] requirement is dropped, so pip neither replaces flwr nor installs Ray.
RUN sed -i 's/.*flwr\[simulation\].*//' pyproject.toml \
    && python -m pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} . \
    && python -I -c "import server.app"

# Mount point of the SuperLink's state (superlink.db, run directories); a named volume
# inherits this owner.
USER 0
RUN install -d -o app -g app -m 0700 /state
# Flower's non-root user "app" (uid 49999), as in the base image.
USER 49999
WORKDIR /app

EXPOSE 9092
ENTRYPOINT ["flower-superlink"]
