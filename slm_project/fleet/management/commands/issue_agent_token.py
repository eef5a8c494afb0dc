"""``manage_slm.py issue_agent_token --node NAME``: a new agent token for a node (the old one stops
working), printed once as the last line of output. For re-keying an agent by hand; enrollment issues
the first token itself."""

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import APIException

from slm_project.fleet.models import Node
from slm_project.fleet.services import node_agent_token_issue


class Command(BaseCommand):
    help = "Issue a new agent token for a node and print it once."

    def add_arguments(self, parser):
        parser.add_argument("--node", required=True, help="the node's name")

    def handle(self, *args, node, **options):
        try:
            target = Node.objects.get(name=node)
        except Node.DoesNotExist:
            raise CommandError(f"No node named {node!r}.") from None
        try:
            token = node_agent_token_issue(node=target, actor="cli")
        except APIException as exc:
            raise CommandError(str(exc.detail)) from None
        self.stderr.write(f"Issued a new agent token for {target.name} ({target.pk}); it is shown only now.")
        self.stdout.write(token)
