"""The forward pass of :class:`glacier_emulator.models.GlacierUNet` in JAX (GPU recipe).

Same layers, same order, same weight layout (Keras ``Conv2D`` kernels are ``(kh, kw, in, out)``,
which is JAX's ``HWIO``), so weights move between the two by layer name: ``down{l}_conv{b}``,
``bottom_conv{b}``, ``up{l}_conv{b}``, ``velocity_head``. ``training/gpu/export_weights.py`` and
``training/gpu/import_weights.py`` do the moving; ``tests/test_gpu_recipe.py`` checks that both
forward passes agree.

Supports the architecture options of the shipped models: ``symmetrise`` ``"none"`` or ``"x"``,
``padding_mode="symmetric"``, linear or log-scaled inputs, ``gelu``/``relu``/``silu``, and the
local shallow-ice prior (``prior``, :class:`glacier_emulator.models.layers.LocalFlowPrior`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # Keras' default gelu is exact
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def layer_names(config: dict) -> list:
    """The names of the convolution layers of a GlacierUNet config, input to output."""
    depth, blocks = int(config["depth"]), int(config["blocks_per_level"])
    names = [f"down{lv}_conv{b}" for lv in range(depth) for b in range(blocks)]
    names += [f"bottom_conv{b}" for b in range(blocks)]
    names += [f"up{lv}_conv{b}" for lv in reversed(range(depth)) for b in range(blocks)]
    return names + ["velocity_head"]


def init_params(config: dict, key) -> dict:
    """Glorot-uniform kernels and zero biases (Keras' Conv2D defaults), float32."""
    depth, blocks, f0 = int(config["depth"]), int(config["blocks_per_level"]), int(config["filters"])
    ks = int(config["kernel_size"])
    shapes = {}
    cin = int(config["in_channels"]) + (2 if config.get("prior") else 0)
    for lv in range(depth):
        for b in range(blocks):
            shapes[f"down{lv}_conv{b}"] = (ks, ks, cin, f0 * 2**lv)
            cin = f0 * 2**lv
    for b in range(blocks):
        shapes[f"bottom_conv{b}"] = (ks, ks, cin, f0 * 2**depth)
        cin = f0 * 2**depth
    for lv in reversed(range(depth)):
        for b in range(blocks):
            extra = f0 * 2**lv if b == 0 else 0  # the skip connection is concatenated
            shapes[f"up{lv}_conv{b}"] = (ks, ks, cin + extra, f0 * 2**lv)
            cin = f0 * 2**lv
    shapes["velocity_head"] = (1, 1, cin, int(config["out_channels"]))
    params = {}
    for name, shape in shapes.items():
        key, sub = jax.random.split(key)
        fan_in, fan_out = shape[0] * shape[1] * shape[2], shape[0] * shape[1] * shape[3]
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params[name] = {"kernel": jax.random.uniform(sub, shape, jnp.float32, -limit, limit),
                        "bias": jnp.zeros((shape[3],), jnp.float32)}
    return params


def _conv(x, p, activation=None):
    y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
    return y if activation is None else activation(y)


def _mirror_x(x, odd):
    sign = np.ones(x.shape[-1], np.float32)
    sign[list(odd)] = -1.0
    return x[:, :, ::-1, :] * sign


def local_flow_prior(raw, prior: dict):
    """``LocalFlowPrior``: (features (B, ny, nx, 2), scale (B, 1, 1, 1)) of raw inputs."""
    h = raw[..., :1]
    ice = (h > 0).astype(raw.dtype)
    stress = h * raw[..., 1:3]
    from glacier_emulator.numerics.grid import gaussian_kernel_1d  # numpy only (tfstub suffices)

    w = gaussian_kernel_1d(float(prior.get("smoothing", 2.0)))
    if w.size > 1:
        k = jnp.asarray(np.outer(w, w)[:, :, None, None] * np.ones((1, 1, 1, 2)), raw.dtype)
        stress = jax.lax.conv_general_dilated(stress, k, (1, 1), "SAME", feature_group_count=2,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
    stress = stress * float(prior["rho_g"])
    mag = jnp.sqrt(jnp.sum(stress**2, axis=-1, keepdims=True) + 1e-20)
    c = jnp.maximum(raw[..., 3:4], 1e-6)
    a = raw[..., 4:5] if raw.shape[-1] >= 5 else float(prior.get("rate_factor", 78.0))
    n = float(prior.get("glen_exponent", 3.0))
    speed = (2.0 * a / (n + 2.0) * mag**n * h
             + (mag / c) ** (1.0 / float(prior.get("sliding_exponent", 1.0 / 3.0)))) * ice
    count = jnp.maximum(jnp.sum(ice, axis=(1, 2, 3), keepdims=True), 1.0)
    scale = jnp.sqrt(jnp.sum(speed**2, axis=(1, 2, 3), keepdims=True) / count)
    scale = scale + float(prior.get("floor", 0.1))
    return -stress / mag * speed / scale, scale


def apply(params: dict, config: dict, x):
    """Velocity (m/yr) ``(B, ny, nx, out_channels)`` of inputs ``(B, ny, nx, in_channels)`` in
    physical units (the channel order of ``GlacierUNet``)."""
    sym = config.get("symmetrise", "x")
    if sym not in ("none", "x"):
        raise ValueError(f"symmetrise={sym!r} is not supported here")
    if config.get("padding_mode", "symmetric") != "symmetric":
        raise ValueError("only padding_mode='symmetric' is supported here")
    act = ACTIVATIONS[config.get("activation", "gelu")]
    depth, blocks = int(config["depth"]), int(config["blocks_per_level"])
    out_ch = int(config["out_channels"])
    raw = x
    if sym == "x":
        x = jnp.concatenate([x, _mirror_x(x, [1])], axis=0)
    scale = np.asarray(config["input_scale"], np.float32)
    offset = np.asarray(config["input_offset"], np.float32)
    logs = set(config.get("log_inputs") or ())
    if logs:
        # the channel order of glacier_emulator.models.unet.INPUT_CHANNELS
        names = ("thickness", "surface_slope_x", "surface_slope_y", "sliding_coefficient",
                 "rate_factor", "grid_spacing")[: x.shape[-1]]
        is_log = np.array([n in logs for n in names])
        x = jnp.where(is_log, jnp.log(jnp.maximum(x, 1e-6)), x)
    x = (x - offset) * (1.0 / scale)
    prior = config.get("prior")
    if prior:
        raw_stacked = jnp.concatenate([raw, _mirror_x(raw, [1])], axis=0) if sym == "x" else raw
        features, prior_scale = local_flow_prior(raw_stacked, prior)
        x = jnp.concatenate([x, features], axis=-1)
    ny, nx = x.shape[1], x.shape[2]
    m = 2**depth
    py, px = (-ny) % m, (-nx) % m
    pad = ((0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0))
    if py or px:
        x = jnp.pad(x, pad, mode="symmetric")
    skips = []
    for lv in range(depth):
        for b in range(blocks):
            x = _conv(x, params[f"down{lv}_conv{b}"], act)
        skips.append(x)
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    for b in range(blocks):
        x = _conv(x, params[f"bottom_conv{b}"], act)
    for lv in reversed(range(depth)):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        x = jnp.concatenate([x, skips[lv]], axis=-1)
        for b in range(blocks):
            x = _conv(x, params[f"up{lv}_conv{b}"], act)
    x = x[:, pad[1][0]: pad[1][0] + ny, pad[2][0]: pad[2][0] + nx, :]
    x = _conv(x, params["velocity_head"])
    if prior:
        x = x * prior_scale
    if sym == "x":
        a, b_ = jnp.split(x, 2, axis=0)
        x = 0.5 * (a + _mirror_x(b_, range(out_ch // 2)))
    x = x * float(config["velocity_scale"])
    return x * (raw[..., :1] > 0).astype(x.dtype)


def save_params(path, params: dict, config: dict, max_bytes: int = 15 * 2**20) -> list:
    """``name/kernel``, ``name/bias`` arrays and the config (JSON) in ``.npz`` files.

    Split into ``path``, ``path.part1.npz``, ... of at most about ``max_bytes`` each (the device
    tool returns files of at most 16 MiB). Returns the paths written.
    """
    import json

    arrays = {f"{n}/{k}": np.asarray(v) for n, p in params.items() for k, v in p.items()}
    parts, size = [{}], 0
    for key in sorted(arrays, key=lambda k: arrays[k].nbytes):
        if size + arrays[key].nbytes > max_bytes and parts[-1]:
            parts.append({})
            size = 0
        parts[-1][key] = arrays[key]
        size += arrays[key].nbytes
    path = str(path)
    paths = [path] + [f"{path[:-4]}.part{i}.npz" for i in range(1, len(parts))]
    for p, part in zip(paths, parts):
        np.savez(p, __config__=np.array(json.dumps(config)), __parts__=np.array(len(parts)), **part)
    return paths


def load_params(path) -> tuple:
    """``(params, config)`` from :func:`save_params` (all parts) or ``export_weights.py``."""
    import json

    path = str(path)
    data = np.load(path)
    files = [data]
    if "__parts__" in data.files:
        files += [np.load(f"{path[:-4]}.part{i}.npz") for i in range(1, int(data["__parts__"]))]
    config = json.loads(str(data["__config__"]))
    params = {}
    for d in files:
        for key in d.files:
            if key.startswith("__"):
                continue
            name, kind = key.split("/")
            params.setdefault(name, {})[kind] = jnp.asarray(d[key], jnp.float32)
    return params, config
