#!/bin/bash
# scalegan under torchrun, without Slurm. Arguments pass through to `scalegan train`.
#
#   every GPU of this machine:          launch/torchrun.sh CONFIG [key=value ...]
#   N processes (e.g. on CPU):          NPROC=2 launch/torchrun.sh CONFIG ...
#   several machines, run on each one:  NNODES=2 RDZV_ENDPOINT=10.0.0.1:29400 \
#                                           launch/torchrun.sh CONFIG ...
#
# Several machines meet at a c10d rendezvous on RDZV_ENDPOINT (an address of the first machine);
# the machine owning that address hosts it. When a machine's hostname does not resolve to the
# address the others should reach it at, set LOCAL_ADDR to that address, and GLOO_SOCKET_IFNAME /
# NCCL_SOCKET_IFNAME to its interface.
set -eu
PYTHON=${SCALEGAN_PYTHON:-python}
if [ -z "${NPROC:-}" ]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | wc -l)
    [ "$NPROC" -ge 1 ] || NPROC=1
fi
NNODES=${NNODES:-1}
if [ "$NNODES" -gt 1 ]; then
    : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port, an address of the first machine}"
    RDZV=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT"
          --rdzv-id="${RDZV_ID:-scalegan}")
    if hostname -I | tr ' ' '\n' | grep -qxF "${RDZV_ENDPOINT%:*}"; then
        RDZV+=(--rdzv-conf=is_host=1)  # this machine owns the endpoint: it hosts the rendezvous
    fi
    if [ -n "${LOCAL_ADDR:-}" ]; then
        RDZV+=(--local-addr="$LOCAL_ADDR")
    fi
else
    RDZV=(--standalone)
fi
exec "$PYTHON" -m torch.distributed.run "${RDZV[@]}" --nproc-per-node="$NPROC" \
    -m scalegan.cli train "$@"
