"""Synthetic "approach intent" data set: will a pedestrian walk up to the robot?

A robot stands at the origin of a lobby. Each pedestrian is one of four kinds:
approachers (walk roughly at the robot, look at it, then home in and stop in front of it),
veerers (walk roughly at the robot too, but look where they are going and swerve past it
after the window), watchers (look at the robot from afar, standing or strolling) and
passers (cross the lobby, sometimes glancing at the robot). Each pedestrian gives one to
three sliding windows. The label is geometric: the true path comes within 1 m of the robot
in the 3 s after the window. The trajectory cannot tell approachers from veerers and the
pose cannot tell them from watchers, so only the two modalities together separate them.

Modalities: ``traj`` (x, y, vx, vy) at 5 Hz, 20 steps; ``pose`` (7 normalised 2-D
keypoints seen from the robot's camera, 14 features) at 2.5 Hz, 10 steps, same 4 s.
"""
from __future__ import annotations

import logging
import time
from numbers import Real
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DT = 0.2  # s per trajectory step (5 Hz)
T_TRAJ = 20  # 4 s window
POSE_STRIDE = 2  # the camera runs at half the tracker's rate
T_POSE = T_TRAJ // POSE_STRIDE
HORIZON = 15  # 3 s of future that decides the label
APPROACH_RADIUS = 1.0  # m
KEYPOINTS = ("nose", "neck", "shoulder_l", "shoulder_r", "hip_l", "hip_r", "pelvis")
SPLITS = ("train", "val", "test")
MODALITIES = ("traj", "pose")

TRACK_LEN = 60  # steps simulated per pedestrian
DECIDE = 40  # step at which approachers home in and veerers swerve
WINDOW_ENDS = np.arange(DECIDE - 5, DECIDE + 1)  # windows end before the decision shows in the path
APPROACH, VEER, WATCH, PASS = 0, 1, 2, 3
# Share of approachers' windows that are positive (measured: 0.909-0.913 at difficulty 0-1 over 20 000 windows; the
# rest stop short of 1 m or reach it after the horizon). No other kind is ever positive, so the positive share of
# the samples is this times the approachers' share.
APPROACH_HIT = 0.91


def _wrap(a: np.ndarray) -> np.ndarray:
    """Angle wrapped to [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def _unit(a: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 2) pointing along angle A."""
    return np.stack([np.cos(a), np.sin(a)], axis=-1)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float,
                  alpha: float = 0.85) -> np.ndarray:
    """AR(1) noise of stationary std SIGMA: people wobble smoothly, not like white noise."""
    eps = rng.normal(0.0, sigma * np.sqrt(1 - alpha**2), shape)
    out = np.empty(shape)
    out[:, 0] = rng.normal(0.0, sigma, shape[0])
    for t in range(1, shape[1]):
        out[:, t] = alpha * out[:, t - 1] + eps[:, t]
    return out


def _kind_probs(difficulty: float, positive_rate: float | None = None) -> np.ndarray:
    """Share of approachers, veerers, watchers and passers; POSITIVE_RATE sets the approachers' share for that
    share of positive samples, the other kinds keeping their relative shares."""
    # Harder sets have more confusers (veerers, watchers) and fewer easy passers.
    p = np.array([0.28, 0.20 + 0.06 * difficulty, 0.17 + 0.06 * difficulty, 0.33 - 0.12 * difficulty])
    p = p / p.sum()
    if positive_rate is None:
        return p
    approach = positive_rate / APPROACH_HIT
    return np.concatenate([[approach], p[1:] / p[1:].sum() * (1 - approach)])


def _assign_kinds(rng: np.random.Generator, n_ped: int, d: float, positive_rate: float | None = None) -> np.ndarray:
    """Kind of each pedestrian in exact proportions, so small splits keep a steady positive rate."""
    p = _kind_probs(d, positive_rate)
    counts = np.floor(p * n_ped).astype(int)
    extra = rng.choice(4, n_ped - counts.sum(), replace=False, p=p)
    counts[extra] += 1
    return rng.permutation(np.repeat(np.arange(4), counts))


def _initial_state(rng: np.random.Generator, kind: np.ndarray, d: float) -> dict[str, np.ndarray]:
    """Position, heading and speed of every pedestrian at the decision step."""
    n = len(kind)
    phi = rng.uniform(-np.pi, np.pi, n)  # bearing of the pedestrian seen from the robot
    r = rng.uniform(2.0, 3.8, n)
    # Approachers and veerers share one in-window distribution: aimed roughly at the robot.
    offset = rng.normal(0.0, np.deg2rad(22 - 8 * d), n)
    heading = phi + np.pi + offset
    speed = rng.uniform(0.9, 1.5, n)
    watch = kind == WATCH
    stand = watch & (rng.random(n) < 0.5)
    r[watch] = rng.uniform(3.5, 7.0, watch.sum())
    heading[watch] = phi[watch] + np.pi + rng.normal(0.0, np.deg2rad(35), watch.sum())
    speed[watch] = rng.uniform(0.15, 0.5, watch.sum())
    speed[stand] = 0.0
    pos = r[:, None] * _unit(phi)
    ps = kind == PASS
    # Passers cross on a straight line that misses the robot by b; some come at it head-on.
    psi = rng.uniform(-np.pi, np.pi, ps.sum())
    b = rng.uniform(1.6 - 0.2 * d, 6.0, ps.sum()) * rng.choice([-1.0, 1.0], ps.sum())
    s = rng.uniform(-5.0, 3.0, ps.sum())
    pos[ps] = b[:, None] * _unit(psi + np.pi / 2) + s[:, None] * _unit(psi)
    heading[ps] = psi
    # Veerers swerve to the side they already aim at, passing the robot rather than crossing it.
    side = np.where(offset >= 0, 1.0, -1.0)
    return {"pos": pos, "heading": heading, "speed": speed, "stand": stand, "side": side}


def _simulate_paths(rng: np.random.Generator, kind: np.ndarray, d: float) -> tuple[np.ndarray, ...]:
    """True positions (P, L, 2), headings (P, L), speeds (P, L) and veer side (P,) over the whole track."""
    n = len(kind)
    st = _initial_state(rng, kind, d)
    head = np.empty((n, TRACK_LEN))
    speed = np.empty((n, TRACK_LEN))
    head[:, :DECIDE + 1] = st["heading"][:, None] + _smooth_noise(rng, (n, DECIDE + 1), np.deg2rad(4))
    speed[:, :DECIDE + 1] = st["speed"][:, None] * (1 + _smooth_noise(rng, (n, DECIDE + 1), 0.05))
    # Before the decision: integrate backwards from the decision-step position.
    step = speed[:, :DECIDE, None] * DT * _unit(head[:, :DECIDE])
    pos = np.empty((n, TRACK_LEN, 2))
    pos[:, DECIDE] = st["pos"]
    pos[:, :DECIDE] = st["pos"][:, None] - np.cumsum(step[:, ::-1], axis=1)[:, ::-1]
    # After it: a rate-limited steering controller per kind.
    side = st["side"]
    veer_to = st["heading"] + side * np.deg2rad(rng.uniform(60, 100, n))
    r_stop = rng.uniform(0.55, 0.85, n)
    max_turn = np.deg2rad(rng.uniform(10, 16, n))
    v0 = st["speed"]
    for t in range(DECIDE, TRACK_LEN - 1):
        p, h = pos[:, t], head[:, t]
        to_robot = np.arctan2(-p[:, 1], -p[:, 0])
        want = np.where(kind == APPROACH, to_robot, np.where(kind == VEER, veer_to, h))
        h_new = h + np.clip(_wrap(want - h), -max_turn, max_turn)
        r = np.linalg.norm(p, axis=1)
        v = np.where(kind == APPROACH, np.clip((r - r_stop) / (2 * DT), 0.0, v0), v0)
        head[:, t + 1] = h_new
        speed[:, t + 1] = v
        pos[:, t + 1] = p + v[:, None] * DT * _unit(h_new)
    # Standing watchers sway on the spot.
    pos[st["stand"]] = st["pos"][st["stand"], None] + rng.normal(0, 0.02, (st["stand"].sum(), TRACK_LEN, 2))
    return pos, head, speed, side


def _ramp(onset: np.ndarray, width: float = 3.0) -> np.ndarray:
    """(P, L) weight rising from 0 to 1 over WIDTH steps after ONSET; heads turn, they don't jump."""
    t = np.arange(TRACK_LEN)[None]
    return np.clip((t - onset[:, None]) / width, 0.0, 1.0)


def _gaze(rng: np.random.Generator, kind: np.ndarray, pos: np.ndarray, head: np.ndarray, side: np.ndarray,
          d: float) -> tuple[np.ndarray, np.ndarray]:
    """Head yaw relative to the walking direction and head pitch, (P, L) each."""
    n = len(kind)
    to_robot = np.arctan2(-pos[..., 1], -pos[..., 0])
    look_robot = np.clip(_wrap(to_robot - head), -np.deg2rad(80), np.deg2rad(80))
    look_robot = (look_robot + rng.normal(0, np.deg2rad(5 + 10 * d), (n, 1))
                  + _smooth_noise(rng, (n, TRACK_LEN), np.deg2rad(5)))
    idle = _smooth_noise(rng, (n, TRACK_LEN), np.deg2rad(10), alpha=0.9)
    t = np.arange(TRACK_LEN)[None]
    att = np.zeros((n, TRACK_LEN))
    # Approachers lock on to the robot a few seconds before they turn; some only late.
    late = rng.random(n) < 0.08 + 0.17 * d
    onset = DECIDE - np.where(late, rng.uniform(-4, 2, n), rng.uniform(6, 20, n))
    att = np.where((kind == APPROACH)[:, None], _ramp(onset), att)
    # Watchers look at the robot most of the time, with brief look-aways.
    away = (rng.random((n, TRACK_LEN)) < 0.04)
    away = np.maximum.accumulate(np.where(away, t, -10), axis=1) > t - 4
    att = np.where((kind == WATCH)[:, None], np.where(away, 0.2, 1.0), att)
    # Passers and veerers sometimes glance at the robot while going by.
    u = rng.random(n)
    glance = ((kind == PASS) & (u < 0.35 + 0.3 * d)) | ((kind == VEER) & (u < 0.1 + 0.2 * d))
    g0 = rng.uniform(10, DECIDE + 2, n)
    g_len = rng.uniform(3, 6 + 10 * d, n)
    in_glance = (t >= g0[:, None]) & (t < (g0 + g_len)[:, None])
    att = np.where(glance[:, None] & in_glance, 1.0, att)
    yaw = (1 - att) * idle + att * look_robot
    # Veerers look towards where they will go before they swerve (anticipatory gaze).
    veer_side = side * np.deg2rad(rng.uniform(30, 60, n))
    pre = _ramp(DECIDE - rng.uniform(4, 16, n), width=4.0) * (kind == VEER)[:, None] * (1 - att)
    yaw = yaw + pre * veer_side[:, None]
    # Some non-attending people look down at a phone.
    phone = (kind != WATCH) & (rng.random(n) < 0.25)
    pitch = np.where(phone[:, None], (1 - att) * np.deg2rad(30), 0.0)
    pitch = pitch + _smooth_noise(rng, (n, TRACK_LEN), np.deg2rad(4))
    return yaw, pitch


def _keypoints(rng: np.random.Generator, pos: np.ndarray, head: np.ndarray, yaw: np.ndarray, pitch: np.ndarray,
               d: float) -> np.ndarray:
    """(P, L, 14) keypoints seen from the robot, centred on the pelvis, in torso-height units."""
    n = pos.shape[0]
    # The torso turns a quarter of the way with the head; 0 rad means facing the camera.
    to_cam = np.arctan2(-pos[..., 1], -pos[..., 0])
    th_t = _wrap(head + 0.25 * yaw - to_cam)
    th_h = _wrap(head + yaw - to_cam)
    ws = rng.normal(0.38, 0.03, (n, 1))  # shoulder half-width relative to torso height
    wh = rng.normal(0.20, 0.02, (n, 1))
    ct, stt = np.cos(th_t), np.sin(th_t)
    lean = rng.normal(0, 0.02, (n, 1))
    kp = np.stack([
        0.2 * np.sin(th_h) * np.cos(pitch) + lean, 1.2 - 0.15 * np.sin(pitch),  # nose
        lean + 0 * ct, np.ones_like(ct),  # neck
        -ws * ct + lean, 0.95 + 0 * ct,  # shoulder_l
        ws * ct + lean, 0.95 + 0 * ct,  # shoulder_r
        -wh * ct, 0.05 + 0 * ct,  # hip_l
        wh * ct, 0.05 + 0 * ct,  # hip_r
        0 * ct, 0 * ct,  # pelvis
    ], axis=-1)
    # Depth cue of a monocular detector: the far shoulder sits a bit higher in the image.
    kp[..., 5] += 0.03 * stt
    kp[..., 7] -= 0.03 * stt
    return kp + rng.normal(0, 0.015 + 0.04 * d, kp.shape)


def _mask(rng: np.random.Generator, n: int, t: int, p_drop: float, p_run: float, max_run: int) -> np.ndarray:
    """(n, t) validity mask: random dropped frames plus occasional runs of dropouts."""
    ok = rng.random((n, t)) >= p_drop
    has_run = rng.random(n) < p_run
    length = rng.integers(2, max_run + 1, n)
    start = rng.integers(0, t, n)
    steps = np.arange(t)[None]
    ok &= ~(has_run[:, None] & (steps >= start[:, None]) & (steps < (start + length)[:, None]))
    ok[~ok.any(axis=1), -1] = True  # a window with no valid step would not be emitted by a tracker
    return ok


def _windows(rng: np.random.Generator, n_ped: int) -> tuple[np.ndarray, np.ndarray]:
    """Pedestrian index and window-end step of every sample, one to three per pedestrian."""
    k = rng.choice([1, 2, 3], n_ped, p=[0.5, 0.3, 0.2])
    order = np.argsort(rng.random((n_ped, len(WINDOW_ENDS))), axis=1)
    ped = np.repeat(np.arange(n_ped), k)
    slot = np.concatenate([order[i, :ki] for i, ki in enumerate(k)])
    return ped, WINDOW_ENDS[slot]


def _make_split(rng: np.random.Generator, n: int, d: float, first_id: int,
                positive_rate: float | None = None) -> dict[str, np.ndarray]:
    """One split of exactly N samples from fresh pedestrians numbered from FIRST_ID."""
    n_ped = int(np.ceil(n / 1.7)) + 20  # 1.7 windows per pedestrian on average
    ped, end = _windows(rng, n_ped)
    while len(ped) < n:  # only for unlucky draws on tiny splits
        n_ped *= 2
        ped, end = _windows(rng, n_ped)
    ped, end = ped[:n], end[:n]
    n_ped = int(ped.max()) + 1
    kind = _assign_kinds(rng, n_ped, d, positive_rate)
    pos, head, speed, side = _simulate_paths(rng, kind, d)
    yaw, pitch = _gaze(rng, kind, pos, head, side, d)
    kp = _keypoints(rng, pos, head, yaw, pitch, d)
    vel = speed[..., None] * _unit(head)
    # Tracker noise; the velocity is the tracker's filtered estimate, so it is noisy but not differenced.
    traj = np.concatenate([pos + rng.normal(0, 0.03 + 0.12 * d, pos.shape),
                           vel + rng.normal(0, 0.05 + 0.15 * d, vel.shape)], axis=-1)
    steps = end[:, None] + np.arange(-T_TRAJ + 1, 1)[None]
    x_traj = traj[ped[:, None], steps]
    x_pose = kp[ped[:, None], steps[:, POSE_STRIDE - 1::POSE_STRIDE]]
    future = pos[ped[:, None], end[:, None] + np.arange(1, HORIZON + 1)[None]]
    y = (np.linalg.norm(future, axis=-1).min(axis=1) < APPROACH_RADIUS).astype(np.int64)
    m_traj = _mask(rng, n, T_TRAJ, 0.03 + 0.05 * d, 0.1 + 0.3 * d, 5)
    # The camera loses people more often than the tracker (occlusion, motion blur).
    m_pose = _mask(rng, n, T_POSE, 0.04 + 0.06 * d, 0.1 + 0.3 * d, 3)
    perm = rng.permutation(n)
    return {
        "y": y[perm],
        "x_traj": np.where(m_traj[..., None], x_traj, 0.0).astype(np.float32)[perm],
        "mask_traj": m_traj[perm],
        "x_pose": np.where(m_pose[..., None], x_pose, 0.0).astype(np.float32)[perm],
        "mask_pose": m_pose[perm],
        "groups": (first_id + ped).astype(np.int64)[perm],
    }


def make_demo(out: str | Path, n_train: int = 1200, n_val: int = 300, n_test: int = 300,
              difficulty: float = 0.5, seed: int = 0, positive_rate: float | None = None) -> Path:
    """Write a synthetic approach-intent data set (train/val/test .npz) to OUT and return it; POSITIVE_RATE: the
    expected share of positive samples (default: the generator's, about 26 %)."""
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(difficulty, bool) or not isinstance(difficulty, Real) or not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be a number in [0, 1], got {difficulty!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if positive_rate is not None and (isinstance(positive_rate, bool) or not isinstance(positive_rate, Real)
                                      or not 0.0 < positive_rate <= APPROACH_HIT):
        raise ValueError(f"positive_rate must be a number in (0, {APPROACH_HIT}] (only approachers give positives, "
                         f"and {APPROACH_HIT:.0%} of their windows do), got {positive_rate!r}")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(len(SPLITS))]
    first_id = 0
    for split, n, rng in zip(SPLITS, sizes.values(), rngs):
        arrays = _make_split(rng, int(n), float(difficulty), first_id,
                             None if positive_rate is None else float(positive_rate))
        first_id = int(arrays["groups"].max()) + 1  # pedestrians never cross splits
        np.savez(out / f"{split}.npz", **arrays)
        log.info("%s: %d samples, %d pedestrians, %.1f%% positive", split, n,
                 len(np.unique(arrays["groups"])), 100 * arrays["y"].mean())
    log.info("wrote %s in %.2f s", out, time.perf_counter() - t0)
    return out


def _summary(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel mean, last and last-minus-first over valid steps, plus the valid fraction."""
    m = mask[..., None].astype(np.float64)
    n = np.maximum(m.sum(axis=1), 1.0)
    mean = (x * m).sum(axis=1) / n
    idx = np.arange(mask.shape[1])[None]
    last = np.where(mask, idx, -1).max(axis=1)
    first = np.where(mask, idx, mask.shape[1]).min(axis=1)
    rows = np.arange(len(x))
    x_last, x_first = x[rows, last], x[rows, first]
    return np.concatenate([mean, x_last, x_last - x_first, mask.mean(axis=1, keepdims=True)], axis=1)


def _features(split: dict[str, np.ndarray], modality: str) -> np.ndarray:
    """(N, F) summary features of one modality of one split."""
    x = split[f"x_{modality}"].astype(np.float64)
    if modality == "traj":
        # Robot-centred view: range, closing speed and sideways speed do not depend on where one enters.
        p, v = x[..., :2], x[..., 2:]
        r = np.linalg.norm(p, axis=-1)
        rs = np.maximum(r, 1e-6)
        closing = -(p * v).sum(-1) / rs
        side = np.abs(p[..., 0] * v[..., 1] - p[..., 1] * v[..., 0]) / rs
        x = np.stack([r, closing, side, np.linalg.norm(v, axis=-1)], axis=-1)
    return _summary(x, split[f"mask_{modality}"])


def _best_threshold(y: np.ndarray, prob: np.ndarray) -> float:
    """Probability threshold with the best F1 on a coarse grid."""
    from sklearn.metrics import f1_score

    grid = np.linspace(0.05, 0.95, 19)
    return float(grid[np.argmax([f1_score(y, prob >= g, zero_division=0) for g in grid])])


def modality_baselines(path: str | Path, seed: int = 0) -> dict:
    """Val/test F1 of a gradient-boosting classifier on summary features of traj, pose and both."""
    from threadpoolctl import threadpool_limits

    data = {s: dict(np.load(Path(path) / f"{s}.npz")) for s in SPLITS}
    # Many OpenMP threads on data this small are slower, and much slower on a busy machine.
    with threadpool_limits(limits=1):
        result = {name: _fit_eval(data, mods, seed) for name, mods in
                  (("traj", ["traj"]), ("pose", ["pose"]), ("both", ["traj", "pose"]))}
    log.info("modality baselines: %s", result)
    return result


def _fit_eval(data: dict[str, dict[str, np.ndarray]], mods: list[str], seed: int) -> dict[str, float]:
    """Fit on train with MODS, pick the threshold out-of-fold, return val and test F1."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    feats = {s: np.concatenate([_features(data[s], m) for m in mods], axis=1) for s in SPLITS}
    y_tr = data["train"]["y"]
    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                         l2_regularization=1.0, random_state=seed)
    # The threshold comes from out-of-fold train predictions, so val and test stay unseen.
    oof = cross_val_predict(clf, feats["train"], y_tr, groups=data["train"]["groups"],
                            cv=GroupKFold(n_splits=3), method="predict_proba")[:, 1]
    thr = _best_threshold(y_tr, oof)
    clf.fit(feats["train"], y_tr)
    return {f"{s}_f1": float(f1_score(data[s]["y"], clf.predict_proba(feats[s])[:, 1] >= thr, zero_division=0))
            for s in ("val", "test")}
