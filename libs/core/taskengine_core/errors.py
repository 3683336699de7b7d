"""Domain errors; the gateway translates them into each dialect's error shape."""


class DomainError(Exception):
    """A request the domain refuses."""


class IllegalTransition(DomainError):
    """The lifecycle does not allow this move from the job's current state."""


class UnknownWorkflow(DomainError):
    pass


class InvalidSetting(DomainError):
    pass
