"""Post-hoc EMA: power-function EMA profiles tracked during training, any EMA length afterwards.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2),
Sec. 3 and Appendix C. An EMA of the weights is a weighted average of the training trajectory
theta(tau), tau in [0, t], with a weight profile p_t(tau). EDM2 uses the power-function profile

    p_{gamma,t}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),   0 < tau < t        (Sec. 3.1)

whose width relative to the training time is sigma_rel (its standard deviation over t):

    sigma_rel = ((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))^(1/2)                  (App. Eq. 123)

and which is tracked during training by the update theta_hat(t) = beta(t) theta_hat(t - 1) +
(1 - beta(t)) theta(t), with

    beta_gamma(t) = (1 - 1/t)^(gamma + 1)                                            (App. Eq. 127)

(t counts optimiser steps, beta(1) = 0). In steps this is exact: the average after step t gives
theta(i) the weight w_i = (i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1), the integral of
p_{gamma,t} over the step (i - 1, i] (`power_profile_weights`).

`PostHocEMA` tracks two such profiles (sigma_rel 0.05 and 0.10 by default) and saves both every
N steps as a small snapshot. After training, the profile of any sigma_rel at the time of a
snapshot is approximated by a linear combination of all snapshots' profiles, the least-squares
fit of the profiles as functions of tau (App. C.3, Algorithm 3): with the Gram matrix of the
snapshots' profiles A_ij = <p_i, p_j> and b_i = <p_i, p_target> in closed form (App. Eq. 151),
the coefficients solve A x = b. The same coefficients combine the snapshots' weights
(`reconstruct`; `cascade ema reconstruct` writes the result as a normal export).

Snapshots are `run_dir/posthoc_ema/snapshot-NNNNNNN.safetensors`: the module's state (EMA of
its floating-point parameters and buffers; others copied) of each profile under `K/<name>` for
profile K, with the step, sigma_rels, gammas and the stage's config in the file's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..files.atomic import atomic_path, remove_stale_temporaries
from .ema import lerp_towards_current
from .export import unet_state_of, write_export

SIGMA_REL_BOUNDS = (0.0, 0.3)  # open interval; sigma_rel(gamma = 0), a flat profile, is 0.2887
SNAPSHOT_DIR = "posthoc_ema"
SNAPSHOT_FORMAT = "cascade-posthoc-ema"
SNAPSHOT_VERSION = 1


# ---------------------------------------------------------------------------------------- math


def check_sigma_rel(sigma_rel: float, key: str) -> float:
    """`sigma_rel` as a float; ValueError "KEY: VALUE outside (0, 0.3)" when it is not inside."""
    low, high = SIGMA_REL_BOUNDS
    if not low < float(sigma_rel) < high:
        raise ValueError(f"{key}: {sigma_rel} outside ({low:g}, {high:g})")
    return float(sigma_rel)


def sigma_rel_from_gamma(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))): the standard deviation of the
    power-function profile p_{gamma,t} relative to t (EDM2 Sec. 3.1, App. Eq. 123)."""
    gamma = float(gamma)
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent gamma whose profile has relative width sigma_rel: the largest real root of
    gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2) = 0, which is
    App. Eq. 123 squared and multiplied out (App. Eq. 126, Algorithm 2)."""
    inverse_variance = float(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - inverse_variance, 12.0 - inverse_variance])
    return float(roots[np.abs(roots.imag) < 1e-9].real.max())


def power_ema_beta(t: int, gamma: float) -> float:
    """beta_gamma(t) = (1 - 1/t)^(gamma + 1): the decay of the update after optimiser step t >= 1
    that tracks p_{gamma,t} (EDM2 Sec. 3.1, App. Eq. 127); beta(1) = 0."""
    if t < 1:
        raise ValueError(f"t: {t} < 1 (the first optimiser step is t = 1)")
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def power_profile_weights(t: int, gamma: float) -> np.ndarray:
    """w_i = (i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1), i = 1..t: the weight of the weights
    after step i in the power EMA after step t. The product of the updates' decays,
    w_i = (1 - beta(i)) prod_{j>i} beta(j), telescopes to this, which is also the integral of
    p_{gamma,t}(tau) over (i - 1, i] (EDM2 Sec. 3.1); the weights sum to 1."""
    i = np.arange(1, t + 1, dtype=np.float64)
    return (i ** (gamma + 1) - (i - 1) ** (gamma + 1)) / float(t) ** (gamma + 1)


def profile_inner_products(t_a: Any, gamma_a: Any, t_b: Any, gamma_b: Any) -> np.ndarray:
    """<p_{gamma_a,t_a}, p_{gamma_b,t_b}> = integral over tau of the product of the two profiles,
    element-wise over broadcast arrays (EDM2 App. Eq. 151, Algorithm 3). With t_a <= t_b the
    product is nonzero on (0, t_a) and integrates to

        (gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) t_b) * (t_a / t_b)^gamma_b

    and symmetrically when t_b < t_a."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(x, dtype=np.float64) for x in (t_a, gamma_a, t_b, gamma_b))
    a_first = t_a <= t_b
    ratio = np.where(a_first, t_a / t_b, t_b / t_a)
    exponent = np.where(a_first, gamma_b, gamma_a)
    numerator = (gamma_a + 1) * (gamma_b + 1) * ratio**exponent
    return numerator / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def solve_posthoc_coefficients(
    in_steps: Sequence[int], in_sigma_rels: Sequence[float], out_steps: Sequence[int], out_sigma_rels: Sequence[float]
) -> np.ndarray:
    """Coefficients x (n_in, n_out): column j combines the input profiles (snapshot at in_steps[i]
    of the profile in_sigma_rels[i]) into the least-squares approximation of the profile
    out_sigma_rels[j] at out_steps[j] (EDM2 App. C.3, Algorithm 3): A x = B with
    A = <p_in, p_in> and B = <p_in, p_out> (`profile_inner_products`), each column then scaled to
    sum to 1 so the combination is an average (Algorithm 3's last line)."""
    in_t = np.asarray(in_steps, dtype=np.float64)
    in_gamma = np.array([gamma_from_sigma_rel(s) for s in in_sigma_rels])
    out_t = np.asarray(out_steps, dtype=np.float64)
    out_gamma = np.array([gamma_from_sigma_rel(s) for s in out_sigma_rels])
    if in_t.shape != in_gamma.shape or out_t.shape != out_gamma.shape:
        raise ValueError("steps and sigma_rels: one step per profile")
    gram = profile_inner_products(in_t[:, None], in_gamma[:, None], in_t[None, :], in_gamma[None, :])
    cross = profile_inner_products(in_t[:, None], in_gamma[:, None], out_t[None, :], out_gamma[None, :])
    coefficients = np.linalg.solve(gram, cross)
    return coefficients / coefficients.sum(axis=0, keepdims=True)


# ------------------------------------------------------------------------------------ callback


class PostHocEMA(pl.Callback):
    """Tracks power-function EMA profiles of the module's weights during training and saves them
    every `snapshot_every_n_steps` optimiser steps, for post-hoc EMA (EDM2; module docstring).

    Each profile is updated after every optimiser step t with beta_gamma(t) (`power_ema_beta`) as
    one fused `torch._foreach_lerp_` over the module's floating-point state (`lerp_towards_current`,
    the step the `EMA` callback uses too; integer buffers are copied). The averages and the step
    are part of the Lightning checkpoint (`state_dict`), so a resumed run continues them. Only the
    global rank 0 writes snapshots. Works next to `EMA`, which keeps its own average for
    validation and the checkpoint's weights.

    Args:
        sigma_rels: the profiles' relative widths, each in (0, 0.3) (EDM2 tracks 0.05 and 0.10).
        snapshot_every_n_steps: save both profiles after every n-th optimiser step.
        dir: where the snapshots go (None: `trainer.default_root_dir`/posthoc_ema, the run_dir's).
    """

    def __init__(
        self,
        sigma_rels: Sequence[float] = (0.05, 0.10),
        snapshot_every_n_steps: int = 1000,
        dir: str | None = None,
    ):
        if isinstance(sigma_rels, (int, float)):
            sigma_rels = (sigma_rels,)
        if len(sigma_rels) == 0:
            raise ValueError("sigma_rels: empty; give at least one sigma_rel in (0, 0.3)")
        self.sigma_rels = tuple(check_sigma_rel(s, "sigma_rels") for s in sigma_rels)
        if len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ValueError(f"sigma_rels: {list(self.sigma_rels)} repeats a value")
        if int(snapshot_every_n_steps) != snapshot_every_n_steps or snapshot_every_n_steps < 1:
            raise ValueError(f"snapshot_every_n_steps: {snapshot_every_n_steps} is not an integer >= 1")
        self.snapshot_every_n_steps = int(snapshot_every_n_steps)
        self.dir = dir
        self.gammas = tuple(gamma_from_sigma_rel(s) for s in self.sigma_rels)
        self.step = 0  # optimiser steps averaged into the profiles
        self.profiles: list[dict[str, torch.Tensor]] | None = None
        self._restored: dict[str, Any] | None = None

    # -- state

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "sigma_rels": list(self.sigma_rels), "profiles": self.profiles}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if tuple(state_dict["sigma_rels"]) != self.sigma_rels:
            raise ValueError(
                f"sigma_rels: {list(self.sigma_rels)} differs from the {state_dict['sigma_rels']} "
                "the checkpoint's run tracked; resume with the same profiles"
            )
        self._restored = state_dict  # placed on the module's device when training starts

    # -- training hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        current = pl_module.state_dict()
        if self._restored is not None and self._restored["profiles"] is not None:
            self.step = int(self._restored["step"])
            self.profiles = [
                {name: profile[name].to(device=value.device, dtype=value.dtype) for name, value in current.items()}
                for profile in self._restored["profiles"]
            ]
        else:
            # A run that starts here (or adds the callback at a resume) averages from this step on.
            self.step = trainer.global_step
            self.profiles = [{name: value.detach().clone() for name, value in current.items()} for _ in self.gammas]
        self._restored = None
        if trainer.is_global_zero:
            self.remove_later_snapshots(self.snapshot_dir(trainer))

    def remove_later_snapshots(self, directory: Path) -> list[Path]:
        """Delete the snapshots in `directory` past the step the averages continue from, and any
        temporaries of a killed write: a run started over (`--ckpt_path none`) or resumed from a
        checkpoint older than its last snapshot would otherwise leave snapshots of another
        trajectory next to its own. Returns the deleted snapshots."""
        if not directory.is_dir():
            return []
        later = [path for path in directory.glob("snapshot-*.safetensors") if snapshot_step(path) > self.step]
        for path in later:
            path.unlink()
        remove_stale_temporaries(directory)
        return later

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.profiles is None or trainer.global_step <= self.step:
            return  # no optimiser step since the last update (gradient accumulation)
        self.update(list(pl_module.state_dict().values()), trainer.global_step)
        if self.step % self.snapshot_every_n_steps == 0 and trainer.is_global_zero:
            self.write_snapshot(self.snapshot_dir(trainer), stage_config_of_module(pl_module))

    @torch.no_grad()
    def update(self, current: list[torch.Tensor], step: int) -> None:
        """Average `current` (the module's state, in `state_dict` order) into every profile as the
        update of optimiser step `step`: theta_hat <- lerp(theta_hat, theta, 1 - beta_gamma(step))."""
        if self.profiles is None:
            raise RuntimeError("PostHocEMA.update before the profiles exist (on_train_start)")
        for gamma, profile in zip(self.gammas, self.profiles):
            lerp_towards_current(list(profile.values()), current, 1.0 - power_ema_beta(step, gamma))
        self.step = step

    def snapshot_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dir) if self.dir is not None else Path(trainer.default_root_dir) / SNAPSHOT_DIR

    def write_snapshot(self, directory: Path, stage_config: dict[str, Any] | None) -> Path:
        """Save every profile at the current step to `directory`/snapshot-STEP.safetensors (atomic)."""
        if self.profiles is None:
            raise RuntimeError("PostHocEMA.write_snapshot before the profiles exist (on_train_start)")
        tensors = {
            f"{index}/{name}": value.detach().to("cpu", copy=True).contiguous()
            for index, profile in enumerate(self.profiles)
            for name, value in profile.items()
        }
        metadata = {
            "format": SNAPSHOT_FORMAT,
            "version": str(SNAPSHOT_VERSION),
            "step": str(self.step),
            "sigma_rels": json.dumps(list(self.sigma_rels)),
            "gammas": json.dumps(list(self.gammas)),
            "cascade_stage": json.dumps(stage_config),
        }
        path = snapshot_path(directory, self.step)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path


def stage_config_of_module(module: pl.LightningModule) -> dict[str, Any] | None:
    """The stage's {"class_path", "init_args"} (`DiffusionStage.stage_config`), None for others."""
    stage_config = getattr(module, "stage_config", None)
    return stage_config() if callable(stage_config) else None


# ------------------------------------------------------------------------ snapshots, reconstruct


def snapshot_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"snapshot-{step:07d}.safetensors"


def snapshot_step(path: str | Path) -> int:
    """The step in a snapshot's file name (snapshot-0000100.safetensors -> 100)."""
    return int(Path(path).name.removeprefix("snapshot-").removesuffix(".safetensors"))


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file: the step it was taken after, its profiles and the stage's config."""

    path: Path
    step: int
    sigma_rels: tuple[float, ...]
    stage_config: dict[str, Any] | None

    @classmethod
    def read(cls, path: str | Path) -> Snapshot:
        """The snapshot's metadata (its tensors are not loaded); ValueError for another file."""
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{path}: not a post-hoc EMA snapshot (format {metadata.get('format')!r})")
        if metadata.get("version") != str(SNAPSHOT_VERSION):
            raise ValueError(f"{path}: unsupported snapshot version {metadata.get('version')!r}")
        return cls(Path(path), int(metadata["step"]), tuple(json.loads(metadata["sigma_rels"])),
                   json.loads(metadata["cascade_stage"]))

    def profiles(self) -> list[dict[str, torch.Tensor]]:
        """Each profile's state, {name: tensor}, in `sigma_rels` order."""
        tensors = load_file(str(self.path))
        profiles: list[dict[str, torch.Tensor]] = [{} for _ in self.sigma_rels]
        for key, value in tensors.items():
            index, name = key.split("/", 1)
            profiles[int(index)][name] = value
        return profiles


def snapshot_dir_of(path: str | Path) -> Path:
    """The snapshot folder of a run directory (its posthoc_ema/) or the folder itself."""
    path = Path(path)
    return path / SNAPSHOT_DIR if (path / SNAPSHOT_DIR).is_dir() else path


def list_snapshots(path: str | Path) -> list[Snapshot]:
    """The snapshots of a run directory or snapshot folder, by step; FileNotFoundError for none."""
    directory = snapshot_dir_of(path)
    snapshots = sorted((Snapshot.read(p) for p in directory.glob("snapshot-*.safetensors")), key=lambda s: s.step)
    if not snapshots:
        raise FileNotFoundError(f"no post-hoc EMA snapshots (snapshot-*.safetensors) in {directory}")
    return snapshots


@dataclass(frozen=True)
class PostHocWeights:
    """The module state of one reconstructed profile: `state_dict` (names as the module's),
    `sigma_rel` at `step`, the stage config, and the coefficient of each (snapshot step,
    sigma_rel) it combines."""

    sigma_rel: float
    step: int
    state_dict: dict[str, torch.Tensor]
    stage_config: dict[str, Any] | None
    coefficients: dict[tuple[int, float], float]
    source: Path


def reconstruct_all(
    snapshot_dir: str | Path, sigma_rels: Sequence[float], step: int | None = None
) -> list[PostHocWeights]:
    """The EMA of each of `sigma_rels` at snapshot step `step` (None: the last snapshot's), the
    least-squares combination (`solve_posthoc_coefficients`) of every profile of every snapshot
    up to `step`, read one snapshot at a time and summed in float64. ValueError naming `sigma_rel`
    or `step` for a bad value; FileNotFoundError without snapshots."""
    sigma_rels = [check_sigma_rel(s, "sigma_rel") for s in sigma_rels]
    snapshots = list_snapshots(snapshot_dir)
    steps = [s.step for s in snapshots]
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"step: no snapshot at step {step} in {snapshot_dir_of(snapshot_dir)} (snapshots at {steps})")
    used = [s for s in snapshots if 0 < s.step <= step]
    if not used:
        raise ValueError(f"step: no snapshot after a training step up to {step}")
    inputs = [(s.step, sigma) for s in used for sigma in s.sigma_rels]
    coefficients = solve_posthoc_coefficients(
        [t for t, _ in inputs], [sigma for _, sigma in inputs], [step] * len(sigma_rels), sigma_rels
    )
    sums: list[dict[str, torch.Tensor]] = [{} for _ in sigma_rels]
    dtypes: dict[str, torch.dtype] = {}
    row = 0
    for snapshot in used:
        for profile in snapshot.profiles():
            for out, total in enumerate(sums):
                weight = float(coefficients[row, out])
                for name, value in profile.items():
                    if not value.is_floating_point():
                        total[name] = value.clone()  # integer state: the last snapshot's
                        continue
                    dtypes[name] = value.dtype
                    if name in total:
                        total[name].add_(value.double(), alpha=weight)
                    else:
                        total[name] = weight * value.double()
            row += 1
    stage_config = used[-1].stage_config
    return [
        PostHocWeights(
            sigma_rel=sigma,
            step=step,
            state_dict={name: v.to(dtypes[name]) if name in dtypes else v for name, v in total.items()},
            stage_config=stage_config,
            coefficients={inputs[i]: float(coefficients[i, out]) for i in range(len(inputs))},
            source=snapshot_dir_of(snapshot_dir),
        )
        for out, (sigma, total) in enumerate(zip(sigma_rels, sums))
    ]


def reconstruct(
    snapshot_dir: str | Path, sigma_rel: float, step: int | None = None, out: str | Path | None = None
) -> PostHocWeights:
    """The EMA of `sigma_rel` at `step` from a run's snapshots (`reconstruct_all`), also written
    as a stage export to `out` when given (`write_posthoc_export`)."""
    weights = reconstruct_all(snapshot_dir, [sigma_rel], step)[0]
    if out is not None:
        write_posthoc_export(weights, out)
    return weights


def write_posthoc_export(weights: PostHocWeights, out_dir: str | Path) -> Path:
    """A normal stage export (`cascade.stages.export.write_export`: model.safetensors and
    config.yaml) of reconstructed weights, loadable with `load_stage` / `Cascade.from_paths`."""
    if weights.stage_config is None:
        raise ValueError(f"{weights.source}: the snapshots hold no stage config (not a cascade stage's run)")
    provenance = {
        "ema_weights": True,
        "global_step": weights.step,
        "posthoc_ema": {"sigma_rel": weights.sigma_rel, "gamma": gamma_from_sigma_rel(weights.sigma_rel),
                        "snapshots": str(weights.source.resolve())},
    }
    return write_export(unet_state_of(weights.state_dict), weights.stage_config, out_dir, provenance)
