"""VATT's parts on the torch backend: its networks (`models.vatt_networks.VattNetworks`) on one
device and dtype, as the VATT family (`families.vatt`) calls them.

    image_features  eva02 crops [N, 3, S, S] uint8 -> features [N, 768] float32
    conditions      one window's video features with each prompt's ids -> converter states
    logits          token states with the prompts' conditions -> cond and uncond logits
    decode          tokens [P, K, T] -> waveform [P, T * hop] float32 (Encodec)

Reference mode runs them as the official code does: the converter and VATT Audio once per
prompt (the official scripts are B=1; VATT Audio's CFG pair is one batch of 2 inside
`VattAudio.forward`), eva02 one frame at a time. Fast mode batches: the prompts of one window
whose ids have the same length in one converter call (different lengths cannot share a call:
padding moves VATT's positions), every prompt of one condition length in one VATT Audio call,
eva02 frames in chunks. Encodec runs in fp32 in both (the official decoder runs in its own fp32
process), over the whole stem, in chunks past its LSTM (`Encodec.decode(chunk=...)`).

Memory: with `low_memory` (default: on a CUDA device smaller than all the networks together
plus LOW_MEMORY_HEADROOM) each network lives on the CPU and is moved to the device for its own
stage only, so the peak is the largest network, the converter (VATT-LLaMA 13.2 GB in fp16: a
16 GB GPU), not the sum; the price is the host-device copies of every request.
"""

from collections.abc import Sequence

import torch
from torch import nn

from ..device import precision_name
from ..models import eva02
from ..models.vatt_networks import VattNetworks
from ..variants import Variant

# Frames per eva02 call in fast mode (the reference runs one at a time), and Encodec frames per
# decoder chunk past its LSTM (10 s: one window; bounds the memory of long stems).
IMAGE_CHUNK = {"cpu": 8, "cuda": 64}
DECODE_CHUNK = 500
LOW_MEMORY_HEADROOM = 2 * 2**30  # bytes of activations and CUDA context


class VattTorchParts:
    def __init__(
        self,
        variant: Variant,
        nets: VattNetworks,
        device: torch.device,
        dtype: torch.dtype,
        reference: bool = False,
        low_memory: bool | None = None,
    ):
        self.variant, self.nets, self.device, self.dtype = variant, nets, device, dtype
        self.precision = precision_name(dtype)
        self.reference = reference
        self.tokenizer = nets.tokenizer
        self.config = variant.generator
        for net in (nets.image, nets.converter, nets.audio):
            net.to(dtype=dtype).eval()
        nets.encodec.to(dtype=torch.float32).eval()
        self.low_memory = needs_low_memory(nets, device) if low_memory is None else low_memory
        self._resident: nn.Module | None = None
        if not self.low_memory:
            for net in self._networks():
                net.to(device)

    def _networks(self) -> tuple[nn.Module, ...]:
        n = self.nets
        return (n.image, n.converter, n.audio, n.encodec)

    def _use(self, net: nn.Module) -> nn.Module:
        """`net` on the device; in low-memory mode the one network there (the previous one
        goes back to the CPU first)."""
        if self.low_memory and self._resident is not net:
            if self._resident is not None:
                self._resident.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self._resident = net.to(self.device)
        return net

    @torch.inference_mode()
    def image_features(self, pictures: torch.Tensor) -> torch.Tensor:
        """pictures [N, 3, S, S] uint8 (`eva02.resize_crop`) -> features [N, embed_dim]
        float32 (open_clip's encode_image, not normalised)."""
        tower = self._use(self.nets.image)
        chunk = 1 if self.reference else IMAGE_CHUNK.get(self.device.type, 8)
        out = []
        for rows in pictures.split(chunk):
            images = eva02.normalize(rows.to(self.device), self.config.image)
            out.append(tower(images.to(self.dtype)).float())
        return torch.cat(out)

    def conditions(
        self, ids: Sequence[torch.Tensor], video: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One window: ids of each prompt ([L_p] int64) and the window's features
        [video_frames, 768] -> per prompt (states [10 + L_p, hidden] float32, pad mask
        [10 + L_p] float32 of ones): `encode_all_states` as `V2TA.generate_audio` calls it
        (B=1, no padding, the mask all ones)."""
        llm = self._use(self.nets.converter)
        return converter_states(llm, ids, video, self.device, self.dtype, self.reference)

    @torch.inference_mode()
    def logits(
        self, tokens: torch.Tensor, cond: torch.Tensor, pad_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, K, T] int64, cond [B, Nc, E] (one condition length), pad_mask [B, Nc] ->
        (cond, uncond) logits [B, K, T, V] float32; reference: one row at a time."""
        net = self._use(self.nets.audio)
        tokens, cond = tokens.to(self.device), cond.to(self.device, self.dtype)
        pad_mask = pad_mask.to(self.device)
        if not self.reference:
            c, u = net(tokens, cond, pad_mask)
            return c.float(), u.float()
        rows = [net(tokens[b, None], cond[b, None], pad_mask[b, None]) for b in range(len(cond))]
        return tuple(torch.cat([r[i] for r in rows]).float() for i in (0, 1))

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [P, K, T] int64 -> waveform [P, T * hop] float32, each prompt on its own
        (the official decode is B=1)."""
        codec = self._use(self.nets.encodec)
        out = [codec.decode(t[None].to(self.device), chunk=DECODE_CHUNK)[0, 0] for t in tokens]
        return torch.stack(out).float()


@torch.inference_mode()
def converter_states(
    llm: nn.Module,
    ids: Sequence[torch.Tensor],
    video: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    reference: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`VattTorchParts.conditions` with the converter `llm` on `device`: one call per prompt
    (reference), or per group of prompts whose ids have the same length."""
    video = video.to(device, dtype)[None]
    if reference:
        groups = [[p] for p in range(len(ids))]
    else:
        by_length: dict[int, list[int]] = {}
        for p, x in enumerate(ids):
            by_length.setdefault(len(x), []).append(p)
        groups = list(by_length.values())
    out: list = [None] * len(ids)
    for index in groups:
        batch = torch.stack([ids[p] for p in index]).to(device)
        mask = torch.ones(len(index), llm.config.video_tokens + batch.shape[1], device=device)
        states = llm(batch, video.expand(len(index), -1, -1), mask).float()
        for j, p in enumerate(index):
            out[p] = (states[j], mask[j])
    return out


def needs_low_memory(nets: VattNetworks, device: torch.device) -> bool:
    """Whether all of VATT's networks would crowd `device` (CUDA only): their bytes plus
    LOW_MEMORY_HEADROOM beyond the device's total memory."""
    if device.type != "cuda":
        return False
    nets_bytes = sum(
        t.numel() * t.element_size()
        for net in (nets.image, nets.converter, nets.audio, nets.encodec)
        for t in net.state_dict().values()
    )
    total = torch.cuda.get_device_properties(device).total_memory
    return nets_bytes + LOW_MEMORY_HEADROOM > total
