"""Folded stacks ("a;b;c 12" lines) to a flame graph SVG: one box per frame, as wide as its
weight, callers below callees; hover shows the frame, its weight and its share. Pure.

Kernel frames (suffix "_[k]") are orange, user frames red-yellow, the process name grey."""

from __future__ import annotations

import hashlib
from collections import Counter
from html import escape

WIDTH = 1200
FRAME_H = 16
PAD_TOP = 40
MIN_W = 0.3  # boxes thinner than this (pixels) are not drawn


class _Node:
    __slots__ = ("children", "name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.children: dict[str, _Node] = {}


def folded_text(folded: Counter[str]) -> str:
    return "".join(f"{stack} {v}\n" for stack, v in sorted(folded.items()))


def parse_folded(text: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, v = line.rpartition(" ")
        if stack and v.isdigit():
            out[stack] += int(v)
    return out


def _color(name: str, depth: int) -> str:
    h = int(hashlib.md5(name.encode()).hexdigest()[:6], 16)
    if depth == 0:
        return "rgb(200,200,200)"
    if name.endswith("_[k]"):
        return f"rgb({220 + h % 35},{120 + (h >> 8) % 60},{40 + (h >> 16) % 30})"
    return f"rgb({205 + h % 50},{(h >> 8) % 230},{(h >> 16) % 55})"


def render(folded: Counter[str], title: str, unit: str = "samples") -> str:
    root = _Node("all")
    for stack, v in folded.items():
        if v <= 0:
            continue
        root.value += v
        node = root
        for frame in stack.split(";"):
            child = node.children.get(frame)
            if child is None:
                child = node.children[frame] = _Node(frame)
            child.value += v
            node = child
    boxes: list[tuple[int, str]] = []  # (depth, box with @R@/@Y@ for its y)
    depth_max = 0
    total = max(root.value, 1)
    scale = (WIDTH - 20) / total

    def walk(node: _Node, x: float, depth: int) -> None:
        nonlocal depth_max
        for child in sorted(node.children.values(), key=lambda c: c.name):
            w = child.value * scale
            if w >= MIN_W:
                depth_max = max(depth_max, depth)
                boxes.append((depth, _box(child, x, depth, w, total, unit)))
                walk(child, x, depth + 1)
            x += w

    walk(root, 10.0, 0)
    height = PAD_TOP + (depth_max + 2) * FRAME_H + 10
    body = _place(boxes, height)
    return (f'<?xml version="1.0" standalone="no"?>\n'
            f'<svg version="1.1" width="{WIDTH}" height="{height}" '
            f'xmlns="http://www.w3.org/2000/svg" font-family="Verdana" font-size="12">\n'
            f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f8"/>\n'
            f'<text x="{WIDTH // 2}" y="24" text-anchor="middle" font-size="17">'
            f'{escape(title)}</text>\n'
            f'<text x="10" y="{height - 4}" font-size="11">total: {_fmt(root.value, unit)}'
            f'</text>\n{body}\n</svg>\n')


def _fmt(v: int, unit: str) -> str:
    if unit == "ns":
        return f"{v / 1e9:.3f} s"
    return f"{v} {unit}"


def _box(node: _Node, x: float, depth: int, w: float, total: int, unit: str) -> str:
    label = escape(node.name)
    tip = f"{label} ({_fmt(node.value, unit)}, {100 * node.value / total:.2f}%)"
    chars = int(w / 7)
    text = ""
    if chars >= 3:
        shown = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
        text = f'<text x="{x + 3:.1f}" y="@Y@" font-size="11">{escape(shown)}</text>'
    return (f'<g><title>{tip}</title><rect x="{x:.1f}" y="@R@" width="{w:.1f}" '
            f'height="{FRAME_H - 1}" fill="{_color(node.name, depth)}" rx="2"/>{text}</g>')


def _place(boxes: list[tuple[int, str]], height: int) -> str:
    """Depth 0 (the process) at the bottom, callees above their callers."""
    out = []
    for depth, svg in boxes:
        y = height - 20 - (depth + 1) * FRAME_H
        out.append(svg.replace("@R@", str(y)).replace("@Y@", str(y + FRAME_H - 4)))
    return "\n".join(out)
