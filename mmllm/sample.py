"""What goes wrong with one sample, in a module of its own: the processor, the audio front end and the data
side all raise or catch it, and none of them has to import another for it."""


class SampleError(ValueError):
    """A sample that cannot be used; the message says what is wrong (the caller adds where)."""
