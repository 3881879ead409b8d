from composeloop.app import Parts, load_config, run
from composeloop.parts.data import synthetic

config = load_config(["train.epochs=2", "report.tensorboard=false"])
summary = run(config, "runs/python", parts=Parts(data=synthetic(examples=512, shape=(8, 8), classes=10)))
print(summary["status"], summary["epochs"], round(summary["metrics"]["val_accuracy"], 4))
