"""Where an estimate's error lies: margin, domain edge and interior bands of the ice."""
import numpy as np
import pytest

from glacier_emulator.fields import relative_l2
from glacier_emulator.verification.error_location import error_by_location, location_bands


def disc(n=21, radius=7.0, centre=None):
    centre = (n // 2, n // 2) if centre is None else centre
    jj, ii = np.mgrid[:n, :n]
    r = np.hypot(jj - centre[0], ii - centre[1])
    return np.where(r <= radius, 100.0 * (1 - (r / (radius + 1)) ** 2), 0.0)


def test_bands_split_the_ice_without_overlap():
    for h in (disc(), disc(centre=(3, 10))):  # closed, and cut by the domain edge
        bands = location_bands(h)
        masks = np.stack(list(bands.values()))
        assert (masks.sum(axis=0) == (h > 0)).all()  # every ice node in exactly one band, no other node


def test_margin_band_is_the_ice_next_to_ice_free_nodes():
    h = np.zeros((21, 21))
    h[5:16, 4:17] = 50.0  # a block of ice 3+ nodes clear of the domain edge
    bands = location_bands(h, margin_cells=2)
    assert not bands["edge"].any()
    # the outer two rings of the block are margin, the rest interior
    ring = np.zeros_like(h, bool)
    ring[5:16, 4:17] = True
    ring[7:14, 6:15] = False
    assert (bands["margin"] == ring).all()
    assert bands["interior"].sum() == 7 * 9
    assert location_bands(h, margin_cells=0)["margin"].sum() == 0
    assert location_bands(disc())["interior"][10, 10]


def test_edge_band_takes_precedence_over_the_margin():
    h = disc(centre=(2, 10))
    bands = location_bands(h, margin_cells=2, edge_cells=3)
    jj = np.arange(h.shape[0])[:, None] * np.ones(h.shape[1], int)
    assert bands["edge"].any()
    assert (jj[bands["edge"]] < 3).all()
    assert not (bands["margin"] & (jj < 3)).any()


def test_uniform_relative_error_is_shared_as_the_nodes_are():
    h = disc(centre=(4, 9))
    ice = h > 0
    reference = np.stack([np.where(ice, 30.0, 0.0), np.where(ice, -40.0, 0.0)])  # speed 50 on all ice
    result = error_by_location(1.1 * reference, reference, h)
    assert result["rel_l2"] == pytest.approx(0.1)
    assert result["rel_l2_interior"] == pytest.approx(0.1)
    for band in ("margin", "edge", "interior"):
        assert result["error_share"][band] == pytest.approx(result["node_share"][band])
    assert sum(result["error_share"].values()) == pytest.approx(1.0)


def test_error_at_the_margin_alone_is_all_margin():
    h = disc()
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(2,) + h.shape) * (h > 0)
    estimate = reference.copy()
    margin = location_bands(h)["margin"]
    estimate[:, margin] += 0.5
    result = error_by_location(estimate, reference, h)
    assert result["error_share"] == pytest.approx({"margin": 1.0, "edge": 0.0, "interior": 0.0})
    assert result["rel_l2_interior"] == 0.0
    assert result["rel_l2"] == pytest.approx(relative_l2(estimate, reference, h > 0))


def test_exact_estimate_has_no_error_shares_and_mismatched_grids_are_refused():
    h = disc()
    reference = np.stack([h, h])
    assert error_by_location(reference, reference, h)["error_share"]["interior"] is None
    with pytest.raises(ValueError, match="thickness grid"):
        error_by_location(reference, reference, h[:-1])
    with pytest.raises(ValueError, match="differ in shape"):
        error_by_location(reference[:1], reference, h)


def test_periodic_domain_has_no_edge_band_and_wraps_the_margin():
    h = np.full((12, 12), 80.0)
    h[:, 5:7] = 0.0  # an ice-free strip across the domain
    finite = location_bands(h)
    periodic = location_bands(h, periodic=True)
    assert finite["edge"].any() and not periodic["edge"].any()
    # beside the strip (columns 5-6) columns 3-4 and 7-8 are margin; the columns 3+ nodes from
    # it, 0-2 and 9-11, are interior: the domain edge is no edge when it is periodic
    assert periodic["margin"][:, [3, 4, 7, 8]].all()
    assert periodic["interior"][:, [0, 1, 2, 9, 10, 11]].all()
    h2 = np.full((12, 12), 80.0)
    h2[:, 0] = 0.0  # ice-free at the west edge: across the boundary, column 11 is margin too
    assert location_bands(h2, periodic=True)["margin"][:, [1, 2, 10, 11]].all()
    assert not location_bands(h2, periodic=True)["margin"][:, 5].any()
