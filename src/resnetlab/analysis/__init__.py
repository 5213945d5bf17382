"""Looking at a trained model: evaluation, Grad-CAM, the HTML report."""
