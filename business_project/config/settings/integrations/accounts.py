"""Sign-in: pages, and throttling of failed attempts per username and client address."""

from business_project.config.env import env

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/chat/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# After LOGIN_FAILURE_LIMIT failures within LOGIN_FAILURE_WINDOW seconds, that username from that address
# is refused for LOGIN_LOCKOUT seconds (counted in the cache: Redis when REDIS_URL is set).
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_FAILURE_WINDOW = env.int("LOGIN_FAILURE_WINDOW", default=15 * 60)
LOGIN_LOCKOUT = env.int("LOGIN_LOCKOUT", default=15 * 60)
