"""Engine text in, the dialect's response payloads out.

Between the engine and the formatter sit two readers of the text: the ``<think>`` splitter
(reasoning apart from the answer, for conversations) and the tool-call reader (an answer that is
a call becomes ``tool_calls``). While an answer could still turn out to be a call, it is held
back instead of streamed; with a forced call it is always held.
"""

from __future__ import annotations

from darkbloom.inference.dialects import formatter_for
from darkbloom.inference.formatting import Logprobs, Outcome
from darkbloom.inference.reasoning import Kind, ThinkSplitter
from darkbloom.inference.request import GenerationRequest
from darkbloom.inference.tools import allowed, read_call
from darkbloom.provider.engines.base import Finished


class ResponseAssembler:
    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.fmt = formatter_for(request)
        # Conversations get <think> split out; a raw text completion stays raw.
        self._splitter = ThinkSplitter() if request.prompt is None else None
        self._tools = allowed(request.tools, request.tool_choice)
        self._holding = bool(self._tools)
        self._held: list[str] = []
        self._answer: list[str] = []
        self._reasoning: list[str] = []
        self._logprobs: Logprobs = ()
        self._start: list[str] = []

    def started(self, prompt_tokens: int) -> None:
        # Sent with the first text, not now: until the first chunk the coordinator can still
        # retry elsewhere if prefill fails (nothing is committed before it).
        self._start = self.fmt.stream_start(prompt_tokens) if self.request.stream else []

    def text(self, text: str, logprobs: Logprobs = ()) -> list[str]:
        pieces: list[tuple[Kind, str]] = (self._splitter.feed(text) if self._splitter
                                           else [("content", text)])
        if logprobs and not pieces:  # no text (yet): the logprobs still go out
            pieces = [("content", "")]
        return self._emit(self._render(pieces, logprobs))

    def finish(self, finished: Finished) -> list[str]:
        assert finished.finish_reason != "cancelled"
        payloads = self._render(self._splitter.flush()) if self._splitter else []
        outcome = Outcome(finished.finish_reason, finished.prompt_tokens,
                          finished.completion_tokens, finished.stop_sequence,
                          cached_tokens=finished.cached_tokens)
        if self._holding:
            held = "".join(self._held)
            call = read_call(held, self._tools)
            if call is not None:
                outcome = Outcome("tool_calls", outcome.prompt_tokens, outcome.completion_tokens,
                                  tool_calls=(call,), cached_tokens=outcome.cached_tokens)
            else:
                payloads += self._release(held)
        if not self.request.stream:
            return ["data: " + self.fmt.body("".join(self._answer), "".join(self._reasoning), outcome,
                                             self._logprobs)]
        return self._emit([*payloads, *self.fmt.stream_end(outcome)])

    def _emit(self, payloads: list[str]) -> list[str]:
        if payloads and self._start:
            payloads, self._start = [*self._start, *payloads], []
        return payloads

    def _render(self, pieces: list[tuple[Kind, str]], logprobs: Logprobs = ()) -> list[str]:
        """Logprobs ride with the answer text of the same engine delta (reasoning gets none)."""
        payloads: list[str] = []
        for kind, text in pieces:
            if kind == "reasoning":
                if self.request.stream:
                    payloads += self.fmt.stream_reasoning(text)
                else:
                    self._reasoning.append(text)
            elif self._holding:
                self._held.append(text)
                so_far = "".join(self._held).lstrip()
                if self.request.tool_choice.mode == "auto" and so_far and not so_far.startswith("{"):
                    self._holding = False  # plain text: it cannot be a call any more
                    payloads += self._release("".join(self._held))
            else:
                payloads += self._release(text, logprobs)
                logprobs = ()
        return payloads

    def _release(self, text: str, logprobs: Logprobs = ()) -> list[str]:
        self._held = []
        if not text and not logprobs:  # tokens of a dropped partial character still have logprobs
            return []
        if not self.request.stream:
            self._answer.append(text)
            self._logprobs += logprobs
            return []
        return self.fmt.stream_delta(text, logprobs)
