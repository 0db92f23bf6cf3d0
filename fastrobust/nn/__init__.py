from .cifs import CIFS, cifs_loss
from .normalize import Normalize
from .sparta import Sparta, swap_relu
