"""The Flowley family: DFN2B-CLIP image features at 8 fps and Flan-T5-large text into its PSCA
DiT (SEEDS.md §2). No negative prompt: its unconditional branch is zero features."""

import torch

from ..errors import UsageError
from ..windows import Layout
from .family import Run
from .flow import FlowFamily, TextFeatures


class Flowley(FlowFamily):
    def check(self, mixture: bool) -> None:
        if mixture:
            raise UsageError(f"{self.variant.name} generates; it does not separate a mixture")

    @torch.inference_mode()
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> dict[str, torch.Tensor]:
        """Flan-T5 states of the prompt, padded to the released features' length."""
        ids, mask = self.tokenizers.t5([prompt])
        return {"t5": self.parts.t5(ids, mask.long()), "t5_mask": mask.to(self.device)}

    @torch.inference_mode()
    def features(self, inputs: dict[str, torch.Tensor], prompts: int, run: Run) -> dict:
        """clip: CLIP image features [Nc, C] of the window's 8 fps frames."""
        with run.timed("clip_image"):
            return {"clip": self.parts.clip_image(inputs["clip"])}

    @torch.inference_mode()
    def conditions(
        self, text: TextFeatures, features: list[dict], layout: Layout, run: Run
    ) -> dict[str, torch.Tensor]:
        prompts = text.prompts
        visual = torch.cat([f["clip"][None].expand(prompts, -1, -1) for f in features])
        rows = text.repeat(len(features))
        seq = self.variant.sequence_lengths(layout.window)
        with run.timed("dit_conditions"):
            return self.parts.dit_conditions(
                visual, None, rows.t5, None, seq.latent, seq.clip, text_mask=rows.t5_mask
            )
