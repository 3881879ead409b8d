"""Forward stages: context in, a dict of named outputs out.

A forward stage calls models on the batch (or on earlier phases' outputs) and names what it
produces, so that losses and metrics can pick their inputs by name.
"""

from __future__ import annotations

from collections.abc import Callable

from composeloop.step.records import Context, Tensors

Forward = Callable[[Context], Tensors]


def call_model(model: str = "model", inputs: str = "x", output: str = "logits") -> Forward:
    """Calls one model on one batch feature.

    Args:
      model: name of the model in the step's models.
      inputs: name of the batch feature fed to it.
      output: name given to the model's output.

    Returns:
      A forward stage giving ``{output: model(batch[inputs], training=...)}``.

    Example:
      >>> forward = call_model("model", inputs="x", output="logits")
      >>> forward(context)["logits"].shape  # (batch, classes)
      TensorShape([8, 3])
    """

    def forward(context: Context) -> Tensors:
        network = context.models[model]
        return {output: network(context.batch[inputs], training=context.training)}

    return forward
