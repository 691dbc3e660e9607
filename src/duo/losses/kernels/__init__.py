"""Optional Triton kernels (used on CUDA when Triton is installed; PyTorch otherwise)."""
