"""File names the nodes read and write, confined to ComfyUI's input/output folders."""

from __future__ import annotations

import os
import re

import folder_paths

STATE_FOLDER = "videossm"  # input/videossm and output/videossm hold stream states
OUTPUT_TAG = " [output]"


class UnsafePathError(ValueError):
    pass


def check_relative_name(name: str, what: str = "file name") -> str:
    """Refuse absolute paths, '..' and other ways out of the folder; return the cleaned name."""
    cleaned = name.strip().replace("\\", "/")
    if not cleaned or "\x00" in cleaned or cleaned.startswith("/") or re.match(r"^[A-Za-z]:", cleaned):
        raise UnsafePathError(f"{what} {name!r} is not allowed: give a name inside ComfyUI's folder, "
                              "without a leading '/' or drive letter")
    if any(part == ".." for part in cleaned.split("/")):
        raise UnsafePathError(f"{what} {name!r} is not allowed: '..' would leave ComfyUI's folder")
    return cleaned


def _inside(base: str, path: str) -> bool:
    base, path = os.path.realpath(base), os.path.realpath(path)
    return os.path.commonpath([base, path]) == base


def state_file_choices() -> list[str]:
    """Stream states in input/videossm, then output/videossm (tagged ' [output]'), newest first."""
    out = []
    for root, tag in ((folder_paths.get_input_directory(), ""), (folder_paths.get_output_directory(), OUTPUT_TAG)):
        folder = os.path.join(root, STATE_FOLDER)
        if not os.path.isdir(folder):
            continue
        files = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
        files.sort(key=lambda f: os.path.getmtime(os.path.join(folder, f)), reverse=True)
        out.extend(f + tag for f in files)
    return out


def resolve_state_file(name: str) -> str:
    """Full path of a state name from ``state_file_choices`` (also accepts a bare file name)."""
    root = folder_paths.get_input_directory()
    if name.endswith(OUTPUT_TAG):
        name, root = name[: -len(OUTPUT_TAG)], folder_paths.get_output_directory()
    name = check_relative_name(name, "state file")
    folder = os.path.join(root, STATE_FOLDER)
    path = os.path.join(folder, name)
    if not _inside(folder, path):
        raise UnsafePathError(f"state file {name!r} is not allowed: it resolves outside {folder}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no stream state {name!r} in {folder}; save one with 'VideoSSM Save State' "
                                "or copy a .safetensors state there")
    return path


def output_path(prefix: str, extension: str, subfolder_default: str = STATE_FOLDER) -> tuple[str, str, str]:
    """A new numbered file in the output folder: (full path, subfolder, filename)."""
    prefix = check_relative_name(prefix, "filename prefix")
    if "/" not in prefix:
        prefix = f"{subfolder_default}/{prefix}"
    out_root = folder_paths.get_output_directory()
    subfolder, base = os.path.split(prefix)
    folder = os.path.join(out_root, subfolder)
    if not _inside(out_root, folder):
        raise UnsafePathError(f"filename prefix {prefix!r} is not allowed: it resolves outside the output folder")
    os.makedirs(folder, exist_ok=True)
    pattern = re.compile(re.escape(base) + r"_(\d{5})_")
    taken = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))]
    counter = max(taken, default=0) + 1
    filename = f"{base}_{counter:05d}_{extension}"
    return os.path.join(folder, filename), subfolder, filename
