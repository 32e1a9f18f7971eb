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
RUN pip install --no-cache-dir -e . && python -c "import scalegan.kernels, scalegan.cli"

CMD ["scalegan", "--help"]
