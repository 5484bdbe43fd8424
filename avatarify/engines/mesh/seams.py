"""Exact backward map where the mesh's map breaks: per pixel in the grid cells a seam crosses.

The mesh engine computes its backward map on a grid (one sample every 2-4 px) and upsamples it
bilinearly. Where the map is smooth that is exact to a fraction of a pixel. Where it breaks, it is
not: where the face's triangles hide the band behind them (the far cheek of a turned head), or where
a squeezed triangle meets a stretched one, each grid sample takes the triangle over its own
centre, and bilinear interpolation between samples of different triangles blends two unrelated
sources. The edge then runs along the grid as stair steps of the grid's step, with a fringe of
in-between pixels: a jagged line down the cheek.

Input: per grid sample the index of the triangle drawn over it (drawing order; `len(triangles)`
where none is), the moved triangles (T, 3, 2) in avatar px, and each triangle's affine offset map
(T + 1, 6), the last row 0 (the samples no triangle covers stay put).
Output: the pixels of the cells whose four samples' triangles disagree by more than SEAM_PX at the
cell's centre, each with the map of the last-drawn of those triangles that contains it (as the
rasterizer would give at full resolution), found once a frame; written into each upsampled window.
"""
from __future__ import annotations

import numpy as np

# Two triangles' maps that differ by more than this (px) at a cell's centre make the cell a seam:
# bilinear interpolation there errs by up to half of it.
SEAM_PX = 0.5
# Inside the face (all four samples the face's) only a break this large counts: there the map's kinks
# between neighbouring triangles err by a fraction of a pixel and the eyes and mouth are painted over
# it, but where a stretched lip meets a squeezed or hidden one (a mouth opened far wider than the
# photo's, s12's lower lip under d6) the break ran along the grid as stair steps with a dark fringe.
# 4 px: the same clean edge as 1 px there, at 1.3x the seam pixels of the silhouette alone (3.2x at 1 px).
FACE_SEAM_PX = 4.0


def edge_functions(corners: np.ndarray) -> np.ndarray:
    """(T + 1, 3, 3) float32: per triangle its three edges as (a, b, c) with a·x + b·y + c >= 0 inside
    (either winding); one last row that holds everywhere (the samples no triangle covers)."""
    start, end = corners, np.roll(corners, -1, axis=1)
    a = start[..., 1] - end[..., 1]
    b = end[..., 0] - start[..., 0]
    c = -(a * start[..., 0] + b * start[..., 1])
    doubled_area = np.sum(c, axis=1, keepdims=True)  # the sum of the edge constants is twice the area
    sign = np.where(doubled_area < 0, -1.0, 1.0)
    edges = np.stack([a * sign, b * sign, c * sign], axis=-1)
    everywhere = np.array([[[0.0, 0.0, 1.0]] * 3])
    return np.concatenate([edges, everywhere]).astype(np.float32)


def seam_pixels(ids: np.ndarray, face: np.ndarray, edges: np.ndarray, coefficients: np.ndarray,
                origin: tuple[float, float], step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels of the grid's seam cells and their exact offsets: (v, u) int32 pixel rows and
    columns from the grid's first pixel (the upsampled map's (0, 0)) and (n, 2) float32 offsets.
    `ids`: (rows, cols) triangle per grid sample; `face`: (T,) whether a triangle is the face's (a
    seam cell has the face's triangles among its four: with others, the silhouette, beyond
    SEAM_PX; only the face's, beyond FACE_SEAM_PX);
    `origin`: avatar px of pixel (0, 0)."""
    none = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros((0, 2), np.float32))
    differs = ids[:-1, :-1] != ids[:-1, 1:]
    differs |= ids[:-1, :-1] != ids[1:, :-1]
    differs |= ids[:-1, :-1] != ids[1:, 1:]
    differs |= ids[:-1, 1:] != ids[1:, :-1]
    is_face = np.append(face, False)[ids]
    differs &= is_face[:-1, :-1] | is_face[:-1, 1:] | is_face[1:, :-1] | is_face[1:, 1:]
    all_face = is_face[:-1, :-1] & is_face[:-1, 1:] & is_face[1:, :-1] & is_face[1:, 1:]
    cell_r, cell_c = np.nonzero(differs)
    if not cell_r.size:
        return none
    candidates = np.stack([ids[cell_r, cell_c], ids[cell_r, cell_c + 1], ids[cell_r + 1, cell_c],
                           ids[cell_r + 1, cell_c + 1]], axis=-1)  # (N, 4)
    # Sample j sits at pixel (j + 0.5)·step − 0.5 (cv2.resize's convention); a cell's centre halfway on.
    centre_x = np.float32(origin[0] - 0.5) + (cell_c + 1).astype(np.float32) * step
    centre_y = np.float32(origin[1] - 0.5) + (cell_r + 1).astype(np.float32) * step
    maps = coefficients[candidates]  # (N, 4, 6)
    # The spread of the four maps at the centre, per axis; column by column (numpy's reductions
    # over a short last axis cost ~10x more here).
    at_x = [maps[:, k, 0] * centre_x + maps[:, k, 1] * centre_y + maps[:, k, 2] for k in range(4)]
    at_y = [maps[:, k, 3] * centre_x + maps[:, k, 4] * centre_y + maps[:, k, 5] for k in range(4)]
    spread_x = np.maximum(np.maximum(at_x[0], at_x[1]), np.maximum(at_x[2], at_x[3])) - np.minimum(
        np.minimum(at_x[0], at_x[1]), np.minimum(at_x[2], at_x[3]))
    spread_y = np.maximum(np.maximum(at_y[0], at_y[1]), np.maximum(at_y[2], at_y[3])) - np.minimum(
        np.minimum(at_y[0], at_y[1]), np.minimum(at_y[2], at_y[3]))
    limit = np.where(all_face[cell_r, cell_c], FACE_SEAM_PX, SEAM_PX).astype(np.float32)
    seam = np.flatnonzero((spread_x > limit) | (spread_y > limit))
    if not seam.size:
        return none
    cell_r, cell_c, candidates = cell_r[seam], cell_c[seam], candidates[seam]
    # The pixels between a cell's samples: (s_j, s_j+1], s_j = (j + 0.5)·step − 0.5.
    span = np.arange(step)
    first_u = np.floor((cell_c + 0.5) * step - 0.5).astype(np.int32) + 1
    first_v = np.floor((cell_r + 0.5) * step - 0.5).astype(np.int32) + 1
    shape = (len(seam), step, step)  # per cell its pixels' (row, column) within it
    u = np.broadcast_to(first_u[:, None, None] + span[None, None, :], shape).reshape(len(seam), -1)
    v = np.broadcast_to(first_v[:, None, None] + span[None, :, None], shape).reshape(len(seam), -1)
    x, y = (origin[0] + u).astype(np.float32), (origin[1] + v).astype(np.float32)
    # Per pixel and candidate: inside the candidate's triangle? Drawing order decides among those
    # that contain it (the rasterizer keeps the last drawn); "no triangle" ranks below any.
    nobody = len(coefficients) - 1
    rank = np.where(candidates == nobody, -1, candidates)
    best = np.full(u.shape, -2, np.int64)
    for k in range(4):  # one candidate at a time: (N, P) arrays instead of (N, P, 4, 3)
        lines = edges[candidates[:, k]]  # (N, 3 edges, 3)
        inside = np.ones(u.shape, bool)
        for e in range(3):
            inside &= lines[:, e, 0:1] * x + lines[:, e, 1:2] * y + lines[:, e, 2:3] >= -1e-3
        best = np.where(inside & (rank[:, k:k + 1] > best), rank[:, k:k + 1], best)
    found = best > -2
    owner = np.where(best == -1, nobody, best)[found]
    x, y = x[found], y[found]
    chosen = coefficients[owner]
    offsets = np.empty((len(owner), 2), np.float32)
    offsets[:, 0] = chosen[:, 0] * x + chosen[:, 1] * y + chosen[:, 2]
    offsets[:, 1] = chosen[:, 3] * x + chosen[:, 4] * y + chosen[:, 5]
    return v[found], u[found], offsets


def put_seam_pixels(offset: np.ndarray, pixels: tuple[np.ndarray, np.ndarray, np.ndarray], first: tuple[int, int],
                    shift: tuple[float, float] = (0.0, 0.0)) -> None:
    """Write the seam pixels that fall in `offset` (h, w, 2), an upsampled window whose pixel (0, 0)
    is the grid's pixel `first` (row, col); `shift`: a constant the caller added to every offset."""
    v, u, exact = pixels
    v, u = v - first[0], u - first[1]
    inside = (v >= 0) & (v < offset.shape[0]) & (u >= 0) & (u < offset.shape[1])
    if inside.any():
        offset[v[inside], u[inside]] = exact[inside] + np.float32(shift)
