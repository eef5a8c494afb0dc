"""Worker services that run on their own nodes, outside both Django projects. Each is deployed by its
Ansible role from an application bundle (``slm_project/deployments/bundles.py``) and imports neither
project."""
