"""Thunder lane: prove state before spending compute on bounded MLX LoRA windows."""
import sys

__version__ = "0.1.0"

# fab (invoke) turns bytecode writing off for every run, so the lane's modules, which an editable
# install does not compile, would be compiled anew by every task (0.02-0.05 s of each): Python's own
# rule again for them (-B or PYTHONDONTWRITEBYTECODE still keep it off); ./bootstrap compiles them once
sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
