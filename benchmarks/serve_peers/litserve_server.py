"""The LitServe peer: the same model behind ``litserve`` with LitServe's own batching
(``max_batch_size``, ``batch_timeout``), loaded and run through resnetlab's Python API.

    python litserve_server.py RUN PORT BACKEND PRECISION MAX_BATCH BATCH_TIMEOUT_S

``resnetlab.load(RUN).predict`` on the uploaded files' bytes: the same decoding, evaluation
transform, weights and runtime (``BACKEND``, ``PRECISION``: those ``resnetlab serve`` chose)
as the server it is compared with; only the serving around it is LitServe's.
"""

import sys

import litserve as ls

import resnetlab

RUN, PORT, BACKEND, PRECISION = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
MAX_BATCH, BATCH_TIMEOUT = int(sys.argv[5]), float(sys.argv[6])


class ImageClassifier(ls.LitAPI):
    def setup(self, device):
        self.run = resnetlab.load(RUN)
        self.run.predict([_blank(self.run)], backend=BACKEND, precision=PRECISION)  # warm

    def decode_request(self, request):
        return request["file"].file.read()

    def predict(self, images):  # the batch LitServe gathered: a list of uploads' bytes
        found = self.run.predict(images, backend=BACKEND, precision=PRECISION, batch_size=MAX_BATCH)
        return found.topk(5)

    def encode_response(self, topk):
        return {"topk": topk, "model": self.run.meta.model}


def _blank(run):
    import numpy as np

    c, h, w = run.meta.input_size
    return np.zeros((h, w, c), dtype=np.uint8)


if __name__ == "__main__":
    api = ImageClassifier(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT)
    server = ls.LitServer(api, accelerator="cpu", timeout=30)
    server.run(host="127.0.0.1", port=PORT, generate_client_file=False, log_level="warning")
