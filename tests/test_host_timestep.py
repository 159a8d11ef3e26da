"""HostTimestep: a call's timestep read on the host from one copy of the scheduler's timesteps per generation,
never a stale value (the mirror path is forced on CPU tensors here; on a GPU it is what saves a sync)."""

from __future__ import annotations

import torch

from graphcache.host_timestep import MAX_MIRROR_BYTES, HostTimestep
from graphcache.streams import StreamRouter


def test_views_of_the_schedulers_timesteps_are_read_from_one_copy():
    reader = HostTimestep(mirror_cpu=True)
    timesteps = torch.linspace(999, 0, 20)
    for t in timesteps:  # diffusers' loop: a 0-dim view, then expanded to the batch
        assert reader.read(t.expand(4)) == float(t)
        assert reader.read(t) == float(t)
    assert reader.copies == 1


def test_an_in_place_write_is_seen():
    reader = HostTimestep(mirror_cpu=True)
    timesteps = torch.tensor([900.0, 800.0, 700.0])
    assert reader.read(timesteps[1]) == 800.0
    timesteps[1] = 123.0  # through the base: the version counter its views share moves
    assert reader.read(timesteps[1]) == 123.0
    view = timesteps[2:]
    view.fill_(5.0)  # through another view
    assert reader.read(timesteps[2]) == 5.0
    assert reader.copies == 3


def test_a_fresh_tensor_per_call_is_never_answered_from_an_old_copy():
    """``t.expand(b).to(dtype)`` makes a new tensor per call; freed memory may come back at the same address,
    which the held storage prevents while its copy is in use."""
    reader = HostTimestep(mirror_cpu=True)
    for value in [999.0, 950.0, 950.0, 900.0, 10.0, 999.0]:
        t = torch.full((2,), value, dtype=torch.bfloat16)
        assert reader.read(t) == float(torch.tensor(value, dtype=torch.bfloat16))
        address = t.untyped_storage().data_ptr()
        del t
        held = reader._held  # the storage outlives its tensor while its copy answers: no tensor can reuse it
        assert held is not None and held.data_ptr() == address


def test_one_calls_fresh_tensor_is_read_once_by_router_and_host_clock():
    """The stream router and the graph's host clock (passes/host_decision.py) share a reader: a fresh tensor
    per call is copied once, not twice, and a write to it between the two reads is still seen."""
    reader = HostTimestep(mirror_cpu=True)
    for value in [999.0, 500.0, 500.0]:
        t = torch.full((2,), value)
        assert reader.read(t) == value and reader.read(t) == value  # the router, then the host clock
    assert reader.copies == 3
    t = torch.full((2,), 7.0)
    assert reader.read(t) == 7.0
    t.fill_(8.0)
    assert reader.read(t) == 8.0 and reader.copies == 5


def test_per_sample_timesteps_give_their_largest_value():
    reader = HostTimestep(mirror_cpu=True)
    assert reader.read(torch.tensor([10.0, 700.0, 30.0])) == 700.0
    assert reader.read(torch.tensor([[1.0], [2.0]]).t()) == 2.0  # a strided view


def test_what_cannot_be_mirrored_is_read_directly():
    reader = HostTimestep(mirror_cpu=True)
    assert reader.read(999) == 999.0
    with torch.inference_mode():
        inference = torch.tensor([500.0])  # no version counter
    assert reader.read(inference) == 500.0
    big = torch.zeros(MAX_MIRROR_BYTES // 4 + 1)
    big[7] = 3.0
    assert reader.read(big[7]) == 3.0
    assert reader.copies == 0
    assert HostTimestep().read(torch.tensor([1.0])) == 1.0 and HostTimestep().copies == 0  # CPU: read directly


def test_stream_routing_is_the_same_through_the_copy():
    """CFG as two calls per step, then a new generation: the k-th call at one timestep is stream k."""
    timesteps = torch.linspace(999, 0, 5)
    calls = [t.expand(2) for t in timesteps for _ in range(2)] + [timesteps[0].expand(2)]
    streams = []
    for mirror in (False, True):
        router = StreamRouter()
        router.reader = HostTimestep(mirror_cpu=mirror)
        router.get = lambda args, kwargs: kwargs["timestep"]
        streams.append([router.stream((), {"timestep": t}) for t in calls])
    assert streams[0] == streams[1] == ["", "stream 1"] * 5 + [""]
