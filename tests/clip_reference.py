"""Where test_clip.py's reference numbers come from: open_clip itself, run on the same tiny weights.

    pip install open_clip_torch==3.3.0          # needs torchvision (not a dependency of selva-rt)
    python tests/clip_reference.py              # prints OFFICIAL_IDS, OFFICIAL_TEXT, OFFICIAL_IMAGE
    python tests/clip_reference.py --check      # compares them with test_clip.py's; exit 1 if not

The tokenizer is what `open_clip.get_tokenizer('ViT-H-14-378-quickgelu')` returns; the towers are
an `open_clip.model.CLIP` of test_clip.py's TINY sizes (quick_gelu, as that model's config)
holding `test_clip._weights(TINY)`; the text features are SELVA's patched `encode_text` (token +
position embedding, the transformer with open_clip's causal `attn_mask`, `ln_final`,
`F.normalize`, every position kept), the image features `encode_image(normalize=True)`.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from test_clip import (  # noqa: E402
    OFFICIAL_IDS,
    OFFICIAL_IMAGE,
    OFFICIAL_TEXT,
    TINY,
    _weights,
)


def reference() -> dict:
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    tokenizer = open_clip.get_tokenizer("ViT-H-14-378-quickgelu")
    ids = []
    for prompt, _ in OFFICIAL_IDS:
        row = tokenizer([prompt])[0].tolist()
        ids.append([prompt, row[: max(i for i, t in enumerate(row) if t) + 1]])

    model = CLIP(
        embed_dim=TINY.embed_dim,
        vision_cfg=CLIPVisionCfg(
            layers=TINY.image_layers,
            width=TINY.image_width,
            head_width=TINY.image_width // TINY.image_heads,
            patch_size=TINY.patch_size,
            image_size=TINY.image_size,
        ),
        text_cfg=CLIPTextCfg(width=TINY.text_width, heads=TINY.text_heads, layers=TINY.text_layers),
        quick_gelu=True,
    ).eval()
    model.load_state_dict(_weights(TINY), strict=True)
    with torch.no_grad():
        tokens = tokenizer(["a dog barking", ""])
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        text = F.normalize(x, dim=-1)[:, [0, 2, 4, 76], :4]
        frames = torch.rand(2, 3, 384, 384, generator=torch.Generator().manual_seed(1))
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
        image = model.encode_image((frames - mean) / std, normalize=True)[:, :8]
    return {
        "open_clip": open_clip.__version__,
        "ids": ids,
        "text": text.tolist(),
        "image": image.tolist(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with test_clip.py")
    args = parser.parse_args()
    ref = reference()
    if not args.check:
        print(json.dumps(ref, indent=1))
        return 0
    problems = []
    if ref["ids"] != [[p, ids] for p, ids in OFFICIAL_IDS]:
        problems.append("token ids differ")
    for name, ours in (("text", OFFICIAL_TEXT), ("image", OFFICIAL_IMAGE)):
        worst = (torch.tensor(ref[name]) - torch.tensor(ours)).abs().max().item()
        if worst > 1e-6:  # the stored values have 7 decimals
            problems.append(f"{name} features differ by {worst:.2e}")
    print(f"open_clip {ref['open_clip']}: " + ("; ".join(problems) or "test_clip.py agrees"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
