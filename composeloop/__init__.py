"""composeloop: TensorFlow training steps composed from small pure functions.

Import the layers you need: `composeloop.step` (the stage algebra), `composeloop.engine`
(compile and run), `composeloop.parts` (models, data, recipes). This top-level module stays
free of TensorFlow so that `python -m composeloop` can report a bad config instantly.
"""

__version__ = "0.1.0"
