"""The peer server of ``benchmarks/service_load.py``: LitServe serving the same published classifier.

usage: python benchmarks/peer_litserve.py --bundle DIR --port P [--workers 2] [--api-servers 2]
           [--max-batch-size 32] [--batch-timeout-ms 5]

Configured at its best measured on two cores for this model: the frozen TorchScript classifier
(the one ``simclr serve`` runs, ``service.frozen.freeze``), two inference workers with one torch
thread each, two API server processes, the same batch size and wait as ours. Its ``decode_request``
is what LitServe's image examples do: PIL opens, converts and resizes the whole image (no
reduced-scale JPEG decoding). A benchmark-only dependency (``pip install litserve``, the ``bench``
extra); the product never imports it.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time
# (a starlette Request: the form is parsed and handed over, the file part as an UploadFile).
import argparse
import io
import sys
from pathlib import Path

import litserve as ls
import numpy as np
import torch
from fastapi import Request
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def decode(data: bytes, size: int) -> np.ndarray:
    """Shorter side to ``size``, centre crop, as ``core.images.resize_center``, from the fully decoded image."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8).transpose(2, 0, 1)


class ClassifierAPI(ls.LitAPI):
    def __init__(self, bundle_dir: str, threads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.bundle_dir, self.threads = bundle_dir, threads

    def setup(self, device: str) -> None:
        from core.bundles import load_bundle
        from core.models import normalize
        from service.frozen import freeze

        torch.set_num_threads(self.threads)
        bundle = load_bundle(Path(self.bundle_dir))
        self.size = bundle.manifest.image_size
        self.mean, self.std = bundle.manifest.normalization.mean, bundle.manifest.normalization.std
        self.names = bundle.manifest.class_names
        self.model = freeze(bundle.classifier, self.size)
        self.normalize = normalize

    def decode_request(self, request: Request) -> np.ndarray:
        return decode(request["file"].file.read(), self.size)

    def batch(self, inputs: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(inputs))

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        return self.model(self.normalize(x, self.mean, self.std)).float().softmax(dim=1).numpy()

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, probs: np.ndarray) -> dict:
        top = np.argsort(-probs)[:3]
        return {"predictions": [{"label": self.names[i], "class_id": int(i), "probability": float(probs[i])} for i in top]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="a published bundle folder (models/<version>)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2, help="inference worker processes (default: %(default)s)")
    p.add_argument("--api-servers", type=int, default=2, help="API server processes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--batch-timeout-ms", type=float, default=5.0, help="(default: %(default)s)")
    a = p.parse_args()
    api = ClassifierAPI(a.bundle, a.threads, max_batch_size=a.max_batch_size, batch_timeout=a.batch_timeout_ms / 1000, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=a.workers, timeout=30)
    server.run(host="127.0.0.1", port=a.port, num_api_servers=a.api_servers, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
