"""Deployments: where the Ansible tree is, the URL node agents report to, where runs keep their files."""

from slm_project.config.env import BASE_DIR, env

DEPLOYMENTS_ANSIBLE_DIR = BASE_DIR / "ansible"
# The SLM as the nodes reach it (the slm_agent role writes it into each agent's config).
DEPLOYMENTS_SLM_URL = env.str("PUBLIC_URL", default="")
# Each run's private data dir (key file, inventory, extra vars; removed after the run) is made here;
# empty: the system temp dir. Point it at a tmpfs to keep key material off disks.
DEPLOYMENTS_WORK_DIR = env.str("DEPLOYMENTS_WORK_DIR", default="")
