"""The peer "as the tutorials write it": FastAPI + torchvision, one image per request, the model
called in the request handler (eager PyTorch fp32), run under uvicorn.

    python fastapi_tutorial.py RUN PORT

Only the model comes from resnetlab (its weights and metadata, through ``resnetlab.load``); the
transforms are torchvision's, as the tutorials write them (for the small and CIFAR presets
``Resize((h, w))`` on the PIL image gives resnetlab's own evaluation pixels).
"""

import io
import sys

import torch
import torchvision.transforms as T
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image

import resnetlab

run = resnetlab.load(sys.argv[1])
model = run.model.eval()
meta = run.meta
c, h, w = meta.input_size
transform = T.Compose([T.Resize((h, w)), T.ToTensor(), T.Normalize(meta.mean, meta.std)])
app = FastAPI()


@app.post("/predict")
async def predict(file: UploadFile = File(...)):  # noqa: B008 (as the tutorials write it)
    image = Image.open(io.BytesIO(await file.read())).convert("L" if c == 1 else "RGB")
    x = transform(image).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    top = torch.topk(probs, 5)
    return {
        "topk": [
            {"label": run.classes[i], "index": int(i), "prob": float(p)}
            for p, i in zip(top.values, top.indices)
        ]
    }


@app.get("/health")
async def health():
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
