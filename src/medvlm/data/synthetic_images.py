"""Procedural frontal chest radiographs, rendered for a whole batch at once with numpy.

Each image is built as a map of X-ray attenuation ("density") in patient coordinates: body outline,
two lung fields cut by the diaphragm domes, mediastinum and spine, heart shadow, faint ribs and clavicles,
lung markings, and the case's findings, as strong as an `Appearance` says. An acquisition model then turns density into an 8-bit image:
rotation/shift/zoom of the patient in the field of view, collimation, a contrast curve (exposure, gamma),
blur and noise. Rendering is directly at the output size: every shape edge is a linear ramp one pixel wide
(the pixel-coverage antialiasing of a straight edge) and the textures are smooth, so nothing aliases; this is
about five times faster than rendering at 2x and block-averaging, for the same look at 64 px.

Coordinates: x runs from the viewer's left (-1) to the viewer's right (+1), y from top (-1) to bottom (+1).
The patient's left is on the viewer's right (radiological convention), so the patient's left lung has
x > 0, the heart bulges towards +x, and a case with side "left" is drawn at x > 0. No image is ever flipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from medvlm.data.synthetic_cases import LABELS, SIZES, ZONES, Case

_FINDING = {name: index for index, name in enumerate(LABELS)}
_LARGE = SIZES.index("large")


@dataclass(frozen=True)
class Acquisition:
    """Ranges (low, high) from which every image draws its acquisition settings uniformly."""

    zoom: tuple[float, float]  # > 1 magnifies the patient (narrower field of view)
    rotation_deg: tuple[float, float]
    shift: tuple[float, float]  # patient offset in normalised units (image half-width = 1), each axis
    collimation: tuple[float, float]  # shutter width per image edge, as a fraction of the image width
    shutter_level: tuple[float, float]  # brightness of the collimated border
    gain: tuple[float, float]  # exposure: brightness per unit density
    offset: tuple[float, float]
    gamma: tuple[float, float]  # contrast curve exponent
    blur_px: tuple[float, float]  # Gaussian blur sigma in output pixels
    noise: tuple[float, float]  # additive (electronic) noise std, in [0, 1] brightness units
    quantum_noise: tuple[float, float]  # signal-dependent noise std per sqrt(brightness)

    def describe(self) -> dict[str, list[float]]:
        return {name: list(bounds) for name, bounds in asdict(self).items()}


IN_DOMAIN = Acquisition(
    zoom=(0.97, 1.07),
    rotation_deg=(-3.0, 3.0),
    shift=(-0.03, 0.03),
    collimation=(0.0, 0.05),
    shutter_level=(0.0, 0.06),
    gain=(0.8, 0.95),
    offset=(0.02, 0.08),
    gamma=(0.85, 1.1),
    blur_px=(0.0, 0.5),
    noise=(0.005, 0.02),
    quantum_noise=(0.0, 0.015),
)
"""The "home hospital": pre-training, in-domain classification and VQA images."""

OUT_OF_DOMAIN = Acquisition(
    zoom=(0.8, 0.9),
    rotation_deg=(-7.0, 7.0),
    shift=(-0.06, 0.06),
    collimation=(0.04, 0.12),
    shutter_level=(0.85, 0.95),
    gain=(0.75, 0.9),
    offset=(0.12, 0.2),
    gamma=(1.5, 1.9),
    blur_px=(0.6, 0.9),
    noise=(0.02, 0.035),
    quantum_noise=(0.015, 0.03),
)
"""Another "hospital": wider field of view, bright shutters, flatter and darker contrast curve, softer and
noisier images. Same anatomy and findings. The reference (shift 1) of `shifted_acquisition`."""


def shifted_acquisition(shift: float) -> Acquisition:
    """The out-of-domain acquisition at `shift` in [0, 1]: every range endpoint is
    (1 - shift) * IN_DOMAIN + shift * OUT_OF_DOMAIN. Shift 0 gives IN_DOMAIN and shift 1 OUT_OF_DOMAIN exactly
    (1 * a + 0 * b is a in floating point), so the default shift 1 keeps today's images."""
    home, away = asdict(IN_DOMAIN), asdict(OUT_OF_DOMAIN)
    return Acquisition(**{name: tuple((1 - shift) * home_end + shift * away_end
                                      for home_end, away_end in zip(home[name], away[name], strict=True))
                          for name in home})


@dataclass(frozen=True)
class Appearance:
    """How strongly the findings show (params `data.synthetic`); the defaults draw today's images exactly."""

    lesion_contrast: float = 1.0
    """Multiplies each finding's signal: nodule density, consolidation opacity, lung air an effusion replaces,
    a pneumothorax's rim darkening, missing markings, pleural line and denser collapsed lung. Fractions of
    air or markings removed saturate at 1."""
    lesion_size: float = 1.0
    """Multiplies nodule and consolidation radii."""
    effusion_height: float = 1.0
    """Multiplies the effusion's fluid height above the diaphragm dome."""
    pneumothorax_collapse: float = 1.0
    """Multiplies 1 - f, the share of its size the collapsed lung loses (f stays in (0, 1) for values <= 2)."""
    heart_overlap: float = 0.0
    """h in [0, 1]: a cardiomegaly heart's width scale is (1 - h) * _CARDIAC_SCALE + h * _CARDIAC_SCALE_OVERLAPPED
    + h * _CARDIAC_JITTER * U(-1, 1) for its size; normal hearts keep U(_NORMAL_HEART)."""


# Finding geometry, indexed by size (small, moderate, large) or zone (upper, middle, lower).
_NORMAL_HEART = (0.92, 1.05)
_CARDIAC_SCALE = np.array([1.25, 1.4, 1.55], dtype=np.float32)
_CARDIAC_SCALE_OVERLAPPED = np.array([0.985, 1.035, 1.085], dtype=np.float32)
"""heart_overlap 1: a small enlargement centred on the normal range, moderate and large 0.05 and 0.1 above."""
_CARDIAC_JITTER = 0.065
"""Half-width of the per-image jitter at heart_overlap 1: half the normal range's width, so there the small
size's range is the normal range and 62 % (moderate) and 23 % (large) of theirs overlap it; sizes stay ordered,
so the size words of captions stay true."""
_EFFUSION_HEIGHT = np.array([0.04, 0.2, 0.42], dtype=np.float32)
_PNEUMOTHORAX_COLLAPSE = np.array([0.8, 0.66, 0.52], dtype=np.float32)
_NODULE_RADIUS = np.array([0.05, 0.075, 0.11], dtype=np.float32)
_CONSOLIDATION_RADIUS = np.array([0.12, 0.17, 0.23], dtype=np.float32)
_ZONE_Y = np.array([-0.38, -0.1, 0.14], dtype=np.float32)

_LUNG_X, _LUNG_Y, _LUNG_RX, _LUNG_RY = 0.39, -0.05, 0.29, 0.58
_HEART_RX = 0.26


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], size=n).astype(np.float32)[:, None, None]


def _inside(signed_distance: np.ndarray, edge: float) -> np.ndarray:
    """Indicator of signed_distance > 0 with a linear ramp `edge` wide: the pixel-coverage antialiasing of
    a straight edge, and much cheaper than a logistic."""
    return np.clip(0.5 + signed_distance / edge, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry, edge: float) -> np.ndarray:
    radius = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return _inside((1.0 - radius) * np.minimum(rx, ry), edge)


def _bilinear_matrix(size: int, coarse: int) -> np.ndarray:
    """size×coarse matrix that linearly interpolates a coarse grid onto `size` samples."""
    positions = np.linspace(0, coarse - 1, size)
    return np.maximum(0.0, 1.0 - np.abs(positions[:, None] - np.arange(coarse)[None, :])).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, coarse: int) -> np.ndarray:
    """Low-frequency noise (unit-ish std): a coarse Gaussian grid upsampled bilinearly."""
    grid = rng.standard_normal((n, coarse, coarse), dtype=np.float32)
    interpolate = _bilinear_matrix(size, coarse)
    return interpolate @ grid @ interpolate.T


def _gaussian_blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per-image separable Gaussian blur as two batched matrix products (rows renormalised at the edges)."""
    size = images.shape[-1]
    offsets = np.arange(size, dtype=np.float32)
    distance2 = (offsets[:, None] - offsets[None, :]) ** 2
    kernel = np.exp(-distance2[None] / (2.0 * np.maximum(sigma, 1e-3) ** 2))
    kernel /= kernel.sum(axis=-1, keepdims=True)
    return kernel @ images @ np.swapaxes(kernel, -1, -2)


def _case_arrays(cases: Sequence[Case | None]) -> tuple[np.ndarray, ...]:
    """finding, side (-1 right, +1 left, 0 none), zone and size indices (-1: none) of each case; None: no finding."""
    finding = np.array([-1 if c is None else _FINDING[c.finding] for c in cases])
    side = np.array([0 if c is None or c.side is None else (1 if c.side == "left" else -1) for c in cases],
                    dtype=np.float32)
    zone = np.array([-1 if c is None or c.zone is None else ZONES.index(c.zone) for c in cases])
    size = np.array([-1 if c is None or c.size is None else SIZES.index(c.size) for c in cases])
    return finding, side, zone, size


def _lesion_centre(rng: np.random.Generator, side: np.ndarray, zone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(side)
    cx = side * rng.uniform(0.32, 0.48, n).astype(np.float32)
    cy = (_ZONE_Y[zone] + rng.uniform(-0.04, 0.04, n)).astype(np.float32)
    return cx[:, None, None], cy[:, None, None]


def _heart_scale(primary: tuple[np.ndarray, ...], second: tuple[np.ndarray, ...], overlap: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Heart width relative to normal: drawn from the normal range, or by size when either finding is cardiomegaly."""
    n = len(primary[0])
    cardiomegaly = _FINDING["cardiomegaly"]
    size = np.where(primary[0] == cardiomegaly, primary[3], np.where(second[0] == cardiomegaly, second[3], -1))
    normal = rng.uniform(*_NORMAL_HEART, n)
    enlarged = (1 - overlap) * _CARDIAC_SCALE[size] + overlap * _CARDIAC_SCALE_OVERLAPPED[size]  # exact at 0
    if overlap > 0:  # no extra draw at 0: the images stay today's
        enlarged = enlarged + overlap * _CARDIAC_JITTER * rng.uniform(-1.0, 1.0, n)
    return np.where(size >= 0, enlarged, normal)


@dataclass(frozen=True)
class _Chest:
    """Per-image grids, and the maps that lung findings change in place (lungs, domes, air: one per side ±1)."""

    x: np.ndarray
    y: np.ndarray
    edge: float
    lungs: dict[int, np.ndarray]
    dome_level: dict[int, np.ndarray]
    air: dict[int, np.ndarray]
    texture: np.ndarray
    density: np.ndarray


def _draw_lung_findings(chest: _Chest, findings: tuple[np.ndarray, ...], appearance: Appearance,
                        rng: np.random.Generator) -> None:
    """Draw each image's lateralised finding in `findings` (_case_arrays; -1: none) into `chest`."""
    finding, side, zone, size = findings
    x, y, edge, air, texture, density = chest.x, chest.y, chest.edge, chest.air, chest.texture, chest.density
    contrast = appearance.lesion_contrast
    # Every multiplier is exact at 1, so the default appearance reproduces today's bits.
    effusion_height = _EFFUSION_HEIGHT * appearance.effusion_height
    collapse = 1 - appearance.pneumothorax_collapse * (1 - _PNEUMOTHORAX_COLLAPSE)
    nodule_radius = _NODULE_RADIUS * appearance.lesion_size
    consolidation_radius = _CONSOLIDATION_RADIUS * appearance.lesion_size
    for s in (-1, 1):
        here = np.flatnonzero(side == s)
        if here.size == 0:
            continue
        cx = s * _LUNG_X
        lung = chest.lungs[s][here]
        xs, ys, k = x[here], y[here], size[here]
        kind = finding[here]
        # Pleural effusion: fluid replaces lung air from the base up, with a meniscus higher laterally.
        sel = kind == _FINDING["pleural effusion"]
        if sel.any():
            lateral = s * (xs[sel] - cx) / _LUNG_RX
            level = chest.dome_level[s][here][sel] - effusion_height[k[sel]][:, None, None] - 0.1 * lateral
            fluid = _inside(ys[sel] - level, edge * 2)
            replaced = np.minimum(contrast * fluid, 1.0)
            air[s][here[sel]] *= 1.0 - replaced
            texture[here[sel]] *= 1.0 - replaced
        # Pneumothorax: the lung collapses towards the hilum, leaving a dark rim without lung markings,
        # bounded by a thin visceral pleural line.
        sel = kind == _FINDING["pneumothorax"]
        if sel.any():
            f = collapse[k[sel]][:, None, None]
            ccx, ccy = cx - s * (1 - f) * _LUNG_RX, _LUNG_Y + 0.5 * (1 - f) * _LUNG_RY
            radius = np.sqrt(((xs[sel] - ccx) / (_LUNG_RX * f)) ** 2 + ((ys[sel] - ccy) / (_LUNG_RY * f)) ** 2)
            collapsed = _inside((1.0 - radius) * _LUNG_RX * f, edge)
            gap = lung[sel] * (1.0 - collapsed)
            pleural_line = np.exp(-(((radius - 1.0) * _LUNG_RX * f) / 0.015) ** 2) * lung[sel]
            texture[here[sel]] *= 1.0 - np.minimum(contrast * gap, 1.0)
            density[here[sel]] += (0.12 * contrast) * pleural_line + (0.08 * contrast) * collapsed * lung[sel] \
                - (0.1 * contrast) * gap
        # Nodule / mass: a dense round lesion, lobulated when large.
        sel = kind == _FINDING["nodule"]
        if sel.any():
            ncx, ncy = _lesion_centre(rng, side[here][sel], zone[here][sel])
            dx, dy = xs[sel] - ncx, ys[sel] - ncy
            angle = np.arctan2(dy, dx)
            phase = rng.uniform(0, 2 * np.pi, sel.sum()).astype(np.float32)[:, None, None]
            lobulation = 0.1 * (k[sel] == _LARGE)[:, None, None] * np.cos(3 * angle + phase)
            r = nodule_radius[k[sel]][:, None, None] * (1.0 + lobulation)
            density[here[sel]] += (0.4 * contrast) * _inside(r - np.sqrt(dx**2 + dy**2), edge)
        # Consolidation: a patchy, ill-defined opacity confined to the affected lung.
        sel = kind == _FINDING["consolidation"]
        if sel.any():
            ccx, ccy = _lesion_centre(rng, side[here][sel], zone[here][sel])
            r = consolidation_radius[k[sel]][:, None, None]
            patch = np.exp(-((xs[sel] - ccx) ** 2 + (ys[sel] - ccy) ** 2) / (r**2))
            mottling = 0.65 + 0.35 * np.tanh(_smooth_noise(rng, int(sel.sum()), x.shape[-1], 14))
            opacity = np.clip(1.6 * contrast * patch * mottling, 0, 1)
            air[s][here[sel]] *= 1.0 - opacity
            texture[here[sel]] *= 1.0 - 0.5 * opacity


def render_density(cases: Sequence[Case], x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                   edge: float, appearance: Appearance = Appearance()) -> np.ndarray:
    """Attenuation map (about 0 for air to 1.2 for bone over tissue) of each case, on per-image grids x, y."""
    n = len(cases)
    primary = _case_arrays(cases)
    second = _case_arrays([case.second for case in cases])

    body = _ellipse(x, y, 0.0, 0.1, _uniform(rng, (0.8, 0.9), n), 1.3, edge)
    density = 0.7 * body

    # Heart: cardiomegaly widens it, mostly towards the patient's left (+x).
    scale = _heart_scale(primary, second, appearance.heart_overlap, rng)
    heart_rx = (_HEART_RX * scale).astype(np.float32)[:, None, None]
    heart_x = 0.06 + 0.6 * (heart_rx - _HEART_RX)
    heart_ry = 0.18 * (1.0 + 0.5 * (heart_rx / _HEART_RX - 1.0))
    heart = _ellipse(x, y, heart_x, 0.2, heart_rx, heart_ry, edge)

    # Lungs: narrower at the apex, cut from below by the diaphragm domes (the right dome sits higher).
    dome_level = {-1: _uniform(rng, (0.26, 0.32), n), 1: _uniform(rng, (0.3, 0.36), n)}
    markings = 0.04 * _smooth_noise(rng, n, x.shape[-1], 9)
    lungs, air = {}, {}
    for s in (-1, 1):
        cx = s * _LUNG_X
        rx = _LUNG_RX * (0.85 + 0.2 * np.clip((y - _LUNG_Y) / _LUNG_RY, -1, 1))
        dome = dome_level[s] + 0.14 * ((x - cx) / _LUNG_RX) ** 2
        lungs[s] = _ellipse(x, y, cx, _LUNG_Y, rx, _LUNG_RY, edge) * _inside(dome - y, edge) * (1.0 - heart)
        air[s] = lungs[s].copy()
    lung_any = lungs[-1] + lungs[1]
    hilum = sum(_ellipse(x, y, s * 0.16, 0.0, 0.09, 0.12, 0.05) for s in (-1, 1))
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (y - 0.3 * x**2) / 0.15)) ** 4
    texture = (markings + 0.07 * ribs + 0.08 * hilum) * lung_any

    mediastinum = _inside(0.1 - np.abs(x), edge) * _inside(0.3 - y, edge) * body
    spine = _inside(0.055 - np.abs(x), edge) * body * (1.0 + 0.4 * np.cos(2 * np.pi * y / 0.13) ** 2)
    clavicle_y = -0.6 + 0.12 * np.abs(x)
    clavicles = _inside(0.025 - np.abs(y - clavicle_y), edge) * _inside(0.6 - np.abs(x), edge) \
        * _inside(np.abs(x) - 0.08, edge)
    density = density + 0.14 * np.maximum(heart, mediastinum) + 0.06 * spine + 0.1 * clavicles

    chest = _Chest(x, y, edge, lungs, dome_level, air, texture, density)
    for findings in (primary, second):  # the second pass draws nothing, and no numbers, without second findings
        _draw_lung_findings(chest, findings, appearance, rng)
    return density - 0.5 * (air[-1] + air[1]) + texture


def render_images(cases: Sequence[Case], acquisition: Acquisition, image_size: int,
                  rng: np.random.Generator, appearance: Appearance = Appearance()) -> np.ndarray:
    """uint8 images N×image_size×image_size of `cases`, findings as strong as `appearance`, under settings drawn
    from `acquisition`."""
    n = len(cases)
    edge = 2.0 / image_size  # one pixel in normalised units (the image is 2 units wide)
    canvas = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size * 2.0 - 1.0
    u, v = canvas[None, None, :], canvas[None, :, None]

    # Acquisition geometry: canvas -> patient coordinates (rotation, zoom, shift; never a mirror image).
    zoom = _uniform(rng, acquisition.zoom, n)
    angle = np.deg2rad(_uniform(rng, acquisition.rotation_deg, n))
    shift_x, shift_y = _uniform(rng, acquisition.shift, n), _uniform(rng, acquisition.shift, n)
    x = (np.cos(angle) * u - np.sin(angle) * v) / zoom - shift_x
    y = (np.sin(angle) * u + np.cos(angle) * v) / zoom - shift_y
    density = np.clip(render_density(cases, x, y, rng, edge, appearance), 0.0, None)

    # Contrast curve, then collimator shutters on each edge.
    gain, offset, gamma = (_uniform(rng, getattr(acquisition, k), n) for k in ("gain", "offset", "gamma"))
    brightness = np.clip(offset + gain * density, 0.0, 1.0) ** gamma
    margins = [_uniform(rng, acquisition.collimation, n) * 2.0 for _ in range(4)]
    open_field = (_inside(u + 1 - margins[0], edge) * _inside(1 - margins[1] - u, edge)
                  * _inside(v + 1 - margins[2], edge) * _inside(1 - margins[3] - v, edge))
    shutter = _uniform(rng, acquisition.shutter_level, n)
    brightness = open_field * brightness + (1.0 - open_field) * shutter

    # Detector blur and noise.
    brightness = _gaussian_blur(brightness, _uniform(rng, acquisition.blur_px, n))
    noise_std = _uniform(rng, acquisition.noise, n) + _uniform(rng, acquisition.quantum_noise, n) \
        * np.sqrt(np.clip(brightness, 0.0, 1.0))
    brightness = brightness + noise_std * rng.standard_normal(brightness.shape, dtype=np.float32)
    return np.round(np.clip(brightness, 0.0, 1.0) * 255.0).astype(np.uint8)
