# CUDA PyTorch base; scalegan is installed on top and keeps the image's torch build.
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    WANDB_DIR=/workspace/runs

WORKDIR /workspace
COPY pyproject.toml README.md ./
COPY scalegan ./scalegan
COPY kernels ./kernels
COPY configs ./configs
COPY launch ./launch
# DeepSpeed builds no ops at install (scalegan passes torch's Adam to it); Triton comes with torch
RUN DS_BUILD_OPS=0 pip install --no-cache-dir -e '.[deepspeed]' \
    && python -c "import scalegan.kernels, scalegan.ops, scalegan.cli"

CMD ["scalegan", "--help"]
