"""A custom two-tower (CLIP-style) model built from mm_ptft components and trained a few steps on generated
image/caption pairs, on CPU in seconds: ``python examples/two_tower.py [--steps 40] [--save DIR]``."""
import argparse

import torch
from torch import nn

import mm_ptft
from mm_ptft.data.text import TextCollator
from mm_ptft.objectives.contrastive import ContrastiveObjective

COLORS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0), "cyan": (0, 1, 1),
          "magenta": (1, 0, 1), "white": (1, 1, 1), "black": (0, 0, 0)}


class TwoTower(nn.Module):
    """Any text encoder and any image encoder from the registries, contrasted by the CLIP objective."""

    def __init__(self, text: nn.Module, image: nn.Module) -> None:
        super().__init__()
        self.text, self.image = text, image
        self.clip = ContrastiveObjective({"text": text.out_dim, "image": image.out_dim}, [("image", "text")],
                                         kind="clip", embed_dim=32)

    def forward(self, batch: dict) -> dict:
        return self.clip({"text": self.text(batch), "image": self.image(batch)}, batch)  # {"clip_image_text_loss": …}


def pairs(n: int, g: torch.Generator, model: TwoTower) -> dict:
    """``n`` noisy single-colour images, each with the caption that names its colour: one batch."""
    names = [list(COLORS)[i] for i in torch.randperm(len(COLORS), generator=g)[:n]]
    images = torch.tensor([COLORS[c] for c in names]).float()[:, :, None, None].expand(n, 3, 32, 32)  # (B, 3, H, W)
    ids = model.text.tokenizer([f"a {c} picture" for c in names])["input_ids"]
    batch = TextCollator(model.text.tokenizer.pad_token_id)([{"text": i} for i in ids])  # text, text_mask
    return {**batch, "image": images + 0.1 * torch.randn(images.shape, generator=g)}


def main(steps: int = 40, save: str = "") -> tuple[float, float]:
    torch.manual_seed(0)
    text = mm_ptft.build_encoder("text", "tiny", dim=32, depth=1, heads=2, vocab_size=60,
                                 corpus=[f"a {c} picture" for c in COLORS])
    model = TwoTower(text, mm_ptft.build_encoder("image", "tiny_cnn", widths=[8, 16, 32, 32], img_size=32))
    opt, g, losses = torch.optim.AdamW(model.parameters(), lr=3e-3), torch.Generator().manual_seed(0), []
    for _ in range(steps):
        loss = sum(model(pairs(8, g, model)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"clip loss {first:.3f} -> {last:.3f} over {steps} steps")
    if save:  # each tower reloads anywhere with mm_ptft.load_encoder(DIR/<modality>)
        model.text.save_pretrained(f"{save}/text")
        model.image.save_pretrained(f"{save}/image")
    return first, last


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save", default="", help="write both towers as encoder directories here")
    main(**vars(p.parse_args()))
