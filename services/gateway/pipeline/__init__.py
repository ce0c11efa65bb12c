"""The pipeline worker: Identify -> Update -> Compute for the events in the inbox, a separate part of the gateway
package that runs in the gateway process (tests, small set-ups) or as its own processes
(`python -m services.gateway.pipeline`, as many as the machine suits), sharing the inbox by partition leases."""

from services.gateway.pipeline.apply import MergePropagation, Pipeline, Plan, Stubs, interactions_of, outcome_of
from services.gateway.pipeline.sweeper import MergeSweeper
from services.gateway.pipeline.worker import PartitionWorker, WorkerSettings

__all__ = ["MergePropagation", "MergeSweeper", "PartitionWorker", "Pipeline", "Plan", "Stubs", "WorkerSettings",
           "interactions_of", "outcome_of"]
