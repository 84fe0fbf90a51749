"""The control plane: coordinator (JobManager), workers (TaskManagers), local clusters."""

from sabot.cluster.client import ApiError, SabotClient
from sabot.cluster.coordinator import ClusterCoordinator, CoordinatorConfig, JobState
from sabot.cluster.local import LocalCluster
from sabot.cluster.worker import Worker

__all__ = ["ApiError", "ClusterCoordinator", "CoordinatorConfig", "JobState", "LocalCluster", "SabotClient", "Worker"]
