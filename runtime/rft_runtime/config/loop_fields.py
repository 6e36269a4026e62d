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
