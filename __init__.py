"""ComfyUI-VideoSSM: long-video generation with a hybrid state-space memory, as ComfyUI nodes.

ComfyUI imports this package from ``custom_nodes``. The nodes are only imported when ComfyUI asks for
them, so the package (and its ``videossm_core`` library) can be imported anywhere else too.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import VideoSSMExtension

    return VideoSSMExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
