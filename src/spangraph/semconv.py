"""Semantic conventions: every attribute key, event name and kind spangraph writes.

Each name is a constant with a docstring under it; ``docs/semantic-conventions.md``
lists them all. Attribute keys in the ``spangraph.*`` namespace are spangraph's own;
the ``gen_ai.*`` keys are OpenTelemetry's GenAI conventions, redeclared here so that
spangraph depends on no incubating semconv module.
"""

from __future__ import annotations

from typing import Final

# --- spangraph attributes -------------------------------------------------------------

KIND: Final = "spangraph.kind"
"""What a span stands for: one of :data:`KINDS`."""

WORKFLOW_ID: Final = "spangraph.workflow.id"
"""Id of one workflow run (a UUIDv7 or the caller's id); inherited by every descendant."""

WORKFLOW_NAME: Final = "spangraph.workflow.name"
"""Name of the workflow a span belongs to."""

EXECUTION_ID: Final = "spangraph.execution.id"
"""Id of one logical execution, which may span several traces (retries, resumes)."""

BRANCH_ID: Final = "spangraph.branch.id"
"""Id of the branch a span runs in; inherited by every descendant."""

PROJECT_ID: Final = "spangraph.project.id"
"""Project the span belongs to (``SPANGRAPH_PROJECT``), for filtering."""

AGENT_ID: Final = "spangraph.agent.id"
"""Id of the agent that produced the span."""

USER_ID: Final = "spangraph.user.id"
"""Id of the end user on whose behalf the run happens."""

STEP_ATTEMPT: Final = "spangraph.step.attempt"
"""Attempt number of a step, starting at 1."""

STEP_MAX_ATTEMPTS: Final = "spangraph.step.max_attempts"
"""How many attempts a step with ``retries=`` (or a LangGraph node with a RetryPolicy)
may make in all."""

TIMEOUT_S: Final = "spangraph.timeout_s"
"""Timeout of a step or workflow in seconds, when one was set."""

STATE: Final = "spangraph.state"
"""Final state set by spangraph's own spans: ``completed``, ``failed`` or ``cancelled``."""

DECISION_OPTIONS: Final = "spangraph.decision.options"
"""Names of all options offered at a decision (a single value offers one)."""

DECISION_CHOSEN: Final = "spangraph.decision.chosen"
"""Name of the option chosen at a decision."""

DECISION_REASON: Final = "spangraph.decision.reason"
"""Why the chosen option was chosen."""

DECISION_SCORE: Final = "spangraph.decision.score"
"""Score of the chosen option, when the chooser gave one."""

DECISION_OPTION_SPAN_IDS: Final = "spangraph.decision.option_span_ids"
"""Span id of each option's span, in the order of ``spangraph.decision.options``; empty
for options that were named but not explored."""

LLM_INCOMPLETE: Final = "spangraph.llm.incomplete"
"""``true`` on an instrumented model call whose streamed answer ended before the model's
finish reason came: closed, left or dropped by its consumer (state ``completed``),
cancelled (``cancelled``), or failed or cut off (``failed``)."""

LINK_TYPE: Final = "spangraph.link.type"
"""On span links: one of :data:`LINK_TYPES`."""

# --- kinds ----------------------------------------------------------------------------

KIND_WORKFLOW: Final = "workflow"
"""A workflow run: the root of a run's tree."""
KIND_STEP: Final = "step"
"""One step of a workflow (one attempt of it, when it is retried)."""
KIND_DECISION: Final = "decision"
"""A decision point with options."""
KIND_OPTION: Final = "option"
"""One option of a decision."""
KIND_BRANCH: Final = "branch"
"""A branch of a run; its id is inherited by every span inside it."""
KIND_AGENT: Final = "agent"
"""An agent invocation."""
KIND_LLM: Final = "llm"
"""A call to a language model."""
KIND_TOOL: Final = "tool"
"""A tool call."""
KIND_INGEST_JOB: Final = "ingest_job"
"""A data ingestion job."""
KIND_MONITOR: Final = "monitor"
"""A span that watches another span or branch."""
KIND_SPAN: Final = "span"
"""Any other span (from another instrumentation): no kind label in the graph."""

KINDS: Final = (
    KIND_WORKFLOW,
    KIND_STEP,
    KIND_DECISION,
    KIND_OPTION,
    KIND_BRANCH,
    KIND_AGENT,
    KIND_LLM,
    KIND_TOOL,
    KIND_INGEST_JOB,
    KIND_MONITOR,
)
"""Every kind that carries a graph label."""

KIND_LABELS: Final = {
    KIND_WORKFLOW: "Workflow",
    KIND_STEP: "Step",
    KIND_DECISION: "Decision",
    KIND_OPTION: "Option",
    KIND_BRANCH: "Branch",
    KIND_AGENT: "Agent",
    KIND_LLM: "LLM",
    KIND_TOOL: "Tool",
    KIND_INGEST_JOB: "IngestJob",
    KIND_MONITOR: "Monitor",
}
"""Graph label of each kind (labels come only from this fixed map, never from input)."""

# --- link types -----------------------------------------------------------------------

LINK_MONITORS: Final = "monitors"
"""The span watches the linked span or branch."""
LINK_RETRY_OF: Final = "retry_of"
"""The span is a new attempt of the linked (failed) span."""
LINK_RESUMED_FROM: Final = "resumed_from"
"""The span resumes the linked (paused or crashed) span."""
LINK_CHOSEN_OPTION: Final = "chosen_option"
"""The decision chose the linked option span."""

LINK_TYPES: Final = (LINK_MONITORS, LINK_RETRY_OF, LINK_RESUMED_FROM, LINK_CHOSEN_OPTION)
"""Every link type."""

# --- states ---------------------------------------------------------------------------

STATE_RUNNING: Final = "running"
"""The span has started and not (yet) ended; stays so if its process died."""
STATE_COMPLETED: Final = "completed"
"""The span ended without error."""
STATE_FAILED: Final = "failed"
"""The span ended with an error."""
STATE_CANCELLED: Final = "cancelled"
"""The span was cancelled (``asyncio.CancelledError``, ``KeyboardInterrupt``,
``trio.Cancelled``, ``GreenletExit``), or was still open when the program exited
(``spangraph.exceptions.ProgramExited``: a daemon thread's, a task never finished)."""
STATE_UNEXPLORED: Final = "unexplored"
"""An option node that was offered at a decision but never explored (no span of its own)."""
RUN_STATES: Final = (STATE_RUNNING, STATE_COMPLETED, STATE_FAILED, STATE_CANCELLED)
"""The states a span of a run can be in: what ``query workflows --state`` and
``GET /api/workflows?state=`` take."""

# --- lifecycle event names ------------------------------------------------------------

WORKFLOW_STARTED: Final = "workflow.started"
"""A workflow run began."""
WORKFLOW_QUEUED: Final = "workflow.queued"
"""A workflow run was queued to start later."""
WORKFLOW_COMPLETED: Final = "workflow.completed"
"""A workflow run finished without error."""
WORKFLOW_FAILED: Final = "workflow.failed"
"""A workflow run finished with an error."""
WORKFLOW_PAUSED: Final = "workflow.paused"
"""A workflow run paused (e.g. waiting for a person)."""
WORKFLOW_RESUMED: Final = "workflow.resumed"
"""A paused workflow run resumed."""
WORKFLOW_CANCELLED: Final = "workflow.cancelled"
"""A workflow run was cancelled."""
STEP_STARTED: Final = "step.started"
"""A step (attempt) began."""
STEP_COMPLETED: Final = "step.completed"
"""A step (attempt) finished without error."""
STEP_FAILED: Final = "step.failed"
"""A step (attempt) finished with an error."""
RETRY_SCHEDULED: Final = "retry.scheduled"
"""A failed attempt will be retried after ``delay_ms``."""
RETRY_EXHAUSTED: Final = "retry.exhausted"
"""A failed attempt was the last one allowed."""
SLEEP_STARTED: Final = "sleep.started"
""":func:`spangraph.sleep` began waiting."""
SLEEP_COMPLETED: Final = "sleep.completed"
""":func:`spangraph.sleep` finished waiting."""
TIMEOUT_SET: Final = "timeout.set"
"""A timeout was armed."""
TIMEOUT_EXCEEDED: Final = "timeout.exceeded"
"""A timeout fired."""
LLM_COMPLETE: Final = "llm.complete"
"""A language-model call returned its complete message."""
TOOL_CALL: Final = "tool.call"
"""A tool was called."""
TOOL_RESPONSE: Final = "tool.response"
"""A tool answered."""
AGENT_MESSAGE_APPENDED: Final = "agent.message.appended"
"""An agent appended a message to its conversation."""
INGEST_JOB_CREATED: Final = "ingest.job.created"
"""An ingest job was created."""
INGEST_JOB_UPDATED: Final = "ingest.job.updated"
"""An ingest job reported progress."""
INGEST_JOB_COMPLETED: Final = "ingest.job.completed"
"""An ingest job finished."""
INGEST_JOB_FAILED: Final = "ingest.job.failed"
"""An ingest job failed."""
INGEST_JOB_CANCELLED: Final = "ingest.job.cancelled"
"""An ingest job was cancelled."""
TOKEN: Final = "token"
"""A streamed LLM token: a live-only event, never written to the graph."""

# --- lifecycle event attributes -------------------------------------------------------

EVENT_ATTEMPT: Final = "attempt"
"""Attempt number the event refers to."""
EVENT_DELAY_MS: Final = "delay_ms"
"""Delay before the next attempt, or the length of a sleep, in milliseconds."""
EVENT_DURATION_MS: Final = "duration_ms"
"""Duration of what ended, in milliseconds."""
EVENT_TIMEOUT_MS: Final = "timeout_ms"
"""The timeout that was set or exceeded, in milliseconds."""
ERROR_TYPE: Final = "error.type"
"""Fully qualified type of the error (OpenTelemetry's ``error.type``)."""
ERROR_MESSAGE: Final = "error.message"
"""Message of the error."""

# --- live-only message types ----------------------------------------------------------

SPAN_STARTED: Final = "span.started"
"""Live message type sent when a span starts."""
SPAN_ENDED: Final = "span.ended"
"""Live message type sent when a span ends."""

# --- GenAI conventions (OpenTelemetry) ------------------------------------------------

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
"""GenAI operation: ``invoke_workflow``, ``invoke_agent``, ``execute_tool``, ``chat`` …"""
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
"""Name of the agent."""
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
"""Name of the tool."""
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
"""Id of the tool call the model asked for (``call_…``), when given."""
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
"""Type of the tool: ``function`` for a decorated function."""
GEN_AI_TOOL_DESCRIPTION: Final = "gen_ai.tool.description"
"""What the tool does: the first line of a decorated function's docstring."""
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
"""Model provider (``openai``, ``anthropic`` …)."""
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
"""Model asked for."""
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
"""Tokens in the prompt: a whole number from 0 to 2^63-1 (``usage()`` refuses anything else
with a ValueError naming ``input_tokens``)."""
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
"""Tokens in the answer: a whole number from 0 to 2^63-1 (else a ValueError naming
``output_tokens``)."""
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
"""Sampling temperature asked for."""
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
"""Nucleus-sampling ``top_p`` asked for."""
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
"""Most tokens the answer may have, as asked for."""
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
"""Frequency penalty asked for."""
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
"""Presence penalty asked for."""
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
"""Sampling seed asked for."""
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
"""Answers (choices) asked for, when not 1."""
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
"""Texts at which the model is asked to stop."""
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
"""``true`` when the answer was asked for as a stream; absent otherwise."""
GEN_AI_OUTPUT_TYPE: Final = "gen_ai.output.type"
"""Kind of output asked for, when the request names one: ``json`` (a JSON object, a JSON
schema, a structured-output model) or ``text``."""
SERVER_ADDRESS: Final = "server.address"
"""Host of the model server called (``api.openai.com``, a local server's)."""
SERVER_PORT: Final = "server.port"
"""Port of the model server called."""
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
"""Id the provider gave the answer (``chatcmpl-…``, ``resp_…``)."""
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
"""Model that answered (often a dated version of the one asked for)."""
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
"""Why the model stopped, one reason per choice (``stop``, ``length``, ``tool_calls`` …)."""
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
"""Seconds from the request to the first chunk of a streamed answer."""
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
"""Tokens of the prompt served from the provider's cache (OpenAI's ``cached_tokens``)."""
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
"""Tokens of the answer the model spent reasoning (OpenAI's ``reasoning_tokens``)."""

# --- OpenAI conventions (OpenTelemetry) -----------------------------------------------

OPENAI_API_TYPE: Final = "openai.api.type"
"""OpenAI API called: ``chat_completions`` or ``responses``."""
OPENAI_REQUEST_SERVICE_TIER: Final = "openai.request.service_tier"
"""Service tier asked for (``default``, ``flex`` …), when given and not ``auto``."""
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
"""Service tier that served the answer."""
OPENAI_RESPONSE_SYSTEM_FINGERPRINT: Final = "openai.response.system_fingerprint"
"""Fingerprint of the backend configuration that answered (``fp_…``)."""

# --- spangraph's LangGraph instrumentor ------------------------------------------------

LANGGRAPH_INTERRUPTED: Final = "langgraph.interrupted"
"""``true`` on a LangGraph node's step that called ``interrupt()``, and on the run that
stopped there (or at a static breakpoint) to wait for an answer (it ends ``completed``,
its last lifecycle event ``workflow.paused``)."""
LANGGRAPH_BREAKPOINT: Final = "langgraph.breakpoint"
"""``before`` or ``after``: the LangGraph run stopped at a static breakpoint
(``interrupt_before`` / ``interrupt_after``), before the nodes due next or after the
node that ran; ``subgraph``: a subgraph its node ran stopped at one of its own."""
LANGGRAPH_NEXT: Final = "langgraph.next"
"""The nodes due next when a LangGraph run stopped at a static breakpoint."""

# --- other instrumentations' span kinds (read by the mapping, never written) ----------

OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
"""OpenInference's span kind (``LLM``, ``TOOL``, ``AGENT``, ``CHAIN`` …): sets the
spangraph kind of a span that has no ``spangraph.kind`` (see ``mapping.kind_of``)."""
TRACELOOP_SPAN_KIND: Final = "traceloop.span.kind"
"""OpenLLMetry's span kind (``workflow``, ``task``, ``agent``, ``tool``): sets the
spangraph kind of a span that has no ``spangraph.kind``."""
LLM_REQUEST_TYPE: Final = "llm.request.type"
"""OpenLLMetry's request type on model calls (``chat``, ``completion``, ``embedding`` …):
makes the span an ``llm`` span."""
AI_OPERATION_ID: Final = "ai.operationId"
"""The Vercel AI SDK's operation (``ai.generateText.doGenerate`` …, ``ai.toolCall``): gives
its spans a kind (its provider calls ``llm``, its tool calls ``tool``, the calls around
them ``step``)."""
LANGFUSE_OBSERVATION_TYPE: Final = "langfuse.observation.type"
"""Langfuse's observation type (``generation``, ``tool``, ``agent``, ``chain``, ``span`` …):
sets the spangraph kind of a span that has no ``spangraph.kind`` (a ``span`` or ``chain``
at the root of a trace, an ``@observe`` function, heads a run)."""
LANGFUSE_USAGE_DETAILS: Final = "langfuse.observation.usage_details"
"""Langfuse's token counts of a generation, as JSON (``{"prompt_tokens": 11, …}`` or
``{"input": 11, "output": 7}``): counted where the GenAI and OpenInference keys are not
set."""
LANGFUSE_MODEL_NAME: Final = "langfuse.observation.model.name"
"""Langfuse's model of a generation: shown where ``gen_ai.request.model`` is not set."""
OPENINFERENCE_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"
"""OpenInference's prompt tokens of a model call: counted as its input tokens where
``gen_ai.usage.input_tokens`` is not set (run and branch totals)."""
OPENINFERENCE_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"
"""OpenInference's answer tokens of a model call: counted as its output tokens where
``gen_ai.usage.output_tokens`` is not set."""

# --- resource attributes read by spangraph ---------------------------------------------

SERVICE_NAME: Final = "service.name"
"""Resource attribute: the service; stored as ``service`` on nodes and messages."""
DEPLOYMENT_ENVIRONMENT: Final = "deployment.environment.name"
"""Resource attribute: the environment; stored as ``env`` on nodes and messages."""
