"""The commands that run under torchrun (fastrobust.cli.ranks): every option of `fastrobust eval`
and `fastrobust detect` passes torchrun's own parser, which takes the whole command line and
refuses an abbreviation of several of its options, as --n is (--points spells it)."""
import pytest

from fastrobust.cli import build_parser


@pytest.mark.parametrize("command", ["eval", "detect"])
def test_every_option_passes_torchruns_parser(command):
    from torch.distributed.run import get_args_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    flags = [f for a in sub._actions for f in a.option_strings if f != "--n"]
    assert "--points" in flags and "--distributed" in flags
    for flag in flags:
        args = get_args_parser().parse_args(["--nproc_per_node", "2", "-m", f"fastrobust.{command}", "ckpt", flag, "1"])
        assert args.training_script_args == ["ckpt", flag, "1"], flag
    # and --n itself is what torchrun refuses
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--nproc_per_node", "2", "-m", f"fastrobust.{command}", "ckpt", "--n", "1"])
