"""box_filter - the mean of every window x window block of an image, fast on CPU: SSIM's local means.

Not a reading step: box_mean(x, window) is F.avg_pool2d(x, window, 1) (05_posenet_loss.SSIM's local
means) computed by running window sums, with a backward pass of its own (docs/benchmarks.md, "What
changed"). Moved out of 05 so that the step holds the concept.
Tests: tests/test_05_posenet_loss.py (against avg_pool2d, with gradcheck).
"""
import torch
import torch.nn.functional as F


def window_sum(x, window, dim):
    """Sums of `window` consecutive entries of x along dim ('valid': that size shrinks by window-1).

    A running sum: the first window summed, then each step adds the entry that enters the window
    and subtracts the one that leaves it, all in one cumsum. O(1) per entry whatever the window,
    and the partial sums never grow beyond one window, so float32 keeps its precision (a plain
    cumsum differenced at two points would carry the whole row's total in every difference).
    """
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = n - window + 1
    out = x.new_empty(shape)            # filled in place: no concatenated copy
    torch.sum(x.narrow(dim, 0, window), dim, keepdim=True, out=out.narrow(dim, 0, 1))
    torch.sub(x.narrow(dim, window, n - window), x.narrow(dim, 0, n - window),
              out=out.narrow(dim, 1, n - window))
    return out.cumsum_(dim)


def box_sum(x, window):
    """Sum of every window x window block of x [N, C, H, W] -> [N, C, H-window+1, W-window+1]:
    window sums along the rows, then along the columns (a box filter is separable)."""
    return window_sum(window_sum(x, window, -1), window, -2)


class BoxMean(torch.autograd.Function):
    """Mean of every window x window block ('valid', stride 1), with a backward pass of its own.

    Autograd would differentiate box_sum's cumsums and slices one by one (three times the forward
    time). The adjoint of a box filter is the same box filter over the gradient padded with
    window - 1 zeros on every side: one more box_sum. Same numbers as avg_pool2d(x, window, 1) up
    to float rounding (tests/test_05_posenet_loss.py, with gradcheck)."""

    @staticmethod
    def forward(ctx, x, window):
        ctx.window = window
        return box_sum(x, window) / (window * window)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.window
        return box_sum(F.pad(grad, (w - 1, w - 1, w - 1, w - 1)), w) / (w * w), None


def box_mean(x, window):
    """avg_pool2d(x, window, stride=1) for x [N, C, H, W], by running window sums (BoxMean)."""
    return BoxMean.apply(x, window)
