"""The one map between diffusers' scheduler configs and the processes of lit_gen's methods, both ways, as
plain data: which method and hyperparameters a pipeline becomes, and which scheduler a checkpoint exports
to. Every option is mapped exactly or refused in one line naming it and what is supported."""

from __future__ import annotations

from typing import Any

SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# diffusers' variance_type -> lit_gen's variance; the _log forms are the same variances computed in log space
VARIANCES = {"fixed_small": "small", "fixed_small_log": "small", "fixed_large": "large",
             "fixed_large_log": "large", "learned_range": "learned"}
# diffusers' timestep_spacing -> the spacing of lit_gen's ddpm and ddim samplers (exact for leading; diffusers
# steps from t to t - T // K, which for linspace, and for trailing when K does not divide T, is not the next
# kept step that lit_gen steps to)
SPACINGS = {"leading": "leading", "trailing": "trailing", "linspace": "linear"}
# options whose only supported value is diffusers' default: lit_gen's samplers have no other
FIXED = {"trained_betas": None, "thresholding": False, "steps_offset": 0, "set_alpha_to_one": True,
         "rescale_betas_zero_snr": False}
DISCRETE = ("DDPMScheduler", "DDIMScheduler")


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {ours: theirs for theirs, ours in reversed(table.items())}


def _choice(config: dict, key: str, table: dict[str, str], default: str) -> str:
    value = config.get(key, default)
    if value not in table:
        raise ValueError(f"{key}={value!r} is not supported; choose one of {sorted(table)}")
    return table[value]


def discrete_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """A DDPM / DDIM scheduler config -> DDPM hyperparameters (the class follows from ``variance``)."""
    for key, supported in FIXED.items():
        if config.get(key, supported) != supported:
            raise ValueError(f"scheduler option {key}={config[key]!r} is not supported; lit_gen's samplers "
                             f"need {key}={supported!r}")
    if config.get("clip_sample", True) and config.get("clip_sample_range", 1.0) != 1.0:
        raise ValueError(f"scheduler option clip_sample_range={config['clip_sample_range']!r} is not "
                         f"supported; lit_gen clips x0 to [-1, 1] (clip_sample_range 1.0)")
    variance = _choice(config, "variance_type", VARIANCES, "fixed_small")
    hparams = {
        "num_timesteps": int(config.get("num_train_timesteps", 1000)),
        "beta_schedule": _choice(config, "beta_schedule", SCHEDULES, "linear"),
        "beta_start": float(config.get("beta_start", 1e-4)),
        "beta_end": float(config.get("beta_end", 0.02)),
        "prediction_type": _choice(config, "prediction_type", PREDICTIONS, "epsilon"),
        "variance": variance,
        "clip_denoised": bool(config.get("clip_sample", True)),
        "sampler": "ddim" if config.get("_class_name") == "DDIMScheduler" else "ddpm",
        "spacing": _choice(config, "timestep_spacing", SPACINGS, "leading"),
    }
    if variance == "learned":
        hparams["loss_type"] = "hybrid"
    return hparams


def ve_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """A ScoreSdeVe scheduler config -> ScoreSDE hyperparameters. Its models work on images in [0, 1];
    lit_gen's data space is [-1, 1], twice as wide, so every noise level doubles (the net is told:
    ``unit_range``)."""
    return {
        "sde": "ve", "sigma_min": 2 * float(config.get("sigma_min", 0.01)),
        "sigma_max": 2 * float(config.get("sigma_max", 1348.0)),
        "num_scales": int(config.get("num_train_timesteps", 2000)),
        "sampling_eps": float(config.get("sampling_eps", 1e-5)), "snr": float(config.get("snr", 0.15)),
        "n_corrector": int(config.get("correct_steps", 1)), "sampler": "pc", "predictor": "reverse_diffusion",
        "time_input": "sigma", "prediction_type": "score", "clip_denoised": False,
    }


def method_of(scheduler: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(lit_gen method class name, its process hyperparameters) of a diffusers scheduler config."""
    name = scheduler.get("_class_name")
    if name in DISCRETE:
        hparams = discrete_hparams(scheduler)
        return ("ImprovedDDPM" if hparams["variance"] == "learned" else "DDPM"), hparams
    if name == "ScoreSdeVeScheduler":
        return "ScoreSDE", ve_hparams(scheduler)
    raise ValueError(f"scheduler {name!r} is not supported; choose one of "
                     f"{sorted([*DISCRETE, 'ScoreSdeVeScheduler'])}")


def scheduler_of(method: str, hparams: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(diffusers scheduler class name, its config) of a lit_gen checkpoint's method and hyperparameters: the
    inverse of :func:`method_of` (the pipeline is DDIMPipeline for a DDIM sampler, DDPMPipeline otherwise)."""
    if method in ("DDPM", "ImprovedDDPM"):
        schedule = hparams.get("beta_schedule", "cosine" if method == "ImprovedDDPM" else "linear")
        variance = hparams.get("variance", "learned" if method == "ImprovedDDPM" else "small")
        prediction = hparams.get("prediction_type", "eps")
        config = {
            "num_train_timesteps": int(hparams.get("num_timesteps", 1000)),
            "beta_schedule": _inverse(SCHEDULES)[schedule],
            "beta_start": float(hparams.get("beta_start", 1e-4)),
            "beta_end": float(hparams.get("beta_end", 0.02)),
            "prediction_type": _inverse(PREDICTIONS)[prediction],
            "clip_sample": bool(hparams.get("clip_denoised", True)),
            "timestep_spacing": _choice({"spacing": hparams.get("spacing") or "linear"}, "spacing",
                                        _inverse(SPACINGS), "linear"),
        }
        if hparams.get("sampler", "ddpm") == "ddim":
            if variance == "learned":
                raise ValueError("a learned variance has no DDIMScheduler counterpart; export with the "
                                 "model's sampler 'ddpm' (DDPMScheduler, variance_type learned_range)")
            return "DDIMScheduler", config
        return "DDPMScheduler", {**config, "variance_type": _inverse(VARIANCES)[variance]}
    if (method == "ScoreSDE" and hparams.get("sde") == "ve" and hparams.get("time_input") == "sigma"
            and hparams.get("prediction_type") == "score"):
        return "ScoreSdeVeScheduler", {
            "num_train_timesteps": int(hparams["num_scales"]), "sigma_min": hparams["sigma_min"] / 2,
            "sigma_max": hparams["sigma_max"] / 2, "sampling_eps": hparams.get("sampling_eps") or 1e-5,
            "snr": hparams.get("snr", 0.16), "correct_steps": hparams.get("n_corrector", 1),
        }
    raise ValueError(f"a {method} checkpoint has no diffusers pipeline to export to; lit-gen export --format "
                     f"diffusers writes DDPM and Improved DDPM checkpoints (DDPMPipeline / DDIMPipeline) and "
                     f"VE score SDEs with the time input and output of a ScoreSdeVe pipeline's NCSN++ "
                     f"(time_input sigma, prediction_type score)")
