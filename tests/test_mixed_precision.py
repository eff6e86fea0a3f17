"""fp32 weights, bf16 arithmetic: every weight gradient is formed and summed across devices
in fp32 (genesis_jax/models/mixed.py), while the forward pass and the activations'
gradients stay what bf16 autodiff computes.

The numbers: each layer's weight gradient equals fp32 arithmetic on the bf16 operands
(bf16 x bf16 products are exact in fp32), where plain autodiff's bf16 result is off by
~1e-3. The mechanism: in the compiled 8-device step, the all-reduces as the partitioner
placed them (program.partitioned_collectives; XLA:CPU widens bf16 all-reduces only later,
so its optimised HLO would hide a bf16 sum) sum fp32 arrays only, and the same check on
plain autodiff finds the bf16 ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genesis_jax import program, sharding
from genesis_jax.configs.base import base_config
from genesis_jax.deform import DeformConfig
from genesis_jax.models import GenesisClassifier, ResNet18UNet, UNet3D, mixed
from genesis_jax.models.conv import conv3x3x3
from genesis_jax.models.init import flat_draw
from genesis_jax.models.unet import conv_transpose_2x
from genesis_jax.optim import recipe_sgd
from genesis_jax.step import init_train_state, make_train_step
from genesis_jax.tasks import PretrainTask

LAYERS = {  # name: (op(x, w), x shape, w shape)
    "conv 3x3x3 native": (lambda x, w: conv3x3x3(x, w, "native"), (2, 8, 8, 6, 4), (3, 3, 3, 4, 5)),
    "conv 3x3x3 stacked2d": (lambda x, w: conv3x3x3(x, w, "stacked2d"), (2, 8, 8, 6, 4), (3, 3, 3, 4, 5)),
    "conv 3x3 (2D U-Net)": (lambda x, w: conv3x3x3(x, w), (2, 8, 8, 4), (3, 3, 4, 5)),
    "conv 7x7 stride 2 (ResNet stem)": (lambda x, w: mixed.conv(x, w, 2, 3), (2, 16, 16, 3), (7, 7, 3, 4)),
    "conv 1x1 stride 2 (shortcut)": (lambda x, w: mixed.conv(x, w, 2, 0), (2, 16, 16, 3), (1, 1, 3, 4)),
    "conv 3x3 stride 2, odd size": (lambda x, w: mixed.conv(x, w, 2, 1), (2, 15, 15, 3), (3, 3, 3, 4)),
    "transposed conv 2x (einsum)": (lambda x, w: conv_transpose_2x(x, w, jnp.zeros(w.shape[-1])), (2, 4, 4, 4, 3),
                                    (2, 2, 2, 3, 5)),
    "pointwise / dense (einsum)": (lambda x, w: mixed.einsum("...i,io->...o", x, w), (2, 4, 4, 4, 6), (6, 3)),
    "bias": (mixed.add_bias, (2, 4, 4, 4, 3), (3,)),
}


def bf16_draw(key, shape):
    return flat_draw(jax.random.normal, key, shape).astype(jnp.bfloat16)


@pytest.mark.parametrize("name", LAYERS)
def test_weight_gradients_are_fp32_sums_of_the_bf16_products(name):
    op, x_shape, w_shape = LAYERS[name]
    x = bf16_draw(jax.random.key(0), x_shape)
    w = flat_draw(jax.random.normal, jax.random.key(1), w_shape) * 0.3
    y, vjp = jax.vjp(op, x, w)
    g = bf16_draw(jax.random.key(2), y.shape)
    dx, dw = vjp(g)
    assert y.dtype == dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    # fp32 arithmetic on the same bf16 numbers: what an fp32 accumulation of them gives.
    as_f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    _, exact_vjp = jax.vjp(op, as_f32(x), as_f32(w.astype(jnp.bfloat16)))
    exact = exact_vjp(as_f32(g))[1]
    scale = float(jnp.abs(exact).max())
    assert float(jnp.abs(dw - exact).max()) <= 1e-6 * scale
    # Plain autodiff (w cast to bf16 outside) rounds the gradient to bf16: the check above sees that.
    plain_y, plain_vjp = jax.vjp(lambda x, w: op(x, w.astype(jnp.bfloat16)), x, w)
    plain_dx, plain_dw = plain_vjp(g)
    assert float(jnp.abs(plain_dw - exact).max()) > 1e-4 * scale
    # The forward pass and the input's gradient are plain autodiff's, bit for bit.
    np.testing.assert_array_equal(y, plain_y)
    np.testing.assert_array_equal(dx, plain_dx)


def test_fp32_layers_are_plain_autodiff():
    op, x_shape, w_shape = LAYERS["conv 3x3x3 native"]
    x, w = (flat_draw(jax.random.normal, jax.random.key(i), s) for i, s in enumerate((x_shape, w_shape)))
    assert "custom_vjp" not in str(jax.make_jaxpr(op)(x, w))
    assert "custom_vjp" in str(jax.make_jaxpr(op)(x.astype(jnp.bfloat16), w))


# ------------------------------------------------------------ the compiled 8-device programs

def mesh8():
    return sharding.make_mesh(jax.devices()[:8])


def pretrain_step_all_reduces():
    """{dtype: bytes} of the all-reduces of the bf16 width-4 pre-training step on 8
    devices, as partitioned; and the parameters' bytes."""
    tx = recipe_sgd()
    graphdef, state = init_train_state(UNet3D(width=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), tx)
    task = PretrainTask(base_config())
    task.deform = DeformConfig(batch_mode="vmap", local_blocks=50)
    mesh = mesh8()
    step = make_train_step(graphdef, tx, task, jax.random.key(0), mesh)
    cubes = jax.ShapeDtypeStruct((16, 16, 16, 16), jnp.float32, sharding=sharding.batch_sharded(mesh))
    lowered = step.lower(sharding.replicated_specs(state, mesh), cubes, 0)
    return program.bytes_by_dtype(program.partitioned_collectives(lowered)), program.tree_bytes(state.params)


def test_the_bf16_pretraining_step_sums_every_gradient_in_fp32():
    reduced, param_bytes = pretrain_step_all_reduces()
    assert set(reduced) == {"f32"}, reduced
    # Every fp32 parameter's gradient once (plus BatchNorm's sums and the loss).
    assert param_bytes <= reduced["f32"] <= 1.05 * param_bytes, (reduced, param_bytes)


def model_all_reduces(which):
    """({dtype: bytes} of the all-reduces of a bf16 model's gradient on 8 devices, as
    partitioned; the parameters' bytes)."""
    mesh = mesh8()
    if which == "classifier":
        model = GenesisClassifier(UNet3D(width=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), n_class=3, rngs=nnx.Rngs(1))
        inputs = jax.ShapeDtypeStruct((8, 16, 16, 16, 1), jnp.float32, sharding=sharding.batch_sharded(mesh))
    else:
        model = ResNet18UNet(width=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        inputs = jax.ShapeDtypeStruct((8, 32, 32, 1), jnp.float32, sharding=sharding.batch_sharded(mesh))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def grad(params, rest, x):
        loss = lambda m: jnp.mean(jnp.square(m(x).astype(jnp.float32)))  # noqa: E731
        return nnx.state(nnx.grad(loss)(nnx.merge(graphdef, params, rest)), nnx.Param)

    grad = jax.jit(grad, out_shardings=sharding.replicated(mesh))
    lowered = grad.lower(sharding.replicated_specs(params, mesh), sharding.replicated_specs(rest, mesh), inputs)
    return program.bytes_by_dtype(program.partitioned_collectives(lowered)), program.tree_bytes(params)


@pytest.mark.parametrize("which", ["classifier", "resnet18_unet"])
def test_the_other_models_sum_their_gradients_in_fp32(which):
    reduced, param_bytes = model_all_reduces(which)
    assert set(reduced) == {"f32"} and reduced["f32"] >= param_bytes, reduced


def test_the_check_sees_plain_autodiffs_bf16_gradient_sums(monkeypatch):
    monkeypatch.setattr(mixed, "linear", lambda forward, weight_grad, x, w, input_grad=None: forward(x, w.astype(x.dtype)))
    reduced, param_bytes = model_all_reduces("classifier")
    # Every kernel and bias but BatchNorm's (conv, dense): bf16, 2 bytes each.
    assert reduced.get("bf16", 0) > 0.45 * param_bytes, reduced

