"""The U-Net and its layers: any grid size, exact mirror symmetry, zero velocity off the ice,
config round trips and safe-mode loading. Tiny networks (8 filters, depth 2) keep this fast."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from glacier_emulator.models import (
    CropTo,
    GlacierUNet,
    GridTranspose,
    IceMask,
    InputNormalization,
    LocalFlowPrior,
    MirrorAverage,
    MirrorStack,
    OutputScaling,
    PadToMultiple,
    build_unet,
)


def random_inputs(shape=(2, 37, 53), channels=4, seed=0):
    """Plausible random inputs: thickness with an ice-free band, slopes, sliding, A, dx."""
    rng = np.random.default_rng(seed)
    x = np.zeros(shape + (channels,), np.float32)
    x[..., 0] = 400.0 * rng.random(shape)
    x[:, :5, :, 0] = 0.0
    x[..., 1:3] = 0.1 * rng.normal(size=shape + (2,))
    x[..., 3] = 0.05 * rng.random(shape)
    if channels > 4:
        x[..., 4] = 78.0
    if channels > 5:
        x[..., 5] = 100.0
    return x


def mirror_x(a, odd):
    out = a[:, :, ::-1].copy()
    out[..., odd] *= -1
    return out


def mirror_y(a, odd):
    out = a[:, ::-1].copy()
    out[..., odd] *= -1
    return out


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(1)
    return build_unet(filters=8, depth=2)


@pytest.fixture(scope="module")
def tiny_levels():
    keras.utils.set_random_seed(2)
    return build_unet(in_channels=6, out_channels=8, filters=8, depth=2, symmetrise="xy")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 37, 53])
@pytest.mark.parametrize("mode", ["symmetric", "reflect"])
def test_pad_then_crop_is_identity(size, mode):
    x = np.random.default_rng(size).normal(size=(2, size, size + 3, 3)).astype("float32")
    padded = PadToMultiple(16, mode=mode)(x)
    assert padded.shape[1] % 16 == 0 and padded.shape[2] % 16 == 0
    assert padded.shape[1] >= size
    np.testing.assert_array_equal(CropTo(16)([padded, x]).numpy(), x)


def test_padding_is_a_mirror_extension():
    x = np.arange(5.0, dtype="float32").reshape(1, 1, 5, 1)
    sym = PadToMultiple(8, mode="symmetric")(x)[0, 0, :, 0].numpy()
    ref = PadToMultiple(8, mode="reflect")(x)[0, 0, :, 0].numpy()
    np.testing.assert_array_equal(sym, [0, 0, 1, 2, 3, 4, 4, 3])
    np.testing.assert_array_equal(ref, [1, 0, 1, 2, 3, 4, 3, 2])


def test_odd_grid_sizes(tiny, tiny_levels):
    assert tiny(random_inputs()).shape == (2, 37, 53, 2)
    assert tiny_levels(random_inputs(channels=6)).shape == (2, 37, 53, 8)
    assert tiny(random_inputs((1, 3, 2))).shape == (1, 3, 2, 2)


def test_zero_thickness_gives_exactly_zero_velocity(tiny, tiny_levels):
    for model, channels in ((tiny, 4), (tiny_levels, 6)):
        x = random_inputs(channels=channels)
        y = model(x).numpy()
        ice_free = x[..., 0] == 0
        assert ice_free.any() and np.all(y[ice_free] == 0.0)
        assert np.abs(y[~ice_free]).max() > 0
        x[..., 0] = 0.0
        assert np.all(model(x).numpy() == 0.0)


def test_mirror_x_flips_u(tiny):
    x = random_inputs()
    y = tiny(x).numpy()
    y_mirrored = tiny(mirror_x(x, [1])).numpy()
    scale = np.abs(y).max()
    np.testing.assert_allclose(mirror_x(y_mirrored, [0]), y, rtol=0, atol=1e-5 * scale)
    # not trivially symmetric: u changes under the mirror
    assert np.abs(y_mirrored[..., 0] - y[..., 0]).max() > 1e-3 * scale


def test_mirror_xy_for_levels(tiny_levels):
    x = random_inputs(channels=6)
    y = tiny_levels(x).numpy()
    u, v = list(range(4)), list(range(4, 8))
    scale = np.abs(y).max()
    yx = tiny_levels(mirror_x(x, [1])).numpy()
    np.testing.assert_allclose(mirror_x(yx, u), y, rtol=0, atol=1e-5 * scale)
    yy = tiny_levels(mirror_y(x, [2])).numpy()
    np.testing.assert_allclose(mirror_y(yy, v), y, rtol=0, atol=1e-5 * scale)


def transpose(a, pairs):
    """The glacier with x and y swapped: grid transposed, the (x, y) component pairs exchanged."""
    out = np.swapaxes(a, 1, 2).copy()
    for i, j in pairs:
        out[..., [i, j]] = out[..., [j, i]]
    return out


def rotate(a, pairs):
    """Rotation by 90 degrees (as learning.data.transform): grid rotated, (x, y) -> (-y, x)."""
    out = np.swapaxes(a[:, ::-1], 1, 2).copy()
    for i, j in pairs:
        out[..., [i, j]] = out[..., [j, i]]
        out[..., i] *= -1
    return out


@pytest.fixture(scope="module")
def tiny_dihedral():
    keras.utils.set_random_seed(3)
    return build_unet(in_channels=6, out_channels=8, filters=8, depth=2, symmetrise="dihedral",
                      prior=dict(smoothing=1.0))


def test_dihedral_model_commutes_with_all_eight_grid_symmetries(tiny_dihedral):
    """Rotating or mirroring a glacier (non-square grid) rotates or mirrors its velocity."""
    x = random_inputs((1, 21, 30), channels=6)
    y = tiny_dihedral(x).numpy()
    assert y.shape == (1, 21, 30, 8)
    scale = np.abs(y).max()
    uv = [(k, 4 + k) for k in range(4)]
    xt = transpose(x, [(1, 2)])
    yt = tiny_dihedral(xt).numpy()
    assert yt.shape == (1, 30, 21, 8)
    np.testing.assert_allclose(transpose(yt, uv), y, rtol=0, atol=1e-5 * scale)
    xr, yr = x, y
    for _ in range(3):
        xr, yr = rotate(xr, [(1, 2)]), rotate(yr, uv)
        np.testing.assert_allclose(tiny_dihedral(xr).numpy(), yr, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(tiny_dihedral(mirror_y(x, [2])).numpy(), mirror_y(y, [4, 5, 6, 7]),
                               rtol=0, atol=1e-5 * scale)
    # the "xy" network with the same weights is not transpose-equivariant: the test can fail
    xy = tiny_dihedral.with_symmetrise("xy")
    assert np.abs(transpose(xy(xt).numpy(), uv) - xy(x).numpy()).max() > 1e-3 * scale


def test_with_symmetrise_keeps_the_weights_and_averages_the_images(tiny_dihedral):
    x = random_inputs((1, 19, 19), channels=6)
    none = tiny_dihedral.with_symmetrise("none")
    assert [w.name for w in none.weights] == [w.name for w in tiny_dihedral.weights]
    for a, b in zip(none.get_weights(), tiny_dihedral.get_weights()):
        np.testing.assert_array_equal(a, b)
    # "dihedral" is the mean of the un-symmetrised network over the 8 transformed glaciers
    uv = [(k, 4 + k) for k in range(4)]
    u_odd, v_odd = [0, 1, 2, 3], [4, 5, 6, 7]
    images = []
    for t in (False, True):
        xt = transpose(x, [(1, 2)]) if t else x
        for fx in (False, True):
            for fy in (False, True):
                xi = mirror_y(mirror_x(xt, [1]) if fx else xt, [2]) if fy else (mirror_x(xt, [1]) if fx else xt)
                yi = none(xi).numpy()
                yi = mirror_y(yi, v_odd) if fy else yi
                yi = mirror_x(yi, u_odd) if fx else yi
                images.append(transpose(yi, uv) if t else yi)
    mean = np.mean(images, axis=0) * (x[..., :1] > 0)
    y = tiny_dihedral(x).numpy()
    np.testing.assert_allclose(y, mean, rtol=0, atol=1e-5 * np.abs(y).max())
    with pytest.raises(ValueError, match="symmetrise"):
        tiny_dihedral.with_symmetrise("rotations")


def test_dihedral_model_round_trips_through_a_keras_file(tiny_dihedral, tmp_path):
    path = tmp_path / "d.keras"
    tiny_dihedral.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.symmetrise == "dihedral"
    x = random_inputs((1, 17, 22), channels=6)
    np.testing.assert_allclose(loaded(x).numpy(), tiny_dihedral(x).numpy(), rtol=1e-6, atol=1e-6)


def test_grid_transpose_layer():
    x = random_inputs((2, 5, 7), channels=4)
    t = GridTranspose(pairs=[(1, 2)])
    y = t(x).numpy()
    assert y.shape == (2, 7, 5, 4)
    np.testing.assert_array_equal(y[:, 3, 1], x[:, 1, 3][:, [0, 2, 1, 3]])
    np.testing.assert_array_equal(t(y).numpy(), x)
    with pytest.raises(ValueError, match="pairs"):
        GridTranspose(pairs=[(1, 1)])


def test_mirror_layers_are_involutions():
    x = random_inputs(channels=4)
    stacked = MirrorStack(mode="xy", odd_x=[1], odd_y=[2])(x)
    assert stacked.shape[0] == 4 * x.shape[0]
    # averaging the mirrored copies of an equivariant map (identity) gives the input back
    back = MirrorAverage(mode="xy", odd_x=[1], odd_y=[2])(stacked).numpy()
    np.testing.assert_allclose(back, x, rtol=1e-6)


def test_scaling_and_mask_layers():
    x = np.array([[[[250.0, 0.05]]]], "float32")
    np.testing.assert_allclose(InputNormalization(scale=[500.0, 0.1])(x).numpy().ravel(), [0.5, 0.5])
    np.testing.assert_allclose(OutputScaling(100.0)(x).numpy().ravel(), [25000.0, 5.0])
    raw = np.array([[[[0.0], [10.0]]]], "float32")
    vel = np.ones((1, 1, 2, 2), "float32")
    np.testing.assert_array_equal(IceMask()([vel, raw]).numpy(), [[[[0, 0], [1, 1]]]])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(in_channels=3), "in_channels"),
        (dict(out_channels=3), "out_channels"),
        (dict(depth=-1), "depth"),
        (dict(filters=0), "filters"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(activation="swish2"), "activation"),
        (dict(blocks_per_level=0), "blocks_per_level"),
        (dict(symmetrise="z"), "symmetrise"),
        (dict(input_scale=[1.0]), "input_scale"),
        (dict(velocity_scale=-1.0), "scale"),
    ],
)
def test_constructor_validates_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        GlacierUNet(**{"filters": 8, "depth": 1, **kwargs})
    assert "Received" in str(info.value)


def test_layer_arguments_are_validated():
    with pytest.raises(ValueError, match="Received"):
        PadToMultiple(0)
    with pytest.raises(ValueError, match="Received"):
        PadToMultiple(4, mode="wrap")
    with pytest.raises(ValueError, match="Received"):
        InputNormalization(scale=[1.0, 0.0])
    with pytest.raises(ValueError, match="Received"):
        MirrorStack(mode="yz")


def test_get_config_round_trip(tiny):
    config = tiny.get_config()
    clone = GlacierUNet.from_config(config)
    assert clone.get_config() == config
    clone.set_weights(tiny.get_weights())
    x = random_inputs()
    np.testing.assert_array_equal(clone(x).numpy(), tiny(x).numpy())
    for layer in (PadToMultiple(8, mode="reflect"), CropTo(4), InputNormalization([2.0], [1.0]),
                  OutputScaling(3.0), IceMask(1), MirrorStack("x", [1], [2]), MirrorAverage("xy", [0], [1])):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_keras_file_round_trip_in_safe_mode(tiny, tmp_path):
    path = tmp_path / "tiny.keras"
    tiny.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    assert isinstance(loaded, GlacierUNet)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    x = random_inputs()
    np.testing.assert_array_equal(loaded(x).numpy(), tiny(x).numpy())


def test_input_normalization_is_not_trainable(tiny):
    names = [w.path for w in tiny.trainable_weights]
    assert all("conv" in n or "velocity_head" in n for n in names)


def test_log_inputs_normalise_the_logarithm(tmp_path):
    """A sliding coefficient seen as a logarithm: two glaciers whose c differ by a constant
    factor differ, after normalisation, by a constant log(factor) / scale; the option survives a
    safe-mode file round trip, and unknown names are refused."""
    layer = InputNormalization(scale=[500.0, 0.1, 0.1, 2.0], offset=[0.0, 0.0, 0.0, -1.0],
                               log_channels=[3])
    x = np.array([[[[250.0, 0.05, 0.0, 0.01]], [[250.0, 0.05, 0.0, 1.0]]]], "float32")
    out = layer(x).numpy().reshape(2, 4)
    np.testing.assert_allclose(out[:, 3], [(np.log(0.01) + 1.0) / 2.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out[:, 0], [0.5, 0.5])
    model = build_unet(filters=8, depth=2, log_inputs=["sliding_coefficient"],
                       input_offset=[0, 0, 0, -3.0], input_scale=[500, 0.1, 0.1, 1.5])
    assert model.get_config()["log_inputs"] == ["sliding_coefficient"]
    path = tmp_path / "log.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    xs = random_inputs()
    xs[..., 3] = np.abs(xs[..., 3]) + 1e-3
    np.testing.assert_array_equal(loaded(xs).numpy(), model(xs).numpy())
    with pytest.raises(ValueError, match="log_inputs"):
        build_unet(filters=8, depth=2, log_inputs=["bed"])


# ------------------------------------------------------------------ the physical prior
RHO_G = 910.0 * 9.81 * 1e-6


def slab(h=300.0, slope=0.05, c=1e6, a=78.0, shape=(40, 40)):
    x = np.zeros((1,) + shape + (5,), np.float32)
    x[..., 0] = h
    x[..., 1] = slope
    x[..., 3] = c
    x[..., 4] = a
    return x


def test_prior_is_the_shallow_ice_speed_of_a_slab():
    """Away from the edges (further than the smoothing reaches) the prior of a uniform slab is
    the analytic shallow-ice depth-averaged speed 2A/(n+2) (rho g |grad s|)^n H^(n+1), down the
    slope, for a large sliding coefficient; and the Weertman speed (rho g H |grad s| / c)^(1/m)
    for a tiny rate factor."""
    layer = LocalFlowPrior(smoothing=2.0, rho_g=RHO_G, glen_exponent=3.0, sliding_exponent=1 / 3)
    features, scale = (t.numpy() for t in layer(slab()))
    interior = (0, slice(10, 30), slice(10, 30))
    speed = features[..., 0] * scale[..., 0]
    expected = 2 * 78.0 / 5 * (RHO_G * 0.05) ** 3 * 300.0**4
    np.testing.assert_allclose(speed[interior], -expected, rtol=1e-4)  # -x: down the slope
    np.testing.assert_allclose(features[..., 1][interior], 0.0, atol=1e-6)
    x = slab(c=0.05, a=1e-9)
    features, scale = (t.numpy() for t in layer(x))
    np.testing.assert_allclose(-features[..., 0][interior] * scale[0, 0, 0, 0],
                               (RHO_G * 300.0 * 0.05 / 0.05) ** 3, rtol=1e-4)


def test_prior_scale_is_the_rms_over_ice_and_zero_ice_is_finite():
    x = slab(shape=(24, 24))
    x[0, :, 12:, 0] = 0.0  # half the domain ice-free
    layer = LocalFlowPrior(smoothing=0.0, rho_g=RHO_G, rate_factor=78.0, floor=0.1)
    features, scale = (t.numpy() for t in layer(x[..., :4]))  # no A channel: rate_factor used
    speed = np.hypot(features[0, ..., 0], features[0, ..., 1]) * scale[0, 0, 0, 0]
    ice = x[0, ..., 0] > 0
    assert np.all(speed[~ice] == 0)
    np.testing.assert_allclose(scale[0, 0, 0, 0], np.sqrt(np.mean(speed[ice] ** 2)) + 0.1, rtol=1e-5)
    features, scale = (t.numpy() for t in layer(np.zeros_like(x[..., :4])))
    assert np.all(features == 0) and np.allclose(scale, 0.1)


def test_unet_with_prior_is_mirror_symmetric_scales_and_round_trips(tmp_path):
    """With the prior the network predicts in units of the glacier's shallow-ice speed: exact
    x mirror symmetry still holds, the option survives a safe-mode round trip, and the output
    is the head output times the prior's scale (zero-initialised head gives exactly zero)."""
    keras.utils.set_random_seed(4)
    prior = dict(smoothing=1.5, rho_g=RHO_G, glen_exponent=3.0, sliding_exponent=1 / 3,
                 rate_factor=78.0)
    model = build_unet(in_channels=5, out_channels=4, filters=8, depth=2, prior=prior,
                       velocity_scale=1.0)
    x = random_inputs(channels=5)
    y = model(x).numpy()
    ym = mirror_x(model(mirror_x(x, [1])).numpy(), [0, 1])
    np.testing.assert_allclose(y, ym, rtol=1e-5, atol=1e-6 * np.abs(y).max())
    assert model.get_config()["prior"] == prior
    path = tmp_path / "prior.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    np.testing.assert_array_equal(loaded(x).numpy(), y)
    # the velocity is the head output times the scale: a head that outputs a constant 1 (zero
    # kernel, unit bias) gives v = the prior's scale on ice (u cancels under the x mirror)
    head = model.get_layer("velocity_head")
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    head.bias.assign(np.ones(head.bias.shape, "float32"))
    scale = LocalFlowPrior(**prior)(x)[1].numpy()
    out = model(x).numpy()
    ice = x[..., 0] > 0
    np.testing.assert_allclose(out[..., 2][ice], np.broadcast_to(scale[..., 0], ice.shape)[ice], rtol=1e-6)
    assert np.all(out[..., 2][~ice] == 0)
