"""The chat web page ``/chat/``: a template and a little plain JavaScript (static/chat/chat.js) that
speaks the websocket protocol; everything it shows comes from the REST API and the socket."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from business_project.accounts.choices import Scope
from business_project.accounts.selectors import scopes_of
from business_project.chat import events


@login_required
@ensure_csrf_cookie
def chat_page(request):
    context = {
        "can_write": Scope.CHAT_WRITE in scopes_of(user=request.user),
        "protocol": events.PROTOCOL,
    }
    return render(request, "chat/chat.html", context)
