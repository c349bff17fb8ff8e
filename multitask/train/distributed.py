"""What a finished run needs to know about how it was distributed: the engine, and a whole copy of the model.

Functions of a `transformers.Trainer` after (or during) training; nothing here changes how training runs.
DDP and DeepSpeed ZeRO-1/2 keep whole parameters on every process; FSDP and ZeRO-3 shard them, which is what
`full_model` has to undo before the main process can score anything on its own.
"""

from __future__ import annotations

from transformers import Trainer


def shards_parameters(trainer: Trainer) -> bool:
    """True under FSDP or DeepSpeed ZeRO-3, where no process holds whole parameters."""
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    return bool(trainer.is_fsdp_enabled or zero3)


def parallelism(trainer: Trainer) -> str:
    """How training ran, for the run log: engine, process count, and this rank's share of the parameters."""
    world = trainer.args.world_size
    if trainer.is_fsdp_enabled:
        engine = f"FSDP{getattr(trainer.accelerator.state.fsdp_plugin, 'fsdp_version', '')}"
    elif trainer.is_deepspeed_enabled:
        engine = f"DeepSpeed ZeRO-{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    else:
        engine = "DDP" if world > 1 else "single process"
    # FSDP2 parameters are DTensors (to_local() is this rank's shard, numel() the whole); ZeRO-3 keeps the
    # shard in ds_tensor and the whole size in ds_numel.
    local = total = 0
    for param in trainer.model_wrapped.parameters():
        total += getattr(param, "ds_numel", param.numel())
        if hasattr(param, "to_local"):
            local += param.to_local().numel()
        else:
            local += param.ds_tensor.numel() if hasattr(param, "ds_tensor") else param.numel()
    share = f"; this rank holds {local / total:.1%} of the parameter elements" if total else ""
    return f"{engine} over {world} process(es){share}"


def full_model(trainer: Trainer):
    """The trained model with whole parameters, for scoring on the main process after training.

    Under DDP (or one process) this is the trained model itself. Under FSDP and ZeRO-3 a forward pass on one
    rank would wait forever for the others, so a full state dict is gathered (a collective: every rank must call
    this) into an unsharded copy on the main process that shares the config (thresholds set on it are saved).
    Other ranks get their own wrapped-out model back.
    """
    # keep_fp32_wrapper=False: under bf16/fp16 accelerate wrapped forward in autocast; what is fitted and scored
    # after training must run in fp32, as run_predict.py predicts by default.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    if not shards_parameters(trainer):
        return model
    # accelerate gathers ZeRO-3 weights through the DeepSpeed engine's methods, FSDP's from the wrapped model.
    wrapped = trainer.deepspeed if trainer.is_deepspeed_enabled else trainer.model_wrapped
    state_dict = trainer.accelerator.get_state_dict(wrapped)
    # Only after the gather: it is a collective, and a rank returning early would leave the others waiting.
    if not trainer.is_world_process_zero():
        return model
    whole = type(model)(model.config)
    whole.load_state_dict(state_dict)
    return whole.to(trainer.args.device).eval()
