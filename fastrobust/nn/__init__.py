from .normalize import Normalize
from .sparta import Sparta, swap_relu
