"""open_clip's own trainer reads a build's train shards: ``open_clip_train.data.get_wds_dataset``.

    uv venv /tmp/oc && uv pip install -p /tmp/oc 'open_clip_torch[training]' torch==2.11.0 'webdataset<=0.2.86'
    /tmp/oc/bin/python benchmarks/open_clip_check.py DATA

Run in open_clip's environment (it pins webdataset <= 0.2.86), not bindset's: this file imports nothing of
bindset. The ``--train-data`` string is one brace range over the split's shards, as open_clip expects:
``DATA/shards/train-{000000..NNNNNN}.tar``; ``get_dataset_size`` reads ``sizes.json`` beside them.
"""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path


def train_data_string(data: Path) -> str:
    names = sorted(p.name for p in (data / "shards").glob("train-*.tar"))
    assert names == [f"train-{i:06d}.tar" for i in range(len(names))], "train shards are not one contiguous range"
    return str(data / "shards" / f"train-{{000000..{len(names) - 1:06d}}}.tar")


def main(data: Path) -> None:
    import torch
    from open_clip import get_tokenizer
    from open_clip_train.data import get_dataset_size, get_wds_dataset
    from torchvision import transforms as T

    urls = train_data_string(data)
    sizes = json.loads((data / "shards" / "sizes.json").read_text())
    want = sum(n for name, n in sizes.items() if name.startswith("train-"))
    assert get_dataset_size(urls) == (want, len([n for n in sizes if n.startswith("train-")]))
    args = Namespace(train_data=urls, val_data=None, train_num_samples=None, dataset_resampled=False,
                     train_data_upsampling_factors=None, seed=0, batch_size=4, workers=1, world_size=1)  # fmt: skip
    preprocess = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    info = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=get_tokenizer("RN50"))
    seen = 0
    for images, texts in info.dataloader:
        assert images.shape[1:] == (3, 32, 32) and texts.ndim == 2 and images.dtype == torch.float32
        seen += images.shape[0]
    print(f"open_clip get_wds_dataset: {urls}: {want} train samples in sizes.json, "
          f"{info.dataloader.num_samples} per epoch, {seen} read")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
