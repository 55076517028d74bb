"""Run UI-format workflows (what the web UI saves, what example_workflows/ holds) on ComfyUI itself.

ui_to_api() converts a saved workflow to the API prompt the frontend would queue; run_prompt()
validates and executes that prompt with ComfyUI's own execution.PromptExecutor, in this process.
Used by the tests and by `scripts/start.sh --headless-demo`; nothing here is imported by the pack.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import uuid
from dataclasses import dataclass, field

log = logging.getLogger("scripts.demo.workflows")

# Nodes that exist only in the web UI and never reach the API prompt.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MODE_MUTED = 2  # LiteGraph "never"
MODE_BYPASS = 4
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = ("seed", "noise_seed")
CONTROL_WIDGET = "control_after_generate"
PACK_FOLDER = "comfyui-hrv"  # the pack's folder in custom_nodes/: ComfyUI serves its templates under this name
UPLOAD_KEYS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "upload")


class WorkflowError(ValueError):
    """The workflow cannot be converted or ComfyUI refused or failed to run it."""


# --- UI format -> API format ---------------------------------------------------------------

def is_widget(spec) -> bool:
    """True when the frontend draws this input as a widget (its value is in widgets_values)."""
    io_type = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(io_type, list) or io_type in WIDGET_TYPES


def widget_slots(node_def: dict) -> list[str | None]:
    """Names of a node's widgets_values entries in order; None marks a frontend-only value.

    The frontend creates widgets in input order (required, then optional) and puts a
    `control_after_generate` combo after seed-like INTs (and after any input that asks for one),
    and an upload button after combos with an upload flag.
    """
    inputs = node_def.get("input", {})
    order = node_def.get("input_order") or {k: list(v) for k, v in inputs.items()}
    slots = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs.get(section, {}).get(name)
            if spec is None or not is_widget(spec):
                continue
            slots.append(name)
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            control = options.get("control_after_generate")
            if control is None:
                control = spec[0] == "INT" and name in SEED_NAMES
            if control:
                slots.append(None)
            if any(options.get(k) for k in UPLOAD_KEYS):
                slots.append(None)
    return slots


def process_dynamic_prompt(text: str, rng: random.Random) -> str:
    """What the frontend does to `dynamicPrompts` strings: strip /* */ and // comments, pick one of {a|b|c}."""
    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    pos = 0

    def choice_block() -> str:
        nonlocal pos
        options, choice, depth = [], "", 0
        while pos < len(text):
            char = text[pos]
            pos += 1
            if char == "\\" and pos < len(text):
                choice += char + text[pos]
                pos += 1
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if depth == 0:
                    break
                depth -= 1
            elif char == "|" and depth == 0:
                options.append(choice)
                choice = ""
                continue
            choice += char
        options.append(choice)
        return process_dynamic_prompt(rng.choice(options), rng)

    out = ""
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\" and pos < len(text):
            out += char + text[pos]
            pos += 1
        elif char == "{":
            out += choice_block()
        else:
            out += char
    return re.sub(r"\\([{}])", r"\1", out)


def _links_by_id(workflow: dict) -> dict[int, tuple]:
    """link id -> (origin_id, origin_slot, target_id, target_slot, type); both saved link formats."""
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link.get("type"))
        else:
            links[link[0]] = tuple(link[1:6])
    return links


def ui_to_api(workflow: dict, node_defs: dict, rng: random.Random | None = None) -> dict:
    """Convert a UI-format workflow to the API prompt format the frontend queues.

    node_defs: /object_info as returned by the server or by object_info() in-process.
    rng: picks {a|b} choices in dynamic prompts (the frontend uses Math.random); default seeded 0.
    """
    if "nodes" not in workflow or "links" not in workflow:
        if all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
            raise WorkflowError("this is already an API-format prompt; pass it to run_prompt directly")
        raise WorkflowError("not a UI-format workflow: expected 'nodes' and 'links'")
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowError("the workflow contains subgraphs; unpack them in the ComfyUI editor and save again")
    rng = rng or random.Random(0)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = _links_by_id(workflow)

    def source_of(link_id, seen=()):
        """(node, slot) that really feeds this link after Reroutes and bypassed nodes; None if nothing does."""
        if link_id is None or link_id not in links:
            return None
        origin_id, origin_slot, _, _, link_type = links[link_id]
        origin = nodes.get(origin_id)
        if origin is None or origin_id in seen:
            return None
        if origin["type"] == "Reroute":
            return source_of(origin["inputs"][0].get("link"), seen + (origin_id,))
        if origin.get("mode") == MODE_BYPASS:
            # As the frontend: the input at the same slot if its type matches, else the first input that does.
            inputs = origin.get("inputs", [])
            for i in [origin_slot] + list(range(len(inputs))):
                if i < len(inputs) and inputs[i].get("type") == link_type and inputs[i].get("link") is not None:
                    return source_of(inputs[i]["link"], seen + (origin_id,))
            return None
        if origin.get("mode") == MODE_MUTED:
            return None
        return origin, origin_slot

    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n.get("order", 0)):
        class_type = node["type"]
        if class_type in FRONTEND_ONLY or node.get("mode") in (MODE_MUTED, MODE_BYPASS):
            continue
        if class_type not in node_defs:
            if "workflow>" in class_type or "workflow/" in class_type:
                raise WorkflowError(f"node #{node['id']} is a group node ({class_type}); convert it to nodes in the editor")
            raise WorkflowError(f"node #{node['id']} has type {class_type!r}, which this ComfyUI does not have: "
                                "install the custom node pack that provides it")
        node_def = node_defs[class_type]
        inputs = {}
        values = node.get("widgets_values") or []
        slots = widget_slots(node_def)
        if isinstance(values, dict):
            inputs.update({k: v for k, v in values.items() if k in slots})
        else:
            if len(values) < len([s for s in slots if s is not None]):
                expected = [name or "(frontend value)" for name in slots]
                raise WorkflowError(f"node #{node['id']} ({class_type}) has {len(values)} widget values, expected "
                                    f"{len(slots)} for {expected}: the node's inputs changed since the workflow was saved")
            for name, value in zip(slots, values):
                if name is not None:
                    inputs[name] = value
        specs = {**node_def.get("input", {}).get("required", {}), **node_def.get("input", {}).get("optional", {})}
        for name, value in list(inputs.items()):
            options = specs[name][1] if len(specs[name]) > 1 and isinstance(specs[name][1], dict) else {}
            if options.get("dynamicPrompts") and isinstance(value, str):
                inputs[name] = process_dynamic_prompt(value, rng)
        for socket in node.get("inputs", []):
            name = socket.get("widget", {}).get("name") or socket["name"]
            source = source_of(socket.get("link"))
            if source is None:
                if socket.get("link") is not None and not socket.get("widget"):
                    inputs.pop(name, None)
                continue
            origin, slot = source
            if origin["type"] == "PrimitiveNode":
                inputs[name] = (origin.get("widgets_values") or [None])[0]
            else:
                inputs[name] = [str(origin["id"]), slot]
        title = node.get("title") or node_def.get("display_name") or class_type
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}
    return prompt


# --- In-process ComfyUI ----------------------------------------------------------------------

_state = {"base_dir": None, "nodes_loaded": False, "executor": None}


def node_def_of(node_class) -> dict:
    """The /object_info entry of one node class (input, input_order, outputs), as the server builds it."""
    from comfy_api.internal import _ComfyNodeInternal
    if issubclass(node_class, _ComfyNodeInternal):
        return node_class.GET_NODE_INFO_V1()
    inputs = node_class.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": node_class.RETURN_TYPES, "output_name": getattr(node_class, "RETURN_NAMES", node_class.RETURN_TYPES),
            "category": getattr(node_class, "CATEGORY", "sd"), "description": getattr(node_class, "DESCRIPTION", "")}


def object_info() -> dict:
    """Node definitions of every node the in-process ComfyUI has loaded, keyed by class name."""
    import nodes
    return {name: node_def_of(cls) for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}


def make_base_dir(base_dir: str, pack_dir: str | None = None, pack_name: str = PACK_FOLDER) -> str:
    """A ComfyUI base directory (models/, custom_nodes/, input/, output/, user/) with this pack linked in."""
    from hrv.comfy_host import PACK_DIR
    for sub in ("custom_nodes", "models/checkpoints", "input", "output", "user", "temp"):
        os.makedirs(os.path.join(base_dir, sub), exist_ok=True)
    link = os.path.join(base_dir, "custom_nodes", pack_name)
    target = os.path.abspath(pack_dir or PACK_DIR)
    if os.path.islink(link) and os.readlink(link) != target:
        os.remove(link)
    if not os.path.lexists(link):
        os.symlink(target, link, target_is_directory=True)
    return base_dir


def use_base_dir(base_dir: str) -> None:
    """Point ComfyUI's folder_paths at base_dir, as `--base-directory` does at start-up."""
    import folder_paths
    old, new = os.path.abspath(folder_paths.base_path), os.path.abspath(base_dir)
    for paths, _extensions in folder_paths.folder_names_and_paths.values():
        paths[:] = [os.path.join(new, os.path.relpath(p, old)) if p.startswith(old + os.sep) else p for p in paths]
    folder_paths.base_path = new
    folder_paths.models_dir = os.path.join(new, "models")
    folder_paths.set_output_directory(os.path.join(new, "output"))
    folder_paths.set_input_directory(os.path.join(new, "input"))
    folder_paths.set_temp_directory(os.path.join(new, "temp"))
    folder_paths.set_user_directory(os.path.join(new, "user"))
    folder_paths.filename_list_cache.clear()


def start_comfyui(base_dir: str, cpu: bool = True) -> None:
    """Configure ComfyUI for base_dir and load every node once (built-in extras and custom_nodes/).

    cpu only counts before ComfyUI's model management is first imported in this process.
    """
    from hrv.comfy_host import use_comfyui
    use_comfyui(cpu=cpu)
    use_base_dir(base_dir)
    _state["base_dir"] = os.path.abspath(base_dir)
    if _state["nodes_loaded"]:
        return
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    _state["nodes_loaded"] = True
    log.info("ComfyUI loaded in-process: %d nodes, base directory %s", len(nodes.NODE_CLASS_MAPPINGS), base_dir)


class HeadlessServer:
    """The part of ComfyUI's PromptServer that the executor talks to; keeps its messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class RunResult:
    prompt_id: str
    outputs: dict  # node id -> UI output, as in ComfyUI's /history
    images: list[str] = field(default_factory=list)  # absolute paths of saved/preview images
    messages: list = field(default_factory=list)
    values: dict = field(default_factory=dict)  # node id -> its output values, one list per output slot


def _format_validation(error: dict, node_errors: dict) -> str:
    lines = [f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": ")]
    for node_id, info in node_errors.items():
        for e in info.get("errors", []):
            lines.append(f"  node #{node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def run_prompt(prompt: dict, extra_data: dict | None = None, return_nodes=(), fresh: bool = False) -> RunResult:
    """Validate and execute an API prompt with ComfyUI's own executor; raise WorkflowError with ComfyUI's message.

    Like the server, one executor serves the whole process and its cache skips nodes whose inputs did
    not change since the last prompt; fresh=True empties that cache first (every node runs again).
    return_nodes: ids of nodes whose output values (tensors, models...) to return in RunResult.values.
    """
    if _state["base_dir"] is None:
        raise WorkflowError("call start_comfyui(base_dir) first")
    import execution
    import folder_paths
    prompt_id = str(uuid.uuid4())
    valid, error, outputs_to_execute, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise WorkflowError("ComfyUI rejected the prompt:\n" + _format_validation(error, node_errors))
    if _state["executor"] is None:
        # One executor per process, like the server: its cache keeps loaded models between prompts.
        server = HeadlessServer()
        _state["executor"] = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                                      cache_args={"lru": 0, "ram": 0})
    executor = _state["executor"]
    if fresh:
        executor.reset()
    executor.execute(prompt, prompt_id, dict(extra_data or {}), outputs_to_execute)
    if not executor.success:
        for event, data in executor.status_messages:
            if event == "execution_error":
                trace = "".join(data.get("traceback", []))
                raise WorkflowError(f"node #{data['node_id']} ({data['node_type']}) failed: "
                                    f"{data['exception_type']}: {data['exception_message']}\n{trace}")
        raise WorkflowError(f"execution failed: {executor.status_messages}")
    outputs = executor.history_result["outputs"]
    images = []
    for ui in outputs.values():
        for image in ui.get("images", []) or []:
            directory = folder_paths.get_directory_by_type(image.get("type", "output"))
            images.append(os.path.join(directory, image.get("subfolder", ""), image["filename"]))
    values = {}
    for node_id in return_nodes:
        entry = executor.caches.outputs.get(str(node_id))
        if entry is None:
            raise WorkflowError(f"node #{node_id} did not run, so it has no outputs to return")
        values[str(node_id)] = entry.outputs
    return RunResult(prompt_id=prompt_id, outputs=outputs, images=images, messages=list(executor.status_messages),
                     values=values)


def run_workflow(workflow: dict, replace_inputs: dict | None = None, return_nodes=()) -> RunResult:
    """ui_to_api + run_prompt. replace_inputs: {class_type: {input: value}} applied to every such node."""
    prompt = ui_to_api(workflow, object_info())
    for node in prompt.values():
        node["inputs"].update((replace_inputs or {}).get(node["class_type"], {}))
    return run_prompt(prompt, return_nodes=return_nodes)
