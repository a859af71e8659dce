"""fused_adam - Adam with PyTorch's fused kernel, run on the parameters' memory as it lies.

Not a reading step: nothing in it is SQLDepth; it makes the optimiser step cheaper and changes no
number. PyTorch's fused Adam does the whole update of a tensor in one pass (instead of several
element-wise ops per tensor), but its CPU kernel first makes every tensor it is given contiguous,
and a channels-last (NHWC) weight is not contiguous in that sense: with
`torch.optim.Adam(fused=True)` each step copied every 4-D weight, its gradient and both moments
out and back (a torch profile of the default training step: about 380 copies). `FlatAdam` hands the
kernel a 1-D view of each parameter's memory instead, which is contiguous in any layout: the same
update, in place, with no copy. `make_adam` gives it where the installed PyTorch has a fused Adam
for the parameters' device, and the plain `torch.optim.Adam` otherwise.
Used by 06_train.py (training) and helpers/benchmark.py (`python -m helpers.benchmark`).
Tests: tests/test_fused_adam.py.
"""
import torch


def memory_view(t):
    """A 1-D view of t's memory in memory order when t is dense (contiguous or channels-last); t
    itself otherwise."""
    dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
    return t.detach().as_strided((t.numel(),), (1,), t.storage_offset()) if dense else t


class FlatAdam(torch.optim.Adam):
    """torch.optim.Adam(fused=True) that updates every parameter through a 1-D view of its memory.

    The networks keep their parameters and gradients: step() points each view's .grad at the
    memory of its parameter's gradient (a copy only when the gradient came in another layout),
    zero_grad() clears the parameters' gradients, and state_dict() / load_state_dict() give and take
    the moments in the parameters' shapes and layouts, so checkpoints are interchangeable with
    torch.optim.Adam's. A parameter that is not dense (never the case for nn.Module weights) is
    stepped as itself.
    """

    def __init__(self, params, **adam_options):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.pairs = []                                   # (parameter, its view or itself), in order
        flat_groups = []
        for group in groups:
            pairs = [(p, memory_view(p)) for p in group["params"]]
            self.pairs += pairs
            flat_groups.append({**group, "params": [view for _, view in pairs]})
        super().__init__(flat_groups, **{**adam_options, "fused": True})

    @torch.no_grad()
    def step(self, closure=None):
        for p, view in self.pairs:
            grad = p.grad
            if view is p:                                 # not dense: Adam steps the parameter itself
                continue
            if grad is not None and grad.stride() != p.stride():  # e.g. a gradient set by hand in NCHW
                grad = torch.empty_like(p).copy_(grad)
            view.grad = None if grad is None else memory_view(grad)
        return super().step(closure)

    def zero_grad(self, set_to_none=True):
        super().zero_grad(set_to_none)
        for p, _ in self.pairs:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def state_dict(self):
        """torch.optim.Adam's state dict: the moments in the parameters' shapes and layouts."""
        saved = super().state_dict()
        state = {}
        for i, entry in saved["state"].items():
            p, view = self.pairs[i]
            state[i] = {k: (v.as_strided(p.shape, p.stride(), v.storage_offset())
                            if view is not p and torch.is_tensor(v) and v.dim() == 1 else v)
                        for k, v in entry.items()}
        return {**saved, "state": state}

    def load_state_dict(self, state_dict):
        """Takes the state dict of a FlatAdam or of a torch.optim.Adam over the same parameters."""
        state = {}
        for i, entry in state_dict["state"].items():
            p, view = self.pairs[int(i)]
            state[i] = {k: (memory_view(torch.empty_like(p).copy_(v))
                            if view is not p and torch.is_tensor(v) and v.shape == p.shape and v.dim() else v)
                        for k, v in entry.items()}
        super().load_state_dict({**state_dict, "state": state})


def make_adam(params, fused=True, **adam_options):
    """Adam over `params` (tensors or param-group dicts): a FlatAdam when `fused` and the installed
    PyTorch has a fused Adam for their device, torch.optim.Adam (its default implementation)
    otherwise."""
    params = list(params)
    if fused:
        try:
            return FlatAdam(params, **adam_options)
        except (RuntimeError, TypeError):             # no fused Adam for this device / PyTorch version
            pass
    return torch.optim.Adam(params, **adam_options)
