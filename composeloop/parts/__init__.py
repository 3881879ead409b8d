"""Ready-made parts: models, datasets and recipes built from the step algebra."""
