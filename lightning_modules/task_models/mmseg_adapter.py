"""Optional: score any mmsegmentation model through mmseg itself (`--task-model mmseg:CONFIG --task-weights CKPT`).

Needs `pip install carbench[mmseg]` *and* mmcv's compiled ops, which often do not build; the native
`pspnet_r50-d8` (lightning_modules/pspnet.py) loads the same PSPNet checkpoints without either.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def mmseg_import_error() -> str | None:
    """None when mmseg and mmcv's ops import, else why not."""
    try:
        import mmcv.ops  # noqa: F401 -- the compiled part is what fails in practice
        import mmseg.apis  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- any import failure means the adapter is unusable
        return f"{type(e).__name__}: {e}"
    return None


class MMSegSegmenter(nn.Module):
    """[0, 1] RGB batch -> logits (N, C, H, W) from mmseg's own test pipeline (`inference_model`)."""

    def __init__(self, config: str, checkpoint: str, device: str = "cpu"):
        super().__init__()
        why = mmseg_import_error()
        if why is not None:
            raise ImportError(f"the mmseg adapter needs mmsegmentation with mmcv's compiled ops ({why}); install "
                              "`carbench[mmseg]` with a matching mmcv, or use the native `pspnet_r50-d8` task model, "
                              "which loads mmseg's PSPNet checkpoints without mmseg")
        from mmseg.apis import init_model

        self.model = init_model(config, checkpoint, device=device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mmseg.apis import inference_model

        images = [np.ascontiguousarray((im.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)[..., ::-1])
                  for im in x]  # mmseg's loader hands BGR arrays to the pipeline
        results = inference_model(self.model, images)
        results = results if isinstance(results, list) else [results]
        return torch.stack([r.seg_logits.data for r in results]).to(x.device)
