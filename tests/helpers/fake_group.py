"""A stand-in for a torch.distributed process group: only size() and rank(), for CP-shard tests."""


class FakeGroup:
    def __init__(self, size, rank):
        self._size, self._rank = size, rank

    def size(self):
        return self._size

    def rank(self):
        return self._rank
