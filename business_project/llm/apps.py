from django.apps import AppConfig


class LlmConfig(AppConfig):
    name = "business_project.llm"
    label = "llm"
    verbose_name = "LLM providers"

    def ready(self) -> None:
        from business_project.llm import checks  # noqa: F401 - registers the master key check
