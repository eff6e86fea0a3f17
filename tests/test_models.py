"""UNet3D: architecture, fast transposed conv, BatchNorm modes, bf16, classifier head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genesis_jax.models import GenesisClassifier, UNet3D, count_params
from genesis_jax.models.init import flat_draw, lecun_normal, uniform
from genesis_jax.models.unet import ConvTranspose2x, conv_transpose_2x, conv_transpose_reference


def test_official_model_has_19073665_parameters():
    model = nnx.eval_shape(lambda: UNet3D(rngs=nnx.Rngs(0)))
    assert count_params(model) == 19_073_665


def test_flat_drawn_initialisers_give_jaxs_numbers_bit_for_bit():
    # models/init.py draws rank-1 and reshapes (XLA:CPU compiles rank-5 draws slowly); the
    # weights must stay those of flax's and jax's own initialisers, so old seeds and runs
    # give the same models. Shapes: a conv kernel (rank 5) and a dense kernel (rank 2).
    from flax.nnx.nn.linear import default_kernel_init
    key = jax.random.key(7)
    for shape in ((3, 3, 3, 2, 5), (12, 7)):
        np.testing.assert_array_equal(lecun_normal(key, shape), default_kernel_init(key, shape, jnp.float32))
    shape = (2, 2, 2, 3, 2)
    np.testing.assert_array_equal(uniform(key, shape, -0.3, 0.3), jax.random.uniform(key, shape, jnp.float32, -0.3, 0.3))
    assert not np.array_equal(lecun_normal(key, (3, 3, 3, 2, 5)), lecun_normal(jax.random.key(8), (3, 3, 3, 2, 5)))
    assert flat_draw(jax.random.normal, key, (2, 3)).shape == (2, 3)


def test_fast_transposed_conv_equals_lax_conv_transpose_with_gradient():
    layer = ConvTranspose2x(16, 8, jnp.float32, nnx.Rngs(0))
    x = flat_draw(jax.random.normal, jax.random.key(1), (2, 4, 6, 2, 16))
    kernel, bias = layer.kernel[...], layer.bias[...]
    np.testing.assert_allclose(layer(x), conv_transpose_reference(x, kernel, bias), atol=1e-5)

    def fast_loss(x, k):
        return jnp.sum(jnp.sin(conv_transpose_2x(x, k, bias)))

    def slow_loss(x, k):
        return jnp.sum(jnp.sin(conv_transpose_reference(x, k, bias)))

    fast = jax.grad(fast_loss, argnums=(0, 1))(x, kernel)
    slow = jax.grad(slow_loss, argnums=(0, 1))(x, kernel)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_output_shape_range_and_shape_check():
    model = UNet3D(n_class=2, width=4, rngs=nnx.Rngs(0))
    y = nnx.jit(lambda m, x: m(x))(model, flat_draw(jax.random.uniform, jax.random.key(0), (2, 16, 24, 8, 1)))
    assert y.shape == (2, 16, 24, 8, 2) and y.dtype == jnp.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ValueError, match="divisible by 8"):
        model(jnp.zeros((1, 12, 16, 8, 1)))
    with pytest.raises(ValueError, match="bn_mode"):
        UNet3D(width=4, bn_mode="sync", rngs=nnx.Rngs(0))


def test_batch_mode_uses_batch_statistics_in_eval_running_mode_does_not():
    x = flat_draw(jax.random.uniform, jax.random.key(0), (2, 16, 16, 8, 1))
    for mode, eval_uses_batch in (("batch", True), ("running", False)):
        model = UNet3D(width=4, bn_mode=mode, rngs=nnx.Rngs(0))
        model.train()
        train_out = model(x)
        model.eval()
        mean_before = np.asarray(model.down_tr64.ops0.bn1.mean[...])
        eval_out = model(x)
        np.testing.assert_array_equal(mean_before, model.down_tr64.ops0.bn1.mean[...])  # eval never updates
        # "batch" mode in eval computes exactly what training computed for the same batch.
        assert np.allclose(train_out, eval_out, atol=1e-6) == eval_uses_batch, mode


def test_running_statistics_update_like_torch():
    """momentum 0.1 and the unbiased variance, as torch's BatchNorm."""
    from genesis_jax.models import BatchNorm
    bn = BatchNorm(3)
    x = flat_draw(jax.random.normal, jax.random.key(0), (4, 5, 3)) * 2.0 + 1.0
    bn(x)
    flat = np.asarray(x).reshape(-1, 3)
    np.testing.assert_allclose(bn.mean[...], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)


def test_bf16_computes_in_bf16_with_fp32_params_and_stats():
    model = UNet3D(width=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    ref = UNet3D(width=4, rngs=nnx.Rngs(0))
    x = flat_draw(jax.random.uniform, jax.random.key(0), (2, 16, 16, 8, 1))
    y, y_ref = model(x), ref(x)
    assert y.dtype == jnp.float32  # sigmoid output in fp32
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)) + jax.tree.leaves(nnx.state(model, nnx.BatchStat)):
        assert leaf.dtype == jnp.float32
    assert float(jnp.abs(y - y_ref).max()) < 0.05  # bf16 rounding, same weights
    model.eval()  # tracing must not update the running statistics
    jaxpr = str(jax.make_jaxpr(lambda v: model(v))(x))
    assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr


def test_classifier_uses_the_unet_encoder_weights():
    unet = UNet3D(width=4, rngs=nnx.Rngs(0))
    clf = GenesisClassifier(unet, n_class=3, rngs=nnx.Rngs(1))
    x = flat_draw(jax.random.uniform, jax.random.key(0), (2, 16, 16, 8, 1))
    logits = clf(x)
    assert logits.shape == (2, 3)
    assert clf.down_tr64.ops0.conv1.kernel is unet.down_tr64.ops0.conv1.kernel
    assert clf.dense_1.kernel.shape == (64, 1024)
    bottleneck, _ = unet.encode(x)
    features = jnp.mean(bottleneck, axis=(1, 2, 3))
    expected = clf.dense_2(jax.nn.relu(clf.dense_1(features)))
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_max_pooling_sends_the_gradient_to_the_first_maximum_as_pytorch_does():
    torch = pytest.importorskip("torch")
    from genesis_jax.models.unet import max_pool2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 6, 4, 3)).astype(np.float32)
    x[0, :2, :2, :2, 0] = 0.25   # a window of ties: the whole gradient to its first element
    x[1, 2:, 2:4, :2, 1] = np.maximum(x[1, 2:, 2:4, :2, 1], 0.0)  # ReLU-like ties at 0
    weights = rng.normal(size=(2, 2, 3, 2, 3)).astype(np.float32)
    pooled = max_pool2(jnp.asarray(x))
    grad = jax.grad(lambda v: jnp.sum(max_pool2(v) * weights))(jnp.asarray(x))
    xt = torch.tensor(x.transpose(0, 4, 1, 2, 3), requires_grad=True)  # NCDHW: X is depth
    yt = torch.nn.functional.max_pool3d(xt, 2)
    (yt * torch.tensor(weights.transpose(0, 4, 1, 2, 3))).sum().backward()
    np.testing.assert_array_equal(np.asarray(pooled), yt.detach().numpy().transpose(0, 2, 3, 4, 1))
    np.testing.assert_array_equal(np.asarray(grad), xt.grad.numpy().transpose(0, 2, 3, 4, 1))
    assert np.count_nonzero(np.asarray(grad)[0, :2, :2, :2, 0]) == 1


def test_a_train_step_compiled_without_optimizations_stays_finite():
    # XLA:CPU's unoptimised build recomputes pooled activations in the backward pass;
    # jnp.max's gradient (every element equal to the maximum, / their count) then found no
    # equal element and divided 0 by 0: the tiny run's parameters went non-finite at step
    # 2. models/unet.py max_pool2 keeps the index of each maximum instead.
    from genesis_jax.optim import recipe_sgd
    from genesis_jax.step import init_train_state, make_model_step
    from genesis_jax.tasks import restoration_loss
    tx = recipe_sgd()
    graphdef, state = init_train_state(UNet3D(width=2, rngs=nnx.Rngs(0)), tx)
    cubes = flat_draw(jax.random.uniform, jax.random.key(1), (4, 16, 16, 16))
    targets = jnp.clip(cubes + 0.1, 0.0, 1.0)
    step = make_model_step(graphdef, tx, restoration_loss).lower(state, cubes, targets).compile(
        compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
    for _ in range(3):
        state, loss = step(state, cubes, targets)
        assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state.params))
