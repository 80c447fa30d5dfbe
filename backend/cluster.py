"""Optional cluster-scale batch adapters on existing engines (Ray Data, Dask); no home-made scheduler.

Neither engine is a dependency: each is imported only inside the function that uses it. Both run the same
row function, ``MatteRows``, which loads the predictor once per actor / worker process and writes outputs
atomically, so a retried task never leaves half-written files. See docs/scale-out.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MatteRows:
    """Callable over a batch of rows ``{"image": [...], "trimap": [...], "output": [...]}`` (paths).

    Returns the same columns plus ``status`` ("ok" or an error message) — a failed image never fails the job.
    ``predictor_kwargs`` go to ``backend.worker.build_predictor_handler`` (weights, device, precision, ...).
    """

    def __init__(self, **predictor_kwargs: Any) -> None:
        from backend.worker import build_predictor_handler

        self.predictor = build_predictor_handler(**predictor_kwargs).predictor

    def __call__(self, batch: Mapping[str, Iterable[str]]) -> dict[str, list]:
        from backend import imageio

        images, trimaps, outputs = (list(batch[k]) for k in ("image", "trimap", "output"))
        status = []
        for image_path, trimap_path, out_path in zip(images, trimaps, outputs):
            try:
                res = self.predictor.predict(imageio.read_image(image_path), imageio.read_trimap(trimap_path))
                Path(out_path).parent.mkdir(parents=True, exist_ok=True)
                imageio.write_alpha(out_path, res.alpha)  # atomic: temp file + rename
                status.append("ok")
            except Exception as exc:  # noqa: BLE001 — per-row error, reported in the result
                log.warning("failed on %s: %s", image_path, exc)
                status.append(f"error: {exc}")
        return {"image": images, "trimap": trimaps, "output": outputs, "status": status}


def run_ray(rows: list[dict], *, num_gpus: float = 1.0, concurrency: int = 1, **predictor_kwargs: Any) -> list[dict]:
    """Ray Data: one actor per GPU (model loaded once in ``__init__``), ``batch_size=1`` because image sizes
    differ. ``rows``: dicts with image / trimap / output paths. Returns rows with ``status``."""
    import ray  # optional dependency

    ds = ray.data.from_items(rows)
    out = ds.map_batches(MatteRows, fn_constructor_kwargs=predictor_kwargs, batch_size=1, num_gpus=num_gpus,
                         concurrency=concurrency, batch_format="numpy")
    return [dict(r) for r in out.iter_rows()]


_DASK_CACHE: dict[tuple, MatteRows] = {}


def _dask_task(row: dict, predictor_kwargs: tuple) -> dict:
    # one model per Dask worker process, reused by every task it runs
    fn = _DASK_CACHE.get(predictor_kwargs)
    if fn is None:
        fn = _DASK_CACHE[predictor_kwargs] = MatteRows(**dict(predictor_kwargs))
    res = fn({k: [row[k]] for k in ("image", "trimap", "output")})
    return {k: v[0] for k, v in res.items()}


def run_dask(rows: list[dict], client: Any, *, gpu_resource: bool = True, retries: int = 1,
             **predictor_kwargs: Any) -> list[dict]:
    """Dask distributed: workers started with ``--resources GPU=1``; each task asks for ``GPU: 1``."""
    kwargs = tuple(sorted(predictor_kwargs.items()))
    resources = {"GPU": 1} if gpu_resource else None
    futures = [client.submit(_dask_task, row, kwargs, resources=resources, retries=retries, pure=False)
               for row in rows]
    return client.gather(futures)
