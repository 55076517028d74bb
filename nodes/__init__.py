"""ComfyUI node classes (V1 API). Each module exports NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS."""
from . import build_nodes, edit_nodes, eval_nodes, excite_nodes, loader_nodes, map_nodes, steering_nodes, sweep_nodes

NODE_MODULES = (loader_nodes, steering_nodes, edit_nodes, map_nodes, excite_nodes, eval_nodes, sweep_nodes, build_nodes)

NODE_CLASS_MAPPINGS = {k: v for m in NODE_MODULES for k, v in m.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {k: v for m in NODE_MODULES for k, v in m.NODE_DISPLAY_NAME_MAPPINGS.items()}
