"""Errors raised by the engine, mapped to HTTP or task outcomes at the edges.

    JobError
    ├── SpecError          the spec cannot run on this data (e.g. bandwidth larger than the image)
    ├── DatasetNotFound    the dataset files are not where the data root says; names the path
    ├── DivergedError      the training loss became NaN or infinite; retrying will not help
    ├── CheckpointError    a checkpoint is missing, corrupt or belongs to another spec
    └── Cancelled          a cancel check asked the trainer to stop; a checkpoint was written
"""


class JobError(Exception):
    """Base class of every error the engine raises on purpose."""


class SpecError(JobError):
    """The spec is valid on its own but cannot run on the data it names."""


class DatasetNotFound(JobError):
    """The dataset is missing; the message names the expected path."""


class DivergedError(JobError):
    """Training produced a non-finite loss."""


class CheckpointError(JobError):
    """A checkpoint cannot be used to resume this run."""


class Cancelled(JobError):
    """Training stopped at a step boundary because the cancel check returned True."""
