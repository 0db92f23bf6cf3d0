from .sparta import Sparta, swap_relu
