from business_project.accounts.choices import Role, Scope

# The scopes each role holds. A session has all of its role's scopes; a token has those it was given that
# its owner's role still holds (a member demoted to viewer keeps tokens that can only read).
ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.ADMIN: frozenset(Scope.values),
    Role.MEMBER: frozenset({Scope.CHAT_READ, Scope.CHAT_WRITE}),
    Role.VIEWER: frozenset({Scope.CHAT_READ}),
}

API_TOKEN_PREFIX = "abt_"  # noqa: S105 - a public marker of the token kind (AutoBot business token)
API_TOKEN_LOOKUP_BYTES = 8
