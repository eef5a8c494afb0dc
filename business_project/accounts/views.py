"""Sign-in and sign-out pages of the web app, and the page where a user manages personal API tokens."""

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from business_project.accounts.choices import Scope
from business_project.accounts.forms import LoginForm

HOME = "/chat/"


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True
    next_page = HOME


class LogoutView(auth_views.LogoutView):
    next_page = "/accounts/login/"


@login_required
def tokens_page(request):
    return render(request, "accounts/tokens.html", {"scopes": Scope.choices})
