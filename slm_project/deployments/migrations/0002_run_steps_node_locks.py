# Strategies (rolling batches, dependency order: a run's steps), node locks (no two runs on one node at
# once), and where a run's executor works (for the reaper's cleanup after a killed worker).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0001_initial"),
        ("fleet", "0002_heartbeat_sample_node_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="batch_percent",
            field=models.PositiveSmallIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deployment",
            name="batch_size",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="deployment",
            name="strategy",
            field=models.CharField(
                choices=[
                    ("all_at_once", "All At Once"),
                    ("rolling", "Rolling"),
                    ("dependency_order", "Dependency Order"),
                ],
                default="all_at_once",
                max_length=20,
            ),
        ),
        migrations.AddConstraint(
            model_name="deployment",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("strategy", "rolling"),
                        models.Q(
                            models.Q(("batch_percent__isnull", True), ("batch_size__gte", 1)),
                            models.Q(
                                ("batch_percent__gte", 1),
                                ("batch_percent__lte", 100),
                                ("batch_size__isnull", True),
                            ),
                            _connector="OR",
                        ),
                    ),
                    models.Q(
                        models.Q(("strategy", "rolling"), _negated=True),
                        ("batch_percent__isnull", True),
                        ("batch_size__isnull", True),
                    ),
                    _connector="OR",
                ),
                name="deployment_rolling_batch_valid",
            ),
        ),
        migrations.AddField(
            model_name="deploymentrun",
            name="steps",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.AddField(
            model_name="deploymentrun",
            name="executor_host",
            field=models.CharField(blank=True, max_length=253),
        ),
        migrations.AddField(
            model_name="deploymentrun",
            name="executor_pid",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deploymentrun",
            name="work_dir",
            field=models.CharField(blank=True, max_length=500),
        ),
        migrations.AddField(
            model_name="deploymentrun",
            name="ansible_pgid",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="deploymentrun",
            name="orphans_cleared_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="DeploymentNodeLock",
            fields=[
                (
                    "node",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="deployment_lock",
                        serialize=False,
                        to="fleet.node",
                    ),
                ),
                ("acquired_at", models.DateTimeField()),
                (
                    "run",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="node_locks",
                        to="deployments.deploymentrun",
                    ),
                ),
            ],
            options={"ordering": ["node"]},
        ),
    ]
