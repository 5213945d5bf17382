"""``POST /explain``: a Grad-CAM overlay of an upload, from a CPU copy of the model built at
the first request (Captum hooks the layer it explains, and ``/predict`` must never run
through those hooks)."""

from __future__ import annotations

import asyncio
import copy

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..core.errors import ConfigError
from ..core.optional import MissingDependencyError
from .upload import UploadError

HTTPError = UploadError


def add_explain_route(app: FastAPI, predictor, state: dict, read_images) -> None:
    """Add ``/explain`` to ``app``; ``state`` keeps the explainer once built, ``read_images``
    is the app's reader of uploads (the same limits and decoding as ``/predict``)."""

    def explainer():
        """Built at the first /explain: a CPU copy of the weights, because Captum hooks the
        layer it explains and /predict must never run through those hooks."""
        if "explainer" not in state:
            import torch

            from ..analysis.explain import Explainer

            loaded = copy.copy(predictor.loaded)
            model = copy.deepcopy(loaded.model).float()
            loaded.model = model.to("cpu", memory_format=torch.contiguous_format)
            state["explainer"] = Explainer.from_loaded(loaded)
        return state["explainer"]

    def run_explain(image, class_name: str | None):
        ex = explainer()
        target = None if class_name is None else ex.class_index(class_name)
        # The upload is already the model's input (the same evaluation transform).
        e = ex.explain_batch(image[None], target)[0]
        return e.png(), e

    @app.post("/explain")
    async def explain_upload(request: Request):
        """A Grad-CAM overlay (PNG) of the uploaded image for its predicted class, or for
        ``?class=NAME``; the class, its index and probability in X-Class (URL-quoted, as
        headers carry Latin-1 only), X-Class-Index and X-Prob."""
        from urllib.parse import quote

        decoded, _ = await read_images(request)
        image = decoded[0]
        if isinstance(image, UploadError):  # a form with several files: the first one's
            raise image
        loop = asyncio.get_running_loop()
        try:
            png, e = await loop.run_in_executor(
                None, run_explain, image, request.query_params.get("class")
            )
        except MissingDependencyError as exc:  # no Captum: the server's to fix
            raise HTTPError(501, str(exc)) from None
        except ConfigError as exc:  # an unknown class: the client's
            raise HTTPError(400, str(exc)) from None
        headers = {
            "X-Class": quote(e.label, safe=""),
            "X-Class-Index": str(e.index),
            "X-Prob": f"{e.prob:.6f}",
            "Cache-Control": "no-store",
        }
        return Response(png, media_type="image/png", headers=headers)
