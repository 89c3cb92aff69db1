"""The dali loader: NVIDIA DALI pipelines, optional (pip install nvidia-dali-cuda130).

Two pipelines:
* arrays (Fashion-MNIST, CIFAR): `fn.external_source` is fed each batch of the shared
  `EpochPlan` - uint8 HWC images from the zero-padded store plus the plan's crop positions
  and flip bits - and `fn.crop_mirror_normalize` crops, flips, scales to [0, 1] and lays
  out CHW (or HWC for channels_last) in one operator. Same batches as the device loader.
* folders (ImageFolder, Restricted-ImageNet): `fn.readers.file` reads this rank's files in
  the plan's order, `fn.decoders.image_random_crop` decodes (device "mixed" on a GPU, "cpu"
  without) the random-resized-crop window, `fn.resize` scales it to resolution, and
  `fn.crop_mirror_normalize` flips with probability 1/2 and normalises. Evaluation: decode,
  resize the shorter side to resolution/0.875, centre crop.

Without a GPU the same graph runs as a CPU-only pipeline (device_id=None), which is how CI
exercises it. Sharding comes from the plan (this rank's part of the epoch order is handed
to the pipeline; DALI's own shard_id/num_shards split could not start mid-epoch for resume).
A pipeline is built per epoch (milliseconds) so that set_epoch/set_start_batch take effect;
folder augmentation draws come from DALI's RNG seeded by (seed, epoch, rank, start batch),
so a resumed epoch sees the same images in the same batches but different crops.
"""
from __future__ import annotations

import importlib.util
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import ArrayDataset
from .errors import DatasetError
from .imagefolder import FolderDataset
from .pil_transforms import RATIO, SCALE, TEST_CROP_FRACTION
from .sampling import EpochLoader, EpochPlan, derive_seed
from .torch_loader import default_num_workers

INSTALL_HINT = "--loader dali needs NVIDIA DALI: pip install nvidia-dali-cuda130 (or use --loader device / torch)"


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def _import_dali():
    if not dali_available():
        raise DatasetError(INSTALL_HINT)
    from nvidia import dali  # noqa: F401
    from nvidia.dali import fn, pipeline_def, types
    return fn, pipeline_def, types


class DaliLoader(EpochLoader):
    kind = "dali"

    def __init__(self, ds: ArrayDataset | FolderDataset, batch_size: int, *, train: bool, device="cpu", seed: int = 0,
                 drop_last: bool = False, channels_last: bool = False, num_workers: int | None = None,
                 rank: int = 0, world_size: int = 1):
        self._fn, self._pipeline_def, self._types = _import_dali()
        super().__init__(ds, batch_size, train=train, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size)
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise DatasetError(f"the dali loader runs on cpu or cuda, not {self.device}; use --loader torch")
        self.device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if self.device.type == "cuda" else None
        self.channels_last = channels_last
        self.num_threads = default_num_workers() if num_workers is None else max(1, int(num_workers))
        self.folder = isinstance(ds, FolderDataset)
        self.pad = 0 if self.folder or not train else ds.pad
        self.flip = False if self.folder or not train else ds.flip
        if not self.folder:
            store = ds.images.permute(0, 2, 3, 1)
            if self.pad:
                store = F.pad(store, (0, 0, self.pad, self.pad, self.pad, self.pad))
            self.store = store.contiguous().numpy()
            self.height, self.width = ds.images.shape[2:]
            self.labels = ds.labels.to(self.device)
        else:
            self.files = [p for p, _ in ds.samples]
            self.file_labels = [lab for _, lab in ds.samples]

    # ------------------------------------------------------------------ pipelines
    def _pipeline_kwargs(self, start: int) -> dict:
        return dict(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                    seed=derive_seed("dali", self.seed, self.epoch, self.rank, start) % (1 << 31),
                    prefetch_queue_depth=2)

    def _array_pipeline(self, plan: EpochPlan, start: int):
        fn, types = self._fn, self._types
        on_gpu = self.device_id is not None
        span = max(2 * self.pad, 1)
        store = self.store

        def next_batch(info):
            b = start + info.iteration
            if b >= plan.num_batches:
                raise StopIteration
            sl = plan.batch_slice(b)
            idx = plan.indices[sl].numpy()
            m = idx.size
            if plan.offset_y is not None:
                # crop_pos is a fraction of the free range (2*pad); k/(2*pad)*(2*pad) rounds back to k exactly.
                pos_y = (plan.offset_y[sl].numpy() / span).astype(np.float32)
                pos_x = (plan.offset_x[sl].numpy() / span).astype(np.float32)
                mirror = plan.flip[sl].numpy().astype(np.int32)
            else:
                pos_y = pos_x = np.zeros(m, np.float32)
                mirror = np.zeros(m, np.int32)
            return store[idx], pos_x, pos_y, mirror

        @self._pipeline_def(**self._pipeline_kwargs(start))
        def pipe():
            images, pos_x, pos_y, mirror = fn.external_source(source=next_batch, num_outputs=4, batch=True,
                                                              batch_info=True, layout=["HWC", "", "", ""])
            if on_gpu:
                images = images.gpu()
            return fn.crop_mirror_normalize(images, crop=(self.height, self.width), crop_pos_x=pos_x, crop_pos_y=pos_y,
                                            mirror=mirror, mean=0.0, std=255.0, dtype=types.FLOAT,
                                            output_layout="HWC" if self.channels_last else "CHW")

        return pipe()

    def _folder_pipeline(self, plan: EpochPlan, start: int):
        fn, types = self._fn, self._types
        on_gpu = self.device_id is not None
        res = self.dataset.resolution
        order = plan.indices[start * self.batch_size:].tolist()
        files = [self.files[i] for i in order]
        labels = [self.file_labels[i] for i in order]

        @self._pipeline_def(**self._pipeline_kwargs(start))
        def pipe():
            jpegs, labs = fn.readers.file(files=files, labels=labels, random_shuffle=False, name="reader")
            decoder_device = "mixed" if on_gpu else "cpu"
            if self.train:
                images = fn.decoders.image_random_crop(jpegs, device=decoder_device, output_type=types.RGB,
                                                       random_area=list(SCALE), random_aspect_ratio=list(RATIO),
                                                       num_attempts=10)
                images = fn.resize(images, size=[res, res])
                mirror = fn.random.coin_flip(probability=0.5)
                crop = None
            else:
                images = fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB)
                images = fn.resize(images, resize_shorter=round(res / TEST_CROP_FRACTION))
                mirror, crop = 0, (res, res)
            images = fn.crop_mirror_normalize(images, crop=crop, mirror=mirror, mean=0.0, std=255.0, dtype=types.FLOAT,
                                              output_layout="HWC" if self.channels_last else "CHW")
            return images, labs

        return pipe()

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self._start_batch = self._start_batch, 0
        return self._batches(self.plan(), start)

    def _to_torch(self, tensor_list, dtype=torch.float32) -> torch.Tensor:
        """A DALI output batch as a torch tensor on self.device (GPU outputs copied device to device)."""
        from nvidia.dali.tensors import TensorListCPU
        dense = tensor_list.as_tensor()
        if isinstance(tensor_list, TensorListCPU):  # CPU pipelines, and the reader's labels on GPU ones
            return torch.from_numpy(np.array(dense)).to(device=self.device, dtype=dtype)
        from nvidia.dali.plugin.pytorch import feed_ndarray
        native = torch.float32 if dtype == torch.float32 else torch.int32  # DALI's float images / int32 labels
        out = torch.empty(dense.shape(), dtype=native, device=self.device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out.to(dtype)

    def _batches(self, plan: EpochPlan, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if start >= plan.num_batches:
            return
        pipe = self._folder_pipeline(plan, start) if self.folder else self._array_pipeline(plan, start)
        try:
            pipe.build()
            idx_device = plan.indices.to(self.device)
            for b in range(start, plan.num_batches):
                sl = plan.batch_slice(b)
                count = sl.stop - sl.start
                try:
                    outputs = pipe.run()
                except RuntimeError as exc:
                    where = f"in {self.dataset.samples[0][0].rsplit('/', 2)[0]}" if self.folder else ""
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise DatasetError(f"DALI could not read a batch {where}({first}); find the bad file with --loader torch") from None
                x = self._to_torch(outputs[0])[:count]
                if self.channels_last:
                    x = x.permute(0, 3, 1, 2)
                if self.folder:
                    y = self._to_torch(outputs[1], torch.int64).reshape(-1)[:count]
                else:
                    y = self.labels.index_select(0, idx_device[sl])
                if self.yield_index:
                    yield x, y, plan.sample_index(b, dataset_size=len(self.dataset), pad=self.pad, device=self.device,
                                                  resized=self.folder and self.train)
                else:
                    yield x, y
        finally:
            del pipe
