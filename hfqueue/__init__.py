"""hfqueue: an asynchronous batch-inference job queue for Hugging Face models, on Celery and Redis.

>>> from hfqueue import Client                                     # doctest: +SKIP
>>> job = Client().submit(task="feature-extraction", model="sentence-transformers/all-MiniLM-L6-v2",
...                       dataset="data.jsonl", column="text")      # doctest: +SKIP
>>> job.wait(progress=True); ds = job.result()                     # doctest: +SKIP
"""

from hfqueue.client import Client
from hfqueue.core.config import Settings
from hfqueue.core.jobs import JobSpec, JobState, JobStatus
from hfqueue.errors import (
                            BrokerUnavailableError,
                            ConfigError,
                            HfqError,
                            InvalidSpecError,
                            JobCancelledError,
                            JobFailedError,
                            JobNotFoundError,
                            ModelLoadError,
                            PublishError,
                            SourceNotFoundError,
                            WaitTimeoutError,
)
from hfqueue.producer.client import Job

__all__ = [
    "BrokerUnavailableError", "Client", "ConfigError", "HfqError", "InvalidSpecError", "Job", "JobCancelledError",
    "JobFailedError", "JobNotFoundError", "JobSpec", "JobState", "JobStatus", "ModelLoadError", "PublishError", "Settings",
    "SourceNotFoundError", "WaitTimeoutError",
]
__version__ = "0.1.0"
