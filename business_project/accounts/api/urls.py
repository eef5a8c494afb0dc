from django.urls import path

from business_project.accounts.api import views

app_name = "auth-api"

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    path("tokens/", views.ApiTokenListView.as_view(), name="token-list"),
    path("tokens/<uuid:token_id>/", views.ApiTokenDetailView.as_view(), name="token-detail"),
]
