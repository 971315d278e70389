"""Peers of the toy kernel (wb's own tests): the same doubling done another way."""

PEERS = {"torch-mul": "x * 2 with torch.mul (CPU)", "absent": "a peer that is never installed"}
PROFILE_KERNELS = {"torch-mul": "regex:mul"}


def make_peer(name, inputs, params):
    import torch

    if name == "absent":
        return None
    x = inputs["x"]
    return lambda: torch.mul(x, 2)


def missing_note(name):
    return "it exists only to be missing" if name == "absent" else None
