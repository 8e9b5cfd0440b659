import pytest
import torch

from helpers import tiny_model
from lumos import LumosError, LumosModel
from lumos.generation.pipeline import LumosPipeline, placement
from lumos.model.checkpoint import map_safetensors, stream_safetensors


def test_placement_defaults_and_errors():
    device, dtype = placement(None, None)
    if torch.cuda.is_available():
        assert (device.type, dtype) == ("cuda", torch.bfloat16)
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)
    assert placement("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(LumosError, match="dtype"):
        placement("cpu", "fp8")
    with pytest.raises(LumosError, match="device"):
        placement("gpu0", None)
    if not torch.cuda.is_available():
        with pytest.raises(LumosError, match="no CUDA device"):
            placement("cuda", None)


@pytest.mark.parametrize("target", [torch.float32, torch.bfloat16])
def test_weights_load_straight_into_the_target_dtype(tmp_path, target):
    model = tiny_model()
    model.save_pretrained(tmp_path, dtype=torch.bfloat16)
    file = tmp_path / "model.safetensors"
    streamed = stream_safetensors(file, target, "cpu")
    mapped = map_safetensors(file)
    assert streamed.keys() == mapped.keys()
    for k, v in mapped.items():
        assert streamed[k].dtype == target and torch.equal(streamed[k], v.to(target))
    loaded = LumosModel.from_pretrained(tmp_path, dtype=target)
    assert {p.dtype for p in loaded.parameters()} == {target}
    state = loaded.state_dict()
    for k, v in mapped.items():
        assert torch.equal(state[k], v.to(target))


def test_pipeline_in_bf16_and_moved_back():
    pipe = LumosPipeline.from_pretrained(dtype="bf16")
    assert pipe.model.lm_head.weight.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    out = pipe("a red circle moves up", num_frames=5, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.frames.shape == (1, 5, 64, 64, 3)
    pipe.to(dtype=torch.float32)
    assert pipe.model.lm_head.weight.dtype == torch.float32
