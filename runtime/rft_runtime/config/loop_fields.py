"""What the loop's fields do on Tinker, for docs/config.md: synchronisation, batching, replay, modes, buffers.

Most of these fields come from Trinity's facts (config.models), so the CRD carries no schema for them and
stays under the API server's size limit; their meaning on Tinker is written here instead, and
config.reference puts it in the reference beside any description the model has. Every key is a field this
runtime honours (config.support counts them as honoured).
"""

from __future__ import annotations

NOTES: dict[tuple[str, str], str] = {
    ("Config", "mode"): (
        "On Tinker: both; train (a dataset for sft/dpo/cpt, else the experiences a mode-explore job writes to the "
        "experience buffer); explore (writes them); bench (scores checkpoints); serve (an OpenAI endpoint); not "
        "colocate. See docs/loop.md."),
    ("BufferConfig", "train_batch_size"): (
        "Each train step takes exactly this many experiences from the buffer while the explorer keeps batch_size; "
        "0 with no replay buffer: each train step takes one explore step's experiences, whatever survived."),
    ("SynchronizerConfig", "sync_style"): (
        "fixed and trainer_driven (the same without NCCL, as in Trinity): the explorer waits for each interval's "
        "weights; explorer_driven: it asks every explorer_sync_interval steps and goes on with what the trainer "
        "has; fully_async: it never waits, taking the newest weights each step."),
    ("SynchronizerConfig", "explorer_sync_interval"): "Explore steps between the explorer's syncs; null: "
                                                      "sync_interval.",
    ("SynchronizerConfig", "trainer_sync_interval"): "Train steps between the trainer's saves of sampler weights "
                                                     "(not with explorer_driven: it saves when asked); null: "
                                                     "sync_interval.",
    ("ExperienceBufferConfig", "storage_type"): (
        "queue: in one job; between an explore and a train job, kept at path (a SQLAlchemy URL or .jsonl; none: "
        "<job dir>/buffer/NAME.jsonl). sql: a SQLAlchemy URL (SQLite, PostgreSQL, ...). file: a .jsonl (for "
        "sft/dpo/cpt, a dataset)."),
    ("ExperienceBufferConfig", "path"): "Mode both with a queue: where a record of every experience is kept.",
    ("ExperienceBufferConfig", "capacity"): "Groups of experiences the queue holds before the explorer waits; "
                                            "the replay pool drops its lowest priority instead.",
    ("ExperienceBufferConfig", "max_read_timeout"): "Seconds a mode-train job waits for a new experience before "
                                                    "it stops with an error.",
    ("ExperienceBufferConfig", "replay_buffer"): "Reuse experiences by priority (see its section).",
    ("ExperienceBufferConfig", "max_retry_times"): "Attempts of a database operation (sql).",
    ("ExperienceBufferConfig", "max_retry_interval"): "Seconds between those attempts.",
    ("ReplayBufferConfig", "enable"): "Take experiences by priority and reuse them (a queue: the priority pool; "
                                      "sql: rows are read again, the least read first).",
    ("ReplayBufferConfig", "priority_fn"): "linear_decay (model_version - decay x use_count) or "
                                           "decay_limit_randomization (the same plus noise of sd sigma; reused "
                                           "only while use_count < use_count_limit).",
    ("ReplayBufferConfig", "reuse_cooldown_time"): "Seconds before a taken group may be taken again; null: never "
                                                   "reused.",
    ("ReplayBufferConfig", "priority_fn_args"): "Arguments of priority_fn: decay; use_count_limit and sigma.",
    ("ExplorerConfig", "eval_on_startup"): "Mode bench: score the base model too.",
    ("ExplorerConfig", "bench_on_latest_checkpoint"): "Mode bench scores only the newest checkpoint.",
    ("ExplorerConfig", "proxy_port"): "Port of mode serve's OpenAI-compatible endpoint (0: any free one).",
    ("ExplorerConfig", "listen_address"): "Address mode serve's endpoint listens on.",
    ("ExplorerConfig", "service_status_check_interval"): "Seconds between mode serve's looks for newer weights.",
    # what the workflow runner reads from a taskset row (rft_runtime.workflows.runner, single_turn)
    ("FormatConfig", "workflow_key"): (
        "A taskset's column naming each row's workflow (a registered name or an import path); a row without "
        "one runs the taskset's default_workflow_type."),
    ("FormatConfig", "reward_fn_key"): (
        "A taskset's column naming each row's reward function; a row without one uses the taskset's "
        "default_reward_fn_type."),
    ("FormatConfig", "reply_prefix"): (
        "A taskset's: the start of the assistant's reply, put after the prompt (the reply continues it); null: "
        "buffer.explorer_input.reply_prefix."),
    # what the trainer reads from a training dataset's row (rft_runtime.loop.stage.sft_messages, loop.prompts)
    ("FormatConfig", "tools_key"): (
        "An SFT dataset's (and mix's expert data's) column of each row's tool definitions, a list or its JSON as a "
        "string, handed to the chat template with the row (Trinity's SFT formatter); a reply that calls a tool "
        "trains on the template's rendering of the call. A row without the column has no tools."),
    ("FormatConfig", "chat_template"): (
        "The chat template of an SFT or DPO dataset's (or mix's expert data's) rows; null: "
        "model.custom_chat_template, else the tokenizer's. A taskset's is not read, as in Trinity (rollouts use "
        "explorer.rollout_model.chat_template)."),
    ("FormatConfig", "system_prompt"): (
        "For an SFT or DPO dataset: put before a plaintext row's prompt; a conversation (prompt_type messages) is "
        "trained as it is written, as Trinity's formatters do."),
    ("FormatConfig", "system_prompt_key"): (
        "For an SFT or DPO dataset's plaintext rows too, before system_prompt (an empty value: system_prompt)."),
    ("FormatConfig", "enable_concatenated_multi_turn"): (
        "An SFT dataset's (and mix's expert data's): train on every assistant turn of a conversation, as the chat "
        "template renders it, not only the last (Trinity's action mask; with a `<think>` template, the turns after "
        "the last user message). Text rows only."),
    ("AlgorithmConfig", "kl_penalty_fn"): (
        "A KL penalty on the rewards: refused for reinforceplusplus, rloo, on_policy_distill and jsd, whose "
        "advantages Trinity computes in its trainer and penalises; for the others Trinity never reads it, so it "
        "loads with a warning (docs/algorithms.md)."),
    # where the explorer's tasks come from (rft_runtime.data.taskset_mix, data.tasksets)
    ("ExplorerInput", "tasksets"): (
        "Several tasksets trained on together, mixed as Trinity's TasksetScheduler mixes them: each epoch "
        "shuffles one entry per row of every taskset (numpy, seeded with the epoch), each step takes the next "
        "batch_size entries, and each taskset's selector picks its rows; every task runs its own taskset's "
        "workflow, reward, format and rollout_args. buffer.total_epochs / total_steps count over all the rows "
        "(Trinity gives each taskset the buffer's); resuming takes the same batches. Set either this or taskset."),
    ("TasksetConfig", "storage_type"): (
        "file: a file, folder or hub dataset. sql: Trinity's SQL task storage, the table named by name (unnamed: "
        "taskset_<i> / eval_taskset_<i>) with columns id and raw_task (each task's row as JSON) in the "
        "database path names (any SQLAlchemy URL: sqlite:///FILE, postgresql://...). A training taskset is read "
        "in id order, a batch per step, once (no epochs), ending when less than a batch is left; each step "
        "reads the next rows, and a resumed job goes on after the last id read. An eval taskset is read whole."),
    ("ExplorerConfig", "over_rollout"): "Steps that stop waiting for their slowest tasks (see its section).",
    ("ExplorerConfig", "dynamic_timeout"): "A rollout timeout that follows the mean run time (see its section).",
    ("OverRolloutConfig", "ratio"): (
        "A step waits for ceil(batch_size x (1 - ratio)) of its tasks, then at most wait_after_min seconds more; "
        "the tasks still running are cancelled and dropped, as in Trinity (they do not come back later). The "
        "step's record counts rollout/finished_task_count and rollout/late_task_count. Not with sync_style "
        "fixed (Trinity refuses the pair)."),
    ("OverRolloutConfig", "wait_after_min"): "Seconds a step waits for its other tasks once enough are in.",
    ("DynamicTimeoutConfig", "enable"): (
        "A workflow run times out at min(explorer.max_timeout, mean run time x ratio) once warmup_min_steps "
        "steps have had all their tasks in (Trinity's dynamic timeout); the mean is over the training runs so "
        "far (a repeatable workflow's run is the whole task). A run over it is retried (max_retry_times), then "
        "fails. The record's rollout/timeout is the timeout each step ran with. Evaluations keep max_timeout."),
    ("DynamicTimeoutConfig", "warmup_min_steps"): "Steps with every task in before the timeout adapts.",
    ("DynamicTimeoutConfig", "ratio"): "The timeout is the mean run time times this.",
    # what the rollouts' sampler reads (rft_runtime.workflows.runners.prompt_limit)
    ("ModelConfig", "enable_prompt_truncation"): (
        "true (Trinity's default): a prompt longer than max_prompt_tokens is not sampled; it becomes a reward-0, "
        "masked-out rollout, counted in truncated_prompts. false: every prompt is sampled whatever its length, "
        "as long as prompt and response fit the context (max_model_len, else max_prompt_tokens + "
        "max_response_tokens); longer prompts leave less room for the response. explorer.rollout_model's and "
        "an auxiliary model's own setting win for their prompts. SFT, DPO and mix's expert rows follow it too."),
    ("OptimizerConfig", "warmup_style"): "Trinity's older name of lr_scheduler_type: when set, it wins.",
    # what the trainer reads from a dataset row, beside the rollouts' images (rft_runtime.workflows.images)
    ("FormatConfig", "image_key"): (
        "Column of a row's images (paths, URLs, data: URLs, bytes). They reach Tinker as image chunks where the "
        "chat template puts the image token, sized by the model's processor: a taskset's for rollouts "
        "(simple_mm_workflow), a training dataset's with prompt_type plaintext for training (SFT, DPO, the expert "
        "data of mix / mix_chord; `<image>` tags place them). Needs a vision-language base model: the local "
        "engine serves text models and refuses them. Trinity's own Tinker mode drops a training dataset's images."),
}
