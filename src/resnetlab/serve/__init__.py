"""HTTP prediction service (FastAPI + uvicorn) with micro-batching and a web page."""
