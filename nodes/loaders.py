"""Loading a VideoSSM generator (any supported checkpoint layout, or the bundled demo)."""

from __future__ import annotations

import folder_paths
import torch
from comfy_api.latest import io

from ..videossm_core.checkpoints import CheckpointError, load_model
from ..videossm_core.demo.bundle import demo_files_present, load_demo_bundle
from ._types import CATEGORY, LoadedModel, VideoSSMModel

DEMO_CHOICE = "videossm-demo (bundled, CPU)"
MEMORY_FOLDER = "videossm"  # models/videossm: memory-only files trained with VideoSSM
DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def register_model_folder() -> None:
    if MEMORY_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(MEMORY_FOLDER, f"{folder_paths.models_dir}/{MEMORY_FOLDER}")
    folder_paths.folder_names_and_paths[MEMORY_FOLDER][1].update({".safetensors"})


def _device(choice: str) -> torch.device:
    if choice == "cpu":
        return torch.device("cpu")
    import comfy.model_management

    return comfy.model_management.get_torch_device()


def _dtype(choice: str, device: torch.device) -> torch.dtype:
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class VideoSSMModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_model_folder()
        return io.Schema(
            node_id="VideoSSMModelLoader",
            display_name="VideoSSM Model Loader",
            category=CATEGORY,
            description="Loads a causal Wan2.1-1.3B generator (Self-Forcing, LongLive, CausVid, Wan, diffusers, "
                        "ComfyUI or VideoSSM files; the layout is detected from the keys) with VideoSSM's hybrid "
                        "memory, or the small demo model that ships with the suite.",
            inputs=[
                io.Combo.Input("checkpoint", options=[DEMO_CHOICE] + folder_paths.get_filename_list("diffusion_models"),
                               tooltip="The video model, from models/diffusion_models (.safetensors or .pt, e.g. "
                                       "LongLive's longlive_base.pt). The bundled demo runs on a CPU in minutes."),
                io.Combo.Input("memory_file", options=["none"] + folder_paths.get_filename_list(MEMORY_FOLDER),
                               tooltip="A VideoSSM memory file (models/videossm) applied on top of the checkpoint. "
                                       "Without one the memory starts fresh and the model behaves like its base."),
                io.Combo.Input("lora", options=["none"] + folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA from models/loras (e.g. LongLive's lora.pt), merged into the "
                                       "weights when loading."),
                io.Float.Input("lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05,
                               tooltip="How strongly the LoRA changes the model: 1 = as trained, 0 = not at all."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Number precision of the weights. auto: bf16 on a GPU (half the memory), "
                                       "fp32 on the CPU."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: the GPU ComfyUI uses (the CPU if there is none); cpu: always the CPU "
                                       "(slow for real models)."),
                io.Boolean.Input("compile", default=False, optional=True,
                                 tooltip="Compile the model with torch.compile for faster chunks on a GPU. The "
                                         "first chunks of a run take longer while it compiles."),
            ],
            outputs=[VideoSSMModel.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, checkpoint, memory_file, lora, lora_strength, dtype, device, compile=False) -> io.NodeOutput:
        dev = _device(device)
        dt = _dtype(dtype, dev)
        if checkpoint == DEMO_CHOICE:
            if not demo_files_present():
                raise FileNotFoundError("the demo model files are missing from videossm_core/demo/weights; "
                                        "reinstall the suite")
            bundle = load_demo_bundle(device=dev, dtype=dt)
            if compile:
                bundle.model.compile_streaming()
            return io.NodeOutput(LoadedModel(bundle.model, "videossm-demo", bundle.text_encoder, bundle.vae,
                                             tuple(bundle.resolution), bundle.fps))
        path = folder_paths.get_full_path_or_raise("diffusion_models", checkpoint)
        memory = None if memory_file == "none" else folder_paths.get_full_path_or_raise(MEMORY_FOLDER, memory_file)
        lora_path = None if lora == "none" else folder_paths.get_full_path_or_raise("loras", lora)
        try:
            model = load_model(path, dtype=dt, device=dev, memory_path=memory, lora_path=lora_path,
                               lora_strength=lora_strength)
        except CheckpointError as err:
            raise ValueError(f"{checkpoint}: {err}") from None
        if compile:
            model.compile_streaming()
        return io.NodeOutput(LoadedModel(model, checkpoint))
