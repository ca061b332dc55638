"""Task builders for FedAST experiments: image MLPs and a character model on one client pool.

Each builder returns a `fed.fedast.Task` whose data is laid out for a pool of
``num_clients`` clients: client ``c`` of the pool holds a Dirichlet(alpha)
label-skewed share of an image dataset, or one Shakespeare speaking role.
The quick preset's image tasks use MLPs (conv backward inside the vmapped
local training is ~25x slower on XLA:CPU); the CNNs of the paper's task mix
(LeNet-5 for Fashion-MNIST, a two-conv network for CIFAR-10) are meant for an
accelerator, where `fed.fedast_jobs.JobTrainer` runs jobs under one vmap.
`SPECS` names the tasks the experiment script can build.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import data as data_lib
from paperlab import federated
from paperlab.models import MLP
from fed.fedast_jobs import Task


def _ce(apply, params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y)


def _make_eval(apply, x_test, y_test):
  x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)

  @jax.jit
  def acc(params, x, y):
    return jnp.mean(jnp.argmax(apply(params, x), -1) == y)

  return lambda params: float(acc(params, x_test, y_test))


def _apply_fn(graphdef):
  def apply(params, x):
    return nnx.merge(graphdef, params)(x)
  return apply


class LeNet5(nnx.Module):
  """LeNet-5 for 28 x 28 x 1 images: conv 6@5x5 (same) - pool - conv 16@5x5 - pool - 120 - 84 - classes."""

  def __init__(self, channels: int, classes: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 6, (5, 5), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
    self.fc = MLP([16 * 5 * 5, 120, 84, classes], rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(jax.nn.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.avg_pool(jax.nn.relu(self.conv2(x)), (2, 2), (2, 2))
    return self.fc(x)


class TwoConvNet(nnx.Module):
  """The FedAST demo's CIFAR-10 model: two conv 64@5x5 + max-pool blocks, then 384 - 192 - classes."""

  def __init__(self, channels: int, classes: int, side: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 64, (5, 5), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(64, 64, (5, 5), padding="SAME", rngs=rngs)
    self.fc = MLP([64 * (side // 4) ** 2, 384, 192, classes], rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (3, 3), (2, 2), padding="SAME")
    x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (3, 3), (2, 2), padding="SAME")
    return self.fc(x)


MODELS = ("mlp", "lenet5", "two_conv")


def image_task(dataset: str, *, name: str, num_clients: int, hidden: tuple[int, ...], alpha: float,
               steps: int, batch_size: int, target: float, local_lr: float, global_lr: float,
               exp_mean: float, shift: float, seed: int, test_examples: int = 2000, model: str = "mlp") -> Task:
  """An image classifier task; each pool client holds ``steps x batch_size`` label-skewed examples.

  Client data comes from `paperlab.federated.dirichlet_sample_clients` (class mix
  ``Dir(alpha)`` per client), so a pool larger than the dataset allows still
  gets full clients. ``model``: ``"mlp"`` (``hidden`` widths, flattened
  inputs), ``"lenet5"`` or ``"two_conv"`` (images kept as ``H x W x C``).
  """
  if model not in MODELS:
    raise ValueError(f"model must be one of {MODELS}, got {model!r}.")
  train = data_lib.load(dataset, "train")
  test = data_lib.load(dataset, "test")
  n_test = min(test_examples, len(test))
  if model == "mlp":
    x, x_test = data_lib.flatten(train.images), data_lib.flatten(test.images[:n_test])
    net = MLP([x.shape[1], *hidden, train.num_classes], rngs=nnx.Rngs(seed))
  else:
    x, x_test = data_lib.to_float(train.images), data_lib.to_float(test.images[:n_test])
    channels = x.shape[-1]
    net = (LeNet5(channels, train.num_classes, rngs=nnx.Rngs(seed)) if model == "lenet5" else
           TwoConvNet(channels, train.num_classes, x.shape[1], rngs=nnx.Rngs(seed)))
  parts = federated.dirichlet_sample_clients(train.labels, num_clients, alpha, steps * batch_size, seed)
  packed = federated.pack_clients(x, train.labels, parts, batch_size=batch_size, steps=steps, seed=seed)
  graphdef, params = nnx.split(net)
  apply = _apply_fn(graphdef)
  return Task(name=name, init_params=nnx.to_pure_dict(params), loss_fn=functools.partial(_ce, apply),
              eval_fn=_make_eval(apply, x_test, test.labels[:n_test]),
              x=packed.x, y=packed.y, target=target, local_lr=local_lr, global_lr=global_lr,
              exp_mean=exp_mean, shift=shift)


class CharContextMLP(nnx.Module):
  """Next-character model: embed the last ``context`` characters, concatenate, MLP."""

  def __init__(self, vocab: int, context: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocab, embed, rngs=rngs)
    self.hidden = nnx.Linear(context * embed, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, vocab, rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    h = self.embed(ids).reshape(ids.shape[0], -1)
    return self.out(jax.nn.relu(self.hidden(h)))


def _windows(ids: np.ndarray, context: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  starts = rng.integers(0, len(ids) - context, size=count)
  x = np.stack([ids[s:s + context] for s in starts])
  return x.astype(np.int32), ids[starts + context].astype(np.int32)


def shakespeare_task(*, name: str, num_clients: int, context: int, embed: int, hidden: int, steps: int,
                     batch_size: int, target: float, local_lr: float, global_lr: float, exp_mean: float,
                     shift: float, seed: int, test_examples: int = 4000, min_chars: int = 200) -> Task:
  """Next-character prediction; pool client ``c`` is the ``c``-th longest speaking role.

  The first 80% of a role's text is its training data, the last 20% feeds the
  (pooled) test set. Characters seen fewer than 10 times map to one
  out-of-vocabulary id.
  """
  clients = data_lib.load_text("shakespeare")
  roles = sorted(clients, key=lambda k: (-len(clients[k]), k))
  roles = [r for r in roles if len(clients[r]) >= min_chars]
  if len(roles) < num_clients:
    raise ValueError(f"Only {len(roles)} Shakespeare roles have >= {min_chars} characters; "
                     f"lower num_clients ({num_clients}) or min_chars.")
  roles = roles[:num_clients]
  counts: dict[str, int] = {}
  for r in roles:
    for ch in clients[r]:
      counts[ch] = counts.get(ch, 0) + 1
  vocab = {ch: i + 1 for i, ch in enumerate(sorted(c for c, n in counts.items() if n >= 10))}
  rng = np.random.default_rng([seed, 7])
  per_client = steps * batch_size
  xs = np.zeros((num_clients, per_client, context), np.int32)
  ys = np.zeros((num_clients, per_client), np.int32)
  test_x, test_y = [], []
  for c, r in enumerate(roles):
    ids = np.array([vocab.get(ch, 0) for ch in clients[r]], np.int32)
    cut = int(0.8 * len(ids))
    xs[c], ys[c] = _windows(ids[:cut], context, per_client, rng)
    if len(ids) - cut > context + 1:
      tx, ty = _windows(ids[cut:], context, max(1, test_examples // num_clients), rng)
      test_x.append(tx)
      test_y.append(ty)
  model = CharContextMLP(len(vocab) + 1, context, embed, hidden, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  apply = _apply_fn(graphdef)
  shape = (num_clients, steps, batch_size)
  return Task(name=name, init_params=nnx.to_pure_dict(params), loss_fn=functools.partial(_ce, apply),
              eval_fn=_make_eval(apply, np.concatenate(test_x), np.concatenate(test_y)),
              x=xs.reshape(shape + (context,)), y=ys.reshape(shape), target=target, local_lr=local_lr,
              global_lr=global_lr, exp_mean=exp_mean, shift=shift)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A named task of the experiment script: data, model, local lr and job-duration model.

  ``exp_mean`` / ``shift`` are the FedAST demo's shifted-exponential delay of
  the task's dataset (``configFiles/fedast_het_demo.json``).
  """

  label: str
  dataset: str  # an image dataset of `paperlab.data`, or "shakespeare"
  model: str  # "mlp", "lenet5", "two_conv" or "char"
  local_lr: float
  exp_mean: float
  shift: float
  hidden: tuple[int, ...] = (64,)


SPECS = {
    "mnist_mlp": TaskSpec("MNIST-5k MLP 784-64-10", "mnist", "mlp", 0.1, 0.148, 0.074),
    "mnist_mlp200": TaskSpec("MNIST MLP 784-200-200-10", "mnist", "mlp", 0.1, 0.148, 0.074, (200, 200)),
    "fmnist_mlp": TaskSpec("Fashion-MNIST MLP 784-64-10", "fashion_mnist", "mlp", 0.1, 0.24, 0.12),
    "fmnist_lenet5": TaskSpec("Fashion-MNIST LeNet-5", "fashion_mnist", "lenet5", 0.06, 0.24, 0.12),
    "cifar10_cnn": TaskSpec("CIFAR-10 two-conv CNN", "cifar10", "two_conv", 0.1, 0.228, 0.114),
    "shakespeare_char": TaskSpec("Shakespeare next-char model", "shakespeare", "char", 0.5, 0.555, 0.2775),
}


def build(key: str, *, num_clients: int, steps: int, batch_size: int, alpha: float, target: float,
          global_lr: float, seed: int = 0) -> Task:
  """The task ``SPECS[key]`` on a pool of ``num_clients`` clients."""
  if key not in SPECS:
    raise ValueError(f"Unknown task {key!r}; choose from {tuple(SPECS)}.")
  spec = SPECS[key]
  common = dict(name=spec.label, num_clients=num_clients, steps=steps, batch_size=batch_size, target=target,
                local_lr=spec.local_lr, global_lr=global_lr, exp_mean=spec.exp_mean, shift=spec.shift, seed=seed)
  if spec.model == "char":
    return shakespeare_task(context=8, embed=8, hidden=64, **common)
  return image_task(spec.dataset, hidden=spec.hidden, alpha=alpha, model=spec.model, **common)
