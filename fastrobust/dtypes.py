"""The name a torch dtype goes by in records, reports and the cost model ("float32",
"bfloat16"): torch's own name without the module prefix."""
import torch


def torch_dtype_name(dtype: torch.dtype) -> str:
    """"float32" for torch.float32."""
    return str(dtype).removeprefix("torch.")
