"""A project of your own on composeloop: `python train.py +experiment=mine`.

Your configs live in conf/ beside this script (an experiment, a model); your parts in
my_parts.py (a model, a gradient transform, a metric and a step builder). composeloop's
command line gives them every service its own experiments get: checkpoints and exact
resume, early stopping, the NaN policy, stop signals, progress, TensorBoard, curves,
summaries, sweeps (-m), strategies, precision and accumulation.

  python train.py +experiment=mine                           # train
  python train.py +experiment=mine hydra.run.dir=runs/a      # Ctrl-C it, run it again: resumes
  python train.py -m +experiment=mine seed=0,1               # a sweep, with its summary
  python train.py +experiment=mine mode=lr_find              # the learning-rate range test: lr_find.png
"""

import composeloop.app

if __name__ == "__main__":
    composeloop.app.main(config_path="conf")
