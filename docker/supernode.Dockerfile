# A medsilo hospital or evaluator SuperNode: Flower's official SuperNode image with the
# project installed, so the ClientApp runs inside this container ("subprocess" isolation).
#
#   docker build -f docker/supernode.Dockerfile -t medsilo/supernode:0.1.0 .    (from the repo root)
#
# The Python 3.11 variant of the image: medsilo requires Python 3.11 (pyproject.toml). The
# Flower version of the tag must equal the flwr that medsilo pins (tests/deploy checks it).
FROM flwr/supernode:1.42.0-py3.11-ubuntu24.04

# torch comes from PyTorch's CPU wheel index by default. For a CUDA build, pass
# --build-arg TORCH_INDEX= (PyPI's default Linux wheels, CUDA included) or a CUDA index
# of PyTorch's that carries the pinned torch, e.g. https://download.pytorch.org/whl/cu128.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

WORKDIR /app/medsilo
COPY --chown=app:app pyproject.toml README.md ./
COPY --chown=app:app common ./common
COPY --chown=app:app client ./client
COPY --chown=app:app server ./server
# The entrypoint keeps its executable bit from the repository.
COPY docker/supernode-entrypoint.sh /usr/local/bin/medsilo-supernode

# The image already holds flwr at the tag's version. As in Flower's own Docker guides, the
# flwr[simulation] requirement is dropped, so pip neither replaces flwr nor installs Ray.
RUN sed -i 's/.*flwr\[simulation\].*//' pyproject.toml \
    && python -m pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} . \
    && python -I -c "import client.app"

# Mount point of the node's state (DP ledger); a named volume inherits this owner.
USER 0
RUN install -d -o app -g app -m 0700 /state
# Flower's non-root user "app" (uid 49999), as in the base image.
USER 49999
WORKDIR /app

# `medsilo node check` on the --node-config, then flower-supernode with the same arguments.
ENTRYPOINT ["medsilo-supernode"]
