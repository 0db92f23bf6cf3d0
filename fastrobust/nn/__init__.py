from .cifs import CIFS, cifs_loss
from .nlm import DenoisingBlock, NonLocalMeans, add_denoising_blocks
from .normalize import Normalize
from .ode import ConcatODEFunc, ODEBlock, TisODEFunc, cuda_graphed
from .sparta import Sparta, swap_relu
