"""On a GPU, the values inside tensor arguments (eps / alpha / eta, labels, median positions) are
checked by device-side asserts in the kernels: no host sync, so the step loops stay
capturable. Such an assert ends the process's CUDA context, so each case runs in a subprocess
and the test reads what it reported. (On the CPU and in the emulator the same checks are
tested in-process: tests/test_op_argument_checks.py, tests/test_op_values.py.)"""
import subprocess
import sys
import textwrap

import pytest

CASES = {
    "pgd_step_ eps": ("""
        x = torch.rand(4, 8, device="cuda"); g = torch.randn_like(x)
        eps = torch.tensor([0.1, -0.1, 0.1, 0.1], device="cuda")
        torch.ops.fastrobust.pgd_step_(x, x.clone(), g, eps, torch.tensor([0.01], device="cuda"), None, None,
                                       "linf", 0.0, 1.0, False)
        """, "eps must be finite and >= 0"),
    "apgd_step_ eta": ("""
        x = torch.rand(4, 8, device="cuda"); g = torch.randn_like(x)
        eta = torch.tensor([float("nan")], device="cuda")
        torch.ops.fastrobust.apgd_step_(x, x.clone(), x.clone(), g, eta, torch.tensor([0.1], device="cuda"), 0.75,
                                        "l2", 0.0, 1.0)
        """, "eta must be finite and >= 0"),
    "margin_loss labels": ("""
        logits = torch.randn(3, 5, device="cuda")
        torch.ops.fastrobust.margin_loss(logits, torch.tensor([0, 5, 1], device="cuda"), None, "dlr", float("inf"))
        """, "labels and targets must be class indices"),
    "median backward positions": ("""
        arg = torch.full((1, 1, 3, 3), 9, dtype=torch.uint8, device="cuda")
        torch.ops.fastrobust._median3x3_backward(torch.ones(1, 1, 3, 3, device="cuda"), arg)
        """, "arg must hold window positions"),
}


@pytest.mark.cuda
@pytest.mark.parametrize("case", sorted(CASES))
def test_device_side_assert_fires(case):
    body, message = CASES[case]
    script = "import torch, fastrobust\n" + textwrap.dedent(body) + "torch.cuda.synchronize()\nprint('no assert')\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "no assert" not in output, output
    assert "device-side assert" in output, output
    assert message in output, output  # the kernel's own message, printed by the failing thread
