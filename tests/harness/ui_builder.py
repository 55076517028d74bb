"""Build UI-format workflows (what the web UI saves and loads) from a few lines of Python.

Widget values are laid out from the nodes' own definitions (scripts.demo.workflows.widget_slots),
so a saved example stays in step with the node code that ui_to_api converts it with.
"""
from __future__ import annotations

import uuid

from scripts.demo.workflows import is_widget, widget_slots

CONTROL_VALUE = "fixed"
COLUMN_WIDTH, ROW_GAP, NODE_WIDTH = 360, 40, 320
# LiteGraph's drawing sizes (title bar, one socket row, one widget row, a multiline text box), to lay rows out
# so that tall nodes (KSampler, the steering nodes) do not cover the node below them.
TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT, TEXTBOX_HEIGHT = 30, 20, 24, 80
NOTE_HEIGHT = 140
NOTE_CHARS_PER_LINE, NOTE_LINE_HEIGHT = 46, 13  # the note's monospace text at NODE_WIDTH, with room to spare


class Output:
    def __init__(self, node: "UINode", slot: int):
        self.node, self.slot = node, slot


class UINode:
    def __init__(self, builder: "UIWorkflow", node_id: int, data: dict):
        self.builder, self.id, self.data = builder, node_id, data

    def __getitem__(self, slot: int) -> Output:
        return Output(self, slot)


class UIWorkflow:
    def __init__(self, node_defs: dict):
        self.node_defs = node_defs
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []
        self.cells: dict[int, tuple[int, int]] = {}  # node id -> grid cell (column, row); positions made in to_json

    def add(self, class_type: str, at: tuple[int, int], title: str | None = None, **values) -> UINode:
        """Add a node at grid cell (column, row) (below the nodes already there); values are widget values or
        Outputs of other nodes."""
        node_def = self.node_defs[class_type]
        node_id = len(self.nodes) + 1
        specs = {**node_def["input"].get("required", {}), **node_def["input"].get("optional", {})}
        unknown = set(values) - set(specs)
        if unknown:
            raise KeyError(f"{class_type} has no inputs {sorted(unknown)}")
        inputs, widgets = [], []
        for name in widget_slots(node_def):
            if name is None:
                widgets.append(CONTROL_VALUE)
                continue
            value = values.get(name)
            widgets.append(_default(specs[name]) if value is None or isinstance(value, Output) else value)
        for name, spec in specs.items():
            socket = {"name": name, "type": _socket_type(spec), "link": None}
            if is_widget(spec):
                socket["widget"] = {"name": name}
            if isinstance(values.get(name), Output):
                socket["link"] = self._link(values[name], node_id, len(inputs), socket["type"])
            inputs.append(socket)
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(node_def["output"], node_def.get("output_name", node_def["output"])))]
        data = {"id": node_id, "type": class_type, "pos": [0, 0],
                "size": [NODE_WIDTH, _height(node_def, specs)], "flags": {}, "order": node_id, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": class_type}, "widgets_values": widgets}
        if title:
            data["title"] = title
        self.nodes.append(data)
        self.cells[node_id] = at
        for socket in inputs:
            if socket["link"] is not None:
                link = self.links[socket["link"] - 1]
                self.nodes[link[1] - 1]["outputs"][link[2]]["links"].append(socket["link"])
        return UINode(self, node_id, data)

    def note(self, text: str, at: tuple[int, int]) -> None:
        node_id = len(self.nodes) + 1
        self.cells[node_id] = at
        self.nodes.append({"id": node_id, "type": "Note", "pos": [0, 0],
                           "size": [NODE_WIDTH, _note_height(text)], "flags": {}, "order": node_id, "mode": 0, "inputs": [], "outputs": [],
                           "properties": {}, "widgets_values": [text]})

    def _link(self, source: Output, target_id: int, target_slot: int, link_type: str) -> int:
        link_id = len(self.links) + 1
        self.links.append([link_id, source.node.id, source.slot, target_id, target_slot, link_type])
        return link_id

    def _place(self) -> None:
        """Grid cells -> positions: nodes sharing a cell stack top to bottom in the order added; each row is as
        tall as its tallest cell, columns at a fixed pitch."""
        cells: dict[tuple[int, int], list[dict]] = {}
        for node in self.nodes:
            cells.setdefault(self.cells[node["id"]], []).append(node)
        rows = max(row for _, row in self.cells.values()) + 1
        heights = [0] * rows
        for (_, row), stack in cells.items():
            heights[row] = max(heights[row], sum(n["size"][1] for n in stack) + (len(stack) - 1) * (TITLE_HEIGHT + ROW_GAP))
        tops = [40]
        for h in heights[:-1]:
            tops.append(tops[-1] + (h + TITLE_HEIGHT + ROW_GAP if h else 0))
        for (column, row), stack in cells.items():
            y = tops[row] + TITLE_HEIGHT
            for node in stack:
                node["pos"] = [40 + column * COLUMN_WIDTH, y]
                y += node["size"][1] + TITLE_HEIGHT + ROW_GAP

    def to_json(self, name: str) -> dict:
        self._place()
        return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-hrv/{name}")), "revision": 0,
                "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": self.groups, "config": {},  # offset: clear of the sidebar and menu
                "extra": {"ds": {"scale": 0.8, "offset": [80, 70]}}, "version": 0.4}


def _note_height(text: str) -> int:
    """Tall enough to show the whole text without scrolling (at least NOTE_HEIGHT)."""
    lines = sum(max(1, -(-len(line) // NOTE_CHARS_PER_LINE)) for line in text.split("\n"))
    return max(NOTE_HEIGHT, NOTE_LINE_HEIGHT * lines + 30)


def _height(node_def: dict, specs: dict) -> int:
    """Roughly the body height LiteGraph gives this node (title bar excluded): sockets, then widgets."""
    sockets = max(sum(not is_widget(spec) for spec in specs.values()), len(node_def["output"]))
    body = SLOT_HEIGHT * sockets + 10
    for name in widget_slots(node_def):
        spec = specs.get(name)
        multiline = spec is not None and len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("multiline")
        body += TEXTBOX_HEIGHT if multiline else WIDGET_HEIGHT
    return body


def _socket_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else str(spec[0])


def _default(spec):
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(spec[0], list):
        return spec[0][0] if spec[0] else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(spec[0])
