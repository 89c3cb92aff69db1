"""certify: Cohen et al.'s CERTIFY for the Gaussian-smoothed model (see rrm_fast.smoothing),
sample by sample, in chunks that the progress file records."""
from __future__ import annotations

import time

from .batches import batch_generator, dataset_batches, n_batches, with_progress_bar
from .progress import ProgressFile
from .runner import batch_records


def evaluate_certified(model, ds, *, sigma, n0=100, n=100_000, alpha=0.001, batch_size=1000, radii=None,
                       device="cpu", seed=0, progress=False, progress_file: ProgressFile | None = None,
                       chunk=20) -> dict:
    """CERTIFY on every sample; certified accuracy per radius and ACR."""
    # imported here: scipy is needed only when certifying, not by every importer of rrm_fast.eval
    from ..smoothing import DEFAULT_RADII, Smooth, max_certifiable_radius, summarize_certification
    radii = tuple(DEFAULT_RADII if radii is None else radii)
    model.eval()
    smooth = Smooth(model, ds.num_classes, sigma)

    def certify_chunk(start, xs, ys):
        rec = {"label": [], "pred": [], "radius": []}
        for j in range(xs.shape[0]):  # each sample's noise is seeded by its own index
            pred, radius = smooth.certify(xs[j], n0, n, alpha, batch_size,
                                          generator=batch_generator(device, seed, start + j))
            rec["label"].append(int(ys[j]))
            rec["pred"].append(pred)
            rec["radius"].append(radius)
        return rec

    labels, preds, rads = [], [], []
    t0 = time.perf_counter()
    chunks = with_progress_bar(dataset_batches(ds, chunk, device), n_batches(len(ds), chunk), "certify", progress)
    for rec in batch_records(chunks, evaluate_batch=certify_chunk, progress_file=progress_file):
        labels += rec["label"]
        preds += rec["pred"]
        rads += rec["radius"]
    summary = summarize_certification(labels, preds, rads, radii)
    summary.update({"sigma": sigma, "n0": n0, "n_samples": n, "alpha": alpha,
                    "max_certifiable_radius": max_certifiable_radius(sigma, n, alpha),
                    "seconds": time.perf_counter() - t0})
    return summary
