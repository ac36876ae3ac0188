"""Where on a glacier an estimated velocity is off: ice margin, domain edge or interior.

An emulator's relative L2 error is one number per glacier; where that error sits says which
situations the network has not learnt. :func:`error_by_location` splits the ice nodes of a grid
into three disjoint bands and reports, for each, its share of the ice nodes and of the squared
error, and the relative L2 error on the interior band alone:

- ``edge``: ice within ``edge_cells`` nodes of the domain edge, where the reference solver's
  boundary is stress-free (the ice ends there, whatever lies beyond the domain);
- ``margin``: other ice within ``margin_cells`` nodes (chessboard distance) of an ice-free node;
- ``interior``: the rest.

The shares of the squared error add up to 1 (the bands do not overlap); a band whose share of
the error is larger than its share of the nodes is where the estimate is worse than on average.
"""
from __future__ import annotations

import numpy as np

BANDS = ("margin", "edge", "interior")


def location_bands(thickness, *, margin_cells: int = 2, edge_cells: int = 3, periodic: bool = False) -> dict:
    """Boolean masks ``{"margin", "edge", "interior"}`` of the ice nodes (``thickness > 0``).

    Args:
        thickness: ice thickness (m), ``(ny, nx)``.
        margin_cells: ice nodes within this many nodes of an ice-free node (chessboard distance:
            diagonal neighbours count as one) form the margin band.
        edge_cells: ice nodes within this many nodes of the domain edge form the edge band (it
            takes precedence over the margin band).
        periodic: a periodic domain (ISMIP-HOM): no edge band, and distances wrap around.
    """
    from scipy.ndimage import distance_transform_cdt

    thickness = np.asarray(thickness, float)
    if thickness.ndim != 2:
        raise ValueError(f"thickness must be 2-D (ny, nx). Received shape {thickness.shape}")
    if margin_cells < 0 or edge_cells < 0:
        raise ValueError(f"margin_cells and edge_cells must be >= 0. Received: {margin_cells}, {edge_cells}")
    ice = thickness > 0
    ny, nx = ice.shape
    if periodic:
        edge = np.zeros_like(ice)
    else:
        jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        from_edge = np.minimum(np.minimum(jj, ny - 1 - jj), np.minimum(ii, nx - 1 - ii))
        edge = ice & (from_edge < edge_cells)
    if ice.all():
        margin = np.zeros_like(ice)
    else:
        # distance (in nodes) of every ice node to the nearest ice-free node; outside a finite
        # domain counts as neither; a periodic one is measured on its 3 x 3 tiling
        tiles = 3 if periodic else 1
        from_margin = distance_transform_cdt(np.tile(ice, (tiles, tiles)), metric="chessboard")
        if periodic:
            from_margin = from_margin[ny:2 * ny, nx:2 * nx]
        margin = ice & ~edge & (from_margin <= margin_cells)
    return dict(margin=margin, edge=edge, interior=ice & ~edge & ~margin)


def error_by_location(estimate, reference, thickness, *, margin_cells: int = 2, edge_cells: int = 3,
                      periodic: bool = False) -> dict:
    """The error of ``estimate`` against ``reference`` split by :func:`location_bands`.

    Args:
        estimate, reference: velocity components stacked on a leading axis, e.g.
            ``np.stack([ubar, vbar])``, each ``(ny, nx)`` (or a single ``(ny, nx)`` field).
        thickness: ice thickness (m), ``(ny, nx)``; the ice nodes are ``thickness > 0``.
        margin_cells, edge_cells, periodic: the bands (:func:`location_bands`).

    Returns:
        ``{"rel_l2": error over all ice, "rel_l2_interior": error on the interior band (None
        without interior ice), "error_share": {band: share of the squared error},
        "node_share": {band: share of the ice nodes}}``; the error shares are None where the
        estimate equals the reference.

    Example:
        >>> import numpy as np
        >>> h = np.zeros((15, 15)); h[4:11, 4:11] = 100.0  # 7 x 7 nodes of ice, clear of the edge
        >>> ref = np.stack([np.where(h > 0, 10.0, 0.0), np.zeros_like(h)])
        >>> r = error_by_location(1.05 * ref, ref, h)  # 5 % too fast everywhere
        >>> round(r["rel_l2"], 3), round(r["rel_l2_interior"], 3), round(r["node_share"]["interior"], 2)
        (0.05, 0.05, 0.18)
    """
    estimate = np.asarray(estimate, float)
    reference = np.asarray(reference, float)
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate and reference differ in shape: {estimate.shape} and {reference.shape}")
    if estimate.shape[-2:] != np.shape(thickness):
        raise ValueError(f"velocity grid {estimate.shape[-2:]} differs from the thickness grid {np.shape(thickness)}")
    bands = location_bands(thickness, margin_cells=margin_cells, edge_cells=edge_cells, periodic=periodic)
    ice = np.asarray(thickness) > 0
    err2 = ((estimate - reference) ** 2).reshape(-1, *ice.shape).sum(axis=0)
    ref2 = (reference**2).reshape(-1, *ice.shape).sum(axis=0)
    total_err, total_ref = err2[ice].sum(), ref2[ice].sum()
    n_ice = int(ice.sum())
    interior = bands["interior"]
    return dict(
        rel_l2=float(np.sqrt(total_err / total_ref)) if total_ref > 0 else None,
        rel_l2_interior=(float(np.sqrt(err2[interior].sum() / ref2[interior].sum()))
                         if interior.any() and ref2[interior].sum() > 0 else None),
        error_share={b: (float(err2[m].sum() / total_err) if total_err > 0 else None) for b, m in bands.items()},
        node_share={b: (float(m.sum() / n_ice) if n_ice else None) for b, m in bands.items()},
    )
