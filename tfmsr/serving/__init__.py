"""Serving: the SavedModel writer, signatures, warm-up requests, TF Serving config, batch scoring."""
