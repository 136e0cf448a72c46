"""Flow-matching schedulers: one solver per file, chosen by name here.

    sched = make_scheduler("unipc")                  # the official Wan sampler
    sched.set_timesteps(50, shift=5.0, device="cuda")
    for t in sched.timesteps:
        x = sched.step(dit(x, t), x)

`make_scheduler("distill")` is the fixed-timestep sampler of step-distilled models (`distill.py`):
it runs only the step count its model was distilled on, so it is not in SOLVERS (the solvers that
take any step count) but in SOLVER_NAMES (every name `make_scheduler` accepts).

`convention="official"` reproduces the official Wan2.1 `generate()` schedule of each solver,
`convention="diffusers"` the diffusers scheduler of the same name (they differ in where the
schedule starts; see `base.py`). `scheduler_from_diffusers_config` reads a diffusers-layout
`scheduler/scheduler_config.json` and refuses options it cannot reproduce, naming them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lightx2v.choices import FIXED_STEP_SOLVERS, SOLVER_NAMES, SOLVERS
from lightx2v.errors import LightX2VError
from lightx2v.schedulers.base import CONVENTIONS, Scheduler, SolverState
from lightx2v.schedulers.distill import StepDistillScheduler
from lightx2v.schedulers.dpmpp import DPMSolverPlusPlusScheduler
from lightx2v.schedulers.euler import FlowEulerScheduler
from lightx2v.schedulers.unipc import UniPCScheduler

__all__ = [
    "CONVENTIONS",
    "FIXED_STEP_SOLVERS",
    "SOLVERS",
    "SOLVER_NAMES",
    "DPMSolverPlusPlusScheduler",
    "FlowEulerScheduler",
    "Scheduler",
    "SolverState",
    "StepDistillScheduler",
    "UniPCScheduler",
    "make_scheduler",
    "scheduler_from_diffusers_config",
]

# SOLVERS: ODE solvers (any step count, a diffusers counterpart each); FIXED_STEP_SOLVERS: bound to
# the timesteps a model was distilled on. The names live in lightx2v.choices (--help needs no torch).
_CLASSES: Mapping[str, type[Scheduler]] = MappingProxyType({
    "unipc": UniPCScheduler,
    "dpm++": DPMSolverPlusPlusScheduler,
    "euler": FlowEulerScheduler,
    "distill": StepDistillScheduler,
})


def make_scheduler(
    solver: str,
    *,
    convention: str = "official",
    num_train_timesteps: int = 1000,
    config: dict[str, Any] | None = None,
) -> Scheduler:
    """A fresh scheduler for `solver` (one of SOLVER_NAMES); `config` holds the solver's options."""
    cls = _CLASSES.get(solver)
    if cls is None:
        raise LightX2VError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVER_NAMES)}")
    options = dict(config or {})
    params = inspect.signature(cls.__init__).parameters
    accepted = {n for n in params if n not in ("self", "convention", "num_train_timesteps")}
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise LightX2VError(f"solver {solver!r} has no option(s) {', '.join(unknown)}; its options are: {valid}")
    return cls(convention=convention, num_train_timesteps=num_train_timesteps, **options)


@dataclass(frozen=True)
class _DiffusersSpec:
    """How one diffusers scheduler class maps onto one of our solvers."""

    solver: str
    shift_key: str
    options: tuple[str, ...]  # passed on under the same name
    required: Mapping[str, tuple[Any, tuple]]  # key -> (diffusers default, values we reproduce)
    ignored: frozenset[str]  # keys without effect on flow-sigma sampling
    solver_type_aliases: Mapping[str, str]  # diffusers silently maps these solver types


_BETA_KEYS = ("beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr")
_NO_SIGMA_TRANSFORMS = {
    "use_karras_sigmas": (False, (False,)),
    "use_exponential_sigmas": (False, (False,)),
    "use_beta_sigmas": (False, (False,)),
    "use_dynamic_shifting": (False, (False,)),
}
_FLOW = {"prediction_type": ("epsilon", ("flow_prediction",)), "use_flow_sigmas": (False, (True,))}

_SPECS: Mapping[str, _DiffusersSpec] = MappingProxyType({
    "UniPCMultistepScheduler": _DiffusersSpec(
        solver="unipc",
        shift_key="flow_shift",
        options=("solver_order", "solver_type", "lower_order_final", "disable_corrector", "final_sigmas_type"),
        required={
            **_FLOW,
            **_NO_SIGMA_TRANSFORMS,
            "predict_x0": (True, (True,)),
            "thresholding": (False, (False,)),
            "solver_p": (None, (None,)),
            "shift_terminal": (None, (None,)),
        },
        ignored=frozenset(
            _BETA_KEYS
            + ("timestep_spacing", "steps_offset", "dynamic_thresholding_ratio", "sample_max_value")
            + ("time_shift_type", "sigma_min", "sigma_max")
        ),
        solver_type_aliases={"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"},
    ),
    "DPMSolverMultistepScheduler": _DiffusersSpec(
        solver="dpm++",
        shift_key="flow_shift",
        options=("solver_order", "solver_type", "lower_order_final", "euler_at_final", "final_sigmas_type"),
        required={
            **_FLOW,
            **_NO_SIGMA_TRANSFORMS,
            "algorithm_type": ("dpmsolver++", ("dpmsolver++", "deis")),  # diffusers maps deis to dpmsolver++
            "thresholding": (False, (False,)),
            "use_lu_lambdas": (False, (False,)),
            "variance_type": (None, (None,)),
        },
        ignored=frozenset(
            _BETA_KEYS
            + ("timestep_spacing", "steps_offset", "dynamic_thresholding_ratio", "sample_max_value")
            + ("time_shift_type", "lambda_min_clipped")
        ),
        solver_type_aliases={"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    ),
    "FlowMatchEulerDiscreteScheduler": _DiffusersSpec(
        solver="euler",
        shift_key="shift",
        options=(),
        required={
            **_NO_SIGMA_TRANSFORMS,
            "invert_sigmas": (False, (False,)),
            "shift_terminal": (None, (None,)),
            "stochastic_sampling": (False, (False,)),
        },
        ignored=frozenset(("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len", "time_shift_type")),
        solver_type_aliases={},
    ),
})


def scheduler_from_diffusers_config(cfg: Mapping[str, Any]) -> tuple[Scheduler, dict[str, Any]]:
    """(scheduler, {"shift": default shift, "solver": its name}) sampling exactly as diffusers' `<_class_name>.from_config(cfg)`.

    Keys missing from `cfg` take diffusers' defaults; an option we do not reproduce, or a key we do
    not know, is an error that names it. The scheduler uses the "diffusers" convention.
    """
    class_name = cfg.get("_class_name")
    spec = _SPECS.get(class_name)
    if spec is None:
        raise LightX2VError(f"unsupported diffusers scheduler {class_name!r}; supported: {', '.join(_SPECS)}")
    known = {spec.shift_key, "num_train_timesteps", *spec.options, *spec.required, *spec.ignored}
    unknown = sorted(k for k in cfg if not k.startswith("_") and k not in known)
    if unknown:
        raise LightX2VError(f"{class_name}: unsupported scheduler option(s) {', '.join(unknown)}")
    for key, (default, allowed) in spec.required.items():
        value = cfg.get(key, default)
        if value not in allowed:
            supported = ", ".join(map(repr, allowed))
            raise LightX2VError(f"{class_name}: {key}={value!r} is not supported (supported: {supported})")

    options = {k: cfg[k] for k in spec.options if k in cfg}
    if "solver_type" in options:
        options["solver_type"] = spec.solver_type_aliases.get(options["solver_type"], options["solver_type"])
    shift = float(cfg.get(spec.shift_key, 1.0))
    sched = make_scheduler(
        spec.solver,
        convention="diffusers",
        num_train_timesteps=int(cfg.get("num_train_timesteps", 1000)),
        config=options,
    )
    return sched, {"shift": shift, "solver": spec.solver}
