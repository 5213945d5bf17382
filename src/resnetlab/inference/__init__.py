"""Using a trained model: loading it back, exports, one backend per runtime and the automatic
choice, batched prediction, test-time augmentation, the hub folder and the OpenVINO IR.
Nothing here imports the training package."""
