"""Chat REST API (``/api/conversations/…``, ``/api/chat/…``): thin views over the services, selectors
and ``realtime``. Answers are generated in this ASGI process and read as events: ``…/events/`` serves
them as ``text/event-stream`` (the same events as the websocket; docs/chat-protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import Http404, HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, mixins, renderers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from business_project.accounts.authentication import AUTHENTICATION_CLASSES, HasScope
from business_project.accounts.choices import Scope
from business_project.chat import events, exports, realtime, selectors, services
from business_project.chat.api import serializers as s
from business_project.chat.choices import EventType, MessageStatus
from business_project.chat.quotas import QuotaExceeded, quota_status
from service_kit.pagination import PageNumberPagination

READ, WRITE = Scope.CHAT_READ, Scope.CHAT_WRITE


class ChatView(APIView):
    authentication_classes = AUTHENTICATION_CLASSES
    permission_classes = [HasScope]
    required_scopes: dict[str, str] = {"GET": READ, "POST": WRITE, "PATCH": WRITE, "DELETE": WRITE}

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if isinstance(exc, QuotaExceeded):
            response["X-Quota-Reset"] = exc.reset_at.isoformat().replace("+00:00", "Z")
        return response

    def conversation(self, conversation_id):
        conversation = selectors.conversation_get(owner=self.request.user, conversation_id=conversation_id)
        if conversation is None:
            raise Http404
        return conversation

    def message(self, conversation_id, message_id):
        message = selectors.message_get(
            owner=self.request.user, message_id=message_id, conversation_id=conversation_id
        )
        if message is None:
            raise Http404
        return message


def _generation_answer(request, plan: services.GenerationPlan) -> Response:
    async_to_sync(realtime.generation_start)(plan)
    events_url = f"/api/conversations/{plan.conversation_id}/messages/{plan.message_id}/events/"
    body = {
        "message_id": plan.message_id,
        "conversation_id": plan.conversation_id,
        "parent_id": plan.parent_id,
        "regenerates_id": plan.regenerates_id,
        "events_url": events_url,
    }
    return Response(s.GenerationOutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


# --------------------------------------------------------------------------------------------------
# Conversations


class ConversationListView(ChatView, mixins.ListModelMixin, generics.GenericAPIView):
    serializer_class = s.ConversationOutputSerializer
    pagination_class = PageNumberPagination

    def get_queryset(self):
        return selectors.conversation_list(owner=self.request.user)

    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)

    @extend_schema(
        request=s.ConversationCreateInputSerializer, responses={201: s.ConversationOutputSerializer}
    )
    def post(self, request):
        data = s.ConversationCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_create(owner=request.user, **data.validated_data)
        return Response(s.ConversationOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailView(ChatView):
    @extend_schema(responses=s.ConversationOutputSerializer)
    def get(self, request, conversation_id):
        return Response(s.ConversationOutputSerializer(self.conversation(conversation_id)).data)

    @extend_schema(request=s.ConversationUpdateInputSerializer, responses=s.ConversationOutputSerializer)
    def patch(self, request, conversation_id):
        conversation = self.conversation(conversation_id)
        data = s.ConversationUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        conversation = services.conversation_update(conversation=conversation, **data.validated_data)
        return Response(s.ConversationOutputSerializer(conversation).data)

    @extend_schema(request=None, responses={204: None})
    def delete(self, request, conversation_id):
        conversation = self.conversation(conversation_id)
        streaming = conversation.messages.filter(status=MessageStatus.STREAMING).values_list("pk", flat=True)
        for message_id in streaming:
            async_to_sync(realtime.generation_stop)(str(message_id))
        services.conversation_delete(conversation=conversation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConversationJsonExportView(ChatView):
    """The transcript as a JSON file."""

    @extend_schema(
        responses={(200, "application/json"): OpenApiTypes.OBJECT}, operation_id="conversations_export_json"
    )
    def get(self, request, conversation_id):
        conversation = self.conversation(conversation_id)
        body = exports.conversation_export_json(conversation=conversation)
        response = HttpResponse(
            json.dumps(body, indent=2, ensure_ascii=False), content_type="application/json"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="{exports.export_filename(conversation, "json")}"'
        )
        return response


class ConversationMarkdownExportView(ChatView):
    """The transcript as a Markdown file."""

    @extend_schema(
        responses={(200, "text/markdown"): OpenApiTypes.STR}, operation_id="conversations_export_markdown"
    )
    def get(self, request, conversation_id):
        conversation = self.conversation(conversation_id)
        body = exports.conversation_export_markdown(conversation=conversation)
        response = HttpResponse(body, content_type="text/markdown; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="{exports.export_filename(conversation, "md")}"'
        )
        return response


# --------------------------------------------------------------------------------------------------
# Messages


class MessageListView(ChatView, mixins.ListModelMixin, generics.GenericAPIView):
    serializer_class = s.MessageOutputSerializer
    pagination_class = PageNumberPagination

    def get_queryset(self):
        include = self.request.query_params.get("include_superseded", "").lower() in ("1", "true", "yes")
        conversation = self.conversation(self.kwargs["conversation_id"])
        return selectors.message_list(conversation=conversation, include_superseded=include)

    @extend_schema(parameters=[OpenApiParameter("include_superseded", bool)])
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)

    @extend_schema(request=s.MessageSendInputSerializer, responses={202: s.GenerationOutputSerializer})
    def post(self, request, conversation_id):
        data = s.MessageSendInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        plan = services.message_send(
            user=request.user,
            conversation_id=conversation_id,
            content=data.validated_data["content"],
            provider=data.validated_data.get("provider"),
            model=data.validated_data.get("model"),
        )
        return _generation_answer(request, plan)


class MessageDetailView(ChatView):
    @extend_schema(responses=s.MessageOutputSerializer)
    def get(self, request, conversation_id, message_id):
        return Response(s.MessageOutputSerializer(self.message(conversation_id, message_id)).data)


class MessageStopView(ChatView):
    """Stop an answer being generated; its partial text is kept. Its ``message_end`` (stop reason
    ``stopped``) follows on its event stream. Stopping an answer that has ended changes nothing."""

    @extend_schema(request=None, responses={202: s.MessageOutputSerializer})
    def post(self, request, conversation_id, message_id):
        message = self.message(conversation_id, message_id)
        if message.status == MessageStatus.STREAMING:
            async_to_sync(realtime.generation_stop)(str(message.pk))
        return Response(s.MessageOutputSerializer(message).data, status=status.HTTP_202_ACCEPTED)


class MessageRegenerateView(ChatView):
    @extend_schema(request=None, responses={202: s.GenerationOutputSerializer})
    def post(self, request, conversation_id, message_id):
        self.message(conversation_id, message_id)
        plan = services.message_regenerate(user=request.user, message_id=message_id)
        return _generation_answer(request, plan)


# --------------------------------------------------------------------------------------------------
# Server-sent events


class EventStreamRenderer(renderers.BaseRenderer):
    """Lets clients ask for ``text/event-stream``; errors before the stream opens are one SSE ``error``
    event (with the JSON error body as data) under the HTTP status."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return f"event: error\ndata: {json.dumps(data)}\n\n".encode()


def sse_frame(event_type: str, data: str, seq: int | None = None) -> str:
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {event_type}\ndata: {data}\n\n"


async def sse_events(message_id: str, after_seq: int):
    """The message's events after ``after_seq`` as SSE frames (``id`` is the seq, so a reconnecting
    EventSource resumes by itself with Last-Event-ID), heartbeats in between, until ``message_end``."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in realtime.events_read(message_id, after_seq):
                await queue.put(event)
        except realtime.BufferExpired:
            expired = events.error(
                code=events.BUFFER_EXPIRED,
                message="The events of this message are no longer kept; read the message over REST.",
                message_id=message_id,
            )
            await queue.put(expired)
        finally:
            await queue.put(None)

    reader = asyncio.ensure_future(pump())
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), settings.CHAT_HEARTBEAT_INTERVAL)
            except TimeoutError:
                yield sse_frame(EventType.HEARTBEAT, events.encode(events.heartbeat()))
                continue
            if item is None:
                return
            if isinstance(item, dict):
                yield sse_frame(item["type"], events.encode(item))
                continue
            yield sse_frame(item.type, item.data, item.seq)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader


def _after_seq(request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query_params.get("after_seq") or "0"
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValidationError({"after_seq": ["A whole number from 0 (or the Last-Event-ID header)."]})
    return value


class MessageEventsView(ChatView):
    """The events of an answer as ``text/event-stream``: replayed from ``after_seq`` (or the
    ``Last-Event-ID`` header), then live until its ``message_end``."""

    renderer_classes = [renderers.JSONRenderer, EventStreamRenderer]

    @extend_schema(
        parameters=[OpenApiParameter("after_seq", int, description="events after this seq (default 0: all)")],
        responses={(200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="SSE frames")},
    )
    def get(self, request, conversation_id, message_id):
        message = self.message(conversation_id, message_id)
        response = StreamingHttpResponse(
            sse_events(str(message.pk), _after_seq(request)), content_type="text/event-stream; charset=utf-8"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response


# --------------------------------------------------------------------------------------------------
# Quota


class QuotaView(ChatView):
    """The caller's chat quota and what is used of it."""

    @extend_schema(responses=s.QuotaOutputSerializer)
    def get(self, request):
        state = quota_status(user=request.user)
        return Response(
            s.QuotaOutputSerializer(
                {
                    "requests_per_minute": state.limits.requests_per_minute,
                    "tokens_per_day": state.limits.tokens_per_day,
                    "requests_last_minute": state.requests_last_minute,
                    "tokens_today": state.tokens_today,
                    "requests_reset_at": state.requests_reset_at,
                    "tokens_reset_at": state.tokens_reset_at,
                }
            ).data
        )
